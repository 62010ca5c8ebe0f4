"""Live, elastic rollout scaling: `relayrl scale RUN_DIR --rollout N`, and optional autoscaling.

Control channel: `relayrl scale` writes RUN_DIR/control/scale.json atomically; the driver reads it
between two steps and answers in RUN_DIR/control/scale.done.json (what it did, or why not). The run
directory is the channel because it is the one place a user, a script or a scheduler already knows
(on a cluster: a shared filesystem). With rollout.autoscale.enabled the driver also decides by
itself from the step's timing (`autoscale_decision`, a pure function).

A change happens between steps: the batches already issued (async mode) are finished first — no
worker is removed with prompts in hand, nothing is lost or generated twice; then workers are added
(placed, started, and their engines built) or the last ones shut down, the weight-sync group is
re-formed for the new membership, the current policy version is pushed to every worker, and the
probe proves every worker holds it before the next step samples.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from actors.config import AutoscaleConfig

if TYPE_CHECKING:
    from cluster.metrics import MetricsLogger
    from cluster.rollout_feed import RolloutFeed
    from cluster.run_setup import Run

CONTROL_DIR = "control"
REQUEST, DONE = "scale.json", "scale.done.json"


def request_scale(run_dir: str | Path, rollout: int) -> Path:
    """Ask the run in run_dir to run `rollout` rollout workers (picked up between two steps)."""
    if rollout < 1:
        raise ValueError(f"--rollout {rollout}: a run needs at least 1 rollout worker")
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir} is not a relayrl run directory (no config.yaml)")
    control = run_dir / CONTROL_DIR
    control.mkdir(exist_ok=True)
    tmp = control / f".{REQUEST}.tmp"
    tmp.write_text(json.dumps({"rollout": int(rollout), "requested_at": time.time()}))
    os.replace(tmp, control / REQUEST)
    return control / REQUEST


def take_request(run_dir: Path) -> Optional[dict[str, Any]]:
    """The pending request, removed from the channel (None if there is none)."""
    path = run_dir / CONTROL_DIR / REQUEST
    try:
        request = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        request = {"error": f"unreadable request: {e}"}
    path.unlink(missing_ok=True)
    return request


def autoscale_decision(waits: list[float], idles: list[float], workers: int, cfg: AutoscaleConfig) -> tuple[int, str]:
    """+1, -1 or 0 rollout workers, and why, from the last steps' shares of the step the learner
    waited on rollouts (`waits`) and the rollout workers sat idle (`idles`), newest last."""
    if len(waits) < cfg.patience:
        return 0, ""
    w, i = waits[-cfg.patience:], idles[-cfg.patience:]
    if workers < cfg.max_workers and min(w) > cfg.add_above:
        return 1, (f"the learner waited on rollouts for {100 * min(w):.0f}-{100 * max(w):.0f}% of the last "
                   f"{cfg.patience} steps (> {100 * cfg.add_above:.0f}%)")
    if workers > cfg.min_workers and max(w) < cfg.remove_below and min(i) > 0.5:
        return -1, (f"groups were ready before the learner asked (it waited {100 * max(w):.0f}% or less) and the "
                    f"workers sat idle {100 * min(i):.0f}% or more of the last {cfg.patience} steps")
    return 0, ""


class RolloutScaler:
    def __init__(self, run: "Run", feed: "RolloutFeed", logger: "MetricsLogger"):
        self.run, self.feed, self.logger = run, feed, logger
        self.cfg = run.cfg.rollout.autoscale
        self._waits: list[float] = []
        self._idles: list[float] = []
        self.changes = 0

    def observe(self, metrics: dict[str, Any]) -> None:
        """A finished step's timing, for autoscaling."""
        step = metrics["timing/step"]
        self._waits.append(metrics["timing/generate"] / step if step else 0.0)
        self._idles.append(metrics["timing/rollout_idle_fraction"])

    def between_steps(self) -> None:
        """Apply a `relayrl scale` request, else an autoscaling decision, if any."""
        have = len(self.run.rollout.workers)
        request = take_request(self.run.dir)
        if request is not None:
            target, reason = request.get("rollout"), "relayrl scale"
            if not isinstance(target, int) or target < 1:
                self._answer(request, have, f"refused: {request.get('error') or 'rollout must be an integer >= 1'}")
                return
        elif self.cfg.enabled:
            delta, reason = autoscale_decision(self._waits, self._idles, have, self.cfg)
            target = have + delta
        else:
            return
        if self.run.cfg.cluster.colocate and target != have:
            self._answer(request, have, "refused: cluster.colocate=true pairs each rollout worker with a learner "
                                        "rank; their number is learner.num_ranks")
            return
        if target == have:
            if request is not None:
                self._answer(request, have, f"already {have} rollout worker(s)")
            return
        missing = self._missing_resources(target - have)
        if missing:
            self.logger.print(f"rollout workers: not scaling {have} -> {target} ({reason}): {missing}")
            if request is not None:
                self._answer(request, have, f"refused: {missing}")
            return
        result = self.scale_to(target, reason)
        if request is not None:
            self._answer(request, target, result)

    def scale_to(self, n: int, reason: str) -> str:
        run, have = self.run, len(self.run.rollout.workers)
        t0 = time.perf_counter()
        self.feed.drain()  # the batches in flight finish first: no worker leaves with prompts in hand
        with run.sync.lock:
            run.rollout.scale_to(n)
            run.sync.setup()  # the group re-formed for the new membership
            run.sync.push(run.sync.version)
            proof = run.sync.verify(*run.probe) if run.probe else {}
        self.changes += 1
        self._waits.clear()  # cool-down: the next decision looks only at steps after this change
        self._idles.clear()
        diff = proof.get("sync/probe_max_abs_diff")
        result = (f"{have} -> {n} rollout workers ({reason}) in {time.perf_counter() - t0:.1f}s; every worker holds "
                  f"policy v{run.sync.version}" + (f" (probe max |diff| {diff:.1e})" if diff is not None else ""))
        self.logger.print(result)
        return result

    def _missing_resources(self, more: int) -> str:
        """'' if the cluster has room for `more` rollout workers now, else what is missing."""
        if more <= 0:
            return ""
        import ray

        free = ray.available_resources()
        spec = self.run.rollout.workers.spec
        need = {"CPU": more * max(spec.cpus_per_actor, 0.01), "GPU": more * spec.gpus_per_actor}
        short = {r: (v, free.get(r, 0.0)) for r, v in need.items() if v > free.get(r, 0.0) + 1e-9}
        return ", ".join(f"{more} more worker(s) need {v:g} {r}, the cluster has {f:g} free" for r, (v, f) in short.items())

    def _answer(self, request: dict[str, Any], workers: int, result: str) -> None:
        control = self.run.dir / CONTROL_DIR
        tmp = control / f".{DONE}.tmp"
        tmp.write_text(json.dumps({**request, "workers": workers, "result": result, "done_at": time.time()}))
        os.replace(tmp, control / DONE)
