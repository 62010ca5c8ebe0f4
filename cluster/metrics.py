"""What a user sees: one line per step, a progress bar, metrics as JSON lines, TensorBoard, sample dumps.

Everything goes into the run directory: metrics.jsonl (one JSON object per step or eval), samples/
(prompt, completion, reward components every N steps), tb/ (TensorBoard events), and wandb when a
project is configured.

Resuming: a run that crashed after step 37 and resumes from its step-30 checkpoint re-does steps
31..37. Opened with `resume_step=30`, MetricsLogger first rewrites metrics.jsonl (temp file +
os.replace) down to the rows that still count — train/eval rows with step <= 30 (an eval logged at
the checkpoint step itself stays), every warm_start row — and appends what it drops (later rows,
earlier duplicates of a (kind, step), a line cut short by a SIGKILL mid-write) to
metrics.discarded.jsonl, so nothing is lost. `read_metrics` de-duplicates by (kind, step), keeping
the last row, and skips a truncated final line, so a file written by an older version reads right too.
TensorBoard is not rewritten: its event files keep both the first and the re-done points of the
re-done steps (SummaryWriter's purge_step would hide them, but also every warm_start point past the
resume step, since warm start shares the step axis).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from actors.types import Group


class MetricsLogger:
    def __init__(self, run_dir: Path, total_steps: int, tensorboard: bool = True,
                 wandb_project: Optional[str] = None, progress: bool = True, name: str = "relayrl",
                 config: Optional[dict] = None, resume_step: Optional[int] = None):
        """`resume_step`: the step of the checkpoint a resumed run continues from (None: a fresh run).
        The rows logged after it are moved out of metrics.jsonl before anything is appended; what
        was moved is in `self.rewind` (`self.rewind.dropped` rows after the step were re-done)."""
        self.run_dir = run_dir = Path(run_dir)
        # Wide enough for one step line when the output is a file or a pipe (rich assumes 80 there).
        self.console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
        self.rewind: Optional[MetricsRewind] = None
        path = run_dir / METRICS_FILE
        if resume_step is not None:
            self.rewind = rewind_metrics(run_dir, resume_step)
        elif _ends_without_newline(path):  # killed mid-write: keep the fragment on its own line
            with path.open("a", encoding="utf-8") as f:
                f.write("\n")
        self._jsonl = path.open("a", encoding="utf-8")
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

    def rewind_to(self, step: int, reason: str, keep_warm_start: bool = True) -> "MetricsRewind":
        """Mid-run: the steps after `step` are being re-done (the learner was rebuilt from that
        checkpoint); their rows move to metrics.discarded.jsonl with `reason` (and the warm start's
        rows too unless keep_warm_start: it is being re-done as well)."""
        self._jsonl.close()
        rewound = rewind_metrics(self.run_dir, step, reason, keep_warm_start)
        self._jsonl = (self.run_dir / METRICS_FILE).open("a", encoding="utf-8")
        return rewound

    def advance(self, step: int, summary: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, summary=summary)

    def print(self, text: str) -> None:
        self.console.print(text, soft_wrap=True)  # a long line (a death, a path) stays one line in a log file

    def dump_samples(self, step: int, groups: list[Group], max_groups: int = 4) -> None:
        out = self.run_dir / "samples" / f"step_{step:06d}.jsonl"
        out.parent.mkdir(exist_ok=True)
        with out.open("w", encoding="utf-8") as f:
            for g in groups[:max_groups]:
                for s in g.samples:
                    row = {
                        "prompt_id": s.prompt_id, "prompt": s.prompt, "completion": s.response,
                        "reward": s.reward, "components": s.reward_components, "error": s.reward_error,
                        "finish_reason": s.finish_reason, "policy_version": s.policy_version,
                        "response_tokens": s.response_length, "version_spans": version_spans(s.token_versions),
                    }
                    if s.episode is not None:  # multi-turn: turns, tool use, where the model's turns end
                        row["episode"] = dataclasses.asdict(s.episode)
                    f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


METRICS_FILE = "metrics.jsonl"
DISCARDED_FILE = "metrics.discarded.jsonl"


@dataclasses.dataclass
class MetricsRewind:
    """What `rewind_metrics` moved from metrics.jsonl to metrics.discarded.jsonl."""

    resume_step: int
    dropped: int = 0  # rows (train, eval, ...) logged after resume_step: the steps being re-done
    superseded: int = 0  # earlier copies of a (kind, step) also logged later (files from older versions)
    invalid: int = 0  # lines that are not JSON (the last line cut short when the driver was killed)
    kept: int = 0

    def summary(self) -> str:
        text = f"resumed: {self.dropped} metric rows after step {self.resume_step} were re-done"
        extra = [f"{n} {what}" for n, what in ((self.superseded, "duplicate"), (self.invalid, "truncated/invalid"))
                 if n]
        moved = self.dropped + self.superseded + self.invalid
        return text + (f" ({', '.join(extra)} too)" if extra else "") + (f"; moved to {DISCARDED_FILE}" if moved else "")


def rewind_metrics(run_dir: str | Path, resume_step: int, reason: str = "after_resume_step",
                   keep_warm_start: bool = True) -> MetricsRewind:
    """Rewrite RUN_DIR/metrics.jsonl for a run resuming from the checkpoint at `resume_step`.

    Kept: rows with step <= resume_step (eval rows at the checkpoint step included) and every
    warm_start row (warm start is not re-done on resume; keep_warm_start=False: it is, and its rows
    go too), one per (kind, step): the last one.
    Everything else is appended to metrics.discarded.jsonl as {"resume_step", "reason", "row"|"raw"}
    (reason: `reason` | superseded | invalid) before metrics.jsonl is replaced atomically
    by the kept lines (byte-identical), so a crash at any point loses no row: at worst a repeated
    rewind appends the same discarded rows twice. Idempotent; a missing file is an empty one."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    result = MetricsRewind(resume_step=int(resume_step))
    if not path.exists():
        return result
    entries = _parse(path.read_text(encoding="utf-8"))
    last = {_key(row): i for i, (_, row) in enumerate(entries) if row is not None and _key(row) is not None}
    kept: list[str] = []
    discarded: list[dict[str, Any]] = []
    for i, (line, row) in enumerate(entries):
        if row is None:
            result.invalid += 1
            discarded.append({"resume_step": result.resume_step, "reason": "invalid", "raw": line})
        elif (row.get("kind") != "warm_start" or not keep_warm_start) and _step(row) is not None \
                and _step(row) > resume_step:
            result.dropped += 1
            discarded.append({"resume_step": result.resume_step, "reason": reason, "row": row})
        elif _key(row) is not None and last[_key(row)] != i:
            result.superseded += 1
            discarded.append({"resume_step": result.resume_step, "reason": "superseded", "row": row})
        else:
            kept.append(line)
    result.kept = len(kept)
    if not discarded and not _ends_without_newline(path):
        return result  # already exactly the rows that count
    if discarded:
        with (run_dir / DISCARDED_FILE).open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(d) + "\n" for d in discarded)
            f.flush()
            os.fsync(f.fileno())
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{METRICS_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return result


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of RUN_DIR/metrics.jsonl that count, in file order: one per (kind, step), the last
    logged (a resumed run re-does the steps after its checkpoint; older versions appended them again).
    A final line that is not JSON (the driver was killed mid-write) is skipped; any other such line
    is skipped with a warning."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics here — is {run_dir} a relayrl run directory?")
    entries = _parse(path.read_text(encoding="utf-8"))
    for n, (line, row) in enumerate(entries[:-1], 1):
        if row is None:
            warnings.warn(f"{path}: line {n} is not JSON, skipped: {line[:80]!r}", stacklevel=2)
    rows = [row for _, row in entries if row is not None]
    last = {_key(row): i for i, row in enumerate(rows) if _key(row) is not None}
    return [row for i, row in enumerate(rows) if _key(row) is None or last[_key(row)] == i]


def _parse(text: str) -> list[tuple[str, Optional[dict[str, Any]]]]:
    """(line, row or None when the line is not a JSON object) for every non-blank line."""
    out: list[tuple[str, Optional[dict[str, Any]]]] = []
    for line in text.split("\n"):  # not splitlines(): that also splits at \x1c, \x85, ...
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        out.append((line, row if isinstance(row, dict) else None))
    return out


def _step(row: dict[str, Any]) -> Optional[int]:
    step = row.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _key(row: dict[str, Any]) -> Optional[tuple[Any, int]]:
    step = _step(row)
    return None if step is None else (row.get("kind"), step)


def _ends_without_newline(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def version_spans(token_versions: list[int]) -> list[list[int]]:
    """[[version, first token, end token), ...]: a sample's per-token versions, run-length encoded."""
    spans: list[list[int]] = []
    for i, v in enumerate(token_versions):
        if spans and spans[-1][0] == v:
            spans[-1][2] = i + 1
        else:
            spans.append([v, i, i + 1])
    return spans
