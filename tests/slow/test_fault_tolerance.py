"""Faults injected into real runs on the tiny model: a rollout worker SIGKILLed mid-generation is
replaced, brought to the current weights (probe-verified) and given the lost prompts; a reward
scorer SIGKILLed or frozen (SIGSTOP: alive but silent) is replaced and its groups scored again;
a learner rank or PPO's critic rank SIGKILLed rebuilds its group from the last checkpoint; every
prompt of every step is trained exactly once."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest
from fault_runs import B, N, OVERRIDES, STEPS, actor_pids, assert_every_prompt_trained_once, facts, wait_for_step

from cluster.metrics import read_metrics

pytestmark = pytest.mark.slow

PHASES = {
    # long generations (~1 s): the kill lands inside one; the stream fails, its prompts are re-issued
    "mid_generation": ["rollout.sampling.max_new_tokens=64", "rollout.sampling.min_new_tokens=64"],
    # short generations, long learning (16 optimizer steps): the worker dies idle; the next push notices
    "while_idle": ["rollout.sampling.max_new_tokens=8", "algorithm.epochs=4", "algorithm.mini_batches=4"],
}


def faulted_run(config: str, over: list[str], run_dir: Path, victim: str, count: int, signum: int = signal.SIGKILL,
                ready: Optional[Callable[[], bool]] = None, pause: float = 0.0) -> tuple[str, int]:
    """`relayrl train config *over`; once `ready()` (default: step 2 logged) and `pause` seconds more,
    `signum` to the last-started of the `count` actors of class `victim`. Returns the run's console
    output and the step under way at the fault; the run must finish (exit 0)."""
    proc = subprocess.Popen([str(Path(sys.executable).with_name("relayrl")), "train", config, *over],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        if ready is None:
            wait_for_step(run_dir, 2, proc)
        else:
            deadline = time.monotonic() + 300
            while not ready():
                assert proc.poll() is None and time.monotonic() < deadline, "the run never got ready for the fault"
                time.sleep(0.05)
        time.sleep(pause)
        in_progress = 1 + max([r["step"] for r in read_metrics(run_dir) if r["kind"] == "train"], default=0)
        pids = actor_pids(victim)
        assert len(pids) == count, pids
        os.kill(max(pids), signum)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    return out, in_progress


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_rollout_worker_killed_is_replaced_and_nothing_is_lost(tmp_path, phase, fault_report):
    run_dir = tmp_path / "run"
    over = [f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *OVERRIDES, *PHASES[phase]]
    # step 3 is under way: generating (long generations) or learning (long learning)
    out, _ = faulted_run("configs/demo_grpo.yaml", over, run_dir, "RolloutWorker", 1, pause=0.3)
    assert "rollout[0] died" in out  # said on the console, once, as it happened

    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[-1]["rollout/worker_restarts"] == 1
    assert all(r["sync/probe_max_abs_diff"] <= 1e-4 for r in rows)  # the replacement holds the learner's weights
    assert_every_prompt_trained_once(rows, over, tmp_path)
    fault_report(**facts(rows), replaced=1)


# SIGKILL: the scorer's calls fail at once. SIGSTOP: it neither answers nor dies; after one group's
# bound (16 calls / 4 threads x reward.timeout_s 1 s + 10 s slack = 14 s) it is killed and replaced.
@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_reward_scorer_killed_or_frozen_is_replaced_and_its_groups_rescored(tmp_path, fault, fault_report):
    run_dir = tmp_path / "run"
    over = [f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *OVERRIDES, "reward.timeout_s=1",
            "rollout.sampling.max_new_tokens=64", "rollout.sampling.min_new_tokens=64"]
    # step 3 is generating: its groups will reach a dead (or silent) scorer
    out, _ = faulted_run("configs/demo_grpo.yaml", over, run_dir, "RewardScorer", 1, getattr(signal, fault))
    assert "reward[0] failed" in out
    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[-1]["reward/scorer_restarts"] == 1 and rows[-1]["rollout/worker_restarts"] == 0
    assert all(r["reward/errors"] == 0 and "reward/arithmetic" in r for r in rows)  # every sample really scored
    assert_every_prompt_trained_once(rows, over, tmp_path)
    fault_report(**facts(rows), replaced=1)


def test_learner_rank_killed_rebuilds_the_group_from_the_checkpoint_and_redoes_the_steps_since(tmp_path, fault_report):
    """Rank 1 of 2 SIGKILLed while the learner trains step 3: the group is rebuilt from the step-2
    checkpoint, the rollout worker is brought to its weights, and step 3 is retrained from the
    samples the driver held — no prompt regenerated, skipped or trained twice."""
    run_dir = tmp_path / "run"
    over = [f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *OVERRIDES, *PHASES["while_idle"],
            "learner.num_ranks=2", "checkpoint.every=2", "checkpoint.keep_last=2"]
    # step 3 is learning (16 optimizer steps): rank 1 of 2 dies
    out, in_progress = faulted_run("configs/demo_grpo.yaml", over, run_dir, "LearnerRank", 2, pause=0.3)
    assert "rebuilding the learner from step_000002" in out and "died during" in out
    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # each step once
    assert rows[-1]["learner/rebuilds"] == 1 and rows[-1]["rollout/worker_restarts"] == 0
    redone = {r["step"] for r in rows if r["learner/redone"]}
    assert redone == set(range(3, in_progress + 1))  # the steps since the checkpoint, from the held samples
    assert all(r["sync/probe_max_abs_diff"] <= 1e-4 for r in rows)  # the workers hold the rebuilt learner's weights
    assert_every_prompt_trained_once(rows, over, tmp_path)
    rebuilt_s = float(re.search(r"learner rebuilt in ([0-9.]+)s", out).group(1))
    fault_report(**facts(rows), rebuilt=1, rebuild_s=rebuilt_s, redone=sorted(redone))


def test_critic_rank_killed_rebuilds_the_critic_and_brings_the_policy_back_to_the_same_checkpoint(tmp_path, fault_report):
    """PPO: the critic's rank SIGKILLed while step 3 trains (policy and critic at the same time): the
    critic group is rebuilt from the step-2 checkpoint, the policy — which may already hold step 3's
    update — reloads that checkpoint too and the rollout worker gets its weights back (probe-verified),
    and step 3 is retrained from the samples held — every prompt trained once, each step logged once."""
    run_dir = tmp_path / "run"
    over = [f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *OVERRIDES, *PHASES["while_idle"],
            "checkpoint.every=2", "checkpoint.keep_last=2"]
    # step 3 is learning (16 optimizer steps each)
    out, in_progress = faulted_run("configs/demo_ppo.yaml", over, run_dir, "CriticRank", 1, pause=0.3)
    assert "rebuilding the critic from step_000002" in out and "critic[0] died during" in out
    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # each step once
    assert rows[-1]["learner/rebuilds"] == 1 and rows[-1]["rollout/worker_restarts"] == 0
    redone = {r["step"] for r in rows if r["learner/redone"]}
    assert redone == set(range(3, in_progress + 1))
    assert all(r["sync/probe_max_abs_diff"] <= 1e-4 for r in rows)  # the worker holds the restored policy's weights
    assert all(r["critic/loss"] > 0 and r["critic/nonfinite_skipped"] == 0 for r in rows)  # the new critic trains
    assert_every_prompt_trained_once(rows, over, tmp_path)
    where = json.loads((run_dir / "placement.json").read_text())  # rewritten with the rebuilt critic
    assert sorted(where) == ["critic", "learner", "reward", "rollout"] and len(where["critic"]) == 1
    rebuilt_s = float(re.search(r"critic rebuilt in ([0-9.]+)s", out).group(1))
    fault_report(**facts(rows), rebuilt=1, rebuild_s=rebuilt_s, redone=sorted(redone))


def test_learner_rank_killed_in_the_warm_start_starts_the_learner_over_and_warm_starts_again(tmp_path, fault_report):
    """No checkpoint exists before the step-0 one: a rank SIGKILLed during warm start gets a new
    learner group from model.path and the warm start is done again with the same seed — so it
    reproduces the first attempt's losses — then RL runs as usual."""
    run_dir = tmp_path / "run"
    ws = 200
    over = [f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *OVERRIDES, f"trainer.warm_start.steps={ws}",
            "learner.num_ranks=2", "checkpoint.every=2", "checkpoint.keep_last=2"]
    at_step_50 = lambda: (run_dir / "metrics.jsonl").exists() and any(  # noqa: E731
        r["kind"] == "warm_start" and r["step"] >= 50 for r in read_metrics(run_dir))
    out, _ = faulted_run("configs/demo_grpo.yaml", over, run_dir, "LearnerRank", 2, ready=at_step_50)
    assert "before the first checkpoint; the learner starts over" in out and "died during" in out
    metrics = read_metrics(run_dir)
    warm = [r for r in metrics if r["kind"] == "warm_start"]
    assert [r["step"] for r in warm] == list(range(1, ws + 1))  # the redone warm start, once
    first = [d["row"] for d in map(json.loads, (run_dir / "metrics.discarded.jsonl").read_text().splitlines())
             if d["reason"] == "learner_rebuilt" and d["row"]["kind"] == "warm_start"]
    assert len(first) >= 50  # the first attempt's rows, set aside
    assert all(r["sft/loss"] == warm[r["step"] - 1]["sft/loss"] for r in first)  # same seed, same warm start
    rows = [r for r in metrics if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[-1]["learner/rebuilds"] == 1 and not any(r["learner/redone"] for r in rows)
    assert all(r["sync/probe_max_abs_diff"] <= 1e-4 for r in rows)
    assert_every_prompt_trained_once(rows, over, tmp_path)
    fault_report(**facts(rows), rebuilt=1, warm_start_steps_lost=len(first))
