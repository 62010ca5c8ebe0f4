"""Async (and PPO) on one CPU machine: roles that compute at the same time get disjoint cores unless the
user placed them."""

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


def test_ppo_splits_the_learner_cores_with_the_critic(two_cores):
    from cluster.run_setup import split_cores_for_critic

    sync = load_config(None, ["algorithm.advantage.name=gae"])
    note = split_cores_for_critic(sync)
    assert (sync.learner.cpu_cores, sync.critic.learner.cpu_cores) == ([0], [1])
    assert (sync.learner.threads_per_rank, sync.critic.learner.threads_per_rank) == (1, 1)
    assert "critic ranks on cores [1]" in note
    # async: the rollout side has core 0, the learner core 1: the critic shares core 1, a thread each
    both = load_config(None, ["algorithm.advantage.name=gae", "trainer.mode=async"])
    split_cores_for_critic(both, bool(split_cores_for_async(both)))
    assert (both.rollout.cpu_cores, both.learner.cpu_cores, both.critic.learner.cpu_cores) == ([0], [1], [1])
    assert (both.learner.threads_per_rank, both.critic.learner.threads_per_rank) == (1, 1)
    # no critic, or the user placed the learner: left alone
    grpo = load_config(None, [])
    assert split_cores_for_critic(grpo) is None and grpo.critic.learner.cpu_cores == []
    placed = load_config(None, ["algorithm.advantage.name=gae", "learner.cpu_cores=[0,1]"])
    assert split_cores_for_critic(placed) is None and placed.critic.learner.cpu_cores == []
