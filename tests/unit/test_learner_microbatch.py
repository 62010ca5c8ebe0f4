"""Micro-batched logprobs and loss with a toy causal model (pure torch, no DeepSpeed).

- right-padded micro-batches give each sequence's logprobs exactly as if it ran alone, at any
  temperature, including the `logits_to_keep` shortcut;
- summing micro-batch losses computed with GLOBAL counts over any split into ranks and
  micro-batches reproduces the single-batch loss and gradient for every aggregation mode: the
  learner's data-parallel invariance, minus DeepSpeed.
"""

from types import SimpleNamespace

import pytest
import torch

from learner.batch import LearnerBatch
from learner.config import AlgorithmConfig, Choice
from learner.logprobs import collate, pad_values, response_logprobs, unpad
from learner.packing import pack_by_tokens
from learner.train_step import policy_loss

pytestmark = pytest.mark.unit

V = 11


class ToyLM(torch.nn.Module):
    """Causal: logits at t depend on tokens <= t only (a running mean of embeddings)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(V, 8, generator=g))
        self.out = torch.nn.Parameter(torch.randn(8, V, generator=g))

    def forward(self, input_ids, use_cache=False, logits_to_keep=0, **_):
        h = self.emb[input_ids].cumsum(1) / torch.arange(1, input_ids.shape[1] + 1)[None, :, None]
        logits = torch.tanh(h) @ self.out
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def make_batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids, plens = [], []
    for i in range(n):
        p, r = 1 + i % 3, int(torch.randint(1, 7, (1,), generator=g))
        ids.append(torch.randint(0, V, (p + r,), generator=g))
        plens.append(p)
    return LearnerBatch(ids, plens, [torch.zeros(len(x) - p) for x, p in zip(ids, plens)],
                        torch.randn(n, generator=g), torch.zeros(n), torch.arange(n),
                        torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.bool))


def alone(model, ids, p, temperature):
    logits = model(ids[None]).logits[0]
    return torch.log_softmax(logits[p - 1:-1] / temperature, -1).gather(-1, ids[p:, None]).squeeze(-1)


def test_padded_logprobs_equal_single_sequence():
    model, batch = ToyLM(), make_batch()
    mb = collate(batch.input_ids, batch.prompt_lengths, [4, 0, 2, 5])
    with torch.no_grad():
        lp, ent, _ = response_logprobs(model, mb, 0.7)
        for row, lp_i in zip(mb.index, unpad(lp, mb)):
            ref = alone(model, batch.input_ids[row], batch.prompt_lengths[row], 0.7)
            torch.testing.assert_close(lp_i, ref, rtol=0, atol=1e-6)
    assert ent.shape == lp.shape and bool((ent[mb.response_mask] > 0).all())
    assert mb.real_tokens == sum(len(batch.input_ids[i]) for i in mb.index)


def test_dummy_micro_batch_has_no_tokens():
    mb = collate([], [], [])
    lp, _, _ = response_logprobs(ToyLM(), mb, 1.0)
    assert not mb.response_mask.any() and mb.real_tokens == 0 and lp.shape == (1, 1)


AGGS = [("token-mean", {}), ("seq-mean-token-mean", {}), ("seq-mean-token-sum", {}),
        ("seq-mean-token-sum-norm", {"norm_length": 6.0})]


@pytest.mark.parametrize("agg,params", AGGS)
def test_split_over_ranks_and_micro_batches_is_invariant(agg, params):
    algo = AlgorithmConfig(aggregation=Choice(agg, params), kl_coef=0.0, entropy_coef=0.01)
    batch = make_batch(n=8, seed=1)
    batch.loss_mask[3] = False  # a masked sequence is left out of micro-batches and counts

    def loss_of(model, micro_batches, tokens, seqs):
        total = 0.0
        for idx in micro_batches:
            mb = collate(batch.input_ids, batch.prompt_lengths, idx)
            lp, ent, _ = response_logprobs(model, mb, 1.0, entropy_grad=True)
            loss, _, _ = policy_loss(algo, lp, lp.detach(), pad_values(batch.sampler_logprobs, mb),
                                     batch.advantages[mb.index], mb.response_mask, entropy=ent,
                                     global_tokens=tokens, global_seqs=seqs)
            total = total + loss
        return total

    trained = [i for i in range(len(batch)) if batch.loss_mask[i]]
    R = batch.response_lengths()
    tokens, seqs = sum(R[i] for i in trained), len(trained)

    single = ToyLM()
    whole = loss_of(single, [trained], None, None)  # one micro-batch, local counts = global
    whole.backward()

    split = ToyLM()
    lengths = [len(x) for x in batch.input_ids]
    parts = []
    for rank in range(2):  # two "ranks", each packing its own half into small micro-batches
        mine = [i for i in trained if i % 2 == rank]
        parts += [[mine[j] for j in mb] for mb in pack_by_tokens([lengths[i] for i in mine], 12)]
    assert len(parts) > 2
    summed = loss_of(split, parts, tokens, seqs)
    summed.backward()

    torch.testing.assert_close(summed, whole, rtol=1e-6, atol=1e-7)
    for a, b in zip(single.parameters(), split.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


class ToyEngine:
    """The learner-rank surface micro_batch_loss uses, on ToyLM, one rank, no DeepSpeed."""

    world_size, micro_batch_tokens, temperature = 1, 10_000, 1.0

    def __init__(self):
        self.model = ToyLM()

    def forward(self, mb, *, grad, entropy_grad=False, reference=False, temperature=None, measure_routing=False):
        with torch.set_grad_enabled(grad):
            return response_logprobs(self.model, mb, temperature or 1.0, entropy_grad=entropy_grad)

    def all_reduce(self, t, op="sum"):
        return t

    def aux_loss_coef(self):
        return 0.0


def test_multi_turn_masks_and_per_token_advantages_reach_the_loss():
    """micro_batch_loss with a multi-turn batch: observation tokens (token mask 0) take no part, and
    per-token advantages (turn credit) replace the per-sequence ones token by token."""
    from learner.train_step import Metrics, micro_batch_loss

    # sequence 0: prompt [1, 2]; model [3, 4], observation [5, 6], model [7]; sequence 1: one turn
    ids = [torch.tensor([1, 2, 3, 4, 5, 6, 7]), torch.tensor([1, 2, 8, 9])]
    masks = [torch.tensor([True, True, False, False, True]), torch.tensor([True, True])]
    base = LearnerBatch(ids, [2, 2], [torch.full((5,), -2.0), torch.full((2,), -2.0)], torch.tensor([1.0, -1.0]),
                        torch.zeros(2), torch.tensor([0, 0]), torch.zeros(2, dtype=torch.long),
                        torch.ones(2, dtype=torch.bool), token_masks=masks)
    algo = AlgorithmConfig()

    def loss_and_grad(batch):
        eng = ToyEngine()
        mb = collate(batch.input_ids, batch.prompt_lengths, [0, 1], None, batch.token_masks)
        loss = micro_batch_loss(eng, batch, algo, mb, None, None, float(sum(batch.loss_token_counts())), 2.0, 1, Metrics())
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in eng.model.parameters()])

    def with_token_advantages(values):
        b = base.select([0, 1])
        b.token_advantages = [torch.tensor(v) for v in values]
        return b

    ref_loss, ref_grad = loss_and_grad(base)
    # the per-sequence advantages spelled out per token: the same loss and gradient
    same = loss_and_grad(with_token_advantages([[1.0] * 5, [-1.0] * 2]))
    assert torch.equal(same[0], ref_loss) and torch.equal(same[1], ref_grad)
    # values at observation tokens are never used
    obs = loss_and_grad(with_token_advantages([[1.0, 1.0, 9.0, -9.0, 1.0], [-1.0] * 2]))
    assert torch.equal(obs[0], ref_loss) and torch.equal(obs[1], ref_grad)
    # a different advantage for the second model turn changes the loss
    turn = loss_and_grad(with_token_advantages([[1.0, 1.0, 0.0, 0.0, 0.0], [-1.0] * 2]))
    assert not torch.allclose(turn[0], ref_loss)
    # and a batch without the masks trains on the observation tokens: another loss
    unmasked = base.select([0, 1])
    unmasked.token_masks = None
    assert not torch.allclose(loss_and_grad(unmasked)[0], ref_loss)


class ToyTrainEngine(ToyEngine):
    """ToyEngine plus what train_on_batch needs (SGD, one rank); it logs every forward: (grad?, sequences)."""

    micro_batch_tokens = 12  # several micro-batches per mini-batch

    def __init__(self):
        super().__init__()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.5)
        self.forwards: list[tuple[bool, list[int]]] = []

    def forward(self, mb, *, grad, **kw):
        self.forwards.append((grad, list(mb.index)))
        return super().forward(mb, grad=grad, **kw)

    def backward(self, loss):
        loss.backward()

    def optimizer_step(self):
        self.opt.step()
        self.opt.zero_grad()
        return 1.0, 0.5, True

    def routing_metrics(self):
        return {}


@pytest.mark.parametrize("epochs", [1, 2])
def test_the_first_update_is_its_own_old_policy(epochs):
    """train_on_batch scores only the mini-batches after the first before updating: the first
    mini-batch's forward runs the sampling weights, so it gives their old logprobs (kept for the next
    epoch). The update equals the one with every old logprob from a scoring pass up front."""
    from learner.train_step import Metrics, mini_batch_split, score, train_on_batch, update

    algo = AlgorithmConfig(epochs=epochs, mini_batches=2)
    batch = make_batch(8, seed=3)
    sampled = score(ToyTrainEngine(), batch, range(8))
    batch.sampler_logprobs = [sampled[i] - 0.1 for i in range(8)]
    eng = ToyTrainEngine()
    train_on_batch(eng, batch, algo)
    trained, mini = mini_batch_split(batch, 2)
    scored = sorted(i for grad, idx in eng.forwards if not grad for i in idx)
    assert scored == sorted(mini[1]) and not set(scored) & set(mini[0])  # no scoring pass over mini-batch 0

    ref = ToyTrainEngine()  # the old way: every old logprob from a scoring pass before the first update
    old = score(ref, batch, trained)
    for _ in range(epochs):
        for m in range(2):
            update(ref, batch, algo, mini[m], old, None, Metrics())
    for a, b, start in zip(eng.model.parameters(), ref.model.parameters(), ToyLM().parameters()):
        assert (a - start).abs().max() > 1e-3  # it trained
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
