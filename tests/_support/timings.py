"""Short characterization timings shared by the tests that run characterize() against the emulator.

The emulator's responses take 4-100 ms, so 40 ms beats and 0.2 s dwells see several beats per level, and a
hung device is noticed within 40 + 250 ms.
"""

from __future__ import annotations

from typing import Any

FAST_CHARACTERIZE: dict[str, Any] = {
    "dwell_s": 0.2,
    "hold_s": 0.02,
    "interval_s": 0.04,
    "heartbeat_timeout_s": 0.25,
    "healthy_beats": 2,
    "recovery_timeout_s": 5.0,
    "baseline_beats": 3,
    "read_timeout_s": 0.2,
    "connect_timeout_s": 0.5,
}
