"""learner/moe.py: expert-load statistics, top-k agreement, and routing replay on a tiny Qwen3-MoE."""

import math

import numpy as np
import pytest
import torch

from learner.logprobs import collate, response_logprobs
from learner.moe import (RouterHooks, expert_load_stats, routing_metrics, routing_tensor, summarise_routing,
                         topk_agreement)

pytestmark = pytest.mark.unit


def test_expert_load_stats_by_hand():
    # layer 0: 2 experts x 2 tokens (balanced); layer 1: one expert takes all 4
    m = expert_load_stats([[2, 2], [4, 0]], "moe/x")
    assert m["moe/x/layer0/load_entropy"] == pytest.approx(1.0)
    assert m["moe/x/layer0/max_mean_load"] == pytest.approx(1.0)
    assert m["moe/x/layer1/load_entropy"] == 0.0
    assert m["moe/x/layer1/max_mean_load"] == pytest.approx(2.0)
    assert m["moe/x/layer1/tokens_e0"] == 4.0 and m["moe/x/layer1/tokens_e1"] == 0.0
    assert m["moe/x/load_entropy"] == pytest.approx(0.5)
    assert m["moe/x/max_mean_load"] == pytest.approx(2.0)
    # 3 experts loaded 1:1:2 -> entropy (2 * 1/4 ln 4 + 1/2 ln 2) / ln 3
    m = expert_load_stats([[1, 1, 2]], "p")
    assert m["p/layer0/load_entropy"] == pytest.approx((0.5 * math.log(4) + 0.5 * math.log(2)) / math.log(3))
    assert m["p/layer0/max_mean_load"] == pytest.approx(2 / (4 / 3))
    with pytest.raises(ValueError, match="layers, experts"):
        expert_load_stats([1, 2], "p")


def test_topk_agreement_compares_sets_on_valid_rows():
    own = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]])
    rec = torch.tensor([[1, 0], [2, 4], [4, 5], [0, 1]])
    valid = torch.tensor([True, True, True, False])
    assert topk_agreement(own, rec, valid) == (2, 3)  # row 0 (same set, other order) and row 2


def test_summarise_routing_sums_to_rates_and_load():
    acc = {"counts": np.array([[3, 1], [2, 2]]), "agree": 6, "used_agree": 8, "compared": 8}
    out = summarise_routing(routing_metrics(acc))
    assert not any(k.startswith("moe/_count") for k in out)
    assert out["moe/routing_agreement"] == 0.75 and out["moe/used_routing_agreement"] == 1.0
    assert out["moe/learner/layer0/max_mean_load"] == pytest.approx(1.5)
    assert out["moe/learner/layer1/load_entropy"] == pytest.approx(1.0)


def test_routing_tensor_pads_and_checks_shape():
    rec = np.array([[[0, 1]], [[2, 3]]], dtype=np.uint8)  # a 3-token sequence: 2 routed tokens, 1 layer, top-2
    r, valid = routing_tensor([rec, None], [3, 2], length=3, layers=1, top_k=2)
    assert r.shape == (6, 1, 2)
    assert valid.tolist() == [True, True, False, False, False, False]
    assert r[1, 0].tolist() == [2, 3]
    with pytest.raises(ValueError, match="MoE layers"):
        routing_tensor([rec], [3], length=3, layers=2, top_k=2)
    # a multi-turn trajectory's record ends at its last model token: the observation after it is the learner's
    r, valid = routing_tensor([rec], [5], length=5, layers=1, top_k=2)
    assert valid.tolist() == [True, True, False, False, False] and r[1, 0].tolist() == [2, 3]
    with pytest.raises(ValueError, match=r"expected \(1..1, 1, 2\)"):  # a record longer than its sequence
        routing_tensor([rec], [2], length=2, layers=1, top_k=2)


@pytest.fixture(scope="module")
def moe_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from cluster.tiny_model import TinyModelSpec, make_tiny_model

    path = make_tiny_model(tmp_path_factory.mktemp("moe"), TinyModelSpec(moe=True))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():  # a random router is nearly uniform; make routing decisive
        for name, p in model.named_parameters():
            if name.endswith("gate.weight"):
                p.normal_(0, 0.5)
    return model


def _batch():
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, 90, (n,), generator=g) for n in (9, 6)]
    return seqs, [4, 3]


def _own_routing(model, hooks, seqs, plens):
    """Each sequence's own routing [len - 1, layers, k] (what a sampler with the same weights records)."""
    seen = []
    handles = [r.register_forward_hook(lambda m, i, o: seen.append(o[2].detach())) for r, _ in hooks.pairs]
    out = []
    for s in seqs:
        seen.clear()
        with torch.no_grad():
            model(input_ids=s[None])
        out.append(torch.stack(seen, 1)[: len(s) - 1].numpy().astype(np.uint8))
    for h in handles:
        h.remove()
    return out


def test_replay_of_own_routing_changes_nothing_and_agrees(moe_model):
    hooks = RouterHooks(moe_model, replay=True)
    seqs, plens = _batch()
    routed = _own_routing(moe_model, hooks, seqs, plens)
    mb = collate(seqs, plens, [0, 1], routed)
    with torch.no_grad():
        plain, _, _ = response_logprobs(moe_model, mb)
        with hooks.micro_batch(mb, measure=True, replay=True):
            replayed, _, _ = response_logprobs(moe_model, mb)
    acc = hooks.reset()
    assert torch.equal(plain, replayed)
    compared = sum(len(s) - 1 for s in seqs) * hooks.layers
    assert acc["compared"] == compared and acc["agree"] == compared and acc["used_agree"] == compared
    assert acc["counts"].sum() == sum(len(s) for s in seqs) * hooks.layers * hooks.top_k  # real tokens only


def test_replay_uses_the_recorded_experts_and_the_router_still_learns(moe_model):
    hooks = RouterHooks(moe_model, replay=True)
    seqs, plens = _batch()
    own = _own_routing(moe_model, hooks, seqs, plens)
    other = [(r.astype(np.int64) + 3) % hooks.experts for r in own]  # a different, valid expert choice
    mb = collate(seqs, plens, [0, 1], [o.astype(np.uint8) for o in other])

    with hooks.micro_batch(mb, measure=True, replay=False):  # replay off: the learner's own top-k
        with torch.no_grad():
            plain, _, _ = response_logprobs(moe_model, mb)
    off = hooks.reset()
    assert off["used_agree"] == off["agree"] == 0  # +3 mod 8 never equals the own set

    moe_model.zero_grad()
    with hooks.micro_batch(mb, measure=True, replay=True):
        replayed, _, _ = response_logprobs(moe_model, mb)
    on = hooks.reset()
    assert on["used_agree"] == on["compared"] > 0  # the experts computed with exactly the recorded ones
    assert on["agree"] == 0  # the router's own choice is still measured
    assert (replayed.detach() - plain).abs().max() > 1e-3  # and the forward really changed
    replayed[mb.response_mask].sum().backward()
    for router, _ in hooks.pairs:
        assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0


def test_replay_holds_through_a_gradient_checkpointed_backward(moe_model):
    """With gradient checkpointing the backward recomputes each layer: the routing must stay the
    replayed one until the backward is done (begin ... forward_done ... backward ... end), and the
    gradients equal those of the same forward without checkpointing."""
    hooks = RouterHooks(moe_model, replay=True)
    seqs, plens = _batch()
    other = [((r.astype(np.int64) + 3) % hooks.experts).astype(np.uint8) for r in _own_routing(moe_model, hooks, seqs, plens)]
    mb = collate(seqs, plens, [0, 1], other)

    def grads(checkpointing: bool) -> dict:
        moe_model.zero_grad()
        if checkpointing:
            moe_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        moe_model.train()
        try:
            hooks.begin(mb, measure=True, replay=True)
            lp, _, _ = response_logprobs(moe_model, mb)
            hooks.forward_done()
            lp[mb.response_mask].sum().backward()
            hooks.end()
        finally:
            moe_model.gradient_checkpointing_disable()
            moe_model.eval()
        return {n: p.grad.clone() for n, p in moe_model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    acc = hooks.reset()
    # two forwards, each measured once (not again in the checkpointed recompute), replayed throughout
    assert acc["compared"] == 2 * sum(len(s) - 1 for s in seqs) * hooks.layers == acc["used_agree"]
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


def test_replay_refuses_a_router_it_does_not_reproduce(moe_model):
    hooks = RouterHooks(moe_model, replay=True)
    seqs, plens = _batch()
    mb = collate(seqs, plens, [0, 1], _own_routing(moe_model, hooks, seqs, plens))
    router = hooks.pairs[0][0]

    def other_router(hidden):  # a router whose gating weights are not softmax-then-gather (e.g. scaled)
        logits, scores, indices = type(router).forward(router, hidden)
        return logits, scores * 0.5, indices

    router.forward = other_router
    try:
        with pytest.raises(NotImplementedError, match="gating weights"):
            with torch.no_grad(), hooks.micro_batch(mb, measure=False, replay=True):
                response_logprobs(moe_model, mb)
    finally:
        del router.forward


def test_replayed_gating_weights_reach_the_experts_in_fp32(moe_model):
    """In a bf16 model transformers' router rounds its gating weights to bf16; replay hands the experts
    the fp32 softmax-then-gather weights (as vLLM's CUDA top-k kernel computes them), not a rounded copy."""
    import copy

    model = copy.deepcopy(moe_model).to(torch.bfloat16)
    hooks = RouterHooks(model, replay=True)
    seqs, plens = _batch()
    mb = collate(seqs, plens, [0, 1], _own_routing(model, hooks, seqs, plens))
    seen: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    for router, experts in hooks.pairs:
        router.register_forward_hook(lambda m, i, o: logits.append(o[0].detach()))
        experts.register_forward_pre_hook(lambda m, args: seen.append(args[2].detach()))
    with torch.no_grad():
        response_logprobs(model, mb)  # no replay: the model's own (bf16) weights
        plain = [w.clone() for w in seen]
        seen.clear()
        logits.clear()
        with hooks.micro_batch(mb, measure=False, replay=True):
            response_logprobs(model, mb)
    assert all(w.dtype == torch.bfloat16 for w in plain)
    assert len(seen) == hooks.layers and all(w.dtype == torch.float32 for w in seen)
    for w, lg, own in zip(seen, logits, plain):
        probs = torch.softmax(lg.float(), -1)
        top = probs.topk(hooks.top_k, -1)
        expected = top.values / top.values.sum(-1, keepdim=True)
        rows = mb.input_ids.numel()
        torch.testing.assert_close(w[:rows], expected[:rows], rtol=0, atol=0)
        assert not torch.equal(w, own.float())  # the bf16 rounding is gone


def test_warm_start_adds_the_router_balance_loss(moe_model):
    """learner.moe_aux_loss_coef > 0: the supervised warm start's loss gains coef x the router
    balance loss, as the RL step's does (it used to be computed and dropped); sft/loss stays the
    cross-entropy. A coefficient given for the steps (trainer.warm_start.moe_aux_loss_coef) overrides it."""
    import copy

    from learner.batch import LearnerBatch
    from learner.train_step import sft_on_batch

    class OneRank:  # the Engine surface sft_on_batch uses, one rank, no DeepSpeed, no optimizer step
        world_size, micro_batch_tokens, temperature = 1, 10_000, 1.0

        def __init__(self, coef):
            self.model, self.coef = copy.deepcopy(moe_model), coef
            self.model.config.router_aux_loss_coef = coef

        def forward(self, mb, *, grad, entropy_grad=False, reference=False, temperature=None, measure_routing=False,
                    router_aux=None):
            with torch.set_grad_enabled(grad):
                aux = self.coef > 0 if router_aux is None else router_aux
                return response_logprobs(self.model, mb, 1.0, router_aux_loss=aux)

        def backward(self, loss):
            loss.backward()

        def optimizer_step(self, lr=None, advance_schedule=True):
            return 0.0, 0.0, True

        def all_reduce(self, t, op="sum"):
            return t

        def aux_loss_coef(self):
            return self.coef

    seqs, plens = _batch()
    n = len(seqs)
    batch = LearnerBatch(seqs, plens, [torch.zeros(len(s) - p) for s, p in zip(seqs, plens)], torch.zeros(n),
                         torch.zeros(n), torch.arange(n), torch.zeros(n, dtype=torch.long),
                         torch.ones(n, dtype=torch.bool))
    plain, balanced = OneRank(0.0), OneRank(0.5)
    m0, m1 = sft_on_batch(plain, batch), sft_on_batch(balanced, batch)
    # trainer.warm_start.moe_aux_loss_coef: a coefficient for these steps overrides the learner's both ways
    override_on, override_off = OneRank(0.0), OneRank(0.5)
    m2, m3 = sft_on_batch(override_on, batch, aux_coef=0.5), sft_on_batch(override_off, batch, aux_coef=0.0)
    assert m2["sft/moe_aux_loss"] == pytest.approx(m1["sft/moe_aux_loss"], rel=1e-6) and "sft/moe_aux_loss" not in m3
    assert m1["sft/loss"] == pytest.approx(m0["sft/loss"], rel=1e-6)  # the cross-entropy alone
    assert "sft/moe_aux_loss" not in m0 and m1["sft/moe_aux_loss"] > 0
    # the gradient difference is 0.5 x the gradient of the balance loss of the same forward
    probe = copy.deepcopy(moe_model)
    mb = collate(seqs, plens, [0, 1])
    _, _, aux = response_logprobs(probe, mb, 1.0, router_aux_loss=True)
    aux.backward()
    assert aux.item() == pytest.approx(m1["sft/moe_aux_loss"], rel=1e-6)
    routers = [name for name, _ in probe.named_parameters() if name.endswith("mlp.gate.weight")]
    assert routers
    params = {name: (p0, p1, pa) for (name, p0), (_, p1), (_, pa) in
              zip(plain.model.named_parameters(), balanced.model.named_parameters(), probe.named_parameters())}
    for name in routers:
        p0, p1, pa = params[name]
        assert pa.grad.abs().max() > 1e-4  # the balance loss moves the router
        torch.testing.assert_close(p1.grad - p0.grad, 0.5 * pa.grad, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(override_on.model.get_parameter(name).grad, p1.grad)
        torch.testing.assert_close(override_off.model.get_parameter(name).grad, p0.grad)
