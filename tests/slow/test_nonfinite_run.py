"""A real run (Ray, vLLM, DeepSpeed, the driver loop) whose batches get NaN advantages at chosen
steps: each such step's updates are skipped and logged, a good step resets the streak, and
learner.max_nonfinite_steps in a row stop the run with an error naming the saved batch."""

import math

import pytest
import torch
from fault_runs import B, N, OVERRIDES

from cluster import trainer
from cluster.config import load_config
from cluster.metrics import read_metrics
from cluster.nonfinite import NonFiniteSteps
from cluster.validate import validate
from learner.batch import LearnerBatch

pytestmark = pytest.mark.slow

POISONED = {1, 3, 4, 5}  # step 2 is good, so the streak restarts at 3 and reaches 3 at step 5


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tmp_path, monkeypatch, fault_report):
    run_dir = tmp_path / "run"
    cfg = validate(load_config("configs/demo_grpo.yaml", [
        f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *OVERRIDES,
        "trainer.total_steps=8", "learner.max_nonfinite_steps=3"]))
    calls, to_batch = [], trainer.groups_to_batch

    def poisoned(groups, algo, weights) -> LearnerBatch:  # the driver builds one batch per RL step
        batch = to_batch(groups, algo, weights)
        calls.append(batch)
        if len(calls) in POISONED:
            batch.advantages[:] = math.nan
        return batch

    monkeypatch.setattr(trainer, "groups_to_batch", poisoned)
    with pytest.raises(NonFiniteSteps) as err:
        trainer.train(cfg)

    saved = run_dir / "nonfinite" / "step_000005.pt"
    assert "3 steps in a row" in str(err.value) and str(saved) in str(err.value)
    assert len(calls) == 5, "the run went on after the third skipped step in a row"
    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # step 5 stopped the run before its log line
    per_step = cfg.algorithm.epochs * cfg.algorithm.mini_batches
    assert [r["learner/nonfinite_skipped"] for r in rows] == [per_step, 0, per_step, per_step]
    assert [r["learner/optimizer_steps"] for r in rows] == [0, per_step, 0, 0]
    assert [r["learner/nonfinite_skipped_total"] for r in rows] == [per_step, per_step, 2 * per_step, 3 * per_step]
    assert sorted(p.name for p in saved.parent.iterdir()) == [f"step_{k:06d}.pt" for k in sorted(POISONED)]
    loaded = torch.load(saved, weights_only=False)
    assert len(loaded) == B * N and torch.isnan(loaded.advantages).all()
    assert all(torch.equal(a, b) for a, b in zip(loaded.input_ids, calls[4].input_ids))
    fault_report(poisoned_steps=sorted(POISONED), skipped_updates=4 * per_step, stopped_at_step=5,
                 batches_saved=len(POISONED))
