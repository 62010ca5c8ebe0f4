"""A learner rank lost while the weight-sync group forms at start-up (`start_run`): the learner group
is built again and the weight-sync group formed around its new rank 0, with the same rollout worker —
the run starts, its engine loads the learner's weights (probe-verified), and the death counts in
learner.max_restarts. Real Ray, DeepSpeed and vLLM on the tiny model; the rank is SIGKILLed.

(A rank lost while the group itself starts, in warm start or in training: tests/slow/test_fault_tolerance.py.)
"""

from __future__ import annotations

import os
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


def rank_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"]) if "ray::LearnerRank" in " ".join(p.info["cmdline"] or [])]


def test_learner_rank_lost_while_weight_sync_forms_at_start_builds_a_new_group(tmp_path, monkeypatch, fault_report):
    """Rank 0 is killed right after it is asked to host the weight-sync group, before the rollout
    worker joins. The worker finds the port refusing and fails at once (the TCP store's own connect
    would retry for about twice weight_sync.timeout_s, and the second group's set-up, bounded by
    timeout_s, would time out waiting for it): the run starts on a second group."""
    import psutil

    from cluster.learner_group import LearnerGroup
    from cluster.run_setup import start_run

    monkeypatch.chdir(ROOT)  # the demo config names its data files relative to the repository
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    real, killed = LearnerGroup.init_weight_sync_async, []

    def init_then_kill(self, *args, **kwargs):
        refs = real(self, *args, **kwargs)
        if not killed:
            killed.extend(rank_pids())  # one rank: rank 0, the host of the weight-sync group
            assert len(killed) == 1, killed
            os.kill(killed[0], signal.SIGKILL)
            psutil.wait_procs([psutil.Process(killed[0])], timeout=30)  # gone (its port closed) before the worker joins
        return refs

    monkeypatch.setattr(LearnerGroup, "init_weight_sync_async", init_then_kill)
    run = start_run(run_config(tmp_path, "learner.max_restarts=1"))
    try:
        assert len(killed) == 1 and killed[0] not in rank_pids() and len(rank_pids()) == 1  # a new rank 0
        assert len(run.learner_deaths) == 1 and "learner[0] died during weight-sync set-up" in run.learner_deaths[0]
        assert any("while the learner group started; a new group starts (1 of at most 1 rebuilds)" in n
                   for n in run.notes), run.notes
        run.sync.push(1)  # the new group's weights reach the same engine over the re-formed group ...
        diff = run.sync.verify(*run.probe)  # ... and it samples from them
        assert diff["sync/probe_max_abs_diff"] <= 1e-4, diff
        fault_report(started_s=run.startup_seconds, probe=diff["sync/probe_max_abs_diff"])
    finally:
        run.shutdown()
