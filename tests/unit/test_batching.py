"""Groups -> LearnerBatch: token layout, advantages over the global batch, sharding layout."""

import pytest
import torch

from actors.types import Group, Sample
from cluster.batching import groups_to_batch, reward_weights
from learner.config import AlgorithmConfig, Choice

pytestmark = pytest.mark.unit


def make_groups():
    groups = []
    for g, rewards in enumerate([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]):
        samples = [Sample(f"p{g}", "p", [7, 8, 9], "r", [g + 10] * (i + 1), [-1.0] * (i + 1), "stop", 3, reward=r)
                   for i, r in enumerate(rewards)]
        groups.append(Group(f"p{g}", samples))
    return groups


def test_layout_and_grpo_advantages():
    batch = groups_to_batch(make_groups(), AlgorithmConfig())
    assert len(batch) == 8
    assert batch.input_ids[1].tolist() == [7, 8, 9, 10, 10]
    assert batch.prompt_lengths == [3] * 8
    assert [x.numel() for x in batch.sampler_logprobs] == batch.response_lengths()
    assert batch.group_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert batch.policy_versions.tolist() == [3] * 8
    a = batch.advantages
    std = torch.tensor([1.0, 0.0]).std()  # unbiased
    assert a[0].item() == pytest.approx(0.5 / (std.item() + 1e-6), rel=1e-5)
    assert a[2:6].abs().max().item() == 0.0  # all-equal groups carry no signal


def test_dr_grpo_has_no_std():
    algo = AlgorithmConfig(advantage=Choice("dr_grpo", {}))
    batch = groups_to_batch(make_groups(), algo)
    assert batch.advantages.tolist() == pytest.approx([0.5, -0.5, 0, 0, 0, 0, -0.5, 0.5])


def test_per_component_rewards_reach_the_batch_as_gdpo_advantages():
    """reward_combine=per_component reads each sample's components by the run's weights; a sample
    without components (failed scoring) counts 0 on each."""
    groups = make_groups()
    for g in groups:
        for s in g.samples:
            s.reward_components = {"correct": s.reward, "format": 1.0 - 0.5 * len(s.response_ids)}
    groups[1].samples[0].reward_components = {}  # scoring failed: reward 0, no components
    weights = {"correct": 1.0, "format": 2.0}
    algo = AlgorithmConfig(advantage=Choice("dr_grpo", {}), reward_combine="per_component", reward_batch_norm=False)
    got = groups_to_batch(groups, algo, weights).advantages
    # format is 0.5 in each group's first sample and 0 in its second, except the failed sample (0)
    fmt = torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.5, 0.0], [0.5, 0.0]])
    correct = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    centred = lambda x: (x - x.mean(1, keepdim=True)).reshape(-1)  # noqa: E731
    assert torch.allclose(got, centred(correct) + 2.0 * centred(fmt), atol=1e-6)
    with pytest.raises(ValueError, match="needs the reward components' weights"):
        groups_to_batch(groups, algo)


def test_reward_weights_list_every_component_of_a_run():
    from cluster.config import load_config

    cfg = load_config(None, ["reward.functions=[{name: arithmetic, weight: 2.0}, {name: format}]",
                             "reward.model_path=/m", "reward.model_weight=0.5", "buffer.overlong.enabled=true"])
    assert reward_weights(cfg) == {"arithmetic": 2.0, "format": 1.0, "model": 0.5, "overlong": 1.0}


def test_shard_layout_matches_global_mini_batches():
    batch = groups_to_batch(make_groups(), AlgorithmConfig())
    # 2 ranks x 2 mini-batches: global mini-batch m = sequences [4m, 4m+4); rank r gets its r-th half.
    r0, r1 = batch.shard(0, 2, 2), batch.shard(1, 2, 2)
    ids = lambda b: [int(x[-1]) * 10 + len(x) for x in b.input_ids]
    whole = ids(batch)
    assert ids(r0) == [whole[0], whole[1], whole[4], whole[5]]
    assert ids(r1) == [whole[2], whole[3], whole[6], whole[7]]
    assert ids(r0.mini_batch(1, 2)) + ids(r1.mini_batch(1, 2)) == whole[4:]
    with pytest.raises(ValueError, match="does not split"):
        batch.shard(0, 3, 1)
