"""How a learning rate or a server's step moves over a run: the one schedule both use."""

from __future__ import annotations

import math
from typing import Literal, get_args

#: ``constant``, or ``cosine``: from the whole step down along half a cosine.
Schedule = Literal["constant", "cosine"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


def schedule_share(schedule: str, step: int, steps: int) -> float:
    """The share of the full step taken at ``step`` (from 0) of ``steps``: 1 for
    ``constant``; for ``cosine``, ``(1 + cos(pi * step / steps)) / 2``."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return (1 + math.cos(math.pi * step / steps)) / 2
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
