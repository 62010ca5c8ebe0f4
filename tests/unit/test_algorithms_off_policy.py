"""Sampler/learner mismatch corrections: closed-form weights, detachment, padding."""

import math

import pytest
import torch

from learner.algorithms import OFF_POLICY, off_policy_weights

pytestmark = pytest.mark.unit

LN = math.log


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=tol)


def _token_batch():
    # rho = exp(old - sampler) = [3, 1, 0.25] and a padded 4th token holding garbage
    old = torch.tensor([[LN(3.0), 0.0, LN(0.25), float("nan")]], requires_grad=True)
    sampler = torch.tensor([[0.0, 0.0, 0.0, float("inf")]])
    return old, sampler, torch.tensor([[1, 1, 1, 0]])


@pytest.mark.parametrize(
    "name, params, expected, key, frac",
    [
        ("none", {}, [1.0, 1.0, 1.0, 0.0], None, None),
        ("tis", {}, [2.0, 1.0, 0.25, 0.0], "capped_frac", 1 / 3),  # min(rho, 2)
        ("tis", {"cap": 5.0}, [3.0, 1.0, 0.25, 0.0], "capped_frac", 0.0),
        ("icepop", {}, [3.0, 1.0, 0.0, 0.0], "masked_frac", 1 / 3),  # band [0.5, 5]: rho inside, else 0
        ("icepop", {"high": 2.0}, [0.0, 1.0, 0.0, 0.0], "masked_frac", 2 / 3),
    ],
)
def test_token_level_weights(name, params, expected, key, frac):
    old, sampler, mask = _token_batch()
    w, m = off_policy_weights(name, old, sampler, mask, **params)
    close(w, [expected])
    assert not w.requires_grad and all(not v.requires_grad for v in m.values())
    if key:
        close(m[key], frac)
    # k3 of the mismatch: mean of rho - 1 - ln rho over valid tokens
    close(m["mismatch_kl"], (2 - LN(3) + 0 + (-0.75 + LN(4))) / 3)
    close(m["is_ratio_mean"], 4.25 / 3)


def test_seq_mask_geometric_and_product():
    # seq 0: log rho [.0005, -.0003] -> geometric 1.0001 (kept); seq 1: [.01, 0] -> 1.005 (masked)
    old = torch.tensor([[0.0005, -0.0003, 9.0], [0.01, 0.0, 9.0]])
    sampler = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    w, m = off_policy_weights("seq_mask", old, sampler, mask)
    close(w, [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    close(m["masked_seq_frac"], 0.5)
    # product: seq 1 ratio e^.01 = 1.01 is inside [0.5, 2]
    w, _ = off_policy_weights("seq_mask", old, sampler, mask, stat="product", low=0.5, high=2.0)
    close(w, [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])


def test_seq_mask_geometric_is_length_normalised():
    # same per-token drift .002: geometric ratio 1.002 for both lengths; product grows with length
    old = torch.full((2, 4), 0.002)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])
    w, _ = off_policy_weights("seq_mask", old, torch.zeros(2, 4), mask, low=0.99, high=1.005)
    close(w.sum(-1), [1.0, 4.0])
    w, _ = off_policy_weights("seq_mask", old, torch.zeros(2, 4), mask, stat="product", low=0.99, high=1.005)
    close(w.sum(-1), [1.0, 0.0])


def test_bad_params():
    old, sampler, mask = _token_batch()
    with pytest.raises(ValueError, match="stat"):
        off_policy_weights("seq_mask", old, sampler, mask, stat="mean")
    with pytest.raises(ValueError, match="did you mean 'cap'"):
        off_policy_weights("tis", old, sampler, mask, caps=3.0)
    with pytest.raises(KeyError, match="icepop"):
        off_policy_weights("ice_pop", old, sampler, mask)
    assert set(OFF_POLICY.names()) == {"none", "tis", "seq_mask", "icepop"}
