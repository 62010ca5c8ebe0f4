"""Which CPU cores a process pins itself to: the one rule learner ranks (learner/rank.py) and rollout
workers (actors/engine_args.py) share. Dependency-light: the standard library only."""

from __future__ import annotations

import os
from typing import Sequence


def core_block(pool: Sequence[int], index: int, count: int, option: str) -> list[int]:
    """The `index`-th block of `count` cores from `pool`, wrapping around.

    Every core must be one this process may run on; if not, a ValueError names `option`, the setting
    to change (a core that does not exist, or one the container or a scheduler withholds, would
    otherwise fail later in sched_setaffinity with "Invalid argument", or pin nothing useful).
    """
    if not pool:
        raise ValueError(f"{option}: an empty list of cores has no block to take")
    allowed = sorted(os.sched_getaffinity(0))
    start = (index * count) % len(pool)
    cores = sorted({pool[(start + j) % len(pool)] for j in range(count)})
    bad = [c for c in cores if c not in allowed]
    if bad:
        raise ValueError(f"{option}: cores {bad} are not available to this process (allowed: {allowed})")
    return cores
