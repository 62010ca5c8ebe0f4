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

from cluster.resources import MIN_BUNDLE_CPU
from learner.config import PlacementConfig


class ActorCallTimeout(TimeoutError):
    """A batched call did not finish in time; the message names the actors that did not answer."""


class ActorLost(RuntimeError):
    """An actor died during a batched call; `name` is the dead one, e.g. "learner[1]"."""

    def __init__(self, name: str, what: str, error: BaseException):
        super().__init__(f"{name} died during {what}: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
        self.name = name
        self.error = error  # Ray's error for the death

    @property
    def in_constructor(self) -> bool:
        """The actor's constructor raised (e.g. an engine that cannot start): a new one would too."""
        return bool(getattr(self.error, "actor_init_failed", False))


@dataclasses.dataclass
class GroupSpec:
    name: str  # e.g. "learner", "rollout", "reward"
    num_actors: int
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    placement: PlacementConfig = dataclasses.field(default_factory=PlacementConfig)  # strategy, node labels
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # extra env vars for every actor


class ActorGroup:
    """N actors of one class, one placement-group bundle each, with batched (async) calls.

    `args_for(i)` gives actor i's constructor (args, kwargs); every actor gets `spec.env`. The group
    can `grow` (new actors in a placement group of their own) and `shrink` (the last ones leave) while
    a run goes on, and `replace` a dead actor in its own bundle.
    """

    def __init__(
        self,
        spec: GroupSpec,
        cls: type,
        args_for: Callable[[int], tuple[tuple, dict]],
        max_concurrency: int = 1,
        shared: Sequence[tuple[Any, int]] = (),
    ):
        self.spec = spec
        self._remote_cls, self._args_for = ray.remote(cls), args_for
        self._max_concurrency = max_concurrency
        self._slots: list[tuple[Any, int]] = []  # actor i's (placement group, bundle index)
        # colocation: actor i goes into bundle shared[i], which another group's actor i uses too; that
        # placement group is not this group's to remove (cluster/colocation.py owns it)
        self._shared = list(shared)
        self.pgs: list[Any] = []
        self.actors: list[Any] = []
        self.failures: list[tuple[float, int, str]] = []  # (time, actor index, error) of every replaced actor
        self.grow(spec.num_actors)

    def _bundle(self) -> dict[str, float]:
        b = {"CPU": self.spec.cpus_per_actor, **({"GPU": self.spec.gpus_per_actor} if self.spec.gpus_per_actor else {})}
        # Ray rejects empty bundles: a zero-CPU actor still gets a tiny share to pin its bundle.
        return b if any(b.values()) else {"CPU": MIN_BUNDLE_CPU}

    def grow(self, k: int, timeout_s: float = 300.0) -> list[int]:
        """Place and start k more actors (their own placement group); their indices."""
        if k <= 0:
            return []
        if self._shared:
            first = len(self.actors)
            if first + k > len(self._shared):
                raise ValueError(f"{self.spec.name}: {first + k} actors for {len(self._shared)} shared bundles")
            for i in range(first, first + k):
                self._slots.append(self._shared[i])
                self.actors.append(self._start(i))
            return list(range(first, first + k))
        pg = place(self.spec.name, self._bundle(), k, self.spec.placement, timeout_s)
        self.pgs.append(pg)
        first = len(self.actors)
        for j in range(k):
            self._slots.append((pg, j))
            self.actors.append(self._start(first + j))
        return list(range(first, first + k))

    def shrink(self, k: int, method: str | None = "shutdown", timeout: float = 30.0) -> None:
        """Stop the last k actors (asking them to `method` first) and free their placement."""
        k = min(k, len(self.actors))
        if k <= 0:
            return
        leaving, self.actors = self.actors[-k:], self.actors[:-k]
        self._slots = self._slots[:-k]
        if method:
            try:
                ray.get([getattr(a, method).remote() for a in leaving], timeout=timeout)
            except Exception:  # a dead or stuck actor must not keep the others alive
                pass
        for a in leaving:
            ray.kill(a)
        for pg in [pg for pg in self.pgs if all(p is not pg for p, _ in self._slots)]:
            remove_placement_group(pg)
            self.pgs.remove(pg)

    def _start(self, i: int):
        args, kwargs = self._args_for(i)
        env = dict(self.spec.env)
        pg, bundle = self._slots[i]
        opts = dict(
            num_cpus=self._bundle()["CPU"],  # a shared bundle holds the sum of its actors' requests
            num_gpus=self.spec.gpus_per_actor,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle),
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

    def nodes(self, which: Sequence[int] | None = None, timeout: float = 60.0) -> list[str]:
        """The Ray node id each actor (or each of `which`) runs on, asked of the actor itself: a
        busy actor answers when its current call ends."""
        which = range(len(self.actors)) if which is None else which
        return wait_all([self.actors[i].__ray_call__.remote(_node_id) for i in which],
                        [f"{self.spec.name}[{i}]" for i in which], "node lookup", timeout)

    def call_async(self, method: str, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        """Call `method` with the same arguments on every actor; returns the refs (no waiting)."""
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def call_each_async(self, method: str, per_actor: Sequence[tuple[tuple, dict]]) -> list[ray.ObjectRef]:
        """Call `method` on actor i with per_actor[i] = (args, kwargs)."""
        if len(per_actor) != len(self.actors):
            raise ValueError(f"{self.spec.name}: {len(per_actor)} argument sets for {len(self.actors)} actors")
        return [getattr(a, method).remote(*args, **kw) for a, (args, kw) in zip(self.actors, per_actor)]

    def call(self, method: str, *args: Any, timeout: float | None = None, knob: str = "", **kwargs: Any) -> list[Any]:
        return self.wait(self.call_async(method, *args, **kwargs), method, timeout, knob)

    def call_each(self, method: str, per_actor: Sequence[tuple[tuple, dict]], timeout: float | None = None,
                  knob: str = "") -> list[Any]:
        return self.wait(self.call_each_async(method, per_actor), method, timeout, knob)

    def wait(self, refs: list[ray.ObjectRef], what: str, timeout: float | None, knob: str = "") -> list[Any]:
        return wait_all(refs, [f"{self.spec.name}[{i}]" for i in range(len(refs))], what, timeout, knob)

    def build(self, per_actor: Sequence[tuple[tuple, dict]], timeout: float | None = None, knob: str = "") -> list[Any]:
        """The explicit heavy construction step, after placement: `build(*args, **kw)` on each actor."""
        return self.call_each("build", per_actor, timeout, knob)

    def shutdown(self, method: str | None = "shutdown", timeout: float = 30.0) -> None:
        if method:
            try:
                ray.get(self.call_async(method), timeout=timeout)
            except Exception:  # a dead actor must not stop the others from being cleaned up
                pass
        for a in self.actors:
            ray.kill(a)
        for pg in self.pgs:
            remove_placement_group(pg)


def place(name: str, bundle: dict[str, float], k: int, where: PlacementConfig, timeout_s: float = 300.0) -> Any:
    """A ready placement group of k copies of `bundle`, placed by `where` (strategy, node labels); a
    cluster that cannot place it within timeout_s is an error saying what was asked and what is free."""
    pg = placement_group([dict(bundle) for _ in range(k)], strategy=where.strategy.upper(),
                         name=f"relayrl-{name}-{uuid.uuid4().hex[:8]}",
                         bundle_label_selector=[dict(where.node_labels)] * k if where.node_labels else None)
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        need = {r: v * k for r, v in bundle.items()}
        raise ActorCallTimeout(f"{name}: {k} more actor(s) need {need}; the cluster could not place "
                               f"them within {timeout_s:.0f}s (free: {ray.available_resources()})") from None
    return pg


def _node_id(_actor: Any) -> str:  # runs inside an actor (ActorGroup.nodes)
    return ray.get_runtime_context().get_node_id()


def placement(groups: dict[str, ActorGroup]) -> dict[str, list[dict[str, Any]]]:
    """Where every actor of `groups` runs: per group, per actor, its node's id, IP and Ray labels."""
    return {name: [node_facts(nid) for nid in group.nodes()] for name, group in groups.items()}


def node_facts(node_id: str) -> dict[str, Any]:
    info = next((n for n in ray.nodes() if n["NodeID"] == node_id), {})
    return {"node_id": node_id, "ip": info.get("NodeManagerAddress", "?"),
            "labels": {k: v for k, v in (info.get("Labels") or {}).items() if not k.startswith("ray.io/")}}


# How long an actor's error waits for another actor of the call to turn out dead. A collective with a
# peer that was killed fails at once on the survivors ("Connection reset by peer"), often before Ray
# has reported the death (about a second); the death, not its symptom, is what recovery acts on.
DEATH_GRACE_S = 10.0


def wait_all(refs: list[ray.ObjectRef], names: list[str], what: str, timeout: float | None,
             knob: str = "", death_grace_s: float = DEATH_GRACE_S) -> list[Any]:
    """Results of all refs. The first failure is raised as soon as it arrives (a fast error on one
    side is not hidden behind a slow wait on another), except that an actor's error first gives the
    others `death_grace_s` to show that one of them died (then that death is raised, as ActorLost,
    with the error as its context); on timeout, the error names who did not answer."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = list(refs)
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not ready:
            late = ", ".join(names[refs.index(r)] for r in pending)
            hint = f" ({knob})" if knob else ""
            raise ActorCallTimeout(f"{what}: no answer within {timeout:.0f}s from {late}{hint}")
        try:
            ray.get(ready)  # raises that actor's exception now
        except ray.exceptions.RayActorError as e:
            raise ActorLost(names[refs.index(ready[0])], what, e) from e
        except Exception as e:
            lost = _death_among(pending, [names[refs.index(r)] for r in pending], what, death_grace_s)
            if lost is not None:
                raise lost from e
            raise
    return ray.get(refs)


def _death_among(refs: list[ray.ObjectRef], names: list[str], what: str, grace_s: float) -> ActorLost | None:
    """The first of `refs` to fail with its actor's death within grace_s (None: none did; the others
    finished, failed otherwise, or are still running)."""
    deadline, pending = time.monotonic() + grace_s, list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        try:
            ray.get(ready)
        except ray.exceptions.RayActorError as e:
            return ActorLost(names[refs.index(ready[0])], what, e)
        except Exception:
            pass  # another symptom
    return None
