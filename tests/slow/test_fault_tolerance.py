"""Faults injected into real runs on the tiny model: a rollout worker SIGKILLed mid-generation is
replaced, brought to the current weights (probe-verified) and given the lost prompts; a reward
scorer SIGKILLed or frozen (SIGSTOP: alive but silent) is replaced and its groups scored again;
every prompt of every step is trained exactly once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from cluster.config import load_config
from cluster.data import PromptStream, load_prompts, prompt_format_from_config
from cluster.metrics import read_metrics

pytestmark = pytest.mark.slow

B, N, STEPS = 16, 8, 5
OVERRIDES = ["logging.progress=false", "logging.tensorboard=false", "trainer.warm_start.steps=10",
             f"trainer.prompts_per_step={B}", f"rollout.n={N}", "trainer.eval_every=0", "trainer.eval_max_prompts=8",
             "logging.dump_samples_every=0", "checkpoint.export_hf=false", f"trainer.total_steps={STEPS}",
             "rollout.max_model_len=96", "weight_sync.verify_every=1"]
PHASES = {
    # long generations (~1 s): the kill lands inside one; the stream fails, its prompts are re-issued
    "mid_generation": ["rollout.sampling.max_new_tokens=64", "rollout.sampling.min_new_tokens=64"],
    # short generations, long learning (16 optimizer steps): the worker dies idle; the next push notices
    "while_idle": ["rollout.sampling.max_new_tokens=8", "algorithm.epochs=4", "algorithm.mini_batches=4"],
}


def actor_pids(cls: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"ray::{cls}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"run ended early (exit {proc.returncode})")
        if (run_dir / "metrics.jsonl").exists() and any(
                r["kind"] == "train" and r["step"] >= step for r in read_metrics(run_dir)):
            return
        time.sleep(0.05)
    pytest.fail(f"no step {step} within {timeout}s")


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_rollout_worker_killed_is_replaced_and_nothing_is_lost(tmp_path, phase):
    run_dir = tmp_path / "run"
    over = [f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *OVERRIDES, *PHASES[phase]]
    proc = subprocess.Popen([str(Path(sys.executable).with_name("relayrl")), "train", "configs/demo_grpo.yaml", *over],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_step(run_dir, 2, proc)
        time.sleep(0.3)  # step 3 is under way: generating (long generations) or learning (long learning)
        victims = actor_pids("RolloutWorker")
        assert len(victims) == 1
        os.kill(victims[0], signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert "rollout[0] died" in out  # said on the console, once, as it happened

    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[-1]["rollout/worker_restarts"] == 1
    assert all(r["sync/probe_max_abs_diff"] <= 1e-4 for r in rows)  # the replacement holds the learner's weights
    assert_every_prompt_trained_once(rows, over, tmp_path)


def assert_every_prompt_trained_once(rows: list[dict], over: list[str], tmp_path: Path) -> None:
    assert all(r["rollout/samples"] == B * N for r in rows)
    cfg = load_config("configs/demo_grpo.yaml", over)
    prompts = load_prompts(cfg.data.train_files, prompt_format_from_config(cfg.data),
                           AutoTokenizer.from_pretrained(f"{tmp_path}/model"))
    expected = [p["prompt_id"] for p in PromptStream(prompts, cfg.data.seed, cfg.data.shuffle).take(STEPS * B)]
    assert [i for r in rows for i in r["prompt_ids"]] == expected  # none lost, none twice


# SIGKILL: the scorer's calls fail at once. SIGSTOP: it neither answers nor dies; after one group's
# bound (16 calls / 4 threads x reward.timeout_s 1 s + 10 s slack = 14 s) it is killed and replaced.
@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_reward_scorer_killed_or_frozen_is_replaced_and_its_groups_rescored(tmp_path, fault):
    run_dir = tmp_path / "run"
    over = [f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *OVERRIDES, "reward.timeout_s=1",
            "rollout.sampling.max_new_tokens=64", "rollout.sampling.min_new_tokens=64"]
    proc = subprocess.Popen([str(Path(sys.executable).with_name("relayrl")), "train", "configs/demo_grpo.yaml", *over],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_step(run_dir, 2, proc)
        victims = actor_pids("RewardScorer")
        assert len(victims) == 1
        os.kill(victims[0], getattr(signal, fault))  # step 3 is generating: its groups will reach a dead scorer
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert "reward[0] failed" in out
    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[-1]["reward/scorer_restarts"] == 1 and rows[-1]["rollout/worker_restarts"] == 0
    assert all(r["reward/errors"] == 0 and "reward/arithmetic" in r for r in rows)  # every sample really scored
    assert_every_prompt_trained_once(rows, over, tmp_path)
