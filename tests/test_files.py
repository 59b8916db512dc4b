"""Files users hand to fragileprobe are read within a size bound, with one clear error per failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from fragileprobe import ConfigError
from fragileprobe._files import read_bounded, read_bounded_text


def test_a_file_at_the_limit_is_read_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"a" * 16)
    assert read_bounded(path, max_bytes=16) == b"a" * 16
    with pytest.raises(ConfigError, match=r"x\.json: larger than 15 bytes$"):
        read_bounded(path, max_bytes=15)


def test_a_missing_file_names_itself_by_label(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^source nope: cannot read: No such file"):
        read_bounded(tmp_path / "nope", max_bytes=10, label="source nope")


def test_text_that_is_not_utf8_names_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "z.toml"
    path.write_bytes(b"ok\xff")
    with pytest.raises(ConfigError, match=r"z\.toml: not UTF-8 text .* at byte 2\)"):
        read_bounded_text(path, max_bytes=10)


def test_a_device_file_is_bounded_not_read_to_the_end() -> None:
    """/dev/zero never ends: the read stops one byte past the limit."""
    with pytest.raises(ConfigError, match="larger than 1024 bytes"):
        read_bounded("/dev/zero", max_bytes=1024)
