"""CPU pinning (learner/cpu_cores.py): the block rule learner ranks and rollout workers share, and the
learner rank's use of it (LearnerRank._pin_threads)."""

import pytest

from learner.config import LearnerConfig
from learner.cpu_cores import core_block
from learner.rank import LearnerRank

pytestmark = pytest.mark.unit


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})


def test_blocks_wrap_around_the_pool(four_cores):
    assert [core_block([0, 1, 2, 3], i, 2, "x") for i in range(3)] == [[0, 1], [2, 3], [0, 1]]
    assert core_block([3, 1, 2], 1, 2, "x") == [2, 3]  # blocks follow the pool's order, wrapping; sorted
    assert core_block([2], 5, 3, "x") == [2]  # more threads than cores: the pool, once


def test_a_core_the_process_may_not_use_is_named_with_the_setting(four_cores):
    with pytest.raises(ValueError, match=r"learner.cpu_cores: cores \[6\] are not available .*allowed: \[0, 1, 2, 3\]"):
        core_block([2, 6], 0, 2, "learner.cpu_cores")
    with pytest.raises(ValueError, match="rollout.cpu_cores: an empty list"):
        core_block([], 0, 1, "rollout.cpu_cores")


def test_learner_rank_pins_its_block_and_sets_its_threads(four_cores, monkeypatch):
    pinned, threads = [], []
    monkeypatch.setattr("os.sched_setaffinity", lambda pid, cores: pinned.append(sorted(cores)))
    monkeypatch.setattr("torch.set_num_threads", threads.append)
    LearnerRank._pin_threads(LearnerConfig(cpu_cores=[0, 1, 2, 3]), rank=1, ranks_here=2, device="cpu")
    LearnerRank._pin_threads(LearnerConfig(cpu_cores=[1, 3], threads_per_rank=1), rank=1, ranks_here=2, device="cpu")
    LearnerRank._pin_threads(LearnerConfig(), rank=0, ranks_here=1, device="cpu")  # no cores given: not pinned
    LearnerRank._pin_threads(LearnerConfig(cpu_cores=[0]), rank=0, ranks_here=1, device="cuda")  # GPU: not pinned
    assert pinned == [[2, 3], [3]] and threads == [2, 1, 4, 4]
    with pytest.raises(ValueError, match=r"learner.cpu_cores: cores \[9\]"):
        LearnerRank._pin_threads(LearnerConfig(cpu_cores=[9]), rank=0, ranks_here=1, device="cpu")
