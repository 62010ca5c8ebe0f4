"""Async mode on the real stack: max_staleness 0 equals sync; overlap stamps versions and corrects
for them; a SIGKILLed async run resumes and trains every prompt exactly once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.config import load_config
from cluster.data import PromptStream, load_prompts, prompt_format_from_config
from cluster.metrics import read_metrics
from cluster.trainer import train
from cluster.validate import validate

pytestmark = pytest.mark.slow

SMALL = ["logging.progress=false", "logging.tensorboard=false", "trainer.warm_start.steps=20",
         "trainer.prompts_per_step=8", "rollout.n=4", "trainer.eval_every=0", "trainer.eval_max_prompts=8",
         "logging.dump_samples_every=0", "algorithm.off_policy.name=tis", "checkpoint.export_hf=false"]


def config(tmp_path, name, *extra):
    return validate(load_config("configs/demo_grpo.yaml", [f"model.path={tmp_path}/model",
                                                           f"logging.run_dir={tmp_path}/{name}", *SMALL, *extra]))


def train_rows(run_dir):
    return [r for r in read_metrics(run_dir) if r["kind"] == "train"]


def test_async_with_staleness_zero_is_sync(tmp_path):
    steps = ["trainer.total_steps=3"]
    sync = train_rows(train(config(tmp_path, "sync", *steps)))
    asyn = train_rows(train(config(tmp_path, "async", *steps, "trainer.mode=async", "buffer.max_staleness=0")))
    assert [r["step"] for r in asyn] == [1, 2, 3]
    for a, b in zip(sync, asyn):
        assert a["prompt_ids"] == b["prompt_ids"]
        for key in ("reward/mean", "rollout/response_tokens", "learner/loss", "learner/grad_norm"):
            assert b[key] == a[key], key  # same samples, same updates: bit for bit
        assert b["staleness/max"] == 0


def test_async_overlaps_generation_and_corrects_for_the_lag(tmp_path):
    rows = train_rows(train(config(tmp_path, "async1", "trainer.total_steps=4", "trainer.mode=async",
                                   "buffer.max_staleness=1", "weight_sync.verify_every=1")))
    assert [r["version"] for r in rows] == [1, 2, 3, 4]
    samples = 8 * 4
    assert rows[0]["staleness/samples_lag_0"] == samples  # step 1 is generated when it asks
    for r in rows[1:]:  # later steps were issued a step ahead, to the previous weights
        assert r["staleness/samples_lag_1"] == samples and r["staleness/max"] == 1
        assert "learner/off_policy/capped_frac" in r  # TIS weights applied against the sampler's logprobs
        assert r["learner/old_sampler_logprob_diff_mean"] > 1e-4  # the sampler really was one version behind
        assert r["sync/probe_max_abs_diff"] <= 1e-4  # and the workers hold the learner's weights after each push
    ids = [i for r in rows for i in r["prompt_ids"]]
    assert len(ids) == len(set(ids)) == 4 * 8


def test_partial_rollouts_load_weights_mid_generation(tmp_path):
    """A push reaches each worker between two engine steps of the generation in progress: the samples
    it was producing keep their tokens and carry two versions; the bound, the correction and the
    weights (probe-checked every step) hold as in the default mode; every prompt trained once."""
    rows = train_rows(run_dir := train(config(
        tmp_path, "partial", "trainer.total_steps=4", "trainer.mode=async", "buffer.max_staleness=1",
        "rollout.partial_rollouts=true", "weight_sync.verify_every=1", "logging.dump_samples_every=1",
        # generation long next to the tiny model's learning step, so each push lands mid-generation
        "rollout.sampling.max_new_tokens=192", "rollout.sampling.min_new_tokens=192", "rollout.max_model_len=224")))
    assert [r["version"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["staleness/partial_samples"] == 0  # step 1 is generated when it asks, with v0 only
    assert sum(r["staleness/partial_samples"] for r in rows[1:]) > 0
    for r in rows:
        assert r["staleness/max"] <= 1 and r["sync/probe_max_abs_diff"] <= 1e-4
    for step, r in enumerate(rows, start=1):
        for line in (run_dir / "samples" / f"step_{step:06d}.jsonl").read_text().splitlines():
            spans = json.loads(line)["version_spans"]
            assert spans[0][1] == 0 and spans[-1][2] == 192  # every token stamped ...
            assert all(a[2] == b[1] and b[0] == a[0] + 1 for a, b in zip(spans, spans[1:]))  # ... in order
            assert json.loads(line)["policy_version"] == spans[0][0] >= step - 2  # the oldest token's, within the bound
    assert any(r["staleness/token_mean"] < r["staleness/mean"] for r in rows[1:])  # fresher tokens than samples
    ids = [i for r in rows for i in r["prompt_ids"]]
    assert len(ids) == len(set(ids)) == 4 * 8


# long enough generations (~0.5 s a step) that the kill lands while the run is still going
KILLED = ["trainer.total_steps=6", "trainer.mode=async", "buffer.max_staleness=1", "checkpoint.every=2",
          "checkpoint.keep_last=3", "rollout.sampling.max_new_tokens=64", "rollout.sampling.min_new_tokens=64",
          "rollout.max_model_len=96"]


def test_sigkilled_async_run_resumes_training_every_prompt_once(tmp_path, fault_report):
    cfg = config(tmp_path, "killed", *KILLED)
    run_dir = Path(cfg.logging.run_dir)
    args = [str(Path(sys.executable).with_name("relayrl")), "train", "configs/demo_grpo.yaml",
            f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *SMALL, *KILLED]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # kill once step 3 is logged: mid-step 4, batch 5 in flight
            time.sleep(0.02)
            if (run_dir / "metrics.jsonl").exists() and any(
                    r["kind"] == "train" and r["step"] >= 3 for r in read_metrics(run_dir)):
                break
        else:
            pytest.fail("the first run never reached step 3")
        os.kill(proc.pid, signal.SIGKILL)  # the driver, mid-step: no clean stop
        proc.wait(timeout=30)
    finally:
        time.sleep(1)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what the driver left behind (its local Ray cluster)
        except ProcessLookupError:
            pass
    killed_at = max(r["step"] for r in read_metrics(run_dir) if r["kind"] == "train")
    assert 3 <= killed_at < 6
    done = subprocess.run([*args, f"checkpoint.resume={run_dir}"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout

    rows = train_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # each step once in metrics.jsonl
    trained = [i for r in rows for i in r["prompt_ids"]]
    fmt = prompt_format_from_config(cfg.data)
    from transformers import AutoTokenizer

    stream = PromptStream(load_prompts(cfg.data.train_files, fmt, AutoTokenizer.from_pretrained(f"{tmp_path}/model")),
                          cfg.data.seed, cfg.data.shuffle)
    expected = [p["prompt_id"] for _ in range(6) for p in stream.take(8)]  # step by step, as the trainer takes
    assert trained == expected  # none skipped, none twice, in the order the stream gave them
    discarded = run_dir / "metrics.discarded.jsonl"
    redone = [json.loads(l) for l in discarded.read_text().splitlines()] if discarded.exists() else []
    ckpt_step = 2 * (killed_at // 2)  # a step's row is logged after its checkpoint is written
    assert {d["row"]["step"] for d in redone if d["reason"] == "after_resume_step" and d["row"]["kind"] == "train"} \
        == set(range(ckpt_step + 1, killed_at + 1))
    fault_report(steps=len(rows), prompts=len(trained), killed_after_step=killed_at, resumed_from_step=ckpt_step,
                 redone=list(range(ckpt_step + 1, killed_at + 1)))
