"""What the slow fault, async and scaling tests share: the small run they fault, and its checks."""

import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
from transformers import AutoTokenizer

from cluster.config import load_config
from cluster.data import PromptStream, load_prompts, prompt_format_from_config
from cluster.metrics import read_metrics

B, N, STEPS = 16, 8, 5
OVERRIDES = ["logging.progress=false", "logging.tensorboard=false", "trainer.warm_start.steps=10",
             f"trainer.prompts_per_step={B}", f"rollout.n={N}", "trainer.eval_every=0", "trainer.eval_max_prompts=8",
             "logging.dump_samples_every=0", "checkpoint.export_hf=false", f"trainer.total_steps={STEPS}",
             "rollout.max_model_len=96", "weight_sync.verify_every=1"]


def actor_pids(cls: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"ray::{cls}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def logged(run_dir: Path, step: int, kind: str = "train") -> Callable[[], bool]:
    """Ready once metrics.jsonl has a `kind` row of step >= `step`."""
    return lambda: (run_dir / "metrics.jsonl").exists() and any(
        r["kind"] == kind and r["step"] >= step for r in read_metrics(run_dir))


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    done = logged(run_dir, step)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"run ended early (exit {proc.returncode})")
        if done():
            return
        time.sleep(0.05)
    pytest.fail(f"no step {step} within {timeout}s")


def facts(rows: list[dict], at: int = 0) -> dict:
    """What the reliability table reports of a faulted run: steps, prompts, and what the fault cost:
    the time of step `at` (the step a replaced actor's fault struck), else of the slowest step."""
    steps = sorted(r["timing/step"] for r in rows)
    out = {"steps": len(rows), "prompts": sum(len(r["prompt_ids"]) for r in rows),
           "slowest_step_s": round(steps[-1], 2), "median_step_s": round(steps[len(steps) // 2], 2)}
    if at:
        out.update(fault_step=at, fault_step_s=round(next(r["timing/step"] for r in rows if r["step"] == at), 2))
    return out


def assert_every_prompt_trained_once(rows: list[dict], over: list[str], tmp_path: Path) -> None:
    assert all(r["rollout/samples"] == B * N for r in rows)
    cfg = load_config("configs/demo_grpo.yaml", over)
    prompts = load_prompts(cfg.data.train_files, prompt_format_from_config(cfg.data),
                           AutoTokenizer.from_pretrained(f"{tmp_path}/model"))
    stream = PromptStream(prompts, cfg.data.seed, cfg.data.shuffle)
    expected = [p["prompt_id"] for _ in rows for p in stream.take(B)]  # step by step, as the trainer takes
    assert [i for r in rows for i in r["prompt_ids"]] == expected  # none lost, none twice
