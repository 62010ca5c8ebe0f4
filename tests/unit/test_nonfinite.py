"""Non-finite loss or gradient: the driver's streak / stop / saved batch, the loss poisoning that makes
a NaN loss reach the gradient check, and the DeepSpeed settings that would switch that check off.
(The learner skipping the update on real DeepSpeed ranks: tests/integration/test_learner_nonfinite.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from cluster.checkpoint import LoopState
from cluster.nonfinite import NonFiniteSteps, count_nonfinite, describe_nonfinite
from learner.batch import LearnerBatch
from learner.config import LearnerConfig
from learner.engine import deepspeed_config
from learner.train_step import poison_nonfinite

pytestmark = pytest.mark.unit


def small_batch(bad_advantage: bool = False) -> LearnerBatch:
    ids = [torch.tensor([5, 6, 7, 8]), torch.tensor([5, 9, 10])]
    adv = torch.tensor([1.0, math.nan if bad_advantage else -1.0])
    return LearnerBatch(ids, [2, 1], [torch.tensor([-1.0, -2.0]), torch.tensor([-0.5, -0.25])], adv,
                        torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.tensor([3, 3]),
                        torch.tensor([True, True]))


def run_steps(skips: list[int], limit: int, run_dir) -> tuple[LoopState, list[dict], list[str]]:
    """Feed count_nonfinite one learner result per step (learner/nonfinite_skipped = skips[k])."""
    state, notes, logged = LoopState(), [], []
    for step, skipped in enumerate(skips, start=1):
        learn = {"learner/nonfinite_skipped": float(skipped)}
        count_nonfinite(state, step, learn, small_batch(bad_advantage=bool(skipped)), run_dir, limit, notes.append)
        logged.append(learn)
    return state, logged, notes


def test_isolated_skips_are_counted_saved_and_reset_the_streak(tmp_path):
    state, logged, notes = run_steps([0, 1, 0, 2, 1, 0], limit=3, run_dir=tmp_path)
    assert [m["learner/nonfinite_skipped_total"] for m in logged] == [0, 1, 1, 3, 4, 4]
    assert state.nonfinite_skipped == 4 and state.nonfinite_streak == 0
    saved = sorted(p.name for p in (tmp_path / "nonfinite").iterdir())
    assert saved == ["step_000002.pt", "step_000004.pt", "step_000005.pt"]  # only the skipped steps
    assert len(notes) == 3 and "step 5" in notes[2] and "2 in a row" in notes[2]
    assert "advantages: 1 of 2 sequences" in notes[0]


def test_n_in_a_row_stop_with_the_batch_saved(tmp_path):
    with pytest.raises(NonFiniteSteps) as err:
        run_steps([1, 0, 1, 1, 1, 1], limit=3, run_dir=tmp_path)
    msg = str(err.value)
    path = tmp_path / "nonfinite" / "step_000005.pt"
    assert "step 5" in msg and "3 steps in a row" in msg and "max_nonfinite_steps=3" in msg and str(path) in msg
    assert not (tmp_path / "nonfinite" / "step_000006.pt").exists()  # the run stopped at step 5
    loaded = torch.load(path, weights_only=False)
    expected = small_batch(bad_advantage=True)
    assert isinstance(loaded, LearnerBatch) and loaded.prompt_lengths == expected.prompt_lengths
    assert all(torch.equal(a, b) for a, b in zip(loaded.input_ids, expected.input_ids))
    assert torch.isnan(loaded.advantages[1]) and loaded.advantages[0] == 1.0


def test_limit_zero_never_stops(tmp_path):
    state, _, notes = run_steps([1] * 6, limit=0, run_dir=tmp_path)
    assert state.nonfinite_streak == 6 and len(notes) == 6 and "never stops" in notes[-1]


def test_describe_names_the_nonfinite_inputs():
    assert describe_nonfinite(small_batch()) == "all batch inputs finite"
    b = small_batch(bad_advantage=True)
    b.sampler_logprobs[0] = torch.tensor([-1.0, -math.inf])
    assert describe_nonfinite(b) == "non-finite advantages: 1 of 2 sequences; sampler_logprobs: 1 of 2 sequences"


def test_poison_makes_a_nan_loss_reach_the_gradient():
    """A NaN that enters through a detached term leaves the gradient finite (the optimizer's check
    would let the update through); poisoned, every gradient element the loss reaches is NaN."""
    w = torch.tensor([0.5, -2.0], requires_grad=True)
    detached_nan = torch.tensor(math.nan)
    loss = (w * w).sum() + detached_nan
    assert torch.isnan(loss)
    (g_plain,) = torch.autograd.grad(loss, w, retain_graph=True)
    assert torch.isfinite(g_plain).all()
    (g_poisoned,) = torch.autograd.grad(poison_nonfinite(loss), w)
    assert torch.isnan(g_poisoned).all()
    finite = (w * w).sum()
    assert poison_nonfinite(finite) is finite  # a finite loss passes untouched
    assert torch.isnan(poison_nonfinite(torch.tensor(math.inf)))


@pytest.mark.parametrize("extra", [{"bf16": {"check_grad_overflow": False}},
                                   {"zero_optimization": {"compute_grad_norm": False}}])
def test_deepspeed_settings_that_disable_the_check_are_refused(extra):
    with pytest.raises(ValueError, match="non-finite gradient check"):
        deepspeed_config(LearnerConfig(zero_stage=2, dtype="bfloat16", extra_deepspeed=extra), 1)
    deepspeed_config(LearnerConfig(zero_stage=2, dtype="bfloat16",
                                   extra_deepspeed={"bf16": {"check_grad_overflow": True}}), 1)
