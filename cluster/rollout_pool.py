"""Rollout workers and reward scorers as Ray actor groups, and the stream that joins them.

Prompts are split across the rollout workers; each worker streams groups back as soon as all n
completions of a prompt are done (a Ray streaming generator), and each group goes straight to a
reward scorer while the others are still generating. The caller receives scored groups in the
order they finish, never waiting for the slowest prompt of the batch to see the others.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any, Iterator, Optional

import ray

from actors.config import RewardConfig, RolloutConfig
from actors.reward.scorer import RewardScorer
from actors.rollout import RolloutWorker
from actors.types import Group
from cluster.actor_group import ActorCallTimeout, ActorGroup, GroupSpec


def rollout_env(cfg: RolloutConfig, index: int, device: str) -> dict[str, str]:
    """Environment of rollout worker `index`: vLLM in-process (one process per actor), explicit threads."""
    threads = cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // cfg.num_workers)
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    if device == "cpu" and cfg.num_workers > 1:
        # Several engines on one CPU node: give each its own cores instead of letting them fight.
        first = index * threads
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"{first}-{first + threads - 1}" if threads > 1 else str(first)
    return env


class RolloutPool:
    def __init__(self, model_path: str, dtype: str, rollout: RolloutConfig, reward: RewardConfig, device: str):
        self.rollout_cfg, self.reward_cfg = rollout, reward
        self.workers = ActorGroup(
            GroupSpec("rollout", rollout.num_workers, rollout.cpus_per_worker,
                      float(rollout.tensor_parallel_size) if device == "cuda" else 0.0),
            RolloutWorker,
            args_for=lambda i: ((model_path, rollout, dtype), {"worker_index": i, "device": device}),
            env_for=lambda i: rollout_env(rollout, i, device),
        )
        specs = [{"name": f.name, "weight": f.weight, "params": dict(f.params)} for f in reward.functions]
        self.scorers = ActorGroup(
            GroupSpec("reward", reward.num_scorers, reward.cpus_per_scorer),
            RewardScorer,
            args_for=lambda i: ((specs,), {"timeout_s": reward.timeout_s}),
            max_concurrency=4,  # scoring is I/O- or subprocess-bound: overlap several groups per actor
        )
        self._scorer_cycle = itertools.cycle(self.scorers.actors)

    # ---- generation -----------------------------------------------------------------------------
    def generate(self, prompts: list[dict[str, Any]], n: int, sampling: Optional[dict[str, Any]] = None,
                 timeout_s: float = 3600.0) -> Iterator[Group]:
        """Scored groups of `prompts` (n completions each), yielded as they finish."""
        workers = self.workers.actors
        chunks = [prompts[i::len(workers)] for i in range(len(workers))]
        gens = {
            w.generate_stream.options(num_returns="streaming").remote(chunk, n, sampling): f"rollout[{i}]"
            for i, (w, chunk) in enumerate(zip(workers, chunks)) if chunk
        }
        scoring: dict[ray.ObjectRef, str] = {}
        deadline = time.monotonic() + timeout_s
        while gens or scoring:
            ready, _ = ray.wait([*gens, *scoring], num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                late = sorted(set(gens.values()) | set(scoring.values()))
                raise ActorCallTimeout(f"rollout: no group within {timeout_s:.0f}s from {', '.join(late)}")
            for r in ready:
                if r in gens:
                    try:
                        group_ref = next(r)
                    except StopIteration:
                        del gens[r]
                        continue
                    scoring[next(self._scorer_cycle).score_group.remote(group_ref)] = "reward scorer"
                else:
                    del scoring[r]
                    yield ray.get(r)

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
