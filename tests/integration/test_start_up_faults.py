"""Actors lost while the weight-sync group forms at start-up (`start_run`): a learner rank lost builds
a new learner group, the death counted in learner.max_restarts; a rollout worker lost is replaced
(rollout.max_restarts) and the learner group built again (its rank 0 would wait for the dead worker).
Either way the weight-sync group forms again and the run starts: its engine loads the learner's weights,
probe-verified. Real Ray, DeepSpeed and vLLM on the tiny model; the processes are SIGKILLed.

(A learner rank lost while the group itself starts, in warm start or in training, and rollout workers
lost mid-run: tests/slow/test_fault_tolerance.py.)
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_config(tmp_path, *extra):
    from cluster.config import load_config
    from cluster.validate import validate

    over = [f"model.path={tmp_path}/model", f"logging.run_dir={tmp_path}/run", "logging.progress=false",
            "logging.tensorboard=false", "trainer.warm_start.steps=0", *extra]
    return validate(load_config(ROOT / "configs/demo_grpo.yaml", over))


def actor_pids(cls: str) -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"]) if f"ray::{cls}" in " ".join(p.info["cmdline"] or [])]


def kill(cls: str) -> int:
    """SIGKILL the one actor of class `cls`; return once its process (and so its sockets) is gone."""
    import psutil

    pids = actor_pids(cls)
    assert len(pids) == 1, (cls, pids)
    proc = psutil.Process(pids[0])
    proc.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs([proc], timeout=30)
    assert not alive, alive
    return pids[0]


def test_learner_rank_and_rollout_worker_lost_while_weight_sync_forms_at_start(tmp_path, monkeypatch, fault_report):
    """The first set-up: learner rank 0 is killed right after it is asked to host the weight-sync
    group, before the rollout worker joins; the worker finds the port refusing and fails at once (the
    TCP store's own connect would retry for about twice weight_sync.timeout_s, and the next set-up,
    bounded by timeout_s, would time out waiting for it). The second set-up: the rollout worker is
    killed. The third starts the run."""
    from cluster.learner_group import LearnerGroup
    from cluster.run_setup import start_run

    monkeypatch.chdir(ROOT)  # the demo config names its data files relative to the repository
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    real, killed = LearnerGroup.init_weight_sync_async, []

    def init_then_kill(self, *args, **kwargs):
        refs = real(self, *args, **kwargs)
        if len(killed) < 2:
            killed.append(kill(("LearnerRank", "RolloutWorker")[len(killed)]))  # one rank: rank 0, the host
        return refs

    monkeypatch.setattr(LearnerGroup, "init_weight_sync_async", init_then_kill)
    run = start_run(run_config(tmp_path, "learner.max_restarts=1", "rollout.max_restarts=1"))
    try:
        assert len(killed) == 2 and not set(killed) & set(actor_pids("LearnerRank") + actor_pids("RolloutWorker"))
        assert len(actor_pids("LearnerRank")) == 1 and len(actor_pids("RolloutWorker")) == 1  # the new ones
        assert len(run.learner_deaths) == 1 and "learner[0] died during weight-sync set-up" in run.learner_deaths[0]
        assert run.rollout.restarts == 1
        notes = "\n".join(run.notes)
        assert "while the learner group started; a new group starts (1 of at most 1 rebuilds)" in notes, notes
        assert "rollout[0] died during weight-sync set-up" in notes and "a new rollout worker in its place" in notes
        run.sync.push(1)  # the third learner group's weights reach the new engine over the re-formed group ...
        diff = run.sync.verify(*run.probe)  # ... and it samples from them
        assert diff["sync/probe_max_abs_diff"] <= 1e-4, diff
        fault_report(started_s=run.startup_seconds, probe=diff["sync/probe_max_abs_diff"])
    finally:
        run.shutdown()
