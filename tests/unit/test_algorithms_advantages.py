"""Advantage estimators: closed-form values on a shuffled batch with uneven groups."""

import math

import pytest
import torch

from learner.algorithms import compute_advantages, decoupled_advantages, expand_to_tokens, gae

pytestmark = pytest.mark.unit

# Groups are deliberately non-contiguous ids in shuffled order:
#   group 5 -> samples 0, 2, 3 with rewards 1, 2, 3   (mean 2, unbiased std 1)
#   group 2 -> samples 1, 4 with rewards 0, 1         (mean .5, unbiased std sqrt(.5))
#   group 9 -> sample 5 with reward 5                 (singleton: baseline 0, scale 1)
REWARDS = torch.tensor([1.0, 0.0, 2.0, 3.0, 1.0, 5.0])
GROUPS = torch.tensor([5, 2, 5, 5, 2, 9])
EPS = 1e-6


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=tol)


def test_grpo_closed_form():
    s = math.sqrt(0.5)
    expected = [-1 / (1 + EPS), -0.5 / (s + EPS), 0.0, 1 / (1 + EPS), 0.5 / (s + EPS), 5 / (1 + EPS)]
    close(compute_advantages("grpo", REWARDS, GROUPS), expected, tol=1e-6)


def test_grpo_matches_per_group_torch_std():
    torch.manual_seed(0)
    rewards = torch.rand(12)
    groups = torch.tensor([3, 1, 3, 0, 1, 0, 3, 1, 0, 0, 1, 3])
    expected = torch.empty(12)
    for g in groups.unique():
        sel = groups == g
        expected[sel] = (rewards[sel] - rewards[sel].mean()) / (rewards[sel].std() + 1e-4)
    torch.testing.assert_close(compute_advantages("grpo", rewards, groups, eps=1e-4), expected)


def test_grpo_all_equal_group_gives_zero_not_nan():
    adv = compute_advantages("grpo", torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    close(adv[:2], [0.0, 0.0])
    assert torch.isfinite(adv).all()


def test_dr_grpo_closed_form():
    close(compute_advantages("dr_grpo", REWARDS, GROUPS), [-1.0, -0.5, 0.0, 1.0, 0.5, 5.0])


def test_rloo_closed_form():
    # r_i minus the mean of the *other* samples: 1-2.5, 0-1, 2-2, 3-1.5, 1-0; singleton keeps r.
    close(compute_advantages("rloo", REWARDS, GROUPS), [-1.5, -1.0, 0.0, 1.5, 1.0, 5.0])


def test_reinforce_pp_closed_form():
    # centred = dr_grpo = [-1, -.5, 0, 1, .5, 5]; batch mean 5/6, unbiased batch std 2.160247
    expected = [-0.848668, -0.617213, -0.385758, 0.077152, -0.154303, 1.928792]
    close(compute_advantages("reinforce_pp", REWARDS, GROUPS), expected)
    close(compute_advantages("reinforce++", REWARDS, GROUPS), expected)  # alias


def test_keep_mask_excludes_samples_from_stats_and_zeroes_them():
    rewards = REWARDS.clone()
    rewards[2] = float("nan")  # a dropped sample's reward must not matter at all
    keep = torch.tensor([True, True, False, True, True, True])
    adv = compute_advantages("grpo", rewards, GROUPS, keep_mask=keep)
    # group 5 now {1, 3}: mean 2, std sqrt(2)
    s = math.sqrt(2.0)
    close(adv[[0, 2, 3]], [-1 / (s + EPS), 0.0, 1 / (s + EPS)])
    for name in ("dr_grpo", "rloo", "reinforce_pp"):
        out = compute_advantages(name, rewards, GROUPS, keep_mask=keep)
        assert out[2].item() == 0.0 and torch.isfinite(out).all()
    close(compute_advantages("rloo", rewards, GROUPS, keep_mask=keep)[[0, 3]], [-2.0, 2.0])


def test_advantages_carry_no_gradient():
    rewards = REWARDS.clone().requires_grad_(True)
    assert not compute_advantages("grpo", rewards, GROUPS).requires_grad


def test_gae_is_not_a_sequence_estimator():
    with pytest.raises(ValueError, match="critic"):
        compute_advantages("gae", REWARDS, GROUPS)


def test_gae_gamma_lam_one_is_return_minus_value():
    values = torch.tensor([[0.5, 0.6, 0.7]])
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    adv, ret = gae(values, rewards, torch.ones(1, 3), whiten=False)
    close(adv, [[0.5, 0.4, 0.3]])
    close(ret, [[1.0, 1.0, 1.0]])


def test_gae_closed_form_with_discount():
    # deltas: t2 = 1 - .7 = .3, t1 = .9*.7 - .6 = .03, t0 = .9*.6 - .5 = .04; gamma*lam = .72
    values = torch.tensor([[0.5, 0.6, 0.7]])
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    adv, ret = gae(values, rewards, torch.ones(1, 3), gamma=0.9, lam=0.8, whiten=False)
    close(adv, [[0.21712, 0.246, 0.3]])
    close(ret, [[0.71712, 0.846, 1.0]])


def test_gae_skips_masked_middle_tokens_and_ignores_their_garbage():
    values = torch.tensor([[0.5, float("nan"), 0.7, float("inf")]])
    rewards = torch.tensor([[0.0, 7.0, 1.0, float("nan")]])
    mask = torch.tensor([[1, 0, 1, 0]])
    adv, ret = gae(values, rewards, mask, gamma=0.9, lam=0.8, whiten=False)
    # t0 bootstraps from t2's value: delta0 = .9*.7 - .5 = .13, A0 = .13 + .72*.3
    close(adv, [[0.346, 0.0, 0.3, 0.0]])
    close(ret, [[0.846, 0.0, 1.0, 0.0]])


def test_gae_whitening_over_valid_tokens():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()
    adv, _ = gae(torch.rand(2, 4), torch.rand(2, 4), mask)
    valid = adv[mask]
    assert abs(valid.mean().item()) < 1e-5 and abs(valid.var().item() - 1) < 1e-4
    assert (adv[~mask] == 0).all()


def test_expand_to_tokens():
    out = expand_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    close(out, [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])


# ---- GDPO: each reward component normalised in its group on its own -------------------------------
# two groups of two; columns: correctness, a length term
GDPO_COMPONENTS = torch.tensor([[1.0, 0.2], [0.0, 0.4], [1.0, 0.1], [1.0, 0.3]])
GDPO_GROUPS = torch.tensor([0, 0, 1, 1])


def test_decoupled_dr_grpo_by_hand():
    # group 0: correctness -> [.5, -.5], length -> [-.1, .1]; group 1: correctness -> [0, 0], length -> [-.1, .1]
    adv = decoupled_advantages("dr_grpo", GDPO_COMPONENTS, torch.tensor([2.0, 0.5]), GDPO_GROUPS, batch_norm=False)
    assert torch.allclose(adv, torch.tensor([0.95, -0.95, -0.05, 0.05]), atol=1e-6)


def test_decoupled_grpo_lets_no_component_drown_another():
    # each column's group std is its own: in group 0 the two components cancel exactly, and group 1
    # (all correct) is ranked by length alone; normalising the sum instead lets correctness decide group 0
    adv = decoupled_advantages("grpo", GDPO_COMPONENTS, torch.ones(2), GDPO_GROUPS, batch_norm=False)
    r = 2 ** -0.5
    assert torch.allclose(adv, torch.tensor([0.0, 0.0, -r, r]), atol=1e-5)
    summed = compute_advantages("grpo", GDPO_COMPONENTS.sum(1), GDPO_GROUPS)
    assert torch.allclose(summed, torch.tensor([r, -r, -r, r]), atol=1e-5)


def test_decoupled_batch_norm_whitens_the_combination():
    adv = decoupled_advantages("dr_grpo", GDPO_COMPONENTS, torch.ones(2), GDPO_GROUPS)  # combined [.4, -.4, -.1, .1]
    std = (0.34 / 3) ** 0.5  # mean 0, unbiased variance over the 4 sequences
    assert torch.allclose(adv, torch.tensor([0.4, -0.4, -0.1, 0.1]) / (std + 1e-6), atol=1e-5)


def test_decoupled_respects_the_keep_mask_and_checks_shapes():
    keep = torch.tensor([True, True, True, False])  # sample 2 left alone in its group: baseline 0
    adv = decoupled_advantages("dr_grpo", GDPO_COMPONENTS, torch.tensor([2.0, 0.5]), GDPO_GROUPS, keep_mask=keep,
                               batch_norm=False)
    assert torch.allclose(adv, torch.tensor([0.95, -0.95, 2.05, 0.0]), atol=1e-6)
    with pytest.raises(ValueError, match=r"components must be \[B, K\] and weights \[K\]"):
        decoupled_advantages("grpo", GDPO_COMPONENTS, torch.ones(3), GDPO_GROUPS)


def test_token_rewards_terminal_reward_and_kl_penalty_by_hand():
    from learner.algorithms import token_rewards

    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)  # row 1: a masked middle
    rewards = torch.tensor([1.0, -2.0, 5.0])
    out = token_rewards(rewards, mask)
    torch.testing.assert_close(out, torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, -2.0], [0, 0, 0, 0]]))
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.5, 9.0, 0.0, 1.0], [9.0, 9.0, 9.0, 9.0]])
    out = token_rewards(rewards, mask, kl, kl_coef=0.5)
    torch.testing.assert_close(out, torch.tensor([[-0.05, -0.1, 0.85, 0], [-0.25, 0, 0, -2.5], [0, 0, 0, 0]]))
