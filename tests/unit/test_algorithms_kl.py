"""KL estimators: closed form, straight-through gradient, clamping, aliases, masking."""

import math

import pytest
import torch

from learner.algorithms import KL_ESTIMATORS, kl_penalty

pytestmark = pytest.mark.unit

E = math.e


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=tol)


# logp - ref = [1, -1]
LOGP = [0.0, -1.0]
REF = [-1.0, 0.0]


@pytest.mark.parametrize(
    "name, value, grad",
    [
        ("k1", [1.0, -1.0], [1.0, 1.0]),
        ("abs", [1.0, 1.0], [1.0, -1.0]),
        ("k2", [0.5, 0.5], [1.0, -1.0]),
        # k3 = e^(ref-logp) - (ref-logp) - 1; d/dlogp = 1 - e^(ref-logp)
        ("k3", [1 / E, E - 2], [1 - 1 / E, 1 - E]),
        ("k3+", [1 / E, E - 2], [1.0, -1.0]),  # value of k3, gradient of k2
    ],
)
def test_closed_form_value_and_gradient(name, value, grad):
    logp = torch.tensor(LOGP, requires_grad=True)
    ref = torch.tensor(REF, requires_grad=True)
    out = kl_penalty(logp, ref, name)
    close(out, value)
    out.sum().backward()
    close(logp.grad, grad)


def test_k3_is_clamped():
    logp = torch.tensor([0.0], requires_grad=True)
    out = kl_penalty(logp, torch.tensor([30.0]), "k3")
    assert out.item() == 10.0
    out.sum().backward()
    assert logp.grad.item() == 0.0


@pytest.mark.parametrize(
    "alias, name", [("kl", "k1"), ("mse", "k2"), ("low_var_kl", "k3"), ("low_var_kl+", "k3+")]
)
def test_aliases(alias, name):
    assert KL_ESTIMATORS.canonical(alias) == name
    logp, ref = torch.tensor(LOGP), torch.tensor(REF)
    torch.testing.assert_close(kl_penalty(logp, ref, alias), kl_penalty(logp, ref, name))


@pytest.mark.parametrize("name", KL_ESTIMATORS.names())
def test_mask_zeroes_padding_garbage(name):
    logp = torch.tensor([[0.0, float("inf")], [-1.0, float("nan")]], requires_grad=True)
    ref = torch.tensor([[-1.0, float("-inf")], [0.0, 1e9]])
    mask = torch.tensor([[1, 0], [1, 0]])
    out = kl_penalty(logp, ref, name, response_mask=mask)
    assert (out[:, 1] == 0).all() and torch.isfinite(out).all()
    out.sum().backward()
    assert (logp.grad[:, 1] == 0).all() and torch.isfinite(logp.grad).all()


def test_unknown_estimator_suggests():
    with pytest.raises(KeyError, match="did you mean 'low_var_kl'.*valid names: abs, k1"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "low_var_k")
