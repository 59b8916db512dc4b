"""The command-line ends of the sites package: ``fragileprobe agent`` and ``fragileprobe discover --sites``.

``fragileprobe.cli`` parses the options and calls these; they return an exit code or raise the library's
errors, which the CLI maps to its exit codes (bad input 2, device trouble 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fragileprobe._errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from fragileprobe.sites._coordinator import SitesReport

__all__ = ["agent_scope", "discover_sites", "run_agent_command"]


def agent_scope(*, site: str, scope: str | None, sites_file: Path | None) -> Any:
    """The agent's scope: ``--scope`` as given, else its site's networks in ``--sites`` (one is required)."""
    from fragileprobe._scope import Scope
    from fragileprobe.sites._config import SitesConfig

    if scope is not None:
        try:
            return Scope(scope, allow_large=True)
        except ConfigError as exc:
            raise ConfigError(f"--scope: {exc}") from exc
    if sites_file is not None:
        return SitesConfig.from_toml(sites_file).site(site).scope
    raise ConfigError(
        "agent: give --scope (the networks this site may reach) or --sites FILE naming the site"
    )


def run_agent_command(
    *,
    site: str,
    broker: str,
    store: str,
    scope: str | None,
    sites_file: Path | None,
    lease_ttl_s: float,
    loglevel: str,
) -> None:
    """Validate the agent's options, then run its worker until it is stopped."""
    import re

    from fragileprobe._db import is_database_url
    from fragileprobe.sites._agent import run_agent

    if not re.match(r"^[a-z0-9][a-z0-9_-]{0,39}$", site):
        raise ConfigError(f"--site: {site!r} is not a lowercase slug (a-z, 0-9, '-', '_')")
    if not broker.startswith(("redis://", "rediss://")):
        raise ConfigError(f"--broker: {broker!r} must be a redis:// or rediss:// URL")
    if not is_database_url(store):
        raise ConfigError(f"--store: {store!r} must be the shared postgresql:// URL")
    if lease_ttl_s <= 0:
        raise ConfigError(f"--lease-ttl: must be positive, got {lease_ttl_s!r}")
    authorized = agent_scope(site=site, scope=scope, sites_file=sites_file)
    run_agent(
        site=site,
        broker=broker,
        store=store,
        scope=authorized,
        lease_ttl_s=lease_ttl_s,
        loglevel=loglevel.upper(),
    )


def discover_sites(sites_file: Path, *, progress: Any = None, timeout_s: float | None = None) -> SitesReport:
    """Validate sites.toml completely (nothing is sent before), then run the multi-site discovery."""
    from fragileprobe.sites._config import SitesConfig
    from fragileprobe.sites._coordinator import Coordinator

    config = SitesConfig.from_toml(sites_file)
    coordinator = Coordinator(config)
    try:
        coordinator.plan()  # expands every site's targets: a bad one fails here, before any job is sent
        return coordinator.discover(progress=progress, timeout_s=timeout_s)
    finally:
        coordinator.close()
