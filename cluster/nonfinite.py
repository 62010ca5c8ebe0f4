"""Steps whose learner update was skipped for a non-finite loss or gradient: counted, reported, saved.

The learner skips such an update itself (nothing changes: see LearnerRank.optimizer_step) and says
so in `learner/nonfinite_skipped`. One bad batch is survivable; the same thing step after step means
broken data or a diverged policy, and training on would only burn compute. So the driver keeps a
streak: `learner.max_nonfinite_steps` steps in a row with a skipped update stop the run, and every
such step's batch is in RUN_DIR/nonfinite/step_<k>.pt for inspection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from learner.batch import LearnerBatch

NONFINITE_DIR = "nonfinite"


class NonFiniteSteps(RuntimeError):
    """learner.max_nonfinite_steps steps in a row skipped their update (non-finite loss or gradient)."""


def count_nonfinite(state: Any, step: int, learn: dict[str, Any], batch: LearnerBatch, run_dir: Path,
                    limit: int, report: Callable[[str], None]) -> None:
    """Count a step's skipped updates into `state` (its nonfinite_streak / nonfinite_skipped, which
    the checkpoint keeps) and `learn` (learner/nonfinite_skipped_total); a skipped step's batch is
    saved and reported. Raises NonFiniteSteps when the streak reaches `limit` (0 = never)."""
    # PPO: the critic's skipped updates count in the same streak (learner.max_nonfinite_steps)
    skipped = int(learn.get("learner/nonfinite_skipped", 0)) + int(learn.get("critic/nonfinite_skipped", 0))
    state.nonfinite_skipped += skipped
    state.nonfinite_streak = state.nonfinite_streak + 1 if skipped else 0
    learn["learner/nonfinite_skipped_total"] = float(state.nonfinite_skipped)
    if not skipped:
        return
    path = save_batch(batch, run_dir, step)
    what = (f"step {step}: {skipped} learner/critic update(s) skipped, non-finite loss or gradient "
            f"({describe_nonfinite(batch)}); batch saved to {path}")
    if limit and state.nonfinite_streak >= limit:
        raise NonFiniteSteps(
            f"{what}. That is {state.nonfinite_streak} steps in a row (learner.max_nonfinite_steps={limit}): "
            f"stopping. The batches are in {path.parent} — torch.load(path, weights_only=False) gives the "
            f"LearnerBatch; check the reward/advantage pipeline and the learning rate.")
    report(f"{what} ({state.nonfinite_streak} in a row; learner.max_nonfinite_steps={limit}"
           f"{'' if limit else ': never stops'})")


def save_batch(batch: LearnerBatch, run_dir: Path, step: int) -> Path:
    path = Path(run_dir) / NONFINITE_DIR / f"step_{step:06d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(batch, path)
    return path


def describe_nonfinite(batch: LearnerBatch) -> str:
    """Which of the batch's inputs hold NaN/inf (e.g. 'advantages: 1 of 8 sequences'), or that none do
    (then the loss or gradient overflowed inside the model: a learning-rate or data-scale problem)."""
    found = []
    for name in ("advantages", "rewards"):
        bad = int((~torch.isfinite(getattr(batch, name).float())).sum())
        if bad:
            found.append(f"{name}: {bad} of {len(batch)} sequences")
    bad = sum(not bool(torch.isfinite(lp.float()).all()) for lp in batch.sampler_logprobs)
    if bad:
        found.append(f"sampler_logprobs: {bad} of {len(batch)} sequences")
    return "non-finite " + "; ".join(found) if found else "all batch inputs finite"
