"""Rollout workers and reward scorers as Ray actor groups, and the stream that joins them.

Prompts are split across the rollout workers; each worker streams groups back as soon as all n
completions of a prompt are done (a Ray streaming generator), and each group goes straight to a
reward scorer (then, if configured, to the reward model) while the others are still generating.
The caller receives scored groups in the order they finish, never waiting for the slowest prompt of
the batch to see the others.

Faults. A rollout worker that dies is replaced, brought to the current weights, and given the
prompts it had not delivered. A reward scorer (or the reward model) that dies, or a rule scorer
that returns nothing for longer than one group's bound (reward/scorer.py `group_seconds_bound`,
plus SCORER_SLACK_S) while it has groups outstanding, is killed, replaced, and every group it held
is scored again from the generated samples. Either way each prompt yields exactly one scored group;
more than rollout.max_restarts / reward.max_restarts replacements stop the run with a report.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Iterator, Optional

import ray

from actors.config import RewardConfig, RolloutConfig
from actors.reward.model_rm import ModelRewardScorer
from actors.reward.scorer import CONCURRENCY as SCORER_CONCURRENCY
from actors.reward.scorer import RewardScorer, group_seconds_bound
from actors.rollout import RolloutWorker
from actors.types import Group
from cluster.colocation import Colocation
from cluster.actor_group import ActorCallTimeout, ActorGroup, ActorLost, GroupSpec, node_facts
from cluster.resources import MIN_BUNDLE_CPU

log = logging.getLogger("relayrl")
SLEEP_TIMEOUT_S = 300.0  # colocated: a sleep or wake-up (weights to host RAM and back on GPU) not done by then fails

PLACE_TIMEOUT_S = 60.0  # placing workers added by scaling (the scaler checks free resources first)
SCORER_SLACK_S = 10.0  # beyond a group's worst-case scoring time before a silent scorer counts as hung


@dataclasses.dataclass
class Scoring:
    """A group on its way through a scoring stage: `given` is what that stage was sent (kept in the
    driver, so a failed stage is simply sent again), `actor` the handle of actors[index]."""

    given: Group
    actors: ActorGroup
    index: int
    actor: Any
    sent: float


def rollout_env() -> dict[str, str]:
    """Environment of every rollout worker (threads and core pinning are the worker's own: actors/rollout.py)."""
    return {"TOKENIZERS_PARALLELISM": "false",
            # vLLM logs every weight reload at INFO; a run's console is for the step lines.
            "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR")}


class RolloutPool:
    def __init__(self, model_path: str, dtype: str, rollout: RolloutConfig, reward: RewardConfig, device: str,
                 colocation: Optional[Colocation] = None):
        self.rollout_cfg, self.reward_cfg = rollout, reward
        self.colocation = colocation  # set: worker i lives in learner rank i's bundle and sleeps while it trains
        gpus = float(rollout.tensor_parallel_size) if device == "cuda" else 0.0
        self.workers = ActorGroup(
            GroupSpec("rollout", rollout.num_workers, rollout.cpus_per_worker,
                      colocation.gpus_each if colocation else gpus, rollout.placement, env=rollout_env()),
            RolloutWorker,
            args_for=lambda i: ((model_path, rollout, dtype),
                                {"worker_index": i, "device": device, "colocated": colocation is not None}),
            # partial rollouts: a weight push runs beside the generation in progress (the worker
            # interleaves them between engine steps); otherwise calls run one after another
            max_concurrency=2 if rollout.partial_rollouts else 1,
            shared=colocation.slots if colocation else (),
        )
        specs = [{"name": f.name, "weight": f.weight, "params": dict(f.params)} for f in reward.functions]
        self.scorers = ActorGroup(
            GroupSpec("reward", reward.num_scorers, reward.cpus_per_scorer, placement=reward.placement),
            RewardScorer,
            args_for=lambda i: ((specs,), {"timeout_s": reward.timeout_s,
                                           "env_weight": rollout.env.reward_weight if rollout.env.name else None}),
            max_concurrency=SCORER_CONCURRENCY,  # scoring is I/O- or subprocess-bound: overlap several groups
        )
        self._next_scorer = 0
        self._scorer_bound_s = group_seconds_bound(rollout.n, len(reward.functions), reward.timeout_s) + SCORER_SLACK_S
        # set by the weight-sync owner: re-forms the sync group and pushes the current weights to
        # replaced workers (probe-verified) before they sample
        self.on_replaced: Optional[Callable[[list[int]], None]] = None
        self.reward_model = None
        if reward.model_path:  # a sequence-classification RM on its own actor, after the rule scorers
            self.reward_model = ActorGroup(
                GroupSpec("reward_model", 1, max(reward.cpus_per_scorer, MIN_BUNDLE_CPU), placement=reward.placement),
                ModelRewardScorer,
                args_for=lambda i: ((reward.model_path,), {"batch_size": reward.model_batch_size, "device": device}),
            )

    def sleep(self) -> None:
        """Colocated: every engine gives its device to the learner rank beside it (cluster/colocation.py).
        Not colocated: nothing to do."""
        if self.colocation is None:
            return
        try:
            self.workers.call("sleep", timeout=SLEEP_TIMEOUT_S)
        except ActorLost:  # a worker died idle: its replacement joins at the current weights, then all sleep
            for i in self.dead_workers():
                self.replace_worker(i, "died before sleeping")
            self.workers.call("sleep", timeout=SLEEP_TIMEOUT_S)

    def wake_up(self, tags: list[str]) -> None:
        if self.colocation is not None:
            self.workers.call("wake_up", tags, timeout=SLEEP_TIMEOUT_S)

    # ---- generation -----------------------------------------------------------------------------
    def generate(self, prompts: list[dict[str, Any]], n: int, sampling: Optional[dict[str, Any]] = None,
                 timeout_s: float = 3600.0) -> Iterator[Group]:
        """Scored groups of `prompts` (n completions each), yielded as they finish.

        The requests go to the workers NOW (a worker serves calls in the order they arrive, so a
        weight push sent after this call reaches it after this generation); iterating the result
        waits for the groups and sends each to a scorer as it arrives. A worker that dies mid-way is
        replaced (brought to the current weights by `on_replaced`) and its unfinished prompts are
        re-issued to the replacement: every prompt yields exactly one group."""
        workers = self.workers.actors
        chunks = {i: prompts[i::len(workers)] for i in range(len(workers))}
        streams = {self._stream(i, chunk, n, sampling): i for i, chunk in chunks.items() if chunk}
        return self._scored(streams, chunks, n, sampling, timeout_s)

    def _stream(self, i: int, prompts: list[dict[str, Any]], n: int, sampling: Optional[dict[str, Any]]):
        return self.workers.actors[i].generate_stream.options(num_returns="streaming").remote(prompts, n, sampling)

    def _scored(self, streams: dict, chunks: dict[int, list], n: int, sampling: Optional[dict[str, Any]],
                timeout_s: float) -> Iterator[Group]:
        scoring: dict[ray.ObjectRef, Scoring] = {}
        fetched: dict[int, set[str]] = {i: set() for i in chunks}  # prompt ids each worker has delivered
        last_done: dict[int, float] = {}  # id(scorer handle) -> when it last returned a group
        deadline = time.monotonic() + timeout_s
        while streams or scoring:
            wait_s = min(deadline, self._first_overdue(scoring, last_done)) - time.monotonic()
            ready, _ = ray.wait([*streams, *scoring], num_returns=1, timeout=max(0.0, wait_s))
            if not ready:
                if self._replace_hung(scoring, last_done):
                    continue
                late = sorted({f"rollout[{i}]" for i in streams.values()} | {f"{c.actors.spec.name}[{c.index}]"
                                                                               for c in scoring.values()})
                raise ActorCallTimeout(f"rollout: no group within {timeout_s:.0f}s from {', '.join(late)}")
            for r in ready:
                if r in scoring:
                    stage = scoring.pop(r)
                    try:
                        group = ray.get(r)
                    except ray.exceptions.RayActorError as e:
                        self._replace_scorer(stage, _first_line(e), scoring)
                        scoring[self._send(stage.actors, stage.index, stage.given)] = stage
                        continue
                    last_done[id(stage.actor)] = time.monotonic()
                    if stage.actors is self.scorers and self.reward_model is not None:
                        scoring[self._send(self.reward_model, 0, group)] = self._stage(self.reward_model, 0, group)
                    else:
                        yield group
                    continue
                i = streams[r]
                try:
                    group = ray.get(next(r))  # raises here if the worker died
                except StopIteration:
                    del streams[r]
                    continue
                except ray.exceptions.RayActorError as e:
                    del streams[r]
                    lost = [p for p in chunks[i] if p["prompt_id"] not in fetched[i]]
                    self.replace_worker(i, _first_line(e))
                    chunks[i], fetched[i] = lost, set()
                    if lost:  # re-issued to the replacement, which now holds the current weights
                        streams[self._stream(i, lost, n, sampling)] = i
                    continue
                fetched[i].add(group.prompt_id)
                k = self._next_scorer % len(self.scorers)
                self._next_scorer += 1
                scoring[self._send(self.scorers, k, group)] = self._stage(self.scorers, k, group)

    # ---- scoring stages -------------------------------------------------------------------------
    def _stage(self, actors: ActorGroup, i: int, given: Group) -> Scoring:
        return Scoring(given, actors, i, actors.actors[i], time.monotonic())

    def _send(self, actors: ActorGroup, i: int, group: Group) -> ray.ObjectRef:
        if actors is self.reward_model:
            return actors.actors[i].score_group.remote(group, self.reward_cfg.model_weight)
        return actors.actors[i].score_group.remote(group)

    def _first_overdue(self, scoring: dict[ray.ObjectRef, Scoring], last_done: dict[int, float]) -> float:
        """When the earliest rule-scoring stage becomes overdue (its scorer silent past the bound)."""
        return min((max(c.sent, last_done.get(id(c.actor), 0.0)) + self._scorer_bound_s
                    for c in scoring.values() if c.actors is self.scorers), default=float("inf"))

    def _replace_hung(self, scoring: dict[ray.ObjectRef, Scoring], last_done: dict[int, float]) -> bool:
        """Replace every rule scorer overdue now and re-send what it held; False if none was overdue."""
        now, hung = time.monotonic(), False
        for r, c in list(scoring.items()):
            if c.actors is self.scorers and now >= max(c.sent, last_done.get(id(c.actor), 0.0)) + self._scorer_bound_s:
                hung = True
                self._replace_scorer(c, f"no group back within {self._scorer_bound_s:.0f}s", scoring)
        return hung

    def _replace_scorer(self, failed: Scoring, error: str, scoring: dict[ray.ObjectRef, Scoring]) -> None:
        """The actor behind `failed` died or hung: replace it (once) and re-send every group it held."""
        actors, i = failed.actors, failed.index
        if actors.actors[i] is failed.actor:  # not replaced yet by an earlier failure of the same actor
            knob = "reward.max_restarts"
            log.warning("%s[%d] failed (%s): replacing it and scoring its groups again", actors.spec.name, i, error)
            actors.replace(i, error, self.reward_cfg.max_restarts, knob)
        for r, c in list(scoring.items()):
            if c.actors is actors and c.index == i and c.actor is failed.actor:
                del scoring[r]
                scoring[self._send(actors, i, c.given)] = self._stage(actors, i, c.given)

    def replace_worker(self, i: int, error: str) -> None:
        """Start a new rollout worker in place of dead worker i and bring it to the learner's weights."""
        self.replace_dead([i], error)
        if self.on_replaced is not None:
            self.on_replaced([i])

    def replace_dead(self, dead: list[int], error: str) -> None:
        """Start a new rollout worker in place of each dead one (counted in rollout.max_restarts). The
        new workers hold no weights yet: the caller brings them (`replace_worker`, or the weight-sync
        group that re-forms)."""
        for i in dead:
            log.warning("rollout[%d] died (%s): replacing it", i, error)
            self.workers.replace(i, error, self.rollout_cfg.max_restarts, "rollout.max_restarts")
            where = node_facts(self.workers.nodes([i])[0])
            log.warning("rollout[%d] replaced: the new worker runs on node %s %s%s", i, where["ip"],
                        where["node_id"][:8], "".join(f" {k}={v}" for k, v in sorted(where["labels"].items())))

    def dead_after(self, lost: ActorLost) -> list[int]:
        """The rollout workers dead after `lost` was reported: none unless `lost` was a rollout worker."""
        return self.dead_workers() if lost.name.startswith("rollout") else []

    def scale_to(self, n: int) -> list[int]:
        """n rollout workers: new ones are placed and started (indices returned; they still need the
        weights), surplus ones, the last, are shut down. Call only while no generation is in flight."""
        if n < 1:
            raise ValueError(f"rollout workers: need at least 1, asked for {n}")
        have = len(self.workers)
        if n < have:
            self.workers.shrink(have - n)
            return []
        return self.workers.grow(n - have, timeout_s=PLACE_TIMEOUT_S)

    def dead_workers(self, timeout_s: float = 30.0) -> list[int]:
        """Indices of rollout workers that no longer answer (their actor died)."""
        dead = []
        for i, w in enumerate(self.workers.actors):
            try:
                ray.get(w.health.remote(), timeout=timeout_s)
            except ray.exceptions.RayActorError:
                dead.append(i)
            except ray.exceptions.GetTimeoutError:
                pass  # alive, busy with an earlier call (an engine starting, a join still waiting)
        return dead

    @property
    def restarts(self) -> int:
        return len(self.workers.failures)

    @property
    def scorer_restarts(self) -> int:
        return len(self.scorers.failures) + (len(self.reward_model.failures) if self.reward_model is not None else 0)

    # ---- weights --------------------------------------------------------------------------------
    def rank_offsets(self) -> list[int]:
        """Rank of each worker's first engine rank in the weight-sync group (learner rank 0 is rank 0)."""
        tp = self.rollout_cfg.tensor_parallel_size
        return [1 + i * tp for i in range(len(self.workers))]

    def world_size(self) -> int:
        return 1 + len(self.workers) * self.rollout_cfg.tensor_parallel_size

    def shutdown(self) -> None:
        self.workers.shutdown()
        self.scorers.shutdown(method=None)
        if self.reward_model is not None:
            self.reward_model.shutdown(method=None)


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
