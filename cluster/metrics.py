"""What a user sees: one line per step, a progress bar, metrics as JSON lines, TensorBoard, sample dumps.

Everything goes into the run directory: metrics.jsonl (one JSON object per step or eval), samples/
(prompt, completion, reward components every N steps), tb/ (TensorBoard events), and wandb when a
project is configured.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from actors.types import Group


class MetricsLogger:
    def __init__(self, run_dir: Path, total_steps: int, tensorboard: bool = True,
                 wandb_project: Optional[str] = None, progress: bool = True, name: str = "relayrl",
                 config: Optional[dict] = None):
        self.run_dir = run_dir
        # Wide enough for one step line when the output is a file or a pipe (rich assumes 80 there).
        self.console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
        self._jsonl = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"))
        self._wandb = None
        if wandb_project:
            import wandb  # optional dependency: pip install .[wandb]

            self._wandb = wandb.init(project=wandb_project, name=name, dir=str(run_dir), config=config)
        self._progress = None
        if progress:
            self._progress = Progress(
                TextColumn("[bold]RL"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[summary]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._task = self._progress.add_task("steps", total=total_steps, summary="")
            self._progress.start()

    def log(self, step: int, metrics: dict[str, Any], kind: str = "train") -> None:
        row = {"kind": kind, "step": step, "time": time.time(), **metrics}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(f"{kind}/{k}" if "/" not in k else k, v, step)
        if self._wandb is not None:
            self._wandb.log({f"{kind}/{k}": v for k, v in numeric.items()}, step=step)

    def advance(self, step: int, summary: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, summary=summary)

    def print(self, text: str) -> None:
        self.console.print(text)

    def dump_samples(self, step: int, groups: list[Group], max_groups: int = 4) -> None:
        out = self.run_dir / "samples" / f"step_{step:06d}.jsonl"
        out.parent.mkdir(exist_ok=True)
        with out.open("w", encoding="utf-8") as f:
            for g in groups[:max_groups]:
                for s in g.samples:
                    f.write(json.dumps({
                        "prompt_id": s.prompt_id, "prompt": s.prompt, "completion": s.response,
                        "reward": s.reward, "components": s.reward_components, "error": s.reward_error,
                        "finish_reason": s.finish_reason, "policy_version": s.policy_version,
                        "response_tokens": s.response_length,
                    }) + "\n")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics here — is {run_dir} a relayrl run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
