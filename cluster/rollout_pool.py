"""Rollout workers and reward scorers as Ray actor groups, and the stream that joins them.

Prompts are split across the rollout workers; each worker streams groups back as soon as all n
completions of a prompt are done (a Ray streaming generator), and each group goes straight to a
reward scorer while the others are still generating. The caller receives scored groups in the
order they finish, never waiting for the slowest prompt of the batch to see the others.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any, Callable, Iterator, Optional

import ray

from actors.config import RewardConfig, RolloutConfig
from actors.reward.model_rm import ModelRewardScorer
from actors.reward.scorer import RewardScorer
from actors.rollout import RolloutWorker
from actors.types import Group
from cluster.actor_group import ActorCallTimeout, ActorGroup, GroupSpec

log = logging.getLogger("relayrl")


def rollout_env() -> dict[str, str]:
    """Environment of every rollout worker (threads and core pinning are the worker's own: actors/rollout.py)."""
    return {"TOKENIZERS_PARALLELISM": "false",
            # vLLM logs every weight reload at INFO; a run's console is for the step lines.
            "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR")}


class RolloutPool:
    def __init__(self, model_path: str, dtype: str, rollout: RolloutConfig, reward: RewardConfig, device: str):
        self.rollout_cfg, self.reward_cfg = rollout, reward
        self.workers = ActorGroup(
            GroupSpec("rollout", rollout.num_workers, rollout.cpus_per_worker,
                      float(rollout.tensor_parallel_size) if device == "cuda" else 0.0, env=rollout_env()),
            RolloutWorker,
            args_for=lambda i: ((model_path, rollout, dtype), {"worker_index": i, "device": device}),
            # partial rollouts: a weight push runs beside the generation in progress (the worker
            # interleaves them between engine steps); otherwise calls run one after another
            max_concurrency=2 if rollout.partial_rollouts else 1,
        )
        specs = [{"name": f.name, "weight": f.weight, "params": dict(f.params)} for f in reward.functions]
        self.scorers = ActorGroup(
            GroupSpec("reward", reward.num_scorers, reward.cpus_per_scorer),
            RewardScorer,
            args_for=lambda i: ((specs,), {"timeout_s": reward.timeout_s}),
            max_concurrency=4,  # scoring is I/O- or subprocess-bound: overlap several groups per actor
        )
        self._scorer_cycle = itertools.cycle(self.scorers.actors)
        # set by the weight-sync owner: re-forms the sync group and pushes the current weights to
        # replaced workers (probe-verified) before they sample
        self.on_replaced: Optional[Callable[[list[int]], None]] = None
        self.reward_model = None
        if reward.model_path:  # a sequence-classification RM on its own actor, after the rule scorers
            self.reward_model = ActorGroup(
                GroupSpec("reward_model", 1, max(reward.cpus_per_scorer, 0.01)),
                ModelRewardScorer,
                args_for=lambda i: ((reward.model_path,), {"batch_size": reward.model_batch_size, "device": device}),
            )

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
        scoring: dict[ray.ObjectRef, str] = {}
        fetched: dict[int, set[str]] = {i: set() for i in chunks}  # prompt ids each worker has delivered
        deadline = time.monotonic() + timeout_s
        while streams or scoring:
            ready, _ = ray.wait([*streams, *scoring], num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                late = sorted({f"rollout[{i}]" for i in streams.values()} | set(scoring.values()))
                raise ActorCallTimeout(f"rollout: no group within {timeout_s:.0f}s from {', '.join(late)}")
            for r in ready:
                if r not in streams:
                    del scoring[r]
                    yield ray.get(r)
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
                    self.replace_worker(i, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
                    chunks[i], fetched[i] = lost, set()
                    if lost:  # re-issued to the replacement, which now holds the current weights
                        streams[self._stream(i, lost, n, sampling)] = i
                    continue
                fetched[i].add(group.prompt_id)
                scored = next(self._scorer_cycle).score_group.remote(group)
                if self.reward_model is not None:
                    scored = self.reward_model.actors[0].score_group.remote(scored, self.reward_cfg.model_weight)
                scoring[scored] = "reward scorer"

    def replace_worker(self, i: int, error: str) -> None:
        """Start a new rollout worker in place of dead worker i and bring it to the learner's weights."""
        log.warning("rollout[%d] died (%s): replacing it", i, error)
        self.workers.replace(i, error, self.rollout_cfg.max_restarts)
        if self.on_replaced is not None:
            self.on_replaced([i])

    def dead_workers(self, timeout_s: float = 30.0) -> list[int]:
        """Indices of rollout workers that no longer answer (their actor died)."""
        dead = []
        for i, w in enumerate(self.workers.actors):
            try:
                ray.get(w.health.remote(), timeout=timeout_s)
            except ray.exceptions.RayActorError:
                dead.append(i)
        return dead

    @property
    def restarts(self) -> int:
        return len(self.workers.failures)

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
