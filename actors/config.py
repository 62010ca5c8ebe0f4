"""The rollout side's knobs: vLLM rollout workers, reward scorers and the group buffer.

Structured dataclasses only; defaults live here and nowhere else. Import-light.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Optional

from actors.reward.spec import RewardSpec
from learner.config import PlacementConfig, one_of


@dataclasses.dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 64
    min_new_tokens: int = 0  # EOS is suppressed until this many tokens (= max_new_tokens: fixed-length benchmarks)
    stop: list[str] = field(default_factory=list)


@dataclasses.dataclass
class AutoscaleConfig:
    """Between steps, the driver adds a rollout worker while the learner waits on rollouts for more
    than `add_above` of the step, and removes one while finished groups pile up unused (the learner
    waited less than `remove_below` of the step and the workers sat idle more than half of it);
    each over `patience` steps in a row, then as many steps of cool-down. Each decision is logged."""

    enabled: bool = False
    min_workers: int = 1
    max_workers: int = 1
    add_above: float = 0.3
    remove_below: float = 0.05
    patience: int = 2


@dataclasses.dataclass
class EnvConfig:
    """Multi-turn rollouts (actors/multi_turn.py): the model's turns alternate with an environment's
    observations until the environment says done or a limit ends the trajectory."""

    name: str = ""  # "" = single-turn; a registered environment (calculator, python) or "pkg.mod:Class"
    params: dict[str, Any] = field(default_factory=dict)  # the environment's own knobs
    max_turns: int = 4  # model turns per trajectory
    max_total_tokens: int = 256  # response tokens (model + observation) per trajectory
    max_obs_tokens: int = 64  # an observation is cut to this many tokens (counted)
    timeout_s: float = 10.0  # per environment step; a timeout or exception ends the trajectory (counted)
    reward_weight: float = 1.0  # weight of the summed environment rewards (component "env") in the reward


@dataclasses.dataclass
class RolloutConfig:
    num_workers: int = 1  # vLLM engines, each its own Ray actor
    max_restarts: int = 3  # rollout workers that die are replaced, their prompts re-issued; more deaths stop the run
    # async: a weight push reaches a worker between two engine steps of the generation in progress, which
    # continues with the new weights (tokens kept, each stamped with its version); false = the worker
    # finishes its requests first
    partial_rollouts: bool = False
    tensor_parallel_size: int = 1  # GPU only
    n: int = 8  # completions per prompt (group size G)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_model_len: int = 512
    kv_cache_gib: float = 0.25  # explicit KV-cache size (on CPU vLLM otherwise takes a share of host RAM)
    # vLLM's scheduler: the sequences in one engine step, and the tokens it computes (prefill included).
    # vLLM's CPU defaults (256 / 4096) cut a 64-prompt x 16-sample round into four waves; these (vLLM's
    # own for an H100, and verl's) run it in one (BENCHMARKS.md "Rollout engine batch limits")
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 16384
    gpu_memory_utilization: float = 0.85  # GPU only
    enforce_eager: bool = True
    dtype: str = one_of("", "float32", "bfloat16", default="")  # "" = the model's dtype from model.dtype
    seed: int = 0
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 0  # 0 = all cores of the machine / worker count
    # CPU: worker i is pinned to the i-th block of threads_per_worker cores of this list;
    # [] = split the process's allowed cores when num_workers > 1 (one worker is not pinned)
    cpu_cores: list[int] = field(default_factory=list)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)  # `relayrl scale` works without it
    record_routed_experts: bool = False  # MoE routing replay (see DESIGN.md)
    env: EnvConfig = field(default_factory=EnvConfig)  # multi-turn, tool-using rollouts
    engine_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to vllm.LLM as is


@dataclasses.dataclass
class RewardConfig:
    functions: list[RewardSpec] = field(default_factory=list)  # weighted sum; each component logged
    num_scorers: int = 1
    timeout_s: float = 10.0  # per reward function call; a timeout scores 0 and is counted
    # a scorer that dies, or does not return a group within its bound (calls x timeout_s, see
    # cluster/rollout_pool.py), is replaced and the group re-scored; more replacements stop the run
    max_restarts: int = 3
    cpus_per_scorer: float = 0.0
    placement: PlacementConfig = field(default_factory=PlacementConfig)  # scorers and the reward model
    model_path: Optional[str] = None  # sequence-classification reward model, scored on its own actor
    model_weight: float = 1.0  # weight of the model's score (component "model") in the reward
    model_batch_size: int = 8


@dataclasses.dataclass
class GFPOConfig:
    enabled: bool = False
    keep: int = 4  # k of the n = rollout.n samples are trained on
    metric: str = one_of("length", "reward_per_token", default="length")


@dataclasses.dataclass
class OverlongConfig:
    enabled: bool = False
    max_length: int = 0  # 0 = rollout.sampling.max_new_tokens
    cache_length: int = 16
    factor: float = 1.0


@dataclasses.dataclass
class BufferConfig:
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal
    max_extra_rounds: int = 3  # bound on extra generation rounds to fill a batch with valid groups
    # what an extra round asks for: the groups still missing, or as many prompts as the step's keep
    # rate so far says will yield them (at most a batch; valid groups beyond the batch are dropped,
    # counted as surplus) — verl's larger generation batch, sized by the step's own rate
    refill: str = one_of("missing", "expected", default="missing")
    gfpo: GFPOConfig = field(default_factory=GFPOConfig)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    max_staleness: int = 1  # async: groups more than this many versions behind are refused
