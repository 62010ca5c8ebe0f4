"""DPO / IPO and the group pairwise preference loss."""

import pytest
import torch

from learner.algorithms import dpo_loss, group_preference_loss

pytestmark = pytest.mark.unit


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=tol)


def _pair():
    # margin m = (-1 - -1.5) - (-2 - -1.5) = 1.0
    chosen = torch.tensor([-1.0], requires_grad=True)
    rejected = torch.tensor([-2.0], requires_grad=True)
    ref_c = torch.tensor([-1.5], requires_grad=True)
    ref_r = torch.tensor([-1.5], requires_grad=True)
    return chosen, rejected, ref_c, ref_r


def test_dpo_sigmoid_closed_form_and_gradient():
    chosen, rejected, ref_c, ref_r = _pair()
    loss, m = dpo_loss(chosen, rejected, ref_c, ref_r)
    close(loss, [0.644397])  # -logsigmoid(0.1 * 1)
    loss.sum().backward()
    close(chosen.grad, [-0.0475021])  # -beta * sigmoid(-beta m) = -0.1 * 0.475021
    close(rejected.grad, [0.0475021])
    assert ref_c.grad is None and ref_r.grad is None
    close(m["reward_accuracy"], 1.0)
    close(m["reward_margin"], 0.1)


def test_dpo_label_smoothing_and_ipo():
    chosen, rejected, ref_c, ref_r = _pair()
    loss, _ = dpo_loss(chosen, rejected, ref_c, ref_r, label_smoothing=0.1)
    close(loss, [0.9 * 0.644397 + 0.1 * 0.744397])  # second term: -logsigmoid(-0.1)
    loss, _ = dpo_loss(chosen, rejected, ref_c, ref_r, loss_type="ipo")
    close(loss, [16.0])  # (1 - 1/(2*0.1))^2
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(chosen, rejected, ref_c, ref_r, loss_type="hinge")


# groups: {0: rewards 1, 0}, {1: rewards 1, .5}; h = logp - ref = [.5, -.5, 0, 1]
LOGPS = [0.5, -0.5, 0.0, 1.0]
REWARDS = [1.0, 0.0, 1.0, 0.5]
GROUPS = [0, 0, 1, 1]


def test_group_preference_closed_form():
    lp = torch.tensor(LOGPS, requires_grad=True)
    loss, m = group_preference_loss(lp, torch.zeros(4), REWARDS, GROUPS, beta=1.0)
    # pairs (0 > 1): -logsigmoid(1) = .313262;  (2 > 3): -logsigmoid(-1) = 1.313262; no cross-group pairs
    close(loss, (0.313262 + 1.313262) / 2)
    close(m["num_pairs"], 2.0)
    close(m["pair_accuracy"], 0.5)
    loss.backward()
    # d/dh_i of -logsigmoid(h_i - h_j) / 2 = -sigmoid(h_j - h_i) / 2
    close(lp.grad, [-0.268941 / 2, 0.268941 / 2, -0.731059 / 2, 0.731059 / 2])


def test_group_preference_margin_threshold():
    loss, m = group_preference_loss(torch.tensor(LOGPS), torch.zeros(4), REWARDS, GROUPS, beta=1.0, tau=0.6)
    close(loss, 0.313262)  # only the (0, 1) pair has a reward gap above .6
    close(m["num_pairs"], 1.0)


def test_group_preference_without_pairs_is_zero_with_grad():
    lp = torch.tensor(LOGPS, requires_grad=True)
    loss, m = group_preference_loss(lp, torch.zeros(4), [1.0, 1.0, 0.0, 0.0], GROUPS)
    assert loss.item() == 0.0 and loss.requires_grad and m["num_pairs"].item() == 0
    loss.backward()
    assert (lp.grad == 0).all()
