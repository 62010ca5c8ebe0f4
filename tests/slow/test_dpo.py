"""DPO on the real stack (relayrl train, algorithm.dpo): offline on a constructed preference set and
online from rollout groups, with the reference model on the learner and the weight-sync probe.

The offline set is built from the arithmetic train split: each pair's chosen completion is the
right sum, its rejected one a near miss (off by 1, 10 or 100). DPO raises the policy's preference
for the right answers (implicit-reward accuracy and margin) and its held-out accuracy."""

import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from fault_runs import actor_pids, logged

from actors.tasks.arithmetic import preference_pairs, write_jsonl
from cluster.config import load_config
from cluster.metrics import read_metrics
from cluster.trainer import train
from cluster.validate import validate

pytestmark = pytest.mark.slow

BASE = ["logging.progress=false", "logging.tensorboard=false", "logging.dump_samples_every=0",
        "checkpoint.export_hf=false"]


def resume_from(run_dir: Path, step: int, cfg_for) -> list[dict]:
    """The run stopped right after its checkpoint at `step` (a copy without the later ones), resumed
    with cfg_for(copy); the resumed copy's train rows."""
    crashed = run_dir.parent / "crashed"
    later = lambda d, names: [n for n in names if n.startswith("step_") and n[5:].isdigit() and int(n[5:]) > step]  # noqa: E731
    shutil.copytree(run_dir, crashed, ignore=later)
    (crashed / "checkpoints" / "latest").write_text(f"step_{step:06d}")
    train(cfg_for(crashed))
    rows = [json.loads(line) for line in (crashed / "metrics.jsonl").read_text().splitlines()]
    return sorted((r for r in rows if r["kind"] == "train"), key=lambda r: r["step"])


def assert_same_steps(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        for key in ("dpo/pairs", "dpo/loss", "dpo/reward_margin", "dpo/reward_accuracy", "dpo/grad_norm"):
            assert y[key] == pytest.approx(x[key], abs=1e-6), (x["step"], key)


def kill_learner_rank_at(run_dir: Path, step: int) -> threading.Thread:
    """SIGKILL the learner rank once train step `step` is logged (a thread: train() runs in this process)."""
    def watch():
        ready, deadline = logged(run_dir, step), time.monotonic() + 600
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(max(actor_pids("LearnerRank")), signal.SIGKILL)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def kill_learner_rank_on_resume(monkeypatch) -> list[int]:
    """SIGKILL the learner rank as the resumed run starts loading its checkpoint (once); the pids killed."""
    import cluster.trainer

    real, killed = cluster.trainer.restore, []

    def restore(run, path):
        if not killed:
            killed.append(max(actor_pids("LearnerRank")))
            os.kill(killed[-1], signal.SIGKILL)
        return real(run, path)

    monkeypatch.setattr(cluster.trainer, "restore", restore)
    return killed


def test_offline_dpo_prefers_right_answers_and_raises_accuracy_and_resumes_exactly(tmp_path, fault_report,
                                                                                 monkeypatch, capsys):
    """The demo's warm start (~22% held-out), then 60 DPO steps of 32 pairs with the RPO term
    (algorithm.dpo.nll_coef: plain DPO lowers the chosen answers' likelihood too, README). The
    learner rank is SIGKILLed after step 20: the learner is rebuilt from the step-0 checkpoint and
    steps 1-20+ are taken again on the same pairs, equal to the first attempt's. Stopped after its
    step-57 checkpoint and resumed, it takes steps 58-60 as before: the policy and optimizer restored,
    the reference reloaded from warm_started/, the pair order picked up — though the learner rank is
    SIGKILLed again as the resume loads the checkpoint (a new learner group loads it again)."""
    write_jsonl(tmp_path / "pairs.jsonl", preference_pairs())

    def cfg(run_dir, *more):
        return validate(load_config("configs/demo_grpo.yaml", [
            f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *BASE,
            "trainer.mode=offline", "algorithm.dpo.enabled=true", f"data.preference_files=[{tmp_path}/pairs.jsonl]",
            "algorithm.dpo.nll_coef=1.0", "learner.optimizer.lr=1e-3", "checkpoint.every=57",
            "trainer.total_steps=60", "trainer.prompts_per_step=32", "trainer.eval_every=0", *more]))

    killer = kill_learner_rank_at(tmp_path / "run", 20)
    rows = read_metrics(train(cfg(tmp_path / "run")))
    killer.join(timeout=1)
    assert not killer.is_alive()
    steps = sorted((r for r in rows if r["kind"] == "train"), key=lambda r: r["step"])
    discarded = [d["row"] for d in map(json.loads, (tmp_path / "run" / "metrics.discarded.jsonl").read_text().splitlines())
                 if d["reason"] == "learner_rebuilt" and d["row"]["kind"] == "train"]
    assert len(discarded) >= 20  # the first attempt's steps, set aside when the learner was rebuilt ...
    assert_same_steps(sorted(discarded, key=lambda r: r["step"]), steps[:len(discarded)])  # ... and redone alike
    assert all(r["learner/rebuilds"] == 0 and r["learner/redone"] == 0 for r in discarded)
    assert [r["learner/redone"] for r in steps[:len(discarded)]] == [1.0] * len(discarded)
    assert all(r["learner/rebuilds"] == 1 for r in steps) and steps[-1]["learner/redone"] == 0
    evals = [r["eval/accuracy"] for r in sorted((r for r in rows if r["kind"] == "eval"), key=lambda r: r["step"])]
    assert len(steps) == 60 and all(r["dpo/pairs"] == 32 for r in steps)
    first, last = steps[:10], steps[-10:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    # step 1 starts at the reference (the warm-started policy): margin exactly 0, loss ln 2
    assert steps[0]["dpo/reward_margin"] == 0.0 and abs(steps[0]["dpo/loss"] - 0.693147) < 1e-5
    # the preference for right answers grows (measured: accuracy 0.47 -> 0.70, margin 0.02 -> 0.11) ...
    assert mean(last, "dpo/reward_accuracy") > mean(first, "dpo/reward_accuracy") + 0.1
    assert mean(last, "dpo/reward_margin") > mean(first, "dpo/reward_margin") + 0.05
    assert mean(last, "dpo/reward_chosen") > 0 > mean(last, "dpo/reward_rejected")
    # ... and so does held-out accuracy (measured 21.5% -> 34.0%)
    assert evals[-1] > evals[0] + 0.05, evals
    fault_report(steps=len(steps), pairs=32, killed_after_step=max(r["step"] for r in discarded),
                 redone=int(sum(r["learner/redone"] for r in steps)), fault="training")
    killed = kill_learner_rank_on_resume(monkeypatch)
    capsys.readouterr()
    resumed = resume_from(tmp_path / "run", 57, lambda d: cfg(d, f"checkpoint.resume={d}"))
    out = capsys.readouterr().out
    assert len(killed) == 1 and "while resuming; a new learner group loads the checkpoint again" in out, out[-3000:]
    assert_same_steps(steps, resumed)
    fault_report(resumed_from_step=57, steps=len(resumed), fault="resume",
                 replace_s=float(re.search(r"learner replaced in ([0-9.]+)s", out).group(1)))


def test_online_dpo_trains_on_group_pairs_and_resumes_exactly(tmp_path):
    """From the random model, rewarded for writing any digit: about half its completions do, so its
    groups have rewards to pair by. Stopped after its step-2 checkpoint and resumed, step 3 samples
    the same prompts from the same weights and takes the same update."""
    def cfg(run_dir, *more):
        return validate(load_config("configs/demo_grpo.yaml", [
            f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *BASE,
            "trainer.warm_start.steps=0", "reward.functions=[{name: format, params: {pattern: '[0-9]'}}]",
            "algorithm.dpo.enabled=true", "algorithm.dpo.pairs=all", "trainer.total_steps=3", "trainer.prompts_per_step=8",
            "rollout.n=4", "trainer.eval_every=0", "trainer.eval_max_prompts=8", "weight_sync.verify_every=1",
            "checkpoint.every=2", *more]))

    steps = sorted((r for r in read_metrics(train(cfg(tmp_path / "run"))) if r["kind"] == "train"),
                   key=lambda r: r["step"])
    assert len(steps) == 3
    for r in steps:
        assert r["sync/probe_max_abs_diff"] <= 1e-4  # the engines sample from the DPO-updated weights
        assert r["dpo/pairs"] > 0 and r["dpo/grad_norm"] > 0
    resumed = resume_from(tmp_path / "run", 2, lambda d: cfg(d, f"checkpoint.resume={d}"))
    assert_same_steps(steps, resumed)
    assert resumed[2]["prompt_ids"] == steps[2]["prompt_ids"]

