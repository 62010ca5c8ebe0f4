"""Live rollout scaling in a real run: 1 -> 2 -> 1 workers through `relayrl scale`, in sync and async
mode; the weights are probe-verified after each change and every prompt is trained exactly once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_runs import OVERRIDES, STEPS, assert_every_prompt_trained_once, wait_for_step

from cluster.metrics import read_metrics
from cluster.scaling import request_scale

pytestmark = pytest.mark.slow

RELAYRL = str(Path(sys.executable).with_name("relayrl"))
# room for a second worker (logical CPUs), one thread each; generations long enough to overlap in async
SCALING = ["cluster.num_cpus=4", "rollout.threads_per_worker=1", "rollout.sampling.max_new_tokens=64",
           "rollout.sampling.min_new_tokens=64", f"trainer.total_steps={STEPS + 3}"]
MODES = {"sync": [], "async": ["trainer.mode=async", "buffer.max_staleness=1", "algorithm.off_policy.name=tis"]}


def scale(run_dir: Path, n: int, proc: subprocess.Popen) -> dict:
    """Ask for n workers (what `relayrl scale RUN_DIR --rollout n` writes) and wait for the run's answer."""
    done = run_dir / "control" / "scale.done.json"
    done.unlink(missing_ok=True)
    request_scale(run_dir, n)
    deadline = time.monotonic() + 300
    while not done.exists():
        assert proc.poll() is None, "the run ended without answering the scale request"
        assert time.monotonic() < deadline, f"no answer to the scale request ({n} workers)"
        time.sleep(0.05)
    return json.loads(done.read_text())


@pytest.mark.parametrize("mode", sorted(MODES))
def test_rollout_workers_grow_and_shrink_while_the_run_goes_on(tmp_path, mode):
    run_dir = tmp_path / "run"
    over = [f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *OVERRIDES, *SCALING, *MODES[mode]]
    proc = subprocess.Popen([RELAYRL, "train", "configs/demo_grpo.yaml", *over],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_step(run_dir, 1, proc)
        up = scale(run_dir, 2, proc)
        assert up["workers"] == 2 and "1 -> 2 rollout workers" in up["result"]
        wait_for_step(run_dir, 3, proc)
        down = scale(run_dir, 1, proc)
        assert down["workers"] == 1 and "2 -> 1 rollout workers" in down["result"]
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    workers = [r["rollout/workers"] for r in rows]
    assert workers[0] == 1 and 2 in workers and workers[-1] == 1  # grew, then shrank, mid-run
    assert workers == sorted(workers[:workers.index(2) + 1]) + workers[workers.index(2) + 1:]
    assert all(r["sync/probe_max_abs_diff"] <= 1e-4 for r in rows)  # every worker held the learner's weights
    assert all(r["rollout/worker_restarts"] == 0 for r in rows)
    assert "probe max |diff|" in out
    assert len(rows) == STEPS + 3
    assert_every_prompt_trained_once(rows, over, tmp_path)


def test_autoscaling_adds_a_worker_while_the_learner_waits_on_rollouts(tmp_path):
    """Sync mode with long generations: the learner waits on rollouts for most of every step, so the
    driver adds a worker (up to max_workers), says why, and the run goes on verified."""
    run_dir = tmp_path / "run"
    over = [f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *OVERRIDES, *SCALING,
            "rollout.autoscale.enabled=true", "rollout.autoscale.max_workers=2", "rollout.autoscale.patience=1"]
    done = subprocess.run([RELAYRL, "train", "configs/demo_grpo.yaml", *over], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 -> 2 rollout workers (the learner waited on rollouts for" in done.stdout
    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert [r["rollout/workers"] for r in rows] == [1] + [2] * (len(rows) - 1)  # once, then held at max_workers
    assert all(r["sync/probe_max_abs_diff"] <= 1e-4 for r in rows)
    assert_every_prompt_trained_once(rows, over, tmp_path)
