"""Advantage estimators: closed-form values on a shuffled batch with uneven groups."""

import math

import pytest
import torch

from learner.algorithms import compute_advantages, expand_to_tokens, gae

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
