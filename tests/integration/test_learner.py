"""The DeepSpeed learner on real Ray actors with the tiny Qwen3 (fp32, CPU, gloo).

One fixed global batch (ragged lengths, fixed GRPO-style advantages, one masked sequence) is
trained for a few steps with PPO-clip / token-mean, two mini-batches per step (so old logprobs are
recomputed and the second update is off-policy), a warm-up + linear LR schedule, clipping, and a
micro-batch token budget small enough that ranks run different numbers of micro-batches.

Checked: the policy objective improves; ZeRO-2 replicas stay bit-identical; 2 ranks (ZeRO-2 and
ZeRO-3) give the parameters of 1 rank on the same global batch; checkpoint -> load -> step equals
the uninterrupted step exactly; the exported HF directory loads in transformers and reproduces
the learner's logprobs, which equal a plain transformers forward at temperature 0.7; the weight
broadcast delivers exactly the learner's tensors under the protocol's names; Qwen3-MoE under
ZeRO-3 with experts that receive no tokens trains without hanging and exports correctly.
"""

from __future__ import annotations

import math
import threading

import pytest
import ray
import torch

from cluster.tiny_model import TinyModelSpec, make_tiny_model
from learner.batch import LearnerBatch
from learner.config import AlgorithmConfig, Choice, LearnerConfig, OptimizerConfig
from learner.engine import lr_lambda

pytestmark = pytest.mark.integration

STEPS = 3
TEMPERATURE = 0.7
TOTAL_STEPS = 8  # optimizer steps the LR schedule spans


# ---- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", TinyModelSpec()))


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    return str(make_tiny_model(tmp_path_factory.mktemp("models") / "tiny_moe", TinyModelSpec(moe=True)))


def learner_cfg(num_ranks: int, zero_stage: int, **kw) -> LearnerConfig:
    return LearnerConfig(
        num_ranks=num_ranks, zero_stage=zero_stage, dtype="float32",
        optimizer=OptimizerConfig(lr=2e-3, warmup_steps=2, schedule="linear", min_lr_ratio=0.1),
        grad_clip=1.0, micro_batch_tokens=40, cpus_per_rank=0.5, call_timeout_s=180, **kw)


ALGO = AlgorithmConfig(advantage=Choice("grpo", {}), surrogate=Choice("ppo_clip", {}),
                       aggregation=Choice("token-mean", {}), epochs=1, mini_batches=2)


def global_batch(n: int = 8, seed: int = 0) -> LearnerBatch:
    g = torch.Generator().manual_seed(seed)
    ids, plens = [], []
    for i in range(n):
        p = 3 + i % 3
        r = int(torch.randint(3, 20, (1,), generator=g))
        ids.append(torch.randint(10, 100, (p + r,), generator=g))
        plens.append(p)
    loss_mask = torch.ones(n, dtype=torch.bool)
    loss_mask[5 % n] = n <= 5  # one masked sequence in the full batch
    return LearnerBatch(
        input_ids=ids, prompt_lengths=plens,
        sampler_logprobs=[torch.full((len(x) - p,), -4.6) for x, p in zip(ids, plens)],
        advantages=torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, 3.0, -1.0, 0.0][:n]),
        rewards=torch.zeros(n), group_index=torch.arange(n) // 2,
        policy_versions=torch.zeros(n, dtype=torch.long), loss_mask=loss_mask)


def objective(group, batch: LearnerBatch) -> float:
    """J = sum over trained tokens of A_i * logp / tokens — what the policy loss pushes up."""
    lps = group.probe_logprobs([x.tolist() for x in batch.input_ids], batch.prompt_lengths)
    num = sum(float(a) * sum(lp) for a, lp, m in zip(batch.advantages, lps, batch.loss_mask) if m)
    return num / sum(len(lp) for lp, m in zip(lps, batch.loss_mask) if m)


def run(group, batch: LearnerBatch, steps: int = STEPS) -> list[dict[str, float]]:
    return [group.train_step(batch) for _ in range(steps)]


def make_group(path: str, cfg: LearnerConfig, algo: AlgorithmConfig = ALGO):
    from cluster.learner_group import LearnerGroup

    return LearnerGroup(path, cfg, algo, total_steps=TOTAL_STEPS, temperature=TEMPERATURE)


@pytest.fixture(scope="module")
def one_rank(ray_cluster, tiny):
    """Reference: world size 1, ZeRO-2. Returns results only (the actor is gone afterwards)."""
    group = make_group(tiny, learner_cfg(1, 2))
    try:
        batch = global_batch()
        init = group.full_state_dict()  # theta_0: how far training moves the parameters is the scale
        before = objective(group, batch)
        metrics = run(group, batch)
        return {"before": before, "after": objective(group, batch), "metrics": metrics,
                "init": init, "state": group.full_state_dict()}
    finally:
        group.shutdown()


@pytest.fixture(scope="module")
def zero2_two_ranks(ray_cluster, tiny, one_rank):
    group = make_group(tiny, learner_cfg(2, 2))
    try:
        metrics = run(group, global_batch())
        return {"metrics": metrics, "state": group.full_state_dict(), "replicas": group.local_param_checksum()}
    finally:
        group.shutdown()


@pytest.fixture(scope="module")
def zero3_two_ranks(ray_cluster, tiny, zero2_two_ranks):
    """A live 2-rank ZeRO-3 group after STEPS steps (later tests keep using it)."""
    group = make_group(tiny, learner_cfg(2, 3))
    metrics = run(group, global_batch())
    yield group, {"metrics": metrics, "state": group.full_state_dict()}
    group.shutdown()


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def flat(state: dict) -> torch.Tensor:
    return torch.cat([state[k].double().flatten() for k in sorted(state)])


def adam_ratio_bound(t: int, beta1: float, beta2: float) -> float:
    """A bound on |m_hat_t / sqrt(v_hat_t)| at Adam step t (1-based) valid for ANY gradient sequence.

    m_t = (1-b1) sum_k b1^k g_{t-k} and v_t = (1-b2) sum_k b2^k g_{t-k}^2, so by Cauchy-Schwarz
    |m_t| <= (1-b1) sqrt(sum_k (b1^2/b2)^k) sqrt(v_t / (1-b2)); with the bias corrections this is
    (1-b1)/(1-b1^t) * sqrt(sum_{k<t} (b1^2/b2)^k) * sqrt((1-b2^t)/(1-b2)). For (0.9, 0.999) it is
    1.0 at t=1 and 1.016 at t=6 (eps only makes the step smaller)."""
    return ((1 - beta1) / (1 - beta1 ** t) * math.sqrt(sum((beta1 ** 2 / beta2) ** k for k in range(t)))
            * math.sqrt((1 - beta2 ** t) / (1 - beta2)))


def dp_param_tolerance(cfg: LearnerConfig, optimizer_steps: int) -> float:
    """Largest |param difference| two runs of `optimizer_steps` Adam(W) steps (weight decay 0) can
    reach when they differ only in float rounding, e.g. the order of a gradient reduction.

    Per element, Adam steps by lr_t * m_hat/(sqrt(v_hat)+eps), at most lr_t * adam_ratio_bound(t)
    whatever the gradient. For an element whose true gradient is ~0 (|g| at the level of the
    reduction's rounding noise, ~1e-7 of the summed contributions) the ratio is ~ +-1 and its sign
    is decided by that noise, so the two runs can step it by +lr_t and -lr_t: a difference of up to
    2 * sum_t lr_t * ratio_bound(t). Nothing about rounding can exceed that, on any CPU. It is loose
    (1.85e-2 for the 6 steps here; rounding gives 7e-6..1.1e-5 in the worst element, depending on
    AVX2 vs AVX-512 kernels, which is why a fixed 1e-5 flaked), so the parameter VECTOR and the
    per-step metrics carry the sharp checks."""
    opt = cfg.optimizer
    if opt.weight_decay:
        raise ValueError("the bound assumes weight_decay == 0")
    beta1, beta2 = opt.betas
    return 2 * sum(opt.lr * lr_lambda(t, opt, TOTAL_STEPS) * adam_ratio_bound(t + 1, beta1, beta2)
                   for t in range(optimizer_steps))


# ||theta_2ranks - theta_1rank|| / ||theta_1rank - theta_0||: the disagreement as a fraction of how far
# the STEPS steps moved the parameters. Under rounding noise the elements with a real gradient get
# Adam updates that agree to float rounding (fp32 sums in another order, through a few steps), and
# only the rare noise-level elements of the max-diff bound above disagree by up to ~lr — a tiny part
# of the vector's norm (measured 4e-6..7e-6 with AVX-512 and with AVX2 kernels; the median |d| is
# ~3e-9). A data-parallel bug (a rank's share scaled wrongly, a micro-batch dropped or counted twice,
# the wrong global token count) changes the gradient DIRECTION of every step and moves this to
# O(0.1..1) (rank 1's loss not multiplied by world_size: 0.38). 1e-3 leaves >100x room for noise.
DP_REL_L2 = 1e-3


# ---- tests ------------------------------------------------------------------------------------

def test_policy_objective_improves(one_rank):
    assert one_rank["after"] > one_rank["before"] + 0.05, (one_rank["before"], one_rank["after"])
    m = one_rank["metrics"]
    assert all(x["learner/optimizer_steps"] == 2 for x in m)
    assert m[0]["learner/lr"] < m[-1]["learner/lr"] or m[-1]["learner/lr"] < 2e-3  # schedule is moving
    assert 0 < m[0]["learner/padding_waste"] < 1
    assert m[0]["learner/grad_norm"] > 0
    # the sampler logprobs given are a constant -4.6: the detector must see the mismatch
    assert m[0]["learner/old_sampler_logprob_diff_max"] > 0.1


def test_zero2_replicas_identical(zero2_two_ranks):
    a, b = zero2_two_ranks["replicas"]
    assert a == b


@pytest.mark.parametrize("which", ["zero2", "zero3"])
def test_two_ranks_equal_one_rank(which, one_rank, zero2_two_ranks, zero3_two_ranks):
    """Not bit-equal (the gradient reductions sum in another order), so each tolerance is derived:
    (a) the worst element within the hard Adam bound of dp_param_tolerance, (b) the parameter vector
    within DP_REL_L2 of the distance trained, (c) per-step loss / grad norm / KL / clip fraction,
    sums of fp32 reductions in another order, within 1e-4 relative. A uniformly mis-scaled gradient
    (e.g. the x world_size missing on every rank) is almost invisible to Adam's parameters, as Adam
    is scale-invariant: (c)'s grad norm is the check that catches it."""
    two = zero2_two_ranks if which == "zero2" else zero3_two_ranks[1]
    steps = STEPS * ALGO.epochs * ALGO.mini_batches
    assert sum(m["learner/optimizer_steps"] for m in two["metrics"]) == steps
    one, init = one_rank["state"], one_rank["init"]
    assert one.keys() == two["state"].keys() == init.keys()
    diff = (flat(two["state"]) - flat(one)).abs()
    moved = float((flat(one) - flat(init)).norm())
    rel_l2 = float(diff.norm()) / moved
    bound = dp_param_tolerance(learner_cfg(1, 2), steps)
    seen = (f"max |d| {float(diff.max()):.3g} (bound {bound:.3g}), median |d| {float(diff.median()):.3g}, "
            f"||d||/||trained|| {rel_l2:.3g} (bound {DP_REL_L2:g}), ||trained|| {moved:.3g}")
    assert float(diff.max()) <= bound, seen
    assert rel_l2 <= DP_REL_L2, seen
    for m1, m2 in zip(one_rank["metrics"], two["metrics"]):
        for key in ("learner/loss", "learner/grad_norm", "learner/approx_kl", "learner/clipfrac_high"):
            assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-6), (key, seen)


def test_checkpoint_resume_is_exact(zero3_two_ranks, tmp_path):
    group, _ = zero3_two_ranks
    batch = global_batch(seed=1)
    group.save_checkpoint(str(tmp_path / "ckpt"), client_state={"step": 7})
    group.train_step(batch)
    uninterrupted = group.full_state_dict()
    assert group.load_checkpoint(str(tmp_path / "ckpt")) == {"step": 7}
    resumed_metrics = group.train_step(batch)
    resumed = group.full_state_dict()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert resumed_metrics["learner/lr"] > 0


def test_sft_step_with_an_empty_rank(zero3_two_ranks):
    """One sequence on two ranks: rank 1 has nothing and must still join every ZeRO-3 gather."""
    group, _ = zero3_two_ranks
    batch = global_batch(n=1, seed=4)
    losses = [group.sft_step(batch, lr=1e-2) for _ in range(3)]
    assert losses[0]["sft/tokens"] == batch.response_lengths()[0]
    assert losses[-1]["sft/loss"] < losses[0]["sft/loss"] and losses[0]["sft/lr"] == 1e-2


def test_export_matches_learner_and_transformers(zero3_two_ranks, tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    group, _ = zero3_two_ranks
    out = group.export_hf(str(tmp_path / "hf"), tiny)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert AutoTokenizer.from_pretrained(out).vocab_size > 0
    batch = global_batch(n=4, seed=2)
    learner = group.probe_logprobs([x.tolist() for x in batch.input_ids], batch.prompt_lengths)
    with torch.no_grad():
        for ids, p, lp in zip(batch.input_ids, batch.prompt_lengths, learner):
            logits = model(ids[None]).logits[0].float()
            # vLLM's processed logprobs at temperature T: log_softmax(logits / T)
            ref = torch.log_softmax(logits[p - 1:-1] / TEMPERATURE, -1).gather(-1, ids[p:, None]).squeeze(-1)
            assert torch.allclose(torch.tensor(lp), ref, atol=1e-5), (lp, ref)
    # the exported weights are the learner's weights
    state = group.full_state_dict()
    exported = model.state_dict()
    assert max_diff({k: state[k] for k in exported}, exported) == 0.0


def receive_broadcast(group, bucket_bytes: int, versions=(1,)):
    """Play rollout rank 1: join the weight-sync group, receive `versions` full updates.
    Returns (the last update's {name: tensor}, manifest)."""
    from learner.weight_protocol import check_plan, manifest_bytes
    from learner.weight_sync import init_group, receive

    host, port = group.weight_sync_address()
    init_refs = group.init_weight_sync_async(host, port, 2, "gloo", 60.0, bucket_bytes=bucket_bytes)
    box = {}
    t = threading.Thread(target=lambda: box.update(pg=init_group(host, port, 1, 2, "gloo", 60.0)))
    t.start()
    manifest, buckets = ray.get(init_refs, timeout=90)[0]
    t.join(timeout=90)
    assert [i for b in buckets for i in b] == list(range(len(manifest))) and check_plan(manifest, buckets) == []
    for version in versions:
        refs = group.broadcast_weights(version)
        got = dict(receive(box["pg"], manifest, buckets))
        stats = ray.get(refs, timeout=90)
        assert [name for name, _, _ in manifest] == list(got)
        assert stats[0]["bytes"] == manifest_bytes(manifest) == sum(t.numel() * t.element_size() for t in got.values())
        assert stats[0]["version"] == version
    box["pg"].shutdown()
    return got, manifest


def test_weight_broadcast_protocol(zero3_two_ranks):
    """The test process is rollout rank 1 and must get exactly the learner's tensors under
    checkpoint names, lm_head.weight included, on every update."""
    group, _ = zero3_two_ranks
    got, manifest = receive_broadcast(group, bucket_bytes=48 * 1024, versions=(1, 2))
    assert "lm_head.weight" in got
    assert max_diff(group.full_state_dict(), got) == 0.0
    torch.testing.assert_close(got["lm_head.weight"], got["model.embed_tokens.weight"], rtol=0, atol=0)


@pytest.mark.slow
def test_moe_zero3_two_ranks(ray_cluster, tiny_moe, tmp_path):
    """Two ranks with one short sequence each: most experts receive no token on a rank in a step, and
    ZeRO-3 (no leaf modules: learner/engine.py build_engine says why) must not hang (the call would
    time out) and must train."""
    from transformers import AutoModelForCausalLM

    cfg = learner_cfg(2, 3)
    cfg.call_timeout_s = 120
    # KL to a ZeRO-3 reference engine and an entropy bonus; two epochs recompute old logprobs
    group = make_group(tiny_moe, cfg, AlgorithmConfig(epochs=2, mini_batches=1, kl_coef=0.05, entropy_coef=0.01))
    try:
        batch = global_batch(n=2, seed=3)
        batch.loss_mask[:] = True
        batch.advantages = torch.tensor([1.0, -1.0])
        for _ in range(2):
            m = group.train_step(batch)
            assert m["learner/grad_norm"] > 0 and m["learner/optimizer_steps"] == 2
        assert m["learner/kl_loss"] > 0 and m["learner/entropy_loss"] > 0
        # small buckets: one fused expert tensor spans several buckets (gathered once, on both ranks)
        got, manifest = receive_broadcast(group, bucket_bytes=48 * 1024)
        names = [e[0] for e in manifest]
        assert "model.layers.0.mlp.experts.7.gate_proj.weight" in names and "lm_head.weight" in names
        assert not any("gate_up_proj" in n for n in names)
        out = group.export_hf(str(tmp_path / "moe_hf"), tiny_moe)
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        ids, p = batch.input_ids[0], batch.prompt_lengths[0]
        lp = group.probe_logprobs([ids.tolist()], [p])[0]
        with torch.no_grad():
            ref = torch.log_softmax(model(ids[None]).logits[0, p - 1:-1].float() / TEMPERATURE, -1)
        torch.testing.assert_close(torch.tensor(lp), ref.gather(-1, ids[p:, None]).squeeze(-1), atol=1e-5, rtol=0)
        # what was broadcast is exactly what the export holds, under the same checkpoint names
        from safetensors.torch import load_file

        saved = load_file(f"{out}/model.safetensors")
        assert set(saved) | {"lm_head.weight"} == set(got)
        assert max_diff(saved, {k: got[k] for k in saved}) == 0.0
    finally:
        group.shutdown()
