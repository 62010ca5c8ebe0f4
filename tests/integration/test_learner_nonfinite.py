"""A batch with NaN advantages on real DeepSpeed ranks (tiny Qwen3, fp32, CPU, gloo): the update is
skipped on every rank, nothing changes, the step says so, and training goes on.

NaN sits only in rank 1's shard of both mini-batches, so rank 0's own loss is finite and it must
still skip: the ranks agree through the gradient check at the optimizer boundary. ZeRO-0 is the
relayrl check (learner/engine.py), ZeRO-2/3 DeepSpeed's own overflow check on partitioned gradients.
"Nothing changes" is checked where it shows: the parameters are bit-identical after the bad step,
and a good step after it gives exactly the parameters (and lr) of the same good step taken straight
from a checkpoint saved before the bad one — any touch of Adam's moments or step count, or of the
LR schedule, would move them.
"""

from __future__ import annotations

import math

import pytest
import torch

from test_learner import ALGO, global_batch, learner_cfg, make_group, tiny  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

BAD = (3, 7)  # with 2 ranks x 2 mini-batches of 8 sequences: rank 1's shard in mini-batch 0 and 1


def nan_batch():
    batch = global_batch(seed=1)
    batch.advantages[list(BAD)] = math.nan
    return batch


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_nonfinite_update_is_skipped_and_training_goes_on(zero_stage, ray_cluster, tiny, tmp_path):  # noqa: F811 (tiny)
    group = make_group(tiny, learner_cfg(2, zero_stage))
    try:
        good = global_batch(seed=1)
        group.train_step(global_batch(seed=0))  # Adam has moments and the schedule has moved: they must stay
        group.save_checkpoint(str(tmp_path / "ckpt"))
        before = group.full_state_dict()

        bad = group.train_step(nan_batch())
        assert bad["learner/nonfinite_skipped"] == 2 and bad["learner/optimizer_steps"] == 0
        assert math.isnan(bad["learner/loss"]) and math.isnan(bad["learner/grad_norm"])
        assert same(group.full_state_dict(), before), "a skipped update changed the parameters"

        after = group.train_step(good)
        assert after["learner/nonfinite_skipped"] == 0 and after["learner/optimizer_steps"] == 2
        assert math.isfinite(after["learner/loss"]) and after["learner/grad_norm"] > 0
        trained = group.full_state_dict()
        assert not same(trained, before), "the good step after the skipped one did not train"

        group.load_checkpoint(str(tmp_path / "ckpt"))  # the same good step, never having seen the bad one
        straight = group.train_step(good)
        assert straight["learner/lr"] == after["learner/lr"]
        assert same(group.full_state_dict(), trained), "the skipped update left a trace in the optimizer state"
    finally:
        group.shutdown()
