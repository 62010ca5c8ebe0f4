"""DeepSpeed config dict and LR schedule of the learner engine (pure; DeepSpeed is not imported)."""

import math

import pytest

from learner.config import LearnerConfig, OptimizerConfig
from learner.engine import deepspeed_config, lr_lambda

pytestmark = pytest.mark.unit


def test_config_fields():
    ds = deepspeed_config(LearnerConfig(zero_stage=3, dtype="bfloat16", grad_clip=0.5, offload_optimizer=True), 4)
    assert ds["train_batch_size"] == 4 and ds["gradient_accumulation_steps"] == 1
    assert ds["managed_gradient_accumulation"] is False  # variable micro-batch count per step
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["bf16"]["enabled"] and ds["gradient_clipping"] == 0.5
    assert deepspeed_config(LearnerConfig(grad_clip=0.0, dtype="float32"), 1)["gradient_clipping"] == 0.0


def test_reference_config_has_no_optimizer_parts():
    ds = deepspeed_config(LearnerConfig(zero_stage=3, offload_optimizer=True, dtype="float32"), 2, with_optimizer=False)
    assert "gradient_clipping" not in ds and "offload_optimizer" not in ds["zero_optimization"]


def test_extra_deepspeed_is_deep_merged():
    cfg = LearnerConfig(zero_stage=2, dtype="float32", extra_deepspeed={"zero_optimization": {"reduce_bucket_size": 123}, "x": 1})
    ds = deepspeed_config(cfg, 1)
    assert ds["zero_optimization"]["reduce_bucket_size"] == 123 and ds["zero_optimization"]["stage"] == 2
    assert ds["x"] == 1 and cfg.extra_deepspeed == {"zero_optimization": {"reduce_bucket_size": 123}, "x": 1}


def test_bad_values():
    with pytest.raises(ValueError, match="zero_stage"):
        deepspeed_config(LearnerConfig(zero_stage=4), 1)
    with pytest.raises(ValueError, match="offload_params"):
        deepspeed_config(LearnerConfig(zero_stage=2, offload_params=True, dtype="float32"), 1)
    with pytest.raises(ValueError, match="follows model.dtype"):
        deepspeed_config(LearnerConfig(zero_stage=2), 1)  # "" must be resolved before an engine is built
    with pytest.raises(ValueError, match="schedule"):
        lr_lambda(0, OptimizerConfig(schedule="step"), 10)


def test_schedules():
    const = OptimizerConfig(warmup_steps=4)
    assert [lr_lambda(s, const, 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    lin = OptimizerConfig(warmup_steps=2, schedule="linear", min_lr_ratio=0.2)
    assert lr_lambda(2, lin, 10) == 1.0 and lr_lambda(10, lin, 10) == pytest.approx(0.2)
    assert lr_lambda(6, lin, 10) == pytest.approx(0.6)
    assert lr_lambda(50, lin, 10) == pytest.approx(0.2)  # clamped after the end
    cos = OptimizerConfig(schedule="cosine")
    assert lr_lambda(0, cos, 10) == 1.0 and lr_lambda(5, cos, 10) == pytest.approx(0.5)
    assert lr_lambda(10, cos, 10) == pytest.approx(0.0, abs=1e-12)
    assert all(0 < lr_lambda(s, cos, 10) <= 1 for s in range(10)) and not math.isnan(lr_lambda(0, cos, 0))
