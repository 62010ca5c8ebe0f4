"""One place that turns plain Python classes into Ray actors on a placement group and calls them in batch.

Actor classes (actors/, learner/) know nothing of Ray; `ray.remote(**opts)(cls)` is applied here.
Every group gets its own placement group (one bundle per actor), so learner ranks, rollout workers
and reward scorers are sized and placed independently.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Callable, Sequence

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


class ActorCallTimeout(TimeoutError):
    """A batched call did not finish in time; the message names the actors that did not answer."""


@dataclasses.dataclass
class GroupSpec:
    name: str  # e.g. "learner", "rollout", "reward"
    num_actors: int
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    strategy: str = "PACK"  # placement-group strategy: PACK | SPREAD | STRICT_PACK
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # extra env vars for every actor


class ActorGroup:
    """N actors of one class, one placement-group bundle each, with batched (async) calls.

    `args_for(i)` gives actor i's constructor (args, kwargs); every actor gets `spec.env`.
    """

    def __init__(
        self,
        spec: GroupSpec,
        cls: type,
        args_for: Callable[[int], tuple[tuple, dict]],
        max_concurrency: int = 1,
    ):
        self.spec = spec
        bundles = [{"CPU": spec.cpus_per_actor, **({"GPU": spec.gpus_per_actor} if spec.gpus_per_actor else {})}
                   for _ in range(spec.num_actors)]
        # Ray rejects empty bundles: a zero-CPU actor still gets a tiny share to pin its bundle.
        for b in bundles:
            if not any(b.values()):
                b["CPU"] = 0.01
        self.pg = placement_group(bundles, strategy=spec.strategy, name=f"relayrl-{spec.name}-{uuid.uuid4().hex[:8]}")
        ray.get(self.pg.ready(), timeout=300)
        self._remote_cls, self._bundles, self._args_for = ray.remote(cls), bundles, args_for
        self._max_concurrency = max_concurrency
        self.actors = [self._start(i) for i in range(spec.num_actors)]
        self.failures: list[tuple[float, int, str]] = []  # (time, actor index, error) of every replaced actor

    def _start(self, i: int):
        args, kwargs = self._args_for(i)
        env = dict(self.spec.env)
        opts = dict(
            num_cpus=self._bundles[i]["CPU"],
            num_gpus=self.spec.gpus_per_actor,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
            runtime_env={"env_vars": env} if env else None,
            max_concurrency=self._max_concurrency,
        )
        return self._remote_cls.options(**opts).remote(*args, **kwargs)

    def replace(self, i: int, error: str, max_failures: int, knob: str) -> Any:
        """Actor i died (or hung): kill what is left of it and start a new one in its placement-group
        bundle (same constructor arguments). More than `max_failures` replacements in this group stop
        the run with a report of every death; `knob` names the setting that allows more."""
        self.failures.append((time.time(), i, error))
        if len(self.failures) > max_failures:
            report = "; ".join(f"{self.spec.name}[{j}] at {time.strftime('%H:%M:%S', time.localtime(t))}: {e}"
                               for t, j, e in self.failures)
            raise RuntimeError(f"{self.spec.name}: {len(self.failures)} actor deaths, more than the "
                               f"{max_failures} allowed ({knob}): {report}")
        try:
            ray.kill(self.actors[i], no_restart=True)
        except Exception:  # already gone
            pass
        self.actors[i] = self._start(i)
        return self.actors[i]

    def __len__(self) -> int:
        return len(self.actors)

    def call_async(self, method: str, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        """Call `method` with the same arguments on every actor; returns the refs (no waiting)."""
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def call_each_async(self, method: str, per_actor: Sequence[tuple[tuple, dict]]) -> list[ray.ObjectRef]:
        """Call `method` on actor i with per_actor[i] = (args, kwargs)."""
        if len(per_actor) != len(self.actors):
            raise ValueError(f"{self.spec.name}: {len(per_actor)} argument sets for {len(self.actors)} actors")
        return [getattr(a, method).remote(*args, **kw) for a, (args, kw) in zip(self.actors, per_actor)]

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> list[Any]:
        return self.wait(self.call_async(method, *args, **kwargs), method, timeout)

    def call_each(self, method: str, per_actor: Sequence[tuple[tuple, dict]], timeout: float | None = None) -> list[Any]:
        return self.wait(self.call_each_async(method, per_actor), method, timeout)

    def wait(self, refs: list[ray.ObjectRef], what: str, timeout: float | None) -> list[Any]:
        return wait_all(refs, [f"{self.spec.name}[{i}]" for i in range(len(refs))], what, timeout)

    def shutdown(self, method: str | None = "shutdown", timeout: float = 30.0) -> None:
        if method:
            try:
                ray.get(self.call_async(method), timeout=timeout)
            except Exception:  # a dead actor must not stop the others from being cleaned up
                pass
        for a in self.actors:
            ray.kill(a)
        remove_placement_group(self.pg)


def wait_all(refs: list[ray.ObjectRef], names: list[str], what: str, timeout: float | None,
             knob: str = "") -> list[Any]:
    """Results of all refs. The first failure is raised as soon as it arrives (a fast error on one
    side is not hidden behind a slow wait on another); on timeout, the error names who did not answer."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = list(refs)
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not ready:
            late = ", ".join(names[refs.index(r)] for r in pending)
            hint = f" ({knob})" if knob else ""
            raise ActorCallTimeout(f"{what}: no answer within {timeout:.0f}s from {late}{hint}")
        ray.get(ready)  # raises that actor's exception now
    return ray.get(refs)
