"""The learner's knobs: the algorithm (estimator x surrogate x aggregation, KL, entropy, off-policy
correction) and the DeepSpeed engine. Structured dataclasses only; defaults live here and nowhere
else. Import-light: no torch, no deepspeed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Optional


@dataclasses.dataclass
class Choice:
    """A registry entry selected by name with that entry's own params (checked against its dataclass)."""

    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)


def _choice(name: str, **params: Any) -> Any:
    return field(default_factory=lambda: Choice(name=name, params=dict(params)))


def one_of(*choices: Any, default: Any) -> Any:
    """A plain field whose value must be one of `choices`: the valid values live here, next to the
    field, and nowhere else (cluster/validate.py checks every such field of a run's config; the
    learner reads them back with `field_choices`). Registry-selected fields (`Choice`) keep their
    names in their registry instead. OmegaConf structured configs accept the metadata."""
    if default not in choices:
        raise ValueError(f"default {default!r} is not one of {choices}")
    return field(default=default, metadata={"choices": tuple(choices)})


def field_choices(schema: Any, name: str) -> tuple:
    """The valid values of the `one_of` field `name` of dataclass (type or instance) `schema`."""
    return next(f.metadata["choices"] for f in dataclasses.fields(schema) if f.name == name)


@dataclasses.dataclass
class PlacementConfig:
    """Where one actor group goes. Each actor is one placement-group bundle (its CPUs and GPUs on one
    node); the group's bundles are placed together by `strategy` (Ray's placement-group strategies:
    pack = as few nodes as possible, spread = as many as possible, strict_* = exactly one node /
    one node per actor or fail). `node_labels`: only nodes carrying all these Ray labels (`ray start
    --labels relayrl/role=rollout`, a KubeRay group's rayStartParams) take this group's actors."""

    strategy: str = one_of("pack", "spread", "strict_pack", "strict_spread", default="pack")
    node_labels: dict[str, str] = field(default_factory=dict)


@dataclasses.dataclass
class DPOConfig:
    """Preference optimisation instead of a policy-gradient loss (learner/train_step.py preference_on_batch).

    Offline (trainer.mode=offline): pairs (prompt, chosen, rejected) from data.preference_files.
    Online (sync/async): pairs from each rollout group, `pairs`: best_worst = the highest- against the
    lowest-reward sample; all = every pair whose reward gap exceeds `tau` (DPO over all of them is the
    group-pairwise Bradley-Terry loss, group_preference_loss). Groups without such a pair are skipped.
    """

    enabled: bool = False
    params: dict[str, Any] = field(default_factory=dict)  # DPOParams: beta, loss_type (sigmoid | ipo), label_smoothing
    pairs: str = one_of("best_worst", "all", default="best_worst")
    tau: float = 0.0
    # RPO (TRL's rpo_alpha, the Llama 3 recipe): plus nll_coef x the chosen completions' token-mean NLL.
    # Plain DPO can lower the chosen completions' likelihood along with the rejected ones'; 0 = off
    nll_coef: float = 0.0


@dataclasses.dataclass
class AlgorithmConfig:
    """A policy-gradient loss is three independent choices plus regularisers.

    advantage:   ADVANTAGE_ESTIMATORS  (grpo, dr_grpo, rloo, reinforce_pp; gae = PPO with a critic)
    surrogate:   SURROGATES            (ppo_clip, gspo, gspo_token, cispo)
    aggregation: AGGREGATIONS          (token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm)
    off_policy:  OFF_POLICY            (none, tis, seq_mask, icepop) — learner old logprobs vs sampler logprobs
    """

    advantage: Choice = _choice("grpo")
    surrogate: Choice = _choice("ppo_clip")
    aggregation: Choice = _choice("token-mean")
    off_policy: Choice = _choice("none")
    kl_coef: float = 0.0  # KL(policy || reference) in the loss; 0 disables the reference model
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    # several reward signals (reward.functions, the reward model's "model", buffer.overlong's "overlong"):
    # sum = the advantage estimator normalises their weighted sum within each group; per_component =
    # GDPO: each signal normalised within its group on its own, the advantages combined with the
    # same weights, then (reward_batch_norm) whitened over the batch
    reward_combine: str = one_of("sum", "per_component", default="sum")
    reward_batch_norm: bool = True
    # multi-turn (rollout.env): each model turn's tokens get the advantage of the reward earned from that
    # turn on (the environment's per-turn rewards), against the trajectory's group baseline
    # (learner/algorithms/advantages.py turn_advantages); false = one advantage per trajectory
    turn_credit: bool = False
    # classic RLHF PPO (advantage gae): the KL to the reference enters the per-token reward,
    # r_t = -kl_coef * KL_t (+ the sequence's reward at its last token), instead of the loss
    kl_in_reward: bool = False
    dpo: DPOConfig = field(default_factory=DPOConfig)  # preference loss (DPO / IPO) instead of policy gradient
    epochs: int = 1  # passes over each rollout batch
    mini_batches: int = 1  # optimizer steps per epoch; >1 makes later updates off-policy (ratio != 1)


@dataclasses.dataclass
class OptimizerConfig:
    # adamw (torch) | cpu_adam (DeepSpeedCPUAdam, with optimizer offload) | fused_adam (DeepSpeed's, CUDA only)
    name: str = one_of("adamw", "cpu_adam", "fused_adam", default="adamw")
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = one_of("constant", "linear", "cosine", default="constant")  # decay over trainer.total_steps
    min_lr_ratio: float = 0.0


@dataclasses.dataclass
class LearnerConfig:
    num_ranks: int = 1  # DeepSpeed data-parallel world size (one Ray actor per rank)
    zero_stage: int = one_of(0, 1, 2, 3, default=2)
    dtype: str = one_of("", "float32", "bfloat16", default="")  # "" = model.dtype (resolved before the run starts)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    micro_batch_tokens: int = 8192  # token budget per micro-batch (dynamic batch size)
    offload_optimizer: bool = False
    offload_params: bool = False
    threads_per_rank: int = 0  # torch threads per rank; 0 = cores / ranks
    # CPU: rank r is pinned to the r-th block of threads_per_rank cores of this list (wrapping); [] = not
    # pinned. With rollout.cpu_cores it gives each role its own cores (the CPU stand-in for separate GPUs).
    cpu_cores: list[int] = field(default_factory=list)
    cpus_per_rank: float = 1.0  # Ray resources
    gpus_per_rank: float = 0.0
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    seed: int = 0
    extra_deepspeed: dict[str, Any] = field(default_factory=dict)  # merged into the DeepSpeed config
    # MoE router load-balancing loss in the RL loss: off by default, as peers run RL; > 0 turns it on
    # with that coefficient. None keeps the model config's (its output_router_logits and coefficient).
    moe_aux_loss_coef: Optional[float] = 0.0
    # MoE routing replay (R3): the learner's forward uses the experts the rollout engine chose for each
    # token (needs rollout.record_routed_experts); the gating weights stay the learner's (learner/moe.py)
    routing_replay: bool = False
    call_timeout_s: float = 1800.0  # a learner call (step, checkpoint, export) not done by then fails naming the rank
    # A non-finite loss or gradient skips that optimizer update (nothing changes; counted in
    # learner/nonfinite_skipped, the batch saved to RUN_DIR/nonfinite/). This many RL steps in a row
    # with a skipped update stop the run: the data or the policy is broken, not one batch. 0 = never stop.
    max_nonfinite_steps: int = 3
    # a rank that dies: the whole group is rebuilt from the latest checkpoint and the steps since are
    # retrained from the samples the driver still holds; more rebuilds than this stop the run
    max_restarts: int = 2


@dataclasses.dataclass
class CriticConfig:
    """PPO's value model (algorithm.advantage.name=gae), trained by its own DeepSpeed learner group
    (learner/critic.py), sized independently of the policy's: the policy's architecture with a scalar
    value head in place of the LM head. Used only when the advantage estimator needs a critic."""

    model_path: str = ""  # "" = initialised from the policy's model (its backbone; a new value head)
    learner: LearnerConfig = field(default_factory=LearnerConfig)  # ranks, ZeRO stage, optimizer, ...
    value_clip: Optional[float] = 0.2  # clipped value loss around the values GAE used; None = plain squared error
