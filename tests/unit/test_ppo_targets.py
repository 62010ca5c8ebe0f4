"""PPO's driver side (cluster/ppo.py gae_targets): the critic's values and the rewards -> GAE
advantages and returns per response token, checked by hand with gamma = lambda = 1 and no whitening
(then A_t = R - V_t and the return of every token is the sequence's reward minus the KL still to come)."""

import pytest
import torch

from cluster.ppo import gae_targets
from learner.batch import LearnerBatch

pytestmark = pytest.mark.unit

RAW = {"gamma": 1.0, "lam": 1.0, "whiten": False}


def batch(response_lengths, rewards, token_masks=None, loss_mask=None):
    n = len(response_lengths)
    return LearnerBatch(
        input_ids=[torch.arange(2 + r) for r in response_lengths], prompt_lengths=[2] * n,
        sampler_logprobs=[torch.zeros(r) for r in response_lengths], advantages=torch.zeros(n),
        rewards=torch.tensor(rewards), group_index=torch.arange(n), policy_versions=torch.zeros(n, dtype=torch.long),
        loss_mask=torch.ones(n, dtype=torch.bool) if loss_mask is None else torch.tensor(loss_mask),
        token_masks=token_masks)


def test_returns_and_advantages_per_token_by_hand():
    b = batch([3, 2], [1.0, 0.0])
    values = [torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0.4, -0.1])]
    m = gae_targets(b, values, None, 0.0, RAW)
    torch.testing.assert_close(b.returns[0], torch.tensor([1.0, 1.0, 1.0]))
    torch.testing.assert_close(b.token_advantages[0], torch.tensor([0.8, 0.5, 0.1]))
    torch.testing.assert_close(b.returns[1], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(b.token_advantages[1], torch.tensor([-0.4, 0.1]))
    torch.testing.assert_close(b.values[1], values[1])
    assert m["critic/returns_mean"] == pytest.approx(0.6)
    assert m["critic/values_mean"] == pytest.approx((0.2 + 0.5 + 0.9 + 0.4 - 0.1) / 5)


def test_kl_in_reward_and_masked_tokens():
    # sequence 0: its middle token is a tool's output (no loss): skipped by GAE, advantage 0 there
    b = batch([3, 2], [1.0, 2.0], token_masks=[torch.tensor([True, False, True]), torch.tensor([True, True])])
    values = [torch.tensor([0.0, 7.0, 0.0]), torch.tensor([0.0, 0.0])]
    kl = [torch.tensor([0.2, 5.0, 0.4]), torch.tensor([1.0, 1.0])]
    m = gae_targets(b, values, kl, 0.5, RAW)
    # token rewards: seq 0 [-0.1, (masked), 1 - 0.2], seq 1 [-0.5, 2 - 0.5]
    torch.testing.assert_close(b.returns[0], torch.tensor([0.7, 0.0, 0.8]))
    torch.testing.assert_close(b.token_advantages[0], torch.tensor([0.7, 0.0, 0.8]))
    torch.testing.assert_close(b.returns[1], torch.tensor([1.0, 1.5]))
    assert m["critic/kl_in_reward"] == pytest.approx((0.2 + 0.4 + 1.0 + 1.0) / 4)


def test_sequence_without_loss_gets_nothing():
    b = batch([2, 2], [1.0, 1.0], loss_mask=[True, False])
    gae_targets(b, [torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])], None, 0.0, RAW)
    torch.testing.assert_close(b.token_advantages[1], torch.zeros(2))
    torch.testing.assert_close(b.returns[1], torch.zeros(2))
    torch.testing.assert_close(b.token_advantages[0], torch.tensor([0.5, 0.5]))


def test_whitened_advantages_over_the_batch():
    b = batch([3, 2], [1.0, 0.0])
    gae_targets(b, [torch.zeros(3), torch.zeros(2)], None, 0.0, {"gamma": 1.0, "lam": 1.0, "whiten": True})
    adv = torch.cat(b.token_advantages)
    assert float(adv.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(adv.std()) == pytest.approx(1.0, abs=1e-4)
    assert bool((b.token_advantages[0] > 0).all()) and bool((b.token_advantages[1] < 0).all())
