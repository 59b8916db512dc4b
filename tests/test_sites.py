"""Site agents, the shared ledger and the coordinator.

The pure parts (sites.toml validation, shards) and the ledger's rules (one job per device, lost jobs,
holds) run on SQLite with an injected clock; the agent's refusals run without a broker. The end-to-end and
fault tests (marked slow) start a real Redis, a real PostgreSQL and real ``fragileprobe agent``
subprocesses, with emulated hospital fleets as the sites.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests._support.procs import fragileprobe_command
from tests._support.sites import agents, await_until, site_prefixes

from fragileprobe import ConfigError, Scope
from fragileprobe._store import ProfileStore
from fragileprobe.emulator import Fleet, hospital_fleet
from fragileprobe.sites import Coordinator, DeviceHeldError, Ledger, SiteAgent, SitesConfig
from fragileprobe.sites._coordinator import shards

# The fleet's services the tests look at (as in test_discovery_fleet): quick, and every model answers.
PORTS = "21,22,23,80,104,445,2575,3389,5985,8080,9100"


def _config(
    broker: str = "redis://127.0.0.1:1/0", store: str = "postgresql://x@127.0.0.1/x", **overrides: object
) -> dict[str, object]:
    data: dict[str, object] = {
        "broker": broker,
        "store": store,
        "discovery": {"ports": PORTS, "shard_size": 16},
        "site": [
            {
                "name": "trauma",
                "networks": ["127.10.1.0/24"],
                "zone": [{"name": "icu", "kind": "medical", "ranges": ["127.10.1.0/25"]}],
            },
            {"name": "clinic-2", "networks": ["127.10.2.0/24"], "targets": ["127.10.2.0/28"]},
        ],
    }
    data.update(overrides)
    return data


# --- sites.toml ---------------------------------------------------------------------------------------------


def test_sites_toml_reads_sites_networks_zones_and_params(tmp_path: Path) -> None:
    path = tmp_path / "sites.toml"
    path.write_text(
        'broker = "redis://127.0.0.1:6379/0"\nstore = "postgresql://fp@127.0.0.1/fp"\n'
        '[discovery]\nports = "21,8080"\nrate_per_host = 5.0\nshard_size = 8\n'
        '[[site]]\nname = "trauma"\nnetworks = ["127.10.1.0/24"]\n'
        '  [[site.zone]]\n  name = "icu"\n  kind = "medical"\n  ranges = ["127.10.1.0/25"]\n'
    )
    config = SitesConfig.from_toml(path)
    assert config.names == ("trauma",)
    assert config.site("trauma").queue == "fragileprobe.site.trauma"
    assert config.discovery.ports == (21, 8080)
    assert config.discovery.rate_per_host == 5.0
    assert config.shard_size == 8
    assert config.owner_of("127.10.1.77") is config.site("trauma")
    assert config.owner_of("127.10.3.1") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"broker": "amqp://h"}, r"key 'broker'.* must be a URL starting with redis:// or rediss://"),
        ({"store": "fp.db"}, r"key 'store'.* must be a postgresql:// URL"),
        ({"site": []}, r"at least one \[\[site\]\]"),
        ({"colour": 1}, r"top level: unknown key 'colour'"),
        ({"discovery": {"shard_size": 0}}, r"\[discovery\] key 'shard_size'.* positive integer"),
        ({"discovery": {"ports": "99999"}}, r"\[discovery\] key 'ports'"),
        ({"discovery": {"rate": 1}}, r"\[discovery\]: unknown key 'rate'"),
        ({"site": [{"name": "A b", "networks": ["127.10.1.0/24"]}]}, r"key 'name' must be a lowercase slug"),
        ({"site": [{"name": "a", "networks": []}]}, r"site #1 \('a'\): key 'networks'"),
        ({"site": [{"name": "a", "networks": ["127.10.1.0/33"]}]}, r"site #1 \('a'\): key 'networks'"),
        (
            {"site": [{"name": "a", "networks": ["127.10.1.0/24"], "targets": ["127.10.9.1"]}]},
            r"site #1 \('a'\): key 'targets'.*127\.10\.9\.1",
        ),
        (
            {
                "site": [
                    {"name": "a", "networks": ["127.10.1.0/24"]},
                    {"name": "a", "networks": ["127.10.2.0/24"]},
                ]
            },
            r"site name 'a' is used twice",
        ),
        (
            {
                "site": [
                    {"name": "a", "networks": ["127.10.0.0/16"]},
                    {"name": "b", "networks": ["127.10.2.0/24"]},
                ]
            },
            r"'a' \(127\.10\.0\.0/16\) and 'b' \(127\.10\.2\.0/24\) overlap; every address may belong to "
            r"one site",
        ),
        (
            {
                "site": [
                    {
                        "name": "a",
                        "networks": ["127.10.1.0/24"],
                        "zone": [{"name": "z", "ranges": ["127.10.2.0/25"]}],
                    }
                ]
            },
            r"zone 'z' range '127\.10\.2\.0/25' is outside the site's networks",
        ),
        ({"site": [{"name": "a", "networks": ["127.10.1.0/24"], "zones": []}]}, r"unknown key 'zones'"),
    ],
)
def test_sites_toml_names_what_is_wrong(change: dict[str, object], message: str) -> None:
    """Every mistake is a ConfigError naming the file, entry and key, found before anything is sent."""
    with pytest.raises(ConfigError, match=message):
        SitesConfig.from_dict(_config(**change), source="sites.toml")


@given(st.lists(st.integers(0, 10_000), max_size=300, unique=True), st.integers(1, 64))
def test_shards_cover_every_host_once_in_bounded_jobs(hosts: list[int], size: int) -> None:
    names = [str(h) for h in hosts]
    parts = shards(names, size)
    assert [h for p in parts for h in p] == names
    assert all(0 < len(p) <= size for p in parts)


def test_discover_sites_rejects_a_bad_file_before_connecting(tmp_path: Path) -> None:
    """The CLI validates sites.toml completely first: exit 2, one line naming the key, no broker touched."""
    path = tmp_path / "sites.toml"
    data = _config()
    path.write_text(
        'broker = "redis://127.0.0.1:1/0"\nstore = "postgresql://x@127.0.0.1:1/x"\n'
        '[[site]]\nname = "a"\nnetworks = ["127.10.1.0/24"]\n'
        'targets = ["127.10.7.1"]\n'
    )
    assert data  # the dict form is tested above; this is the file through the CLI
    done = subprocess.run(
        [*fragileprobe_command(), "discover", "--sites", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "key 'targets'" in done.stderr
    assert "Traceback" not in done.stderr


# --- the ledger: one job per device, lost jobs, holds -------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ledger(tmp_path: Path) -> tuple[Ledger, FakeClock]:
    clock = FakeClock()
    return Ledger(ProfileStore(tmp_path / "fp.db"), clock=clock), clock


def _started(
    ledger: Ledger, job_id: str, hosts: list[str], *, kind: str = "discover", ttl: float = 10.0
) -> None:
    ledger.submit(job_id=job_id, batch_id="b", site="s", kind=kind, hosts=hosts, params={})
    assert ledger.start(job_id, owner=f"agent-{job_id}", ttl_s=ttl) is not None


def test_a_job_starts_once_whatever_the_broker_delivers(tmp_path: Path) -> None:
    ledger, _ = _ledger(tmp_path)
    ledger.submit(job_id="j", batch_id="b", site="s", kind="discover", hosts=["127.0.0.1"], params={})
    assert ledger.start("j", owner="a1", ttl_s=10) is not None
    assert ledger.start("j", owner="a2", ttl_s=10) is None  # a redelivered or republished message
    ledger.finish("j", state="done")
    assert ledger.start("j", owner="a3", ttl_s=10) is None
    job = ledger.job("j")
    assert job is not None
    assert (job.state, job.owner) == ("done", "a1")


def test_a_lapsed_lease_frees_the_device_and_marks_the_job_lost(tmp_path: Path) -> None:
    ledger, clock = _ledger(tmp_path)
    _started(ledger, "a", ["127.0.0.1", "127.0.0.2"])
    assert ledger.acquire(
        ["127.0.0.1", "127.0.0.2"], job_id="a", owner="x", kind="discover", ttl_s=10
    ).granted
    _started(ledger, "b", ["127.0.0.1"])
    assert ledger.acquire(["127.0.0.1"], job_id="b", owner="y", kind="discover", ttl_s=10).busy == (
        "127.0.0.1",
    )
    clock.now += 5
    ledger.progress("a", hosts_done=1, ttl_s=10)  # a renewal: still a's for 10 s from now
    clock.now += 9
    assert ledger.reconcile() == [] or all(j.job_id != "a" for j in ledger.reconcile())
    assert ledger.acquire(["127.0.0.1"], job_id="b", owner="y", kind="discover", ttl_s=10).busy
    clock.now += 2  # a stopped renewing 11 s ago: lapsed
    lost = ledger.reconcile()
    assert "a" in {j.job_id for j in lost}
    assert ledger.job("a").state == "lost"  # type: ignore[union-attr]
    assert ledger.acquire(["127.0.0.1"], job_id="b", owner="y", kind="discover", ttl_s=10).granted == (
        "127.0.0.1",
    )
    assert ledger.holds() == []  # a lost discovery holds nothing


def test_a_lost_characterization_holds_its_device_until_released(tmp_path: Path) -> None:
    ledger, clock = _ledger(tmp_path)
    _started(ledger, "c", ["127.0.0.5"], kind="characterize")
    ledger.acquire(["127.0.0.5"], job_id="c", owner="x", kind="characterize", ttl_s=10)
    clock.now += 11
    ledger.reconcile()
    assert [h.device for h in ledger.holds()] == ["127.0.0.5"]
    for kind in ("discover", "characterize"):
        _started(ledger, f"next-{kind}", ["127.0.0.5"], kind=kind)
        grant = ledger.acquire(["127.0.0.5"], job_id=f"next-{kind}", owner="y", kind=kind, ttl_s=10)
        assert grant.held == ("127.0.0.5",)
        assert grant.granted == ()
    _started(ledger, "h", ["127.0.0.5"], kind="health")
    assert ledger.acquire(["127.0.0.5"], job_id="h", owner="y", kind="health", ttl_s=10).granted == (
        "127.0.0.5",
    )
    assert ledger.release_hold("127.0.0.5", by="operator") is True
    assert ledger.release_hold("127.0.0.5", by="operator") is False
    assert ledger.holds() == []


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(0, 3), st.sets(st.integers(0, 4), min_size=1)),
        st.tuples(st.just("renew"), st.integers(0, 3), st.just(frozenset())),
        st.tuples(st.just("finish"), st.integers(0, 3), st.just(frozenset())),
        st.tuples(st.just("advance"), st.integers(1, 15), st.just(frozenset())),
    ),
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@given(_OPS)
def test_no_device_is_ever_leased_to_two_live_jobs(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, frozenset[int]]]
) -> None:
    """Whatever jobs acquire, renew, finish and however the clock moves, a device's grant never overlaps
    another job's unexpired lease (checked against a model of the rule)."""
    ledger, clock = _ledger(tmp_path_factory.mktemp("ledger"))
    ttl = 10.0
    for j in range(4):
        _started(ledger, f"j{j}", [f"127.0.0.{d}" for d in range(5)], ttl=ttl)
    model: dict[str, tuple[str, float]] = {}  # device -> (job, expires)
    finished: set[str] = set()
    for op, n, devices in ops:
        job = f"j{n}"
        if op == "advance":
            clock.now += n
        elif op == "renew" and job not in finished:
            ledger.progress(job, hosts_done=0, ttl_s=ttl)
            model = {d: (o, clock.now + ttl if o == job else e) for d, (o, e) in model.items()}
        elif op == "finish" and job not in finished:
            ledger.finish(job, state="done")
            finished.add(job)
            model = {d: v for d, v in model.items() if v[0] != job}
        elif op == "acquire" and job not in finished:
            names = [f"127.0.0.{d}" for d in sorted(devices)]
            grant = ledger.acquire(names, job_id=job, owner=job, kind="discover", ttl_s=ttl)
            for device in grant.granted:
                holder = model.get(device)
                assert holder is None or holder[0] == job or holder[1] <= clock.now, (device, holder, job)
                model[device] = (job, clock.now + ttl)
            for device in grant.busy:
                holder = model.get(device)
                assert holder is not None
                assert holder[0] != job
                assert holder[1] > clock.now
    live = ledger.leases()
    assert len({lease.device for lease in live}) == len(live)


# --- the agent's refusals (no broker needed) ----------------------------------------------------------------


async def test_agent_refuses_a_job_outside_its_scope_and_sends_nothing(
    tmp_path: Path, loopback_hosts: object
) -> None:
    """A job naming one address outside the agent's own scope is refused whole; no device sees a packet."""
    inside, outside = loopback_hosts(), loopback_hosts()  # type: ignore[operator]
    config = {"device": [{"host": h, "model": "infusion-pump", "seed": 1} for h in (inside, outside)]}
    store = ProfileStore(tmp_path / "fp.db")
    agent = SiteAgent(site="trauma", scope=Scope([inside]), store=store, lease_ttl_s=5)
    ledger = Ledger(store)
    async with Fleet(config, control_port=None) as fleet:
        jobs = [
            {"job_id": "j1", "site": "trauma", "kind": "discover", "hosts": [inside, outside]},
            {"job_id": "j2", "site": "clinic", "kind": "discover", "hosts": [inside]},
        ]
        for job in jobs:
            ledger.submit(
                job_id=job["job_id"],
                batch_id="b",
                site=str(job["site"]),
                kind="discover",
                hosts=job["hosts"],
                params={},
            )  # type: ignore[arg-type]
            state = await anyio.to_thread.run_sync(agent.run, {**job, "params": {}})
            assert state == "refused"
        assert all(d.stats.connects_total == 0 for d in fleet.devices.values())
    j1, j2 = ledger.job("j1"), ledger.job("j2")
    assert j1 is not None
    assert j2 is not None
    assert j1.state == "refused"
    assert "outside this agent's scope" in (j1.error or "")
    assert j2.state == "refused"
    assert "sent to the agent of site 'trauma'" in (j2.error or "")
    assert ledger.leases() == []


# --- end to end, against real servers and real agents (slow) ------------------------------------------------

SITE_FLEET_MEDICAL_MISPLACED = 4  # hospital_fleet: 3 infusion pumps and 1 syringe pump in the general half


def _sites_dict(broker: str, store: str, prefixes: list[str], **discovery: object) -> dict[str, object]:
    return {
        "broker": broker,
        "store": store,
        "discovery": {"ports": PORTS, "shard_size": 32, "lease_ttl_s": 3.0, **discovery},
        "site": [
            {
                "name": f"site-{i}",
                "networks": [f"{p}.0/24"],
                "zone": [
                    {"name": f"site-{i}-clinical", "kind": "medical", "ranges": [f"{p}.0/25"]},
                    {"name": f"site-{i}-office", "kind": "general", "ranges": [f"{p}.128/25"]},
                ],
            }
            for i, p in enumerate(prefixes)
        ],
    }


def _toml(data: dict[str, object]) -> str:
    lines = [f'broker = "{data["broker"]}"', f'store = "{data["store"]}"', "[discovery]"]
    for k, v in data["discovery"].items():  # type: ignore[attr-defined]
        lines.append(f"{k} = {json.dumps(v)}")
    for site in data["site"]:  # type: ignore[attr-defined]
        lines += ["[[site]]", f'name = "{site["name"]}"', f"networks = {json.dumps(site['networks'])}"]
        for z in site["zone"]:
            lines += [
                "[[site.zone]]",
                f'name = "{z["name"]}"',
                f'kind = "{z["kind"]}"',
                f"ranges = {json.dumps(z['ranges'])}",
            ]
    return "\n".join(lines) + "\n"


def _hung(fleets: list[Fleet]) -> list[str]:
    return [d.host for f in fleets for d in f.devices.values() if d.stats.crashes]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_two_sites_discovered_through_their_agents_into_one_report(
    tmp_path: Path, pg_url: str, redis_server: object
) -> None:
    """`discover --sites` through two agents: every device of both fleets in one report and one store, one
    alert stream with both sites' alerts, no device above one session or hung; a job routed to the wrong
    site's scope is refused by the agent whatever it says."""
    broker = redis_server.url  # type: ignore[attr-defined]
    prefixes = site_prefixes(2)
    data = _sites_dict(broker, pg_url, prefixes)
    sites_file = tmp_path / "sites.toml"
    sites_file.write_text(_toml(data))
    fleets = [Fleet(hospital_fleet(p, seed=i), control_port=None) for i, p in enumerate(prefixes)]
    specs = [
        {"site": f"site-{i}", "broker": broker, "store": pg_url, "scope": f"{p}.0/24"}
        for i, p in enumerate(prefixes)
    ]
    async with fleets[0], fleets[1]:
        with agents(*specs):
            cli = await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    [*fragileprobe_command(), "discover", "--sites", str(sites_file), "--json"],
                    capture_output=True,
                    text=True,
                    timeout=240,
                    check=False,
                )
            )
            assert cli.returncode == 1, cli.stderr[-2000:]  # 1: alerts were raised
            report = json.loads(cli.stdout)
            # The wrong site's address sent to site-0's queue: refused there, nothing sent.
            config = SitesConfig.from_dict(data)
            coordinator = Coordinator(config, poll_s=0.2)
            victim = next(iter(fleets[1].devices.values()))
            before = victim.stats.connects_total
            job = coordinator.submit(
                config.site("site-0"),
                "discover",
                [victim.host],
                batch_id="wrong",
                params=config.discovery.to_dict(),
            )
            end = await anyio.to_thread.run_sync(lambda: coordinator.wait(job.job_id, timeout_s=60))
            assert end.state == "refused"
            assert "outside this agent's scope" in (end.error or "")
            assert victim.stats.connects_total == before
        found = {a["host"] for a in report["assets"]}
        expected = {h for f in fleets for h in f.devices}
        assert found == expected
        assert report["sites"]["site-0"]["hosts_done"] == report["sites"]["site-1"]["hosts_done"] == 254
        assert len(report["alerts"]) == 2 * SITE_FLEET_MEDICAL_MISPLACED
        assert max(d.stats.peak_sessions for f in fleets for d in f.devices.values()) == 1
        assert _hung(fleets) == []
    stored_alerts = coordinator.store.alerts()
    assert {a["host"].rsplit(".", 1)[0] for a in stored_alerts} == set(prefixes)  # one stream, both sites
    assert {a.host for a in coordinator.store.assets()} == expected
    coordinator.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigkill_mid_discovery_keeps_finished_hosts_and_resumes_the_rest(
    pg_url: str, redis_server: object
) -> None:
    """SIGKILL of the agent mid-shard: every host it finished is in the store, its leases lapse within
    the TTL, and the coordinator resumes the shard on another agent, skipping the finished hosts."""
    broker = redis_server.url  # type: ignore[attr-defined]
    (prefix,) = site_prefixes(1)
    # One shard for the whole /24, few hosts at a time: slow enough to kill in the middle.
    data = _sites_dict(
        broker, pg_url, [prefix], shard_size=254, max_hosts_in_parallel=4, rate_per_host=5.0, ports="21,8080"
    )
    config = SitesConfig.from_dict(data)
    spec = {"site": "site-0", "broker": broker, "store": pg_url, "scope": f"{prefix}.0/24"}
    coordinator = Coordinator(config, poll_s=0.2)
    ledger = coordinator.ledger
    result: dict[str, object] = {}

    async with Fleet(hospital_fleet(prefix, seed=3), control_port=None) as fleet:
        with agents(spec) as (first,):
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    result["report"] = await anyio.to_thread.run_sync(
                        lambda: coordinator.discover(timeout_s=240)
                    )

                tg.start_soon(run)
                await await_until(
                    lambda: any(j.hosts_done >= 20 for j in ledger.jobs()),
                    timeout_s=120,
                    what="the agent to finish 20 hosts",
                )
                first.kill()
                (job,) = [j for j in ledger.jobs() if j.state == "started"]
                stored_done = {
                    h for s in coordinator.store.scans() for h in coordinator.store.hosts_done(s.scan_id)
                }
                assert len(stored_done) >= 20  # every finished host is in the store at once
                await await_until(lambda: ledger.leases() == [], timeout_s=10, what="the leases to lapse")
                with agents(spec):  # a second agent: the coordinator resumes the shard on it
                    await await_until(lambda: "report" in result, timeout_s=200, what="the resumed discovery")
    report = result["report"]
    assert report.lost_jobs == 1  # type: ignore[attr-defined]
    assert ledger.job(job.job_id).state == "lost"  # type: ignore[union-attr]
    # Every device has port 21 or 8080 open except the Windows workstations (SMB/RDP only on these ports).
    windows = {h for h, d in fleet.devices.items() if not {21, 8080} & set(d.ports)}
    assert {a["host"] for a in report.assets} == set(fleet.devices) - windows  # type: ignore[attr-defined]
    assert report.hosts_resumed >= len(stored_done)  # type: ignore[attr-defined]  # not probed twice
    assert report.unreached == ()  # type: ignore[attr-defined]
    assert _hung([fleet]) == []
    coordinator.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigkill_mid_characterization_holds_the_device_until_a_healthy_heartbeat(
    pg_url: str, redis_server: object
) -> None:
    """SIGKILL mid-characterization: the finished trials are in the store, the device goes on hold, and no
    job (characterization or discovery) reaches it until a health check's heartbeats release it; then the
    characterization resumes the same run, keeping the trials finished before the kill."""
    from fragileprobe.sites import SiteJobError

    broker = redis_server.url  # type: ignore[attr-defined]
    (prefix,) = site_prefixes(1)
    pump = f"{prefix}.7"
    config = SitesConfig.from_dict(_sites_dict(broker, pg_url, [prefix]))
    spec = {"site": "site-0", "broker": broker, "store": pg_url, "scope": f"{prefix}.0/24"}
    coordinator = Coordinator(config, poll_s=0.2)
    store = coordinator.store
    # Levels far below the pump's crash threshold (7-9): the test is about the agent dying, not the pump.
    params = {"ladder": [1, 2, 3], "dwell_s": 0.6, "trials": 3, "interval_s": 0.2, "hold_s": 0.2}
    outcome: dict[str, object] = {}
    fleet_config = {"device": [{"host": pump, "model": "infusion-pump", "seed": 5}]}
    async with Fleet(fleet_config, control_port=None) as fleet:
        device = fleet.device(pump)
        with agents(spec) as (first,):
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    try:
                        await anyio.to_thread.run_sync(
                            lambda: coordinator.characterize(pump, params=params, timeout_s=120)
                        )
                    except SiteJobError as exc:
                        outcome["error"] = exc

                tg.start_soon(run)
                await await_until(
                    lambda: any(r.trials for r in store.runs()),
                    timeout_s=90,
                    what="a finished trial in the store",
                )
                first.kill()
        assert "lost" in str(outcome["error"])
        (run_row,) = store.runs()
        kept = run_row.trials
        assert kept
        assert run_row.finished_at_s is None
        assert [h.device for h in coordinator.ledger.holds()] == [pump]
        touched = device.stats.connects_total
        with pytest.raises(DeviceHeldError):
            await anyio.to_thread.run_sync(lambda: coordinator.characterize(pump, params=params))
        with agents(spec):
            held_report = await anyio.to_thread.run_sync(lambda: coordinator.discover(timeout_s=120))
            assert pump in held_report.held
            assert device.stats.connects_total == touched  # the held device saw nothing
            assert await anyio.to_thread.run_sync(
                lambda: coordinator.check_health(pump, params={"interval_s": 0.2, "beats": 3}, timeout_s=60)
            )
            assert coordinator.ledger.holds() == []
            end = await anyio.to_thread.run_sync(
                lambda: coordinator.characterize(pump, params=params, timeout_s=120)
            )
        assert end.state == "done"
        assert device.stats.peak_sessions <= device.threshold
        assert device.stats.crashes == 0
    (resumed,) = store.runs()  # the same run, resumed: not a second one
    assert resumed.run_id == run_row.run_id
    assert resumed.finished_at_s is not None
    assert [t.to_dict() for t in resumed.trials[: len(kept)]] == [t.to_dict() for t in kept]
    assert len(resumed.trials) == 3
    coordinator.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_broker_restart_loses_no_finished_result(pg_url: str, redis_server: object) -> None:
    """Redis restarted (no persistence: its queued messages are gone) mid-batch: every job finished before
    stays finished in the store, the lost messages are republished, each shard runs exactly once."""
    redis = redis_server
    broker = redis.url  # type: ignore[attr-defined]
    (prefix,) = site_prefixes(1)
    config = SitesConfig.from_dict(_sites_dict(broker, pg_url, [prefix], shard_size=16, ports="21,8080"))
    spec = {"site": "site-0", "broker": broker, "store": pg_url, "scope": f"{prefix}.0/24"}
    coordinator = Coordinator(config, poll_s=0.2, requeue_after_s=3.0)
    ledger = coordinator.ledger
    result: dict[str, object] = {}
    async with Fleet(hospital_fleet(prefix, seed=4), control_port=None) as fleet:
        with agents(spec):
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    result["report"] = await anyio.to_thread.run_sync(
                        lambda: coordinator.discover(timeout_s=240)
                    )

                tg.start_soon(run)
                await await_until(
                    lambda: sum(j.state == "done" for j in ledger.jobs()) >= 3,
                    timeout_s=120,
                    what="three finished jobs",
                )
                finished_before = {j.job_id: j.result for j in ledger.jobs() if j.state == "done"}
                await anyio.to_thread.run_sync(redis.restart)  # type: ignore[attr-defined]
                await await_until(lambda: "report" in result, timeout_s=200, what="the batch to finish")
    report = result["report"]
    for job_id, before in finished_before.items():
        after = ledger.job(job_id)
        assert after is not None
        assert after.state == "done"
        assert after.result == before
    jobs = ledger.jobs()
    assert len(jobs) == 16
    assert all(j.state == "done" for j in jobs)
    assert len(coordinator.store.scans()) == 16  # no shard ran twice, whatever was republished
    windows = {h for h, d in fleet.devices.items() if not {21, 8080} & set(d.ports)}
    assert {a["host"] for a in report.assets} == set(fleet.devices) - windows  # type: ignore[attr-defined]
    coordinator.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "--broker",
                "amqp://127.0.0.1/",
                "--store",
                "postgresql://x@127.0.0.1/x",
                "--scope",
                "127.10.1.0/24",
            ],
            "--broker: 'amqp://127.0.0.1/' must be a redis://",
        ),
        (
            ["--broker", "redis://127.0.0.1:1/0", "--store", "fp.db", "--scope", "127.10.1.0/24"],
            "--store: 'fp.db' must be the shared postgresql:// URL",
        ),
        (["--broker", "redis://127.0.0.1:1/0", "--store", "postgresql://x@127.0.0.1/x"], "give --scope"),
        (
            ["--broker", "redis://127.0.0.1:1/0", "--store", "postgresql://x@127.0.0.1/x", "--scope", "nope"],
            "--scope: scope entry 'nope'",
        ),
    ],
)
def test_agent_command_rejects_bad_options_before_connecting(args: list[str], message: str) -> None:
    done = subprocess.run(
        [*fragileprobe_command(), "agent", "--site", "trauma", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_device_under_characterization_is_left_to_it_by_a_concurrent_discovery(
    pg_url: str, redis_server: object
) -> None:
    """Two agents on one site, two coordinators: a discovery that reaches a device while another job is
    characterizing it finds it busy, leaves it alone, and comes back only after the characterization's job
    has ended; every other device is discovered meanwhile."""
    broker = redis_server.url  # type: ignore[attr-defined]
    (prefix,) = site_prefixes(1)
    hosts = [f"{prefix}.{i}" for i in (11, 12, 13, 14)]
    data = _sites_dict(broker, pg_url, [prefix], ports="21,8080", shard_size=4)
    data["site"][0]["targets"] = hosts  # type: ignore[index]
    config = SitesConfig.from_dict(data)
    spec = {"site": "site-0", "broker": broker, "store": pg_url, "scope": f"{prefix}.0/24"}
    fleet_config = {"device": [{"host": h, "model": "infusion-pump", "seed": i} for i, h in enumerate(hosts)]}
    pump = hosts[0]
    operator_a = Coordinator(config, poll_s=0.2, busy_retry_s=1.0)
    operator_b = Coordinator(config, poll_s=0.2, busy_retry_s=1.0)
    params = {"ladder": [1, 2, 3], "dwell_s": 1.0, "trials": 2, "interval_s": 0.2, "hold_s": 0.2}
    out: dict[str, object] = {}
    async with Fleet(fleet_config, control_port=None) as fleet:
        with agents(spec, spec):
            async with anyio.create_task_group() as tg:

                async def characterize() -> None:
                    out["char"] = await anyio.to_thread.run_sync(
                        lambda: operator_a.characterize(pump, params=params, timeout_s=200)
                    )

                tg.start_soon(characterize)
                ledger = operator_b.ledger
                await await_until(
                    lambda: any(lease.device == pump for lease in ledger.leases()),
                    timeout_s=60,
                    what="the characterization to lease the pump",
                )
                out["report"] = await anyio.to_thread.run_sync(lambda: operator_b.discover(timeout_s=200))
        device = fleet.device(pump)
        assert device.stats.crashes == 0
        assert device.stats.peak_sessions <= device.threshold
    report = out["report"]
    char_job = out["char"]
    assert {a["host"] for a in report.assets} == set(hosts)  # type: ignore[attr-defined]
    jobs = operator_b.ledger.jobs(report.batch_id)  # type: ignore[attr-defined]
    assert any(pump in (j.result or {}).get("busy", []) for j in jobs)  # it met the lease
    (worked,) = [j for j in jobs if pump in j.hosts]
    assert worked.started_at_s >= char_job.finished_at_s  # type: ignore[attr-defined]
    operator_a.close()
    operator_b.close()
