"""Per-token surrogates: closed form, which inputs get gradient, padding garbage, GSPO == GSPO-token."""

import math

import pytest
import torch

from learner.algorithms import SURROGATES, aggregate_loss, surrogate_loss

pytestmark = pytest.mark.unit

LN = math.log


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=tol)


def leaf(values):
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


# Four tokens, old logprobs 0 so ratio = exp(logp):
#   a: r=1.5, A=+1 -> clipped at 1.2:    loss -1.2, no grad      (clipfrac_high)
#   b: r=0.5, A=+1 -> unclipped:         loss -0.5, grad -A r = -0.5
#   c: r=1.1, A=-2 -> inside the range:  loss  2.2, grad  2.2
#   d: r=0.5, A=-2 -> clipped at 0.8:    loss  1.6, no grad      (clipfrac_low)
RATIOS = [[1.5, 0.5], [1.1, 0.5]]
ADV = torch.tensor([[1.0, 1.0], [-2.0, -2.0]])


def test_ppo_clip_closed_form_and_gradients():
    lp = leaf([[LN(r) for r in row] for row in RATIOS])
    old = torch.zeros(2, 2, requires_grad=True)
    loss, m = surrogate_loss("ppo_clip", lp, old, ADV, torch.ones(2, 2))
    close(loss, [[-1.2, -0.5], [2.2, 1.6]])
    loss.sum().backward()
    close(lp.grad, [[0.0, -0.5], [2.2, 0.0]])
    assert old.grad is None  # old logprobs are constants
    close(m["clipfrac_high"], 0.25)
    close(m["clipfrac_low"], 0.25)
    close(m["ratio_mean"], 0.9)
    # k3: sum of r - 1 - ln r over the four tokens, / 4
    close(m["approx_kl"], (0.094535 + 0.193147 + 0.004690 + 0.193147) / 4)
    assert all(not v.requires_grad for v in m.values())


def test_ppo_clip_higher_and_per_sequence_advantages():
    lp = leaf([[LN(1.5), LN(0.5)]])
    old, mask = torch.zeros(1, 2), torch.ones(1, 2)
    loss, _ = surrogate_loss("ppo", lp, old, torch.tensor([1.0]), mask, clip_high=0.28)
    close(loss, [[-1.28, -0.5]])


def test_ppo_dual_clip_caps_negative_advantage_loss():
    lp = leaf([[LN(4.0), LN(2.0)]])
    old, mask = torch.zeros(1, 2), torch.ones(1, 2)
    loss, m = surrogate_loss("ppo_clip", lp, old, torch.tensor([-1.0]), mask, clip_c=3.0)
    close(loss, [[3.0, 2.0]])  # r=4 would give 4: capped at c*|A| = 3
    loss.sum().backward()
    close(lp.grad, [[0.0, 2.0]])
    close(m["clipfrac_dual"], 0.5)


def test_gspo_closed_form():
    # s = exp(mean(.2, -.1)) = exp(.05) = 1.051271; the padded third token is ignored
    mask = torch.tensor([[1, 1, 0]])
    lp = leaf([[0.2, -0.1, 5.0]])
    loss, m = surrogate_loss("gspo", lp, torch.zeros(1, 3), torch.tensor([-1.0]), mask)
    close(loss, [[1.051271, 1.051271, 0.0]])  # A<0, s above 1+4e-4: the unclipped term is larger
    loss.sum().backward()
    close(lp.grad, [[1.051271, 1.051271, 0.0]])  # d/dlp_t of 2 * s = 2 * s / 2
    close(m["ratio_mean"], 1.051271)
    lp2 = leaf([[0.2, -0.1, 5.0]])
    loss, m = surrogate_loss("gspo", lp2, torch.zeros(1, 3), torch.tensor([1.0]), mask)
    close(loss, [[-1.0004, -1.0004, 0.0]])  # A>0: clipped at 1 + 4e-4, so no gradient
    loss.sum().backward()
    close(lp2.grad, [[0.0, 0.0, 0.0]])
    close(m["clipfrac_high"], 1.0)


def test_cispo_keeps_gradient_on_clipped_tokens():
    lp = leaf([[LN(1.5), LN(0.5)]])
    loss, m = surrogate_loss("cispo", lp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
    # weights sg(min(r, 1.28)) = [1.28, 0.5]; loss = -w * A * logp
    close(loss, [[-1.28 * LN(1.5), -0.5 * LN(0.5)]])
    loss.sum().backward()
    close(lp.grad, [[-1.28, -0.5]])  # PPO would give token a zero gradient
    close(m["clipfrac_high"], 0.5)


def _uneven_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 2, 4, 1])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    lp = -torch.rand(4, 6, generator=g) - 0.1
    # per-sequence log-ratio shifts: .01 (inside), .2 (A>0: clipped), -.2 (A<0: clipped), -.03 (inside)
    shift = torch.tensor([0.01, 0.2, -0.2, -0.03])[:, None]
    old = lp - shift + 0.005 * torch.randn(4, 6, generator=g)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    return lp, old, adv, mask


@pytest.mark.parametrize("name", SURROGATES.names())
def test_padding_garbage_changes_nothing(name):
    lp, old, adv, mask = _uneven_batch()
    results = []
    for garbage in (None, 1e9, float("inf"), float("-inf"), float("nan")):
        lp_g, old_g, adv_g = lp.clone(), old.clone(), adv[:, None].expand(4, 6).clone()
        if garbage is not None:
            lp_g[~mask], old_g[~mask], adv_g[~mask] = garbage, -garbage, garbage
        lp_g.requires_grad_(True)
        loss, metrics = surrogate_loss(name, lp_g, old_g, adv_g, mask)
        aggregate_loss(loss, mask, "token-mean").backward()
        assert (loss[~mask] == 0).all() and (lp_g.grad[~mask] == 0).all()
        results.append((loss.detach(), lp_g.grad, metrics))
    ref_loss, ref_grad, ref_metrics = results[0]
    for loss, grad, metrics in results[1:]:
        torch.testing.assert_close(loss, ref_loss)
        torch.testing.assert_close(grad, ref_grad)
        for k in ref_metrics:
            torch.testing.assert_close(metrics[k], ref_metrics[k])


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_gspo_token_equals_gspo_with_sequence_advantages(mode):
    lp, old, adv, mask = _uneven_batch()
    out = {}
    for name in ("gspo", "gspo_token"):
        x = lp.clone().requires_grad_(True)
        loss, m = surrogate_loss(name, x, old, adv, mask, clip_low=0.1, clip_high=0.1)
        aggregate_loss(loss, mask, mode).backward()
        out[name] = (loss.detach(), x.grad, m)
    torch.testing.assert_close(out["gspo"][0], out["gspo_token"][0])
    torch.testing.assert_close(out["gspo"][1], out["gspo_token"][1])
    # the batch really exercises both branches: seqs 1 and 2 clipped (no grad), 0 and 3 not
    grad = out["gspo"][1]
    assert (grad[1] == 0).all() and (grad[2] == 0).all()
    assert (grad[0][mask[0]] != 0).all() and (grad[3][mask[3]] != 0).all()


def test_per_sequence_and_per_token_advantages_agree():
    lp, old, adv, mask = _uneven_batch()
    a, _ = surrogate_loss("ppo_clip", lp, old, adv, mask)
    b, _ = surrogate_loss("ppo_clip", lp, old, adv[:, None].expand(4, 6), mask)
    torch.testing.assert_close(a, b)


def test_advantages_get_no_gradient():
    lp, old, adv, mask = _uneven_batch()
    adv = adv.clone().requires_grad_(True)
    loss, _ = surrogate_loss("ppo_clip", lp.requires_grad_(True), old, adv, mask)
    loss.sum().backward()
    assert adv.grad is None


def test_bad_params_are_rejected():
    lp, old, adv, mask = _uneven_batch()
    with pytest.raises(ValueError, match="did you mean 'clip_high'"):
        surrogate_loss("ppo_clip", lp, old, adv, mask, clip_hgh=0.3)
    with pytest.raises(ValueError, match="clip_c"):
        surrogate_loss("ppo_clip", lp, old, adv, mask, clip_c=0.5)
    with pytest.raises(ValueError, match="no parameter 'clip_c'"):
        surrogate_loss("gspo", lp, old, adv, mask, clip_c=3.0)  # PPO's knob does not leak into GSPO
