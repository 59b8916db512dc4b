"""Reading files that users hand to fragileprobe (rules, zones, fleet configs, exports, report inputs).

Every such read is bounded: a wrong path (a disk image, /dev/zero) must end in a clear ``ConfigError``,
not in memory exhaustion, and never in a raw ``OSError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fragileprobe._errors import ConfigError

if TYPE_CHECKING:
    import os

__all__ = ["MAX_JSON_DOCUMENT_BYTES", "read_bounded", "read_bounded_text"]

# JSON documents fragileprobe reads back (store exports, report inputs): a store export of thousands of
# characterizations with every heartbeat is tens of MiB; 64 MiB leaves room and still refuses a wrong file.
MAX_JSON_DOCUMENT_BYTES = 64 * 1024 * 1024


def read_bounded(path: str | os.PathLike[str], *, max_bytes: int, label: str | None = None) -> bytes:
    """Read at most ``max_bytes`` of a user-given file.

    Args:
        path: The file.
        max_bytes: The largest file accepted (the caller's named limit).
        label: How messages name the file (default: its path).

    Returns:
        The file's bytes.

    Raises:
        ConfigError: The file cannot be read, or is larger than ``max_bytes``.
    """
    name = label if label is not None else str(Path(path))
    try:
        with Path(path).open("rb") as fh:
            raw = fh.read(max_bytes + 1)  # one byte more tells "too large" from "exactly the limit"
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > max_bytes:
        raise ConfigError(f"{name}: larger than {max_bytes} bytes")
    return raw


def read_bounded_text(path: str | os.PathLike[str], *, max_bytes: int, label: str | None = None) -> str:
    """:func:`read_bounded`, decoded as UTF-8 (``ConfigError`` naming the byte where it is not)."""
    name = label if label is not None else str(Path(path))
    raw = read_bounded(path, max_bytes=max_bytes, label=name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
