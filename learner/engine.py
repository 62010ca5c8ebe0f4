"""The DeepSpeed engine of one learner rank: config dict, optimizer, LR schedule, initialize.

`deepspeed_config` and `lr_lambda` are pure (unit-tested without DeepSpeed); `build_engine` and
`build_reference` import deepspeed, so call them only after the rank's distributed environment
variables are set (see learner/rank.py).

Gradient accumulation: relayrl packs micro-batches by a token budget, so the number of micro-batches
per optimizer step varies from step to step. DeepSpeed's fixed `gradient_accumulation_steps` does
not fit that, so the engine runs with `managed_gradient_accumulation: false` (DeepSpeed >= 0.19):
every `backward()` accumulates, every `step()` is the accumulation boundary (ZeRO-2/3 reduce and
partition inside each backward, stage 0/1 all-reduce inside `step()`). gradient_accumulation_steps
stays 1, and backward is called with `scale_wrt_gas=False`, so DeepSpeed never rescales the loss;
the caller's loss already carries the right scale (see learner/train_step.py).

The LR schedule is a torch LambdaLR owned by the rank, not handed to DeepSpeed: DeepSpeed would
step it on every optimizer step, including the supervised warm-start steps, which must not consume
the RL schedule. Its state travels in the checkpoint's client_state.

Non-finite gradients: every optimizer path DeepSpeed builds here skips the update when the global
gradient norm is not finite (its overflow check: ZeRO-1/2/3, the bf16 optimizers) — except ZeRO-0
fp32, which runs the torch optimizer bare; `_skip_nonfinite_fp32` adds the check there. The config
refuses extra_deepspeed settings that would turn DeepSpeed's check off.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from learner.config import LearnerConfig, OptimizerConfig, field_choices

OPTIMIZERS = field_choices(OptimizerConfig, "name")  # valid values live on the config fields
SCHEDULES = field_choices(OptimizerConfig, "schedule")


def deepspeed_config(cfg: LearnerConfig, world_size: int, *, with_optimizer: bool = True) -> dict[str, Any]:
    """The DeepSpeed config dict for `cfg` (extra_deepspeed is deep-merged last, so it wins)."""
    if cfg.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"learner.zero_stage must be 0, 1, 2 or 3, got {cfg.zero_stage}")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"learner.dtype must be float32 or bfloat16 here, got {cfg.dtype!r} "
                         f"(an empty value follows model.dtype: resolve it first, cluster.dtype.resolve_run_dtypes)")
    zero: dict[str, Any] = {
        "stage": cfg.zero_stage,
        # overlap_comm with unmanaged accumulation is only supported for stages 2/3 — and on CPU
        # there is no second stream to overlap with anyway.
        "overlap_comm": False,
        "contiguous_gradients": True,
    }
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if cfg.offload_params:
        if cfg.zero_stage != 3:
            raise ValueError("learner.offload_params needs zero_stage 3")
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if cfg.zero_stage == 3:
        # Gather parameters on use; keep the whole model gatherable in one piece for export.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "managed_gradient_accumulation": False,
        "gradient_clipping": float(cfg.grad_clip) if cfg.grad_clip and cfg.grad_clip > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.dtype == "bfloat16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        "seed": cfg.seed,
    }
    if not with_optimizer:
        for key in ("gradient_clipping", "zero_allow_untested_optimizer", "managed_gradient_accumulation"):
            ds.pop(key)
        zero.pop("offload_optimizer", None)
    ds = _deep_merge(ds, cfg.extra_deepspeed)
    # A non-finite gradient must skip the update (see the module docstring): these would make
    # DeepSpeed apply it — bf16 without its overflow check, or ZeRO-1/2 fp32 without the norm it tests.
    if ds["bf16"].get("check_grad_overflow") is False or ds["zero_optimization"].get("compute_grad_norm") is False:
        raise ValueError("learner.extra_deepspeed turns off DeepSpeed's non-finite gradient check "
                         "(bf16.check_grad_overflow / zero_optimization.compute_grad_norm false): remove it; "
                         "relayrl skips an update with a NaN/inf gradient through that check")
    return ds


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def lr_lambda(step: int, opt: OptimizerConfig, total_steps: int) -> float:
    """LR multiplier for optimizer step `step` (0-based: the first update uses lr_lambda(0)).

    Linear warm-up over `warmup_steps` (step 0 already gets lr/warmup, never 0), then constant,
    or linear/cosine decay to `min_lr_ratio` at `total_steps`.
    """
    if opt.schedule not in SCHEDULES:
        raise ValueError(f"optimizer.schedule must be one of {', '.join(SCHEDULES)}, got {opt.schedule!r}")
    if step < opt.warmup_steps:
        return (step + 1) / opt.warmup_steps
    if opt.schedule == "constant":
        return 1.0
    span = max(1, total_steps - opt.warmup_steps)
    progress = min(1.0, (step - opt.warmup_steps) / span)
    lo = opt.min_lr_ratio
    if opt.schedule == "linear":
        return 1.0 - (1.0 - lo) * progress
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(params, opt: OptimizerConfig):
    """The base optimizer DeepSpeed wraps (ZeRO partitions its state)."""
    kw = dict(lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay)
    if opt.name == "adamw":
        import torch

        return torch.optim.AdamW(params, **kw)
    if opt.name == "cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kw)
    if opt.name == "fused_adam":
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(params, adam_w_mode=True, **kw)
    raise ValueError(f"optimizer.name must be one of {', '.join(OPTIMIZERS)}, got {opt.name!r}")


def load_model(model_path: str, cfg: LearnerConfig):
    """The HF causal LM in fp32 (DeepSpeed casts to bf16 itself when cfg.dtype is bfloat16)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.config.use_cache = False
    if cfg.moe_aux_loss_coef is not None and hasattr(model.config, "router_aux_loss_coef"):
        model.config.router_aux_loss_coef = cfg.moe_aux_loss_coef
    return model


def build_engine(model, cfg: LearnerConfig, world_size: int, total_steps: int):
    """(engine, base optimizer, LambdaLR) for the trained policy.

    MoE under ZeRO-3 needs no leaf-module registration (`set_z3_leaf_modules`) with transformers 5:
    its MoE models keep all experts of a layer in one module of fused 3-D parameters that runs on
    every forward, so every rank fetches the same parameters in the same order even when an expert
    gets no token on one rank (the hang that registration prevented with transformers 4's per-expert
    modules). tests/integration/test_learner.py::test_moe_zero3_two_ranks trains that case."""
    import deepspeed
    import torch

    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.optimizer, total_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           config=deepspeed_config(cfg, world_size))
    if cfg.zero_stage == 0 and cfg.dtype == "float32":
        _keep_fp32_grad_norm(engine)
        _skip_nonfinite_fp32(engine)
    return engine, optimizer, scheduler


def _keep_fp32_grad_norm(engine) -> None:
    """ZeRO-0 fp32 clips in `engine.clip_fp32_gradients`, which drops the norm it computes (every
    other path reports it via get_global_grad_norm). Same call, but keep the norm for the metrics."""
    from deepspeed.runtime.utils import clip_grad_norm_

    def clip() -> None:
        engine._global_grad_norm = float(clip_grad_norm_(parameters=engine.module.parameters(),
                                                         max_norm=engine.gradient_clipping(), mpu=engine.mpu))

    engine.clip_fp32_gradients = clip


def _skip_nonfinite_fp32(engine) -> None:
    """ZeRO-0 fp32 hands the gradients to the torch optimizer unchecked, where every other path
    skips the update on a non-finite gradient. Same skip here, through the contract the engine
    already reads after `optimizer.step()`: an `overflow` attribute that, when True, makes it count
    a skipped step (engine.skipped_steps, was_step_applied() False) and clear the gradients as usual.
    The gradients are all-reduced by then (ZeRO-0 replicates them), so every rank decides alike."""
    import torch

    optimizer = engine.optimizer
    step = optimizer.step
    optimizer.overflow = False

    def checked_step(closure=None):
        optimizer.overflow = not all(bool(torch.isfinite(p.grad).all()) for g in optimizer.param_groups
                                     for p in g["params"] if p.grad is not None)
        return None if optimizer.overflow else step(closure)

    optimizer.step = checked_step


def build_reference(model, cfg: LearnerConfig, world_size: int, device):
    """The frozen reference policy (KL term). ZeRO-3: its own optimizer-less engine, sharded like the
    policy. Stages 0-2 keep full parameters on every rank anyway, so a plain module is enough."""
    import torch

    model.requires_grad_(False)
    model.eval()
    if cfg.zero_stage == 3:
        import deepspeed

        engine, *_ = deepspeed.initialize(model=model, config=deepspeed_config(cfg, world_size, with_optimizer=False))
        engine.eval()
        return engine
    return model.to(device=device, dtype=torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32)
