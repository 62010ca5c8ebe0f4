"""PPO clipped value loss."""

import pytest
import torch

from learner.algorithms import value_loss

pytestmark = pytest.mark.unit


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=tol)


# t0: v inside the clip range -> 0.5*(1.1-2)^2 = .405, grad v-R = -0.9
# t1: unclipped error larger   -> 0.5*(2-1)^2 = .5,     grad 1
# t2: clipped error larger     -> v_clip = .8: 0.5*.64 = .32, grad 0
# t3: padding with garbage
VALUES = [[1.1, 2.0, 0.5, float("nan")]]
OLD = [[1.0, 1.0, 1.0, float("inf")]]
RETURNS = [[2.0, 1.0, 0.0, 1e9]]
MASK = torch.tensor([[1, 1, 1, 0]])


def test_clipped_value_loss_closed_form_and_gradient():
    v = torch.tensor(VALUES, requires_grad=True)
    old = torch.tensor(OLD, requires_grad=True)
    loss = value_loss(v, old, torch.tensor(RETURNS), MASK)
    close(loss, [[0.405, 0.5, 0.32, 0.0]])
    loss.sum().backward()
    close(v.grad, [[-0.9, 1.0, 0.0, 0.0]])
    assert old.grad is None


def test_unclipped_value_loss():
    loss = value_loss(torch.tensor(VALUES), torch.tensor(OLD), torch.tensor(RETURNS), MASK, clip_range=None)
    close(loss, [[0.405, 0.5, 0.125, 0.0]])


def test_unknown_param():
    with pytest.raises(ValueError, match="did you mean 'clip_range'"):
        value_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), cliprange=0.1)


def test_explained_variance_by_hand():
    from learner.algorithms import explained_variance

    returns = torch.tensor([[1.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 0]])
    # Var(returns) over [1, 3] = 1; values [2, 2]: residuals [-1, 1], Var = 1 -> 0
    assert explained_variance(torch.tensor([[2.0, 2.0, 0.0]]), returns, mask) == pytest.approx(0.0)
    # values [1, 2]: residuals [0, 1], Var = 0.25 -> 0.75
    assert explained_variance(torch.tensor([[1.0, 2.0, -5.0]]), returns, mask) == pytest.approx(0.75)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    # returns that do not vary: no variance to explain
    flat = torch.tensor([[0.0, 1e-9, 7.0]])
    assert explained_variance(torch.tensor([[0.5, 0.1, 0.0]]), flat, mask) != explained_variance(
        torch.tensor([[0.5, 0.1, 0.0]]), flat, mask)  # NaN
