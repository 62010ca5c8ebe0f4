"""Loss aggregation: closed form, TRL equivalence, and data-parallel / micro-batch invariance."""

import pytest
import torch

from learner.algorithms import AGGREGATIONS, aggregate_loss, local_counts

pytestmark = pytest.mark.unit

NAN = float("nan")
MODES = AGGREGATIONS.names()
NORM = {"seq-mean-token-sum-norm": {"norm_length": 6}}


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 10 / 4),  # (1+2+3+4) / 4 tokens
        ("seq-mean-token-mean", (2 + 4) / 2),  # per-seq means 2 and 4
        ("seq-mean-token-sum", (6 + 4) / 2),  # per-seq sums 6 and 4
        ("seq-mean-token-sum-norm", 10 / (2 * 4)),  # sum / (2 seqs * norm_length 4)
    ],
)
def test_closed_form_ignores_padding_garbage(mode, expected):
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, float("inf")]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    kwargs = {"norm_length": 4} if mode == "seq-mean-token-sum-norm" else {}
    out = aggregate_loss(loss, mask, mode, **kwargs)
    assert out.shape == () and abs(out.item() - expected) < 1e-6


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 2, 4, 1])
    mask = (torch.arange(6)[None, :] < lengths[:, None]).float()
    return torch.randn(4, 6, generator=g), mask


def test_token_mean_equals_trl_dapo_and_bnpo():
    loss, mask = _batch()
    trl = (loss * mask).sum() / mask.sum()
    torch.testing.assert_close(aggregate_loss(loss, mask, "token-mean"), trl)


def test_seq_mean_token_mean_equals_trl_grpo():
    loss, mask = _batch()
    trl = ((loss * mask).sum(-1) / mask.sum(-1)).mean()
    torch.testing.assert_close(aggregate_loss(loss, mask, "seq-mean-token-mean"), trl)


def test_sum_norm_equals_trl_dr_grpo():
    loss, mask = _batch()
    max_completion_length = 6
    trl = (loss * mask).sum() / (loss.size(0) * max_completion_length)
    torch.testing.assert_close(aggregate_loss(loss, mask, "seq-mean-token-sum-norm", norm_length=6), trl)


def _loss_and_grad(weights, mask, mode, **kwargs):
    w = weights.clone().requires_grad_(True)
    per_token = w.square()  # any differentiable per-token loss
    out = aggregate_loss(per_token, mask, mode, **NORM.get(mode, {}), **kwargs)
    out.backward()
    return out.detach(), w.grad


@pytest.mark.parametrize("split", [2, 1])  # two ranks with 2+2 sequences, and 1+3 (uneven counts)
@pytest.mark.parametrize("mode", MODES)
def test_ranks_with_global_counts_sum_to_whole_batch(mode, split):
    weights, mask = _batch()
    whole_loss, whole_grad = _loss_and_grad(weights, mask, mode)
    parts = [slice(0, split), slice(split, 4)]
    counts = [local_counts(mask[s]) for s in parts]
    global_tokens, global_seqs = sum(c[0] for c in counts), sum(c[1] for c in counts)
    assert (global_tokens, global_seqs) == (12, 4)
    losses, grads = [], []
    for s in parts:
        # each rank pads only to its own longest sequence
        width = int(mask[s].sum(-1).max())
        loss, grad = _loss_and_grad(
            weights[s, :width], mask[s, :width], mode, global_tokens=global_tokens, global_seqs=global_seqs
        )
        losses.append(loss)
        grads.append(torch.nn.functional.pad(grad, (0, 6 - width)))
    torch.testing.assert_close(sum(losses), whole_loss)
    torch.testing.assert_close(torch.cat(grads), whole_grad)
    # the documented DeepSpeed recipe: engines average K ranks' grads, so each rank scales by K
    k = len(parts)
    per_rank = [
        torch.cat([g if i == r else torch.zeros_like(g) for i, g in enumerate(grads)]) for r in range(k)
    ]
    torch.testing.assert_close(sum(k * g for g in per_rank) / k, whole_grad)


@pytest.mark.parametrize("mode", MODES)
def test_local_counts_alone_are_not_invariant(mode):
    # Guards the test above: with uneven ranks, averaging locally normalised losses is wrong.
    weights, mask = _batch()
    whole, _ = _loss_and_grad(weights, mask, mode)
    halves = [_loss_and_grad(weights[s], mask[s], mode)[0] for s in (slice(0, 1), slice(1, 4))]
    assert not torch.allclose(sum(halves) / 2, whole)


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_is_zero_with_grad(mode):
    loss = torch.full((2, 3), NAN, requires_grad=True)
    out = aggregate_loss(loss, torch.zeros(2, 3), mode, **NORM.get(mode, {}))
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert (loss.grad == 0).all()


def test_rows_without_tokens_are_not_counted_as_sequences():
    loss = torch.tensor([[2.0, 4.0], [NAN, NAN]])
    mask = torch.tensor([[1, 1], [0, 0]])
    assert local_counts(mask) == (2, 1)
    assert aggregate_loss(loss, mask, "seq-mean-token-mean").item() == 3.0


def test_norm_length_required_and_only_for_sum_norm():
    loss, mask = _batch()
    with pytest.raises(ValueError, match="norm_length"):
        aggregate_loss(loss, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="no parameter 'norm_length'"):
        aggregate_loss(loss, mask, "token-mean", norm_length=6)


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(KeyError, match="did you mean 'token-mean'.*seq-mean-token-sum-norm"):
        aggregate_loss(*_batch(), "token_mean")
