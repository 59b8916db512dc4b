"""``python -m fragileprobe``: the same command line as the ``fragileprobe`` console script."""

from __future__ import annotations

from fragileprobe.cli import main

if __name__ == "__main__":
    main()
