"""Group buffer: every set-aside is counted with its reason; nothing is released twice."""

import pytest

from actors.buffer import GroupBuffer
from actors.config import BufferConfig, GFPOConfig, OverlongConfig
from actors.types import Group, Sample
from cluster.batching import groups_to_batch
from learner.config import AlgorithmConfig

pytestmark = pytest.mark.unit


def group(pid, rewards, version=0, lengths=None):
    lengths = lengths or [3] * len(rewards)
    samples = [Sample(pid, "p", [1, 2], "r", [5] * n, [-0.5] * n, "stop", version, reward=float(r))
               for r, n in zip(rewards, lengths)]
    return Group(pid, samples)


def test_take_removes_and_never_repeats():
    buf = GroupBuffer(BufferConfig(), max_new_tokens=8)
    for i in range(5):
        assert buf.add(group(str(i), [0, 1]), current_version=0) is None
    first, second = buf.take(3), buf.take(3)
    assert [g.prompt_id for g in first] == ["0", "1", "2"]
    assert [g.prompt_id for g in second] == ["3", "4"]
    assert buf.take(1) == [] and buf.counts["groups_in"] == 5


def test_dynamic_sampling_counts_and_keeps_set_asides_for_shortfall():
    buf = GroupBuffer(BufferConfig(dynamic_sampling=True), max_new_tokens=8)
    assert buf.add(group("a", [1, 1, 1]), 0) == "all_equal_reward"
    assert buf.add(group("b", [0, 1, 0]), 0) is None
    m = buf.metrics()
    assert m["buffer/dropped_groups/all_equal_reward"] == 1 and m["buffer/dropped_samples/all_equal_reward"] == 3
    assert [g.prompt_id for g in buf.take(2)] == ["b"]
    assert [g.prompt_id for g in buf.take_filtered(2)] == ["a"]
    assert buf.metrics()["buffer/dynamic_sampling_shortfall_groups"] == 1
    assert buf.take_filtered(1) == []  # used once only


def test_staleness_bound():
    buf = GroupBuffer(BufferConfig(max_staleness=1), max_new_tokens=8)
    assert buf.add(group("old", [0, 1], version=3), current_version=5) == "stale"
    assert buf.add(group("ok", [0, 1], version=4), current_version=5) is None
    assert buf.metrics()["buffer/dropped_groups/stale"] == 1


def test_overlong_shaping_adds_a_component():
    cfg = BufferConfig(overlong=OverlongConfig(enabled=True, max_length=8, cache_length=4, factor=1.0))
    buf = GroupBuffer(cfg, max_new_tokens=8)
    g = group("a", [1.0, 1.0, 1.0], lengths=[2, 6, 8])
    buf.add(g, 0)
    assert [s.reward_components["overlong"] for s in g.samples] == pytest.approx([0.0, -0.5, -1.0])
    assert g.rewards == pytest.approx([1.0, 0.5, 0.0])


def test_gfpo_keeps_k_and_batch_trains_on_kept_only():
    buf = GroupBuffer(BufferConfig(gfpo=GFPOConfig(enabled=True, keep=2, metric="length")), max_new_tokens=8)
    g = group("a", [1.0, 0.0, 1.0, 0.0], lengths=[5, 1, 2, 7])
    buf.add(g, 0)
    assert g.kept == [1, 2]  # the two shortest
    assert buf.metrics()["buffer/gfpo_samples_not_trained"] == 2
    batch = groups_to_batch(buf.take(1), AlgorithmConfig())
    assert len(batch) == 2 and batch.response_lengths() == [1, 2]
    # advantages over the kept subset only: rewards (0, 1) -> (-1, +1) / std
    assert batch.advantages[0] < 0 < batch.advantages[1]
