"""Atomic run checkpoints: the learner's DeepSpeed state plus the driver's own state.

Layout: RUN_DIR/checkpoints/step_000006/{learner/ (DeepSpeed), critic/ (PPO only), trainer_state.json} and
RUN_DIR/checkpoints/latest (the name of the newest complete checkpoint). A checkpoint is written
into a `.tmp` directory and renamed into place, and `latest` is replaced atomically after that, so a
crash mid-write never leaves a corrupt "latest". Only the newest `keep_last` are kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch


@dataclasses.dataclass
class LoopState:
    """The driver loop's own state, saved in trainer_state.json with the RNG."""

    step: int = 0  # last completed RL step
    version: int = 0  # policy version the rollout workers hold
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # PromptStream.state(): epoch, index, swaps
    nonfinite_streak: int = 0  # RL steps in a row that skipped a learner update (cluster/nonfinite.py)
    nonfinite_skipped: int = 0  # learner updates skipped in the whole run (non-finite loss or gradient)


CRITIC_DIR = "critic"  # in a checkpoint: PPO's value model (DeepSpeed), beside learner/
# RUN_DIR/warm_started/: the policy after the warm start (a HF directory), exported when the reference
# (KL term, DPO) or PPO's critic starts from it; a resumed or rebuilt learner reloads its reference there
WARM_STARTED = "warm_started"


def warm_started_policy(run: Any) -> Optional[Path]:
    """RUN_DIR/warm_started, where a run with a warm start exports the warm-started policy when the
    reference or PPO's critic starts from it (None: no warm start)."""
    return run.dir / WARM_STARTED if run.cfg.trainer.warm_start.steps > 0 else None


def warm_started_reference(run: Any) -> Optional[Path]:
    """The HF directory a resumed run's or rebuilt learner's reference model loads (RUN_DIR/warm_started),
    None when the run has no warm start (its reference is model.path) or no reference at all. Raises
    when it should exist and does not (a run checkpointed by a version that did not export it)."""
    from learner.train_step import uses_reference

    if run.cfg.trainer.warm_start.steps <= 0 or not uses_reference(run.cfg.algorithm):
        return None
    warm = run.dir / WARM_STARTED
    if not (warm / "config.json").exists():
        raise FileNotFoundError(
            f"{warm} is missing: the reference model (KL term, DPO) is the warm-started policy, which relayrl "
            f"exports there after the warm start; a run started by an older version has none and cannot resume "
            f"with its reference (start it again, or set trainer.warm_start.steps=0 to use model.path as the reference)")
    return warm


def restore(run: Any, path: Path) -> LoopState:
    """Load checkpoint `path` into the run's learner and the driver's RNG; its loop state."""
    saved = Checkpointer.load_state(path)
    run.learner.load_checkpoint(str(path / "learner"))
    if getattr(run, "critic", None) is not None:  # PPO's value model, saved beside the policy (Run.save_models)
        run.critic.load_checkpoint(str(path / CRITIC_DIR))
    set_rng_state(saved.pop("rng"))
    return LoopState(**saved)


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class Checkpointer:
    def __init__(self, run_dir: Path, keep_last: int):
        self.root = run_dir / "checkpoints"
        self.keep_last = max(1, keep_last)

    def save(self, step: int, trainer_state: dict[str, Any], save_learner: Callable[[str], None],
             extra: Optional[dict[str, bytes]] = None) -> Path:
        """`save_learner(dir)` writes the learner's state into dir (collective across learner ranks);
        `extra` files (name -> bytes) are written beside it, inside the same atomic rename."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"step_{step:06d}"
        final, tmp = self.root / name, self.root / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_learner(str(tmp / "learner"))
        for name_, blob in (extra or {}).items():
            (tmp / name_).write_bytes(blob)
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, default=_json_default))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        latest_tmp = self.root / "latest.tmp"
        latest_tmp.write_text(name)
        os.replace(latest_tmp, self.root / "latest")
        self._prune()
        return final

    def _prune(self) -> None:
        done = sorted(p for p in self.root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in done[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def latest(run_dir: str | Path) -> Optional[Path]:
        pointer = Path(run_dir) / "checkpoints" / "latest"
        if not pointer.exists():
            return None
        path = pointer.parent / pointer.read_text().strip()
        if not (path / "trainer_state.json").exists():
            raise FileNotFoundError(f"{pointer} names {path.name}, which is incomplete or missing")
        return path

    @staticmethod
    def load_state(ckpt: Path) -> dict[str, Any]:
        return json.loads((ckpt / "trainer_state.json").read_text())
