"""Async on one CPU machine: the two roles get disjoint cores unless the user placed them."""

import os

import pytest

from cluster.config import load_config
from cluster.run_setup import split_cores_for_async

pytestmark = pytest.mark.unit


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_async_splits_the_cores_between_rollout_and_learner(two_cores):
    cfg = load_config(None, ["trainer.mode=async"])
    note = split_cores_for_async(cfg)
    assert (cfg.rollout.cpu_cores, cfg.learner.cpu_cores) == ([0], [1])
    assert (cfg.rollout.threads_per_worker, cfg.learner.threads_per_rank) == (1, 1)
    assert "cores [0]" in note and "cores [1]" in note


def test_sync_mode_and_user_placement_are_left_alone(two_cores):
    sync = load_config(None, [])
    assert split_cores_for_async(sync) is None and sync.rollout.cpu_cores == []
    placed = load_config(None, ["trainer.mode=async", "rollout.cpu_cores=[1]"])
    assert split_cores_for_async(placed) is None and placed.learner.cpu_cores == []
    remote = load_config(None, ["trainer.mode=async", "cluster.address=10.0.0.1:6379"])
    assert split_cores_for_async(remote) is None
