"""Group-level decisions made on the rollout side, before anything reaches the learner.

Plain functions on one group's python lists (tensors work too); they return python values, so
the rollout workers need no tensors. Each takes the knobs of the rollout config explicitly.
"""

from __future__ import annotations

from typing import Sequence


def _floats(xs) -> list[float]:
    return [float(x) for x in xs]


def dynamic_sampling_keep(rewards: Sequence[float], tol: float = 1e-9) -> bool:
    """DAPO dynamic sampling (Yu et al. 2025): keep a group only if its rewards are not all equal.

    A group whose rewards all match has zero group-relative advantage, so it adds no gradient
    but still dilutes the batch; DAPO resamples until the batch is full of informative groups.
    `tol` treats rewards within it as equal (float noise from reward models). A group of one
    has no spread and is never kept.
    """
    r = _floats(rewards)
    return len(r) > 1 and max(r) - min(r) > tol


def overlong_penalty(length: int, max_length: int, cache_length: int, factor: float = 1.0) -> float:
    """DAPO soft overlong punishment (Yu et al. 2025, eq. 13), added to the reward:

        0                                    if L <= L_max - L_cache
        factor * ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
        -factor                              if L > L_max

    The linear ramp over the last `cache_length` tokens tells the policy it is running long
    before truncation, instead of one cliff that also punishes sound but long reasoning.
    """
    if not 0 <= cache_length <= max_length:
        raise ValueError(f"need 0 <= cache_length <= max_length, got {cache_length}, {max_length}")
    threshold = max_length - cache_length
    if length <= threshold:
        return 0.0
    if length > max_length:
        return -float(factor)
    return float(factor) * (threshold - length) / cache_length  # cache_length > 0 here


def gfpo_select(
    rewards: Sequence[float], lengths: Sequence[int], k: int, metric: str = "length"
) -> list[int]:
    """GFPO (Shrivastava et al. 2025, "Sample More to Think Less"): indices of the k responses
    kept for training, in increasing index order.

      metric="length":            the k shortest
      metric="reward_per_token":  the k with highest reward / length (token efficiency)

    Ties are broken by the lower index so the choice is deterministic. k >= group size keeps all.
    The kept subset alone defines the group's mean/std; the others get advantage 0 (pass
    `keep_mask=gfpo_mask(...)` to `compute_advantages`).
    """
    r, n = _floats(rewards), len(lengths)
    if len(r) != n:
        raise ValueError(f"rewards and lengths differ in size: {len(r)} vs {n}")
    if k < 1:
        raise ValueError(f"gfpo k must be >= 1, got {k}")
    if metric == "length":
        key = lambda i: (int(lengths[i]), i)  # noqa: E731
    elif metric == "reward_per_token":
        key = lambda i: (-r[i] / max(int(lengths[i]), 1), i)  # noqa: E731
    else:
        raise ValueError(f"gfpo metric must be 'length' or 'reward_per_token', got '{metric}'")
    return sorted(sorted(range(n), key=key)[:k])


def gfpo_mask(num: int, kept: Sequence[int]) -> list[bool]:
    """Boolean keep-mask of length `num` from the indices `gfpo_select` returned."""
    keep = set(int(i) for i in kept)
    if any(not 0 <= i < num for i in keep):
        raise ValueError(f"kept indices {sorted(keep)} out of range for a group of {num}")
    return [i in keep for i in range(num)]
