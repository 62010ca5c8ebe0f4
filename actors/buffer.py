"""The group buffer: scored groups come in as they finish; training batches of B groups go out.

On the way in, each group passes the configured filters from the algorithm library — staleness bound
(async), DAPO overlong shaping, DAPO dynamic sampling, GFPO keep-k — and every group or sample that
is set aside is counted with its reason. Nothing is dropped silently and nothing is released twice:
`take` removes what it returns.
"""

from __future__ import annotations

import collections
import math
from typing import Callable, Optional

from actors.config import BufferConfig
from actors.types import Group
from learner.algorithms import dynamic_sampling_keep, gfpo_select, overlong_penalty


def refill_count(missing: int, kept: int, received: int, batch: int, rule: str) -> int:
    """Prompts for a dynamic-sampling extra round that still lacks `missing` valid groups, after this
    step's rounds so far kept `kept` of `received` groups. "missing": exactly those. "expected": enough
    that the step's keep rate so far would yield them (a whole batch if nothing was kept yet), never
    fewer than missing nor more than a batch."""
    if rule == "missing":
        return missing
    want = batch if kept == 0 else math.ceil(missing * received / kept)
    return max(missing, min(batch, want))


class GroupBuffer:
    def __init__(self, cfg: BufferConfig, max_new_tokens: int):
        self.cfg = cfg
        self.max_new_tokens = max_new_tokens
        self._ready: collections.deque[Group] = collections.deque()
        self._filtered: collections.deque[Group] = collections.deque()  # dynamic sampling's set-asides
        self.counts: collections.Counter[str] = collections.Counter()

    # ---- in -------------------------------------------------------------------------------------
    def add(self, group: Group, current_version: int) -> Optional[str]:
        """Admit a scored group; returns the reason it was set aside, or None if it is ready."""
        self.counts["groups_in"] += 1
        lag = current_version - group.policy_version
        if lag > self.cfg.max_staleness:
            return self._drop("stale", group)
        if self.cfg.overlong.enabled:
            self._shape_overlong(group)
        if self.cfg.dynamic_sampling and not dynamic_sampling_keep(group.rewards):
            self._filtered.append(group)
            return self._drop("all_equal_reward", group)
        if self.cfg.gfpo.enabled:
            lengths = [s.response_length for s in group.samples]
            group.kept = gfpo_select(group.rewards, lengths, self.cfg.gfpo.keep, metric=self.cfg.gfpo.metric)
            self.counts["gfpo_samples_not_trained"] += len(group) - len(group.kept)
        self._ready.append(group)
        return None

    def _drop(self, reason: str, group: Group) -> str:
        self.counts[f"dropped_groups/{reason}"] += 1
        self.counts[f"dropped_samples/{reason}"] += len(group)
        return reason

    def _shape_overlong(self, group: Group) -> None:
        o = self.cfg.overlong
        max_len = o.max_length or self.max_new_tokens
        for s in group.samples:
            pen = overlong_penalty(s.response_length, max_len, o.cache_length, o.factor)
            s.reward_components["overlong"] = pen
            s.reward += pen

    # ---- out ------------------------------------------------------------------------------------
    def ready(self) -> int:
        return len(self._ready)

    def take(self, k: int) -> list[Group]:
        """Remove and return the k oldest ready groups (fewer if fewer are ready)."""
        return [self._ready.popleft() for _ in range(min(k, len(self._ready)))]

    def take_filtered(self, k: int, order: Optional[Callable[[Group], int]] = None) -> list[Group]:
        """Dynamic sampling hit its round bound: complete a batch with set-aside groups (counted), the
        first k by `order` (default: as they came in).

        Their rewards are all equal, so group-relative advantages are zero: they fill the batch
        shape without steering the update.
        """
        pool = sorted(self._filtered, key=order) if order is not None else list(self._filtered)
        out, self._filtered = pool[:k], collections.deque(pool[k:])
        self.counts["dynamic_sampling_shortfall_groups"] += len(out)
        return out

    def drop_surplus(self, groups: list[Group]) -> None:
        """Count `groups` (taken, valid, beyond a step's batch: an expected-rate refill overshot) as
        dropped. A step trains only what it generated; carried over, they would be a version stale."""
        for group in groups:
            self._drop("surplus", group)

    def clear_filtered(self) -> None:
        """Set-asides are never carried across steps: their samples are from older weights."""
        self._filtered.clear()

    def metrics(self) -> dict[str, float]:
        return {f"buffer/{k}": float(v) for k, v in sorted(self.counts.items())}
