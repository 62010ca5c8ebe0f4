"""Faults injected into real runs on the tiny model: a rollout worker SIGKILLed mid-generation or
idle is replaced, brought to the current weights (probe-verified) and given the lost prompts; a
reward scorer SIGKILLed or frozen (SIGSTOP: alive but silent) is replaced and its groups scored
again; a learner rank or PPO's critic rank SIGKILLed rebuilds its group from the last checkpoint
(or, in the warm start, from model.path); every prompt of every step is trained exactly once.
A run takes ~1 min here, so one run carries two faults where they do not interfere."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from fault_runs import OVERRIDES, STEPS, actor_pids, assert_every_prompt_trained_once, facts, logged

from cluster.metrics import read_metrics

pytestmark = pytest.mark.slow

PHASES = {
    # long generations (~1 s): the kill lands inside one; the stream fails, its prompts are re-issued
    "mid_generation": ["rollout.sampling.max_new_tokens=64", "rollout.sampling.min_new_tokens=64"],
    # short generations, long learning (16 optimizer steps): the worker dies idle; the next push notices
    "while_idle": ["rollout.sampling.max_new_tokens=8", "algorithm.epochs=4", "algorithm.mini_batches=4"],
}
# and in the same run, once step 3 is logged, the reward scorer: SIGKILL (its calls fail at once) while
# step 4 generates long samples, or SIGSTOP (it neither answers nor dies) while the worker is idle; after
# one group's bound (16 calls / 4 threads x reward.timeout_s 1 s + 10 s slack = 14 s) it is killed, replaced
SCORER_FAULT = {"mid_generation": signal.SIGKILL, "while_idle": signal.SIGSTOP}


@dataclass
class Fault:
    """`signum` to the last-started of the `count` actors of class `victim`, once `ready()` and `pause` s more."""
    victim: str
    count: int
    ready: Callable[[], bool]
    signum: int = signal.SIGKILL
    pause: float = 0.0


def step_under_way(run_dir: Path) -> int:
    done = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []  # none yet at start-up
    return 1 + max([r["step"] for r in done if r["kind"] == "train"], default=0)


def faulted_run(config: str, over: list[str], run_dir: Path, *faults: Fault) -> tuple[str, list[tuple[int, int]]]:
    """`relayrl train config *over` with `faults` injected one after another. Returns the run's console
    output and, per fault, the train step under way when it struck, as bounds (read just before the
    signal and 0.5 s after it: a step can end between the read and the kill, or its row be written
    just after it; a rebuild takes seconds, so no step the fault interrupted is logged by then).
    The run must finish (exit 0)."""
    proc = subprocess.Popen([str(Path(sys.executable).with_name("relayrl")), "train", config, *over],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    in_progress = []
    try:
        for fault in faults:
            deadline = time.monotonic() + 300
            while not fault.ready():
                assert proc.poll() is None, f"the run ended before the {fault.victim} fault: {proc.communicate()[0][-3000:]}"
                assert time.monotonic() < deadline, f"the run never got ready for the {fault.victim} fault"
                time.sleep(0.05)
            pids = actor_pids(fault.victim)
            assert len(pids) == fault.count, pids
            time.sleep(fault.pause)
            before = step_under_way(run_dir)
            os.kill(max(pids), fault.signum)
            time.sleep(0.5)
            in_progress.append((before, step_under_way(run_dir)))
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    return out, in_progress


def train_rows(run_dir: Path) -> list[dict]:
    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # each step once
    return rows


def assert_rebuilt(rows: list[dict], out: str, group: str, rebuilds: int, struck: tuple[int, int]) -> tuple[float, int]:
    """A rebuilt learner/critic group: the steps since the step-2 checkpoint up to the one the fault
    struck (within `struck`'s bounds) retrained from the held samples, the rollout worker never replaced
    but re-synced (probe), every prompt trained once. Returns the rebuild's seconds, as the run printed
    them, and the step the fault struck."""
    assert f"rebuilding the {group} from step_000002" in out and re.search(rf"{group}\[\d\] died during", out)
    assert rows[-1]["learner/rebuilds"] == rebuilds and rows[-1]["rollout/worker_restarts"] == 0
    redone = {r["step"] for r in rows if r["learner/redone"]}
    assert redone and struck[0] <= max(redone) <= struck[1], (redone, struck)
    assert redone == set(range(3, max(redone) + 1))  # the steps since the checkpoint, from the held samples
    assert all(r["sync/probe_max_abs_diff"] <= 1e-4 for r in rows)  # the workers hold the rebuilt group's weights
    return float(re.search(rf"{group} rebuilt in ([0-9.]+)s", out).group(1)), max(redone)


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_rollout_worker_and_reward_scorer_lost_are_replaced_and_nothing_is_lost(tmp_path, phase, fault_report):
    """Step 3: the rollout worker SIGKILLed mid-generation or while idle; step 4: the reward scorer
    SIGKILLed or frozen. Each is replaced (the worker at the learner's weights, probe-verified), the
    dead worker's prompts re-issued, the scorer's groups scored again: every sample really scored,
    every prompt trained once."""
    run_dir = tmp_path / "run"
    over = [f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *OVERRIDES, *PHASES[phase], "reward.timeout_s=1"]
    scorer = SCORER_FAULT[phase]
    out, (worker_at, scorer_at) = faulted_run(
        "configs/demo_grpo.yaml", over, run_dir,
        Fault("RolloutWorker", 1, logged(run_dir, 2), pause=0.3),  # step 3 is generating or learning
        Fault("RewardScorer", 1, logged(run_dir, 3), scorer))  # step 4's groups reach a dead or silent scorer
    assert "rollout[0] died" in out and "reward[0] failed" in out  # said on the console as it happened
    rows = train_rows(run_dir)
    assert rows[-1]["rollout/worker_restarts"] == 1 and rows[-1]["reward/scorer_restarts"] == 1
    assert all(r["sync/probe_max_abs_diff"] <= 1e-4 for r in rows)  # the replacement holds the learner's weights
    assert all(r["reward/errors"] == 0 and "reward/arithmetic" in r for r in rows)  # every sample really scored
    assert_every_prompt_trained_once(rows, over, tmp_path)
    fault_report(**facts(rows, worker_at[0]), fault=f"rollout worker {phase}", replaced=1)
    fault_report(**facts(rows, scorer_at[0]), fault=f"reward scorer {signal.Signals(scorer).name}", replaced=1)


def test_learner_rank_lost_at_start_in_warm_start_and_in_training_is_rebuilt_each_time(tmp_path, fault_report):
    """Rank 1 of 2 SIGKILLed three times. As the learner group starts (its two rank processes just
    launched): a new group at once. In the warm start (no checkpoint exists before the step-0 one): a
    new learner group from model.path, the warm start done again with the same seed — reproducing the
    first attempt's losses. Then while step 3 trains: the group rebuilt from the step-2 checkpoint, the
    rollout worker brought to its weights, and step 3 retrained from the samples the driver held — no
    prompt regenerated, skipped or trained twice. All three count in learner.max_restarts."""
    run_dir = tmp_path / "run"
    ws = 200
    over = [f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *OVERRIDES, *PHASES["while_idle"],
            f"trainer.warm_start.steps={ws}", "learner.num_ranks=2", "learner.max_restarts=3", "checkpoint.every=2",
            "checkpoint.keep_last=2"]
    out, (_, _, struck) = faulted_run(
        "configs/demo_grpo.yaml", over, run_dir,
        Fault("LearnerRank", 2, lambda: len(actor_pids("LearnerRank")) == 2),
        Fault("LearnerRank", 2, logged(run_dir, 50, "warm_start")),
        Fault("LearnerRank", 2, logged(run_dir, 2), pause=0.3))  # step 3 is learning (16 optimizer steps)
    assert re.search(r"learner\[\d\] died during .*: while the learner group started; a new group starts "
                     r"\(1 of at most 3 rebuilds\)", out), out[:3000]
    assert "before the first checkpoint; the learner starts over" in out
    metrics = read_metrics(run_dir)
    warm = [r for r in metrics if r["kind"] == "warm_start"]
    assert [r["step"] for r in warm] == list(range(1, ws + 1))  # the redone warm start, once
    first = [d["row"] for d in map(json.loads, (run_dir / "metrics.discarded.jsonl").read_text().splitlines())
             if d["reason"] == "learner_rebuilt" and d["row"]["kind"] == "warm_start"]
    assert len(first) >= 50  # the first attempt's rows, set aside
    assert all(r["sft/loss"] == warm[r["step"] - 1]["sft/loss"] for r in first)  # same seed, same warm start
    rows = train_rows(run_dir)
    rebuilt_s, in_progress = assert_rebuilt(rows, out, "learner", 3, struck)
    assert_every_prompt_trained_once(rows, over, tmp_path)
    fault_report(**facts(rows), fault="start-up", rebuilt=1,
                 started_s=float(re.search(r"started in ([0-9.]+)s", out).group(1)))
    fault_report(**facts(rows), fault="warm start", rebuilt=1, warm_start_steps_lost=len(first))
    fault_report(**facts(rows), fault="training", rebuilt=1, rebuild_s=rebuilt_s, redone=list(range(3, in_progress + 1)))


def test_critic_rank_killed_rebuilds_the_critic_and_brings_the_policy_back_to_the_same_checkpoint(tmp_path, fault_report):
    """PPO: the critic's rank SIGKILLed while step 3 trains (policy and critic at the same time): the
    critic group is rebuilt from the step-2 checkpoint, the policy — which may already hold step 3's
    update — reloads that checkpoint too and the rollout worker gets its weights back (probe-verified),
    and step 3 is retrained from the samples held — every prompt trained once, each step logged once."""
    run_dir = tmp_path / "run"
    over = [f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *OVERRIDES, *PHASES["while_idle"],
            "checkpoint.every=2", "checkpoint.keep_last=2"]
    out, (struck,) = faulted_run("configs/demo_ppo.yaml", over, run_dir,
                                      Fault("CriticRank", 1, logged(run_dir, 2), pause=0.3))  # step 3 is learning
    rows = train_rows(run_dir)
    rebuilt_s, in_progress = assert_rebuilt(rows, out, "critic", 1, struck)
    assert all(r["critic/loss"] > 0 and r["critic/nonfinite_skipped"] == 0 for r in rows)  # the new critic trains
    assert_every_prompt_trained_once(rows, over, tmp_path)
    where = json.loads((run_dir / "placement.json").read_text())  # rewritten with the rebuilt critic
    assert sorted(where) == ["critic", "learner", "reward", "rollout"] and len(where["critic"]) == 1
    fault_report(**facts(rows), fault="training", rebuilt=1, rebuild_s=rebuilt_s, redone=list(range(3, in_progress + 1)))
