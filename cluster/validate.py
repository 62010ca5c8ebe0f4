"""Named cross-field checks, run once before any actor starts.

Each check is a small function registered with `@check`; it returns None or a message that says
what to change. `validate(cfg)` runs them all and raises one error listing every problem, so a user
fixes a config in one pass instead of one restart per mistake.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from actors.reward.scorer import RewardScorer
from cluster.config import ConfigError, RunConfig
from cluster.resources import Node, demand, shortfall
from learner.algorithms import ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_ESTIMATORS, NEEDS_CRITIC, OFF_POLICY, SURROGATES

CHECKS: dict[str, Callable[[RunConfig], Optional[str]]] = {}

# Estimators whose baseline is the group's other samples: a group of one has no signal.
GROUP_RELATIVE = {"grpo", "dr_grpo", "rloo", "reinforce_pp"}


def check(fn: Callable[[RunConfig], Optional[str]]) -> Callable[[RunConfig], Optional[str]]:
    CHECKS[fn.__name__] = fn
    return fn


def samples_per_step(cfg: RunConfig) -> int:
    """Sequences the learner trains on per step (GFPO trains on the kept k of each group)."""
    per_group = cfg.buffer.gfpo.keep if cfg.buffer.gfpo.enabled else cfg.rollout.n
    return cfg.trainer.prompts_per_step * per_group


@check
def choices_exist(cfg: RunConfig) -> Optional[str]:
    a = cfg.algorithm
    problems = []
    for registry, choice, where in [
        (ADVANTAGE_ESTIMATORS, a.advantage, "algorithm.advantage"),
        (SURROGATES, a.surrogate, "algorithm.surrogate"),
        (AGGREGATIONS, a.aggregation, "algorithm.aggregation"),
        (OFF_POLICY, a.off_policy, "algorithm.off_policy"),
    ]:
        try:
            registry.make_params(choice.name, choice.params)
        except (KeyError, ValueError) as e:
            problems.append(f"{where}: {e.args[0]}")
    if a.kl_coef > 0 and a.kl_estimator not in KL_ESTIMATORS:
        problems.append(f"algorithm.kl_estimator: unknown '{a.kl_estimator}'; valid: {', '.join(KL_ESTIMATORS.names())}")
    return "; ".join(problems) or None


@check
def reward_functions_exist(cfg: RunConfig) -> Optional[str]:
    if not cfg.reward.functions and not cfg.reward.model_path and not cfg.rollout.env.name:
        return ("reward.functions is empty: name at least one reward function (e.g. {name: exact_match}), set "
                "reward.model_path, or rollout.env.name (an environment's rewards)")
    try:  # building a scorer checks names, params, duplicates and timeouts; it starts nothing
        RewardScorer(cfg.reward.functions, timeout_s=cfg.reward.timeout_s)
    except (KeyError, ValueError, TypeError) as e:
        return f"reward.functions: {e.args[0]}"
    if cfg.buffer.overlong.enabled and any(f.name == "overlong" for f in cfg.reward.functions):
        return "overlong shaping is on twice (buffer.overlong.enabled and reward function 'overlong'): keep one"
    return None


@check
def preference_setup(cfg: RunConfig) -> Optional[str]:
    d, mode = cfg.algorithm.dpo, cfg.trainer.mode
    if mode == "offline" and not (d.enabled and cfg.data.preference_files):
        return ("trainer.mode=offline trains DPO on preference pairs: set algorithm.dpo.enabled=true and "
                "data.preference_files (jsonl rows with prompt, chosen, rejected)")
    if not d.enabled:
        return None
    from learner.algorithms import DPOParams, build_dataclass

    try:
        build_dataclass(DPOParams, d.params, where="algorithm.dpo.params")
    except (ValueError, TypeError) as e:
        return e.args[0]
    missing = [f for f in cfg.data.preference_files if not Path(f).expanduser().exists()]
    if missing:
        return f"data.preference_files: no such file(s) {missing}"
    if mode == "async":
        return "algorithm.dpo runs with trainer.mode sync (online: pairs from each step's groups) or offline"
    if cfg.rollout.env.name:
        return "algorithm.dpo is not built for multi-turn trajectories (rollout.env)"
    if mode != "offline" and d.pairs == "best_worst" and cfg.rollout.n < 2:
        return "online DPO pairs samples of one group: set rollout.n >= 2"
    return None


@check
def environment_usable(cfg: RunConfig) -> Optional[str]:
    e = cfg.rollout.env
    a = cfg.algorithm
    if a.turn_credit:
        from learner.algorithms import TURN_CREDIT_ESTIMATORS

        if not e.name:
            return "algorithm.turn_credit needs multi-turn rollouts: set rollout.env.name"
        if a.advantage.name not in TURN_CREDIT_ESTIMATORS or a.reward_combine != "sum":
            return (f"algorithm.turn_credit works with algorithm.advantage.name in {', '.join(TURN_CREDIT_ESTIMATORS)} "
                    f"and reward_combine=sum (got {a.advantage.name}, {a.reward_combine})")
    if not e.name:
        return None
    from actors.envs.base import environment_params

    try:  # imports the class and builds its params; starts nothing
        environment_params(e.name, e.params)
    except (KeyError, ValueError, TypeError) as err:
        return f"rollout.env: {err.args[0]}"
    for key in ("max_turns", "max_total_tokens", "max_obs_tokens", "timeout_s"):
        if getattr(e, key) <= 0:
            return f"rollout.env.{key}={getattr(e, key)} must be > 0"
    return None


# learner knobs the critic group does not use (critic.learner is a LearnerConfig)
CRITIC_UNUSED = {
    "max_restarts": "a dead critic rank rebuilds the critic (and reloads the policy) from the checkpoint; it counts in learner.max_restarts",
    "max_nonfinite_steps": "the critic's skipped updates count in learner.max_nonfinite_steps",
    "moe_aux_loss_coef": "the value model computes no router balance loss",
    "routing_replay": "the value model does not replay the sampler's routing",
}


@check
def critic_setup(cfg: RunConfig) -> Optional[str]:
    """PPO with a critic (algorithm.advantage.name=gae): what it combines with, and the critic's group."""
    a, c = cfg.algorithm, cfg.critic
    ppo = a.advantage.name in NEEDS_CRITIC
    if a.kl_in_reward and not (ppo and a.kl_coef > 0):
        return ("algorithm.kl_in_reward puts kl_coef x KL in PPO's per-token reward: it needs "
                f"algorithm.advantage.name=gae and algorithm.kl_coef > 0 (got {a.advantage.name}, {a.kl_coef})")
    if not ppo:
        if c.model_path:
            return (f"critic.model_path is set but algorithm.advantage.name={a.advantage.name} trains no critic: "
                    f"use gae (PPO with a critic) or remove critic.model_path")
        return None
    unsupported = {"algorithm.dpo.enabled": a.dpo.enabled, "algorithm.reward_combine=per_component":
                   a.reward_combine == "per_component", "cluster.colocate": cfg.cluster.colocate}
    bad = [k for k, on in unsupported.items() if on]
    if bad:
        return (f"algorithm.advantage.name=gae (PPO with a critic) does not combine with {', '.join(bad)} "
                f"(not built): turn it off or use a group estimator (grpo, rloo, ...)")
    le = c.learner
    if le.num_ranks < 1 or le.micro_batch_tokens < 1:
        return "critic.learner.num_ranks and critic.learner.micro_batch_tokens must be >= 1"
    total, m = samples_per_step(cfg), a.mini_batches
    if total % (le.num_ranks * m):
        return (f"{total} sequences per step do not split evenly over critic.learner.num_ranks={le.num_ranks} x "
                f"algorithm.mini_batches={m}: make prompts_per_step x group size a multiple of {le.num_ranks * m}")
    if cfg.cluster.device == "cpu" and le.gpus_per_rank > 0:
        return "critic.learner.gpus_per_rank > 0 with cluster.device=cpu: set cluster.device=cuda or gpus_per_rank=0"
    if cfg.cluster.device == "cpu" and le.optimizer.name == "fused_adam":
        return "critic.learner.optimizer.name=fused_adam is a CUDA kernel: use adamw or cpu_adam with cluster.device=cpu"
    default = type(le)()
    unused = [f"critic.learner.{k}={getattr(le, k)!r}" for k, why in CRITIC_UNUSED.items()
              if getattr(le, k) != getattr(default, k)]
    if unused:
        return (f"{', '.join(unused)}: not used by the critic ("
                + "; ".join(f"{k}: {why}" for k, why in CRITIC_UNUSED.items()) + "): remove it")
    if a.kl_in_reward and cfg.trainer.mode == "async":
        return ("algorithm.kl_in_reward measures the KL of the weights that sampled the batch, which in async mode "
                "the learner no longer holds: use trainer.mode=sync, or the KL term in the loss (kl_in_reward=false)")
    if cfg.cluster.device == "cuda" and le.gpus_per_rank <= 0:
        return "cluster.device=cuda but critic.learner.gpus_per_rank=0: give each critic rank a GPU"
    if le.offload_params and le.zero_stage != 3:
        return "critic.learner.offload_params needs critic.learner.zero_stage=3"
    if c.value_clip is not None and c.value_clip <= 0:
        return f"critic.value_clip must be > 0 or null (no clipping), got {c.value_clip}"
    return None


@check
def group_size_for_group_estimator(cfg: RunConfig) -> Optional[str]:
    n = cfg.buffer.gfpo.keep if cfg.buffer.gfpo.enabled else cfg.rollout.n
    if cfg.algorithm.advantage.name in GROUP_RELATIVE and n < 2:
        return (f"algorithm.advantage '{cfg.algorithm.advantage.name}' compares samples within a group, but each "
                f"group trains on {n} sample(s): set rollout.n >= 2 (and buffer.gfpo.keep >= 2 with GFPO)")
    return None


@check
def async_needs_off_policy_correction(cfg: RunConfig) -> Optional[str]:
    if cfg.trainer.mode == "async" and cfg.algorithm.off_policy.name == "none":
        return ("trainer.mode=async trains on samples from older weights: set algorithm.off_policy.name to "
                "tis, seq_mask or icepop (truncated importance sampling against the sampler's logprobs)")
    if cfg.rollout.partial_rollouts and cfg.trainer.mode != "async":
        return ("rollout.partial_rollouts=true needs trainer.mode=async: in sync mode weights are pushed only "
                "while the rollout workers are idle")
    if cfg.trainer.mode == "async" and cfg.buffer.max_staleness < 0:
        return f"buffer.max_staleness={cfg.buffer.max_staleness} must be >= 0 (0 makes async mode run exactly like sync)"
    return None


@check
def sampler_logprobs_comparable(cfg: RunConfig) -> Optional[str]:
    s = cfg.rollout.sampling
    if cfg.algorithm.off_policy.name != "none" and (s.top_p < 1.0 or s.top_k > 0):
        return (f"algorithm.off_policy={cfg.algorithm.off_policy.name} weighs by the sampler's logprobs, which are of "
                f"the top-p/top-k truncated distribution the learner does not reproduce: set rollout.sampling.top_p=1.0 "
                f"and top_k=-1, or off_policy.name=none")
    return None


@check
def batch_divides_ranks(cfg: RunConfig) -> Optional[str]:
    if cfg.algorithm.dpo.enabled:  # pairs are dealt to the ranks round-robin; the loss uses the global count
        return None
    total, k, m = samples_per_step(cfg), cfg.learner.num_ranks, cfg.algorithm.mini_batches
    if total % (k * m):
        stage = f" (ZeRO-{cfg.learner.zero_stage})" if cfg.learner.zero_stage else ""
        return (f"{total} sequences per step (trainer.prompts_per_step x group size) do not split evenly over "
                f"learner.num_ranks={k}{stage} x algorithm.mini_batches={m}: make prompts_per_step x group size "
                f"a multiple of {k * m}")
    return None


def choice_fields(obj: Any, path: str = "") -> Iterator[tuple[str, Any, tuple]]:
    """(dotted name, value, valid values) of every `one_of` field (learner/config.py) in a config,
    nested dataclasses and lists of them included: the valid values are read from the field itself."""
    for f in dataclasses.fields(obj):
        value, where = getattr(obj, f.name), f"{path}.{f.name}" if path else f.name
        if "choices" in f.metadata:
            yield where, value, f.metadata["choices"]
        elif dataclasses.is_dataclass(value):
            yield from choice_fields(value, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    yield from choice_fields(item, f"{where}[{i}]")


@check
def enum_values(cfg: RunConfig) -> Optional[str]:
    def shown(v: Any) -> str:
        return repr(v) if v == "" else str(v)

    bad = [f"{where}={value!r} (valid: {', '.join(map(shown, ok))})"
           for where, value, ok in choice_fields(cfg) if value not in ok]
    return ("invalid values: " + "; ".join(bad)) if bad else None


@check
def device_consistency(cfg: RunConfig) -> Optional[str]:
    if cfg.cluster.device == "cpu":
        if cfg.weight_sync.backend == "nccl":
            return "weight_sync.backend=nccl needs GPUs: use auto or gloo with cluster.device=cpu"
        if cfg.rollout.tensor_parallel_size > 1:
            return "rollout.tensor_parallel_size > 1 needs GPUs (cluster.device=cuda); vLLM's CPU build runs TP 1 here"
        if cfg.learner.gpus_per_rank > 0:
            return "learner.gpus_per_rank > 0 with cluster.device=cpu: set cluster.device=cuda or gpus_per_rank=0"
        if cfg.learner.optimizer.name == "fused_adam":
            return "learner.optimizer.name=fused_adam is a CUDA kernel: use adamw or cpu_adam with cluster.device=cpu"
    elif cfg.learner.gpus_per_rank <= 0:
        return "cluster.device=cuda but learner.gpus_per_rank=0: give each learner rank a GPU (learner.gpus_per_rank=1)"
    return None


@check
def positive_sizes(cfg: RunConfig) -> Optional[str]:
    sizes = {
        "trainer.total_steps": cfg.trainer.total_steps, "trainer.prompts_per_step": cfg.trainer.prompts_per_step,
        "rollout.n": cfg.rollout.n, "rollout.num_workers": cfg.rollout.num_workers,
        "learner.num_ranks": cfg.learner.num_ranks, "reward.num_scorers": cfg.reward.num_scorers,
        "algorithm.epochs": cfg.algorithm.epochs, "algorithm.mini_batches": cfg.algorithm.mini_batches,
        "rollout.sampling.max_new_tokens": cfg.rollout.sampling.max_new_tokens,
        "learner.micro_batch_tokens": cfg.learner.micro_batch_tokens,
        "rollout.max_num_seqs": cfg.rollout.max_num_seqs,
    }
    bad = [f"{k}={v}" for k, v in sizes.items() if v < 1]
    return ("must be >= 1: " + ", ".join(bad)) if bad else None


@check
def resources_fit(cfg: RunConfig) -> Optional[str]:
    """From the config alone: no negative reservations, and a local cluster sized by cluster.num_cpus
    holds every actor. What a Ray cluster really has is checked right after ray.init (start_ray)."""
    groups = demand(cfg)
    negative = [f"{knob}={value:g}" for g in groups for knob, value in zip(g.knobs[1:], (g.cpus, g.gpus)) if value < 0]
    if negative:
        return "must be >= 0: " + ", ".join(negative)
    if cfg.cluster.num_cpus is None:
        return None
    if cfg.cluster.address:
        return ("cluster.num_cpus sizes the local Ray cluster relayrl starts; with cluster.address the cluster "
                "exists already and has its own: remove cluster.num_cpus")
    problems = shortfall(groups, [Node({"CPU": float(cfg.cluster.num_cpus)})], "the local cluster (cluster.num_cpus)")
    return "; ".join(f"{p} (or raise cluster.num_cpus)" for p in problems) or None


@check
def colocation_pairs(cfg: RunConfig) -> Optional[str]:
    """cluster.colocate pairs rollout worker i with learner rank i in one bundle: one engine per rank,
    one step at a time, placed by the learner's placement."""
    if not cfg.cluster.colocate:
        return None
    ro, le = cfg.rollout, cfg.learner
    problems = []
    if cfg.trainer.mode != "sync":
        problems.append("trainer.mode=sync (colocated engines sleep while the learner computes; async runs both "
                        "at once: use separate placement for it)")
    if ro.num_workers != le.num_ranks:
        problems.append(f"rollout.num_workers = learner.num_ranks (one engine beside each rank; "
                        f"is {ro.num_workers} vs {le.num_ranks})")
    if ro.tensor_parallel_size != 1:
        problems.append(f"rollout.tensor_parallel_size=1 (a colocated engine lives in one rank's bundle; "
                        f"is {ro.tensor_parallel_size})")
    if ro.autoscale.enabled:
        problems.append("rollout.autoscale.enabled=false (colocated engines come and go with the learner's ranks)")
    if ro.placement != type(ro.placement)():
        problems.append("no rollout.placement (colocated engines go where learner.placement puts the ranks)")
    if problems:
        return "cluster.colocate=true needs " + "; ".join(problems)
    return None


@check
def offload_needs_zero(cfg: RunConfig) -> Optional[str]:
    groups = [("learner", cfg.learner)] + ([("critic.learner", cfg.critic.learner)]
                                           if cfg.algorithm.advantage.name in NEEDS_CRITIC else [])
    for name, le in groups:
        if le.offload_params and le.zero_stage != 3:
            return (f"{name}.offload_params partitions parameters, which only ZeRO-3 does: set {name}.zero_stage=3 "
                    f"(is {le.zero_stage})")
        if le.offload_optimizer and le.zero_stage == 0:
            return (f"{name}.offload_optimizer moves ZeRO's optimizer state, and zero_stage=0 has none: "
                    f"set {name}.zero_stage >= 1")
    return None


@check
def routing_replay_recorded(cfg: RunConfig) -> Optional[str]:
    if cfg.learner.routing_replay and not cfg.rollout.record_routed_experts:
        return ("learner.routing_replay replays the experts the rollout engine chose, which it records only with "
                "rollout.record_routed_experts=true: set it too")
    return None


@check
def rollout_sampling(cfg: RunConfig) -> Optional[str]:
    s = cfg.rollout.sampling
    if s.temperature < 0:
        return f"rollout.sampling.temperature={s.temperature} must be >= 0"
    if s.temperature == 0 and cfg.rollout.n > 1:
        return (f"rollout.sampling.temperature=0 is greedy: all rollout.n={cfg.rollout.n} samples of a prompt would be "
                f"one answer (vLLM refuses n > 1 with it): set a temperature > 0 or rollout.n=1")
    return None


@check
def min_new_tokens_in_range(cfg: RunConfig) -> Optional[str]:
    s = cfg.rollout.sampling
    if not 0 <= s.min_new_tokens <= s.max_new_tokens:
        return (f"rollout.sampling.min_new_tokens={s.min_new_tokens} must be between 0 and "
                f"rollout.sampling.max_new_tokens={s.max_new_tokens}")
    return None


@check
def sequence_fits_engine(cfg: RunConfig) -> Optional[str]:
    need = cfg.data.max_prompt_tokens + cfg.rollout.sampling.max_new_tokens
    if need > cfg.rollout.max_model_len:
        return (f"data.max_prompt_tokens + rollout.sampling.max_new_tokens = {need} exceeds rollout.max_model_len="
                f"{cfg.rollout.max_model_len}: raise max_model_len or lower one of the two")
    if cfg.learner.micro_batch_tokens < need:
        return (f"learner.micro_batch_tokens={cfg.learner.micro_batch_tokens} cannot hold one full sequence "
                f"({need} tokens): raise it to at least {need}")
    return None


@check
def engine_scheduler(cfg: RunConfig) -> Optional[str]:
    """vLLM's own limits on its scheduler, reported before any engine starts."""
    r = cfg.rollout
    fields = sorted({"max_num_seqs", "max_num_batched_tokens"} & set(r.engine_kwargs))
    if fields:
        return (f"rollout.engine_kwargs sets {', '.join(fields)}: set rollout.{fields[0]} instead "
                f"(one place for each engine setting)")
    # multi-turn rollouts prefill prompts whole (actors/engine_args.py): then a step must hold the longest sequence
    need = {"rollout.max_num_seqs": r.max_num_seqs, **({"rollout.max_model_len": r.max_model_len} if r.env.name else {})}
    short = [f"{k}={v}" for k, v in need.items() if r.max_num_batched_tokens < v]
    if short:
        return (f"rollout.max_num_batched_tokens={r.max_num_batched_tokens} must be at least {' and '.join(short)} "
                f"(vLLM refuses less): raise it to {max(need.values())}")
    return None


@check
def autoscale_bounds(cfg: RunConfig) -> Optional[str]:
    a = cfg.rollout.autoscale
    if not a.enabled:
        return None
    if not 1 <= a.min_workers <= cfg.rollout.num_workers <= a.max_workers:
        return (f"rollout.autoscale needs 1 <= min_workers <= rollout.num_workers <= max_workers, got "
                f"{a.min_workers} <= {cfg.rollout.num_workers} <= {a.max_workers}")
    if not 0 <= a.remove_below < a.add_above <= 1 or a.patience < 1:
        return (f"rollout.autoscale needs 0 <= remove_below < add_above <= 1 and patience >= 1, got "
                f"remove_below={a.remove_below}, add_above={a.add_above}, patience={a.patience}")
    return None


@check
def gfpo_keeps_fewer(cfg: RunConfig) -> Optional[str]:
    g = cfg.buffer.gfpo
    if g.enabled and not (1 <= g.keep < cfg.rollout.n):
        return f"buffer.gfpo.keep={g.keep} must be in [1, rollout.n={cfg.rollout.n}): GFPO samples n and trains on k < n"
    return None


@check
def refill_needs_dynamic_sampling(cfg: RunConfig) -> Optional[str]:
    if cfg.buffer.refill != "missing" and not (cfg.buffer.dynamic_sampling and cfg.buffer.max_extra_rounds > 0):
        return (f"buffer.refill={cfg.buffer.refill} sizes dynamic sampling's extra rounds: set "
                f"buffer.dynamic_sampling=true and buffer.max_extra_rounds > 0, or leave buffer.refill=missing")
    return None


@check
def overlong_window(cfg: RunConfig) -> Optional[str]:
    o = cfg.buffer.overlong
    max_len = o.max_length or cfg.rollout.sampling.max_new_tokens
    if o.enabled and not (0 < o.cache_length < max_len):
        return f"buffer.overlong.cache_length={o.cache_length} must be in (0, max_length={max_len})"
    return None


@check
def warm_start_target(cfg: RunConfig) -> Optional[str]:
    ws = cfg.trainer.warm_start
    if not 0.0 <= ws.target_accuracy <= 1.0:
        return f"trainer.warm_start.target_accuracy={ws.target_accuracy} must be in [0, 1] (0 = run all steps)"
    if ws.moe_aux_loss_coef is not None and ws.moe_aux_loss_coef < 0:
        return (f"trainer.warm_start.moe_aux_loss_coef={ws.moe_aux_loss_coef} must be >= 0 (0 = off, "
                "unset = learner.moe_aux_loss_coef)")
    if ws.target_accuracy == 0 or ws.steps <= 0:  # no target, or no warm start (steps=0 turns it off)
        return None
    problems = [f"{k}={v}" for k, v in (("check_every", ws.check_every), ("check_prompts", ws.check_prompts)) if v < 1]
    if problems:
        return (f"trainer.warm_start.target_accuracy={ws.target_accuracy} checks the warm start's accuracy, which "
                "needs trainer.warm_start " + ", ".join(problems) + " to be >= 1")
    return None


@check
def eval_sampling(cfg: RunConfig) -> Optional[str]:
    if cfg.trainer.eval_n > 1 and cfg.trainer.eval_temperature == 0:
        return "trainer.eval_n > 1 with eval_temperature=0 repeats one greedy answer: set eval_temperature > 0 or eval_n=1"
    return None


@check
def model_and_data_given(cfg: RunConfig) -> Optional[str]:
    problems = []
    if not cfg.model.path:
        problems.append("model.path is empty: point it at a Hugging Face model directory")
    elif cfg.model.tiny is None and not Path(cfg.model.path).expanduser().is_dir():
        problems.append(f"model.path '{cfg.model.path}' is not a directory (set model.tiny to build the demo model there)")
    if not cfg.data.train_files:
        problems.append("data.train_files is empty: give one or more jsonl/parquet files")
    for f in [*cfg.data.train_files, *cfg.data.eval_files]:
        if not Path(f).expanduser().exists():
            problems.append(f"data file not found: {f}")
    return "; ".join(problems) or None


def validate(cfg: RunConfig) -> RunConfig:
    """Run every named check; raise one ConfigError listing all failures as `[check] message`."""
    failures = [f"[{name}] {msg}" for name, fn in CHECKS.items() if (msg := fn(cfg))]
    if failures:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(failures))
    return cfg
