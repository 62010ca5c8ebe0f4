"""One learner update on this rank's shard: old/ref logprobs, then epochs x mini-batches of
micro-batched forward/backward with one optimizer step per mini-batch.

Data-parallel invariance (K ranks == 1 rank on the same global batch)
---------------------------------------------------------------------
For each mini-batch the valid-token and sequence counts are all-reduced over the ranks first, and
every micro-batch's loss is `aggregate_loss(..., global_tokens, global_seqs)`: its numerator over
the GLOBAL denominator. Summed over all micro-batches of all ranks that is exactly the loss one
rank would compute on the whole mini-batch, in value and in gradient. Gradients of the
micro-batches add up in `.grad` (DeepSpeed's gradient accumulation, with `scale_wrt_gas=False`
and gradient_accumulation_steps=1 — DeepSpeed does not rescale), and DeepSpeed then AVERAGES them
over the K ranks. So each micro-batch backpropagates `K * share`: the average over ranks of
K * (sum of shares) is the sum of shares, i.e. the gradient of the global loss. Clipping then
sees the global gradient norm, as one rank would.

The loss (per token, before aggregation; A = advantage, w = off-policy weight vs the sampler):

    l_t = surrogate_t(logp, old, A) * w_t  +  kl_coef * KL_t(logp || ref)  -  entropy_coef * H_t

Each term is aggregated with the same mode and counts, so they are reported separately and sum
to the total. Sequences with loss_mask False are never forwarded at all.

`old` is the engine's own recomputation when the batch is reused (epochs * mini_batches > 1);
otherwise the first forward IS the old policy, so old = logp.detach() and the ratio is exactly 1.

Non-finite loss or gradient
---------------------------
Such an update is skipped on every rank: parameters, optimizer state and LR schedule stay as they
were, and the step reports it (`learner/nonfinite_skipped`; the driver counts, saves and stops:
cluster/nonfinite.py). The decision is the gradient check at the optimizer boundary (see
LearnerRank.optimizer_step): it runs on the globally reduced gradient, so all ranks decide alike.
A non-finite loss is made to reach it (`poison_nonfinite`).
"""

from __future__ import annotations

import math
import time
from typing import Optional, Protocol, Sequence

import torch

from learner.batch import LearnerBatch
from learner.config import AlgorithmConfig
from learner.logprobs import MicroBatch, collate, pad_values, unpad
from learner.moe import summarise_routing
from learner.packing import pack_by_tokens, padding_waste, split_to_count


class Engine(Protocol):
    """What a training step needs from a learner rank (LearnerRank implements it)."""

    world_size: int
    micro_batch_tokens: int
    temperature: float

    def forward(self, mb: MicroBatch, *, grad: bool, entropy_grad: bool = False, reference: bool = False,
                temperature: Optional[float] = None, measure_routing: bool = False,
                router_aux: Optional[bool] = None,
                ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def optimizer_step(self, lr: Optional[float] = None, advance_schedule: bool = True) -> tuple[float, float, bool]: ...
    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor: ...
    def aux_loss_coef(self) -> float: ...
    def routing_metrics(self) -> dict[str, float]: ...


# ---- the loss of one micro-batch (pure) -------------------------------------------------------

def policy_loss(
    algo: AlgorithmConfig,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logprobs: Optional[torch.Tensor] = None,
    entropy: Optional[torch.Tensor] = None,
    global_tokens: float | None = None,
    global_seqs: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(this micro-batch's share of the loss, its parts {pg, kl, entropy}, detached token-mean metrics).

    All [b, T] tensors share `mask` (response tokens of trained sequences); advantages are [b] or [b, T].
    """
    from learner.algorithms import aggregate_loss, kl_penalty, off_policy_weights, surrogate_loss

    def agg(per_token: torch.Tensor) -> torch.Tensor:
        return aggregate_loss(per_token, mask, algo.aggregation.name, global_tokens=global_tokens,
                              global_seqs=global_seqs, **algo.aggregation.params)

    pg_tok, metrics = surrogate_loss(algo.surrogate.name, logprobs, old_logprobs, advantages, mask,
                                     **algo.surrogate.params)
    weights, op_metrics = off_policy_weights(algo.off_policy.name, old_logprobs, sampler_logprobs, mask,
                                             **algo.off_policy.params)
    metrics.update({f"off_policy/{k}": v for k, v in op_metrics.items()})
    parts = {"pg": agg(pg_tok * weights)}
    total = parts["pg"]
    if ref_logprobs is not None and algo.kl_coef > 0:
        kl_tok = kl_penalty(logprobs, ref_logprobs, algo.kl_estimator, response_mask=mask)
        parts["kl"] = agg(kl_tok)
        total = total + algo.kl_coef * parts["kl"]
    if entropy is not None and algo.entropy_coef != 0:
        parts["entropy"] = agg(entropy)
        total = total - algo.entropy_coef * parts["entropy"]
    return total, parts, {k: v.detach() for k, v in metrics.items()}


# ---- metric bookkeeping -----------------------------------------------------------------------

class Metrics:
    """Sums to all-reduce once at the end of a step: token-weighted means, plain sums and maxima."""

    def __init__(self):
        self.sums: dict[str, float] = {}  # value * weight
        self.weights: dict[str, float] = {}
        self.totals: dict[str, float] = {}
        self.maxima: dict[str, float] = {}

    def mean(self, key: str, value: float, weight: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight
        self.weights[key] = self.weights.get(key, 0.0) + weight

    def add(self, key: str, value: float) -> None:
        self.totals[key] = self.totals.get(key, 0.0) + float(value)

    def max(self, key: str, value: float) -> None:
        self.maxima[key] = max(self.maxima.get(key, float("-inf")), float(value))

    def reduce(self, eng: Engine) -> dict[str, float]:
        """Global values: every rank gets the same dict (two small collectives, fixed key order).

        Every rank must have registered the same keys (the step's code path is the same on all)."""
        mean_keys, total_keys, max_keys = sorted(self.sums), sorted(self.totals), sorted(self.maxima)
        vec = torch.tensor([self.sums[k] for k in mean_keys] + [self.weights[k] for k in mean_keys]
                           + [self.totals[k] for k in total_keys], dtype=torch.float64)
        vec = eng.all_reduce(vec, "sum")
        mx = eng.all_reduce(torch.tensor([self.maxima[k] for k in max_keys], dtype=torch.float64), "max")
        n = len(mean_keys)
        out = {k: (vec[i] / vec[n + i]).item() if vec[n + i] > 0 else 0.0 for i, k in enumerate(mean_keys)}
        out.update({k: vec[2 * n + i].item() for i, k in enumerate(total_keys)})
        out.update({k: mx[i].item() for i, k in enumerate(max_keys)})
        return out


# ---- micro-batch plans ------------------------------------------------------------------------

def plan_micro_batches(eng: Engine, batch: LearnerBatch, idx: Sequence[int]) -> tuple[list[list[int]], float]:
    """Micro-batches (lists of indices into `batch`) of sequences `idx`, with the SAME count on every
    rank (collectives inside forward/backward), and this rank's padding waste."""
    lengths = [int(x.numel()) for x in batch.input_ids]
    local = [[idx[j] for j in mb] for mb in pack_by_tokens([lengths[i] for i in idx], eng.micro_batch_tokens)]
    count = int(eng.all_reduce(torch.tensor([max(1, len(local))], dtype=torch.float64), "max").item())
    plan = split_to_count(local, lengths, count)
    return plan, padding_waste(plan, lengths)


def score(eng: Engine, batch: LearnerBatch, idx: Sequence[int], *, reference: bool = False,
          temperature: Optional[float] = None, measure_routing: bool = False) -> dict[int, torch.Tensor]:
    """No-grad response logprobs {sequence index: [R_i]} of sequences `idx` (collective under ZeRO-3).
    measure_routing: this forward runs the weights that sampled the batch (MoE load and agreement)."""
    plan, _ = plan_micro_batches(eng, batch, idx)
    out: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for mb_idx in plan:
            mb = collate(batch.input_ids, batch.prompt_lengths, mb_idx, batch.routed_experts, batch.token_masks)
            lp, _, _ = eng.forward(mb, grad=False, reference=reference, temperature=temperature,
                                   measure_routing=measure_routing)
            out.update(zip(mb.index, unpad(lp, mb)))
    return out


# ---- the RL update ----------------------------------------------------------------------------

def mini_batch_split(batch: LearnerBatch, M: int) -> tuple[list[int], list[list[int]]]:
    """(the sequences that take loss, their split into M mini-batches) of this rank's shard, laid out
    by LearnerBatch.shard: mini-batch m is the m-th contiguous slice (the policy's and the critic's update)."""
    if len(batch) % M:
        raise ValueError(f"shard of {len(batch)} sequences does not split into {M} mini-batches")
    R, per_mb = batch.loss_token_counts(), len(batch) // M
    trained = [i for i in range(len(batch)) if bool(batch.loss_mask[i]) and R[i] > 0]
    return trained, [[i for i in trained if m * per_mb <= i < (m + 1) * per_mb] for m in range(M)]


def train_on_batch(eng: Engine, batch: LearnerBatch, algo: AlgorithmConfig) -> dict[str, float]:
    """epochs x mini_batches optimizer steps on this rank's shard (laid out by LearnerBatch.shard)."""
    t_start = time.perf_counter()
    M = algo.mini_batches
    trained, mini = mini_batch_split(batch, M)
    m_ = Metrics()

    # Old logprobs. The first update's forward runs the weights that sampled the batch, so mini-batch
    # 0 takes its old logprobs from there (old = logp.detach(), kept for later epochs); only the
    # later mini-batches, trained after an update, need a scoring pass before the first update.
    old: Optional[dict[int, torch.Tensor]] = None  # None: one update, whose forward is the old policy
    if algo.epochs * M > 1:
        later = [i for m in mini[1:] for i in m]
        old = score(eng, batch, later, measure_routing=True) if M > 1 else {}
    # the KL term of the loss (PPO with kl_in_reward puts it in the reward instead: cluster/ppo.py)
    ref = score(eng, batch, trained, reference=True) if algo.kl_coef > 0 and not algo.kl_in_reward else None
    if old is not None:
        _sampler_diff(m_, batch, old)
    updates = [update(eng, batch, algo, mini[m], old, ref, m_, first=e == m == 0)
               for e in range(algo.epochs) for m in range(M)]

    for key, v in eng.routing_metrics().items():  # MoE: expert load and routing agreement (same keys on all ranks)
        m_.add(key, v)
    m_.add("learner/sequences", len(trained))
    m_.add("learner/train_tokens", sum(u["tokens"] for u in updates))
    m_.max("learner/train_seconds", sum(u["seconds"] for u in updates))
    m_.max("learner/step_seconds", time.perf_counter() - t_start)
    out = summarise_routing(m_.reduce(eng))
    out["learner/tokens_per_s"] = out.pop("learner/train_tokens") / max(out["learner/train_seconds"], 1e-9)
    applied = [u for u in updates if u["applied"]]
    norms = [u["grad_norm"] for u in applied] or [math.nan]  # a skipped update's norm is not finite
    out["learner/grad_norm"] = sum(norms) / len(norms)
    out["learner/grad_norm_max"] = max(norms)
    out["learner/lr"] = updates[-1]["lr"]
    out["learner/optimizer_steps"] = float(len(applied))
    out["learner/nonfinite_skipped"] = float(len(updates) - len(applied))  # updates skipped: non-finite
    return out


def uses_reference(algo: AlgorithmConfig) -> bool:
    return algo.kl_coef > 0 or algo.dpo.enabled


def reference_kl(eng: Engine, batch: LearnerBatch, algo: AlgorithmConfig) -> list[torch.Tensor]:
    """Per sequence, the per-token KL(policy || reference) [R_i] (0 at tokens that take no loss):
    the policy as it sampled the batch against the reference, by algo.kl_estimator (no grad)."""
    from learner.algorithms import kl_penalty

    idx = list(range(len(batch)))
    policy, ref = score(eng, batch, idx), score(eng, batch, idx, reference=True)
    out = []
    for i in idx:
        mask = torch.ones_like(policy[i], dtype=torch.bool) if batch.token_masks is None else batch.token_masks[i]
        out.append(kl_penalty(policy[i][None], ref[i][None], algo.kl_estimator, response_mask=mask[None])[0])
    return out


# ---- preference optimisation (DPO / IPO) ------------------------------------------------------

def preference_on_batch(eng: Engine, batch: LearnerBatch, algo: AlgorithmConfig) -> dict[str, float]:
    """One optimizer step of DPO (or IPO) on this rank's pairs: sequence 2p is pair p's chosen, 2p + 1
    its rejected. Sequence logprobs are sums over the response tokens at temperature 1, the
    reference's from the frozen reference model; the loss is the mean over the GLOBAL pairs (plus, with
    algo.dpo.nll_coef, that times the chosen completions' NLL over the GLOBAL chosen tokens), so any
    number of ranks gives the same update. Both sequences of a pair share a micro-batch."""
    from learner.algorithms import dpo_loss

    t0 = time.perf_counter()
    if len(batch) % 2:
        raise ValueError(f"a preference batch holds pairs (chosen, rejected): got {len(batch)} sequences")
    pairs = len(batch) // 2
    R = batch.response_lengths()
    g_pairs, g_chosen = (float(x) for x in eng.all_reduce(
        torch.tensor([float(pairs), float(sum(R[0::2]))], dtype=torch.float64), "sum"))
    nll_coef = algo.dpo.nll_coef
    ref = score(eng, batch, list(range(len(batch))), reference=True, temperature=1.0)
    lengths = [int(batch.input_ids[2 * p].numel() + batch.input_ids[2 * p + 1].numel()) for p in range(pairs)]
    local = [[q for p in mb for q in (2 * p, 2 * p + 1)] for mb in pack_by_tokens(lengths, eng.micro_batch_tokens)]
    count = int(eng.all_reduce(torch.tensor([max(1, len(local))], dtype=torch.float64), "max").item())
    plan = local + [[] for _ in range(count - len(local))]  # empty: a dummy micro-batch (pairs stay whole)
    m_ = Metrics()
    for mb_idx in plan:
        mb = collate(batch.input_ids, batch.prompt_lengths, mb_idx)
        lp, _, _ = eng.forward(mb, grad=True, temperature=1.0)
        seq = torch.where(mb.train_mask.to(lp.device), lp, torch.zeros_like(lp)).sum(-1)
        if not mb.index:  # keeps every rank's backward calls aligned
            eng.backward(seq.sum() * 0.0)
            continue
        ref_seq = torch.stack([ref[i].sum() for i in mb.index]).to(seq.device)
        loss, metrics = dpo_loss(seq[0::2], seq[1::2], ref_seq[0::2], ref_seq[1::2], **algo.dpo.params)
        n = loss.numel()
        nll = -seq[0::2].sum()  # the chosen completions' summed token NLL
        total = loss.sum() / g_pairs + (nll_coef * nll / max(g_chosen, 1.0) if nll_coef else 0.0)
        eng.backward(poison_nonfinite(total) * eng.world_size)
        m_.mean("dpo/loss", loss.mean().item(), n)
        m_.mean("dpo/chosen_nll", nll.item() / max(1, sum(R[i] for i in mb.index[0::2])), n)
        for name, v in metrics.items():
            m_.mean(f"dpo/{name}", v.item(), n)
    for key in ("dpo/loss", "dpo/reward_chosen", "dpo/reward_rejected", "dpo/reward_margin", "dpo/reward_accuracy",
                "dpo/chosen_nll"):
        m_.mean(key, 0.0, 0.0)  # every rank registers every key, pairs or not
    grad_norm, lr, applied = eng.optimizer_step()
    m_.add("dpo/pairs", pairs)
    m_.max("dpo/seconds", time.perf_counter() - t0)
    out = m_.reduce(eng)
    out.update({"dpo/grad_norm": grad_norm, "learner/lr": lr, "learner/nonfinite_skipped": float(not applied)})
    return out


def update(eng: Engine, batch: LearnerBatch, algo: AlgorithmConfig, idx: list[int],
           old: Optional[dict[int, torch.Tensor]], ref: Optional[dict[int, torch.Tensor]], m_: Metrics,
           first: bool = False) -> dict[str, float]:
    """One optimizer step on mini-batch `idx` (this rank's part): micro-batched forward/backward.
    first: the step's first update, on the sampling weights: its forward gives the old logprobs
    (stored into `old` when later epochs reuse them)."""
    R = batch.loss_token_counts()
    counts = eng.all_reduce(torch.tensor([sum(R[i] for i in idx), len(idx)], dtype=torch.float64), "sum")
    plan, waste = plan_micro_batches(eng, batch, idx)
    m_.mean("learner/padding_waste", waste, 1.0)
    m_.add("learner/micro_batches", len(plan) / eng.world_size)  # summed over ranks: per rank
    t0, tokens = time.perf_counter(), 0
    for mb_idx in plan:
        mb = collate(batch.input_ids, batch.prompt_lengths, mb_idx, batch.routed_experts, batch.token_masks)
        loss = micro_batch_loss(eng, batch, algo, mb, None if first else old, ref, float(counts[0]), float(counts[1]),
                                len(plan), m_, keep_old=old if first else None)
        # x K: DeepSpeed averages gradients over the K ranks, but the K ranks' shares must add up.
        eng.backward(poison_nonfinite(loss) * eng.world_size)
        tokens += mb.real_tokens
    grad_norm, lr, applied = eng.optimizer_step()
    return {"grad_norm": grad_norm, "lr": lr, "applied": applied, "seconds": time.perf_counter() - t0,
            "tokens": tokens}


def poison_nonfinite(loss: torch.Tensor) -> torch.Tensor:
    """`loss`, or NaN times it if it is not finite.

    What skips an update is the non-finite gradient check at the optimizer boundary (global over
    the ranks). A non-finite loss almost always gives a non-finite gradient, but not always: a NaN
    or inf in a term that carries no gradient (a detached weight or constant) leaves it finite.
    NaN * loss makes every gradient element the loss reaches NaN, so such a step is skipped too —
    and the micro-batch is still backpropagated, as every rank must run the same backward calls."""
    return loss if bool(torch.isfinite(loss)) else loss * math.nan


def micro_batch_loss(eng: Engine, batch: LearnerBatch, algo: AlgorithmConfig, mb: MicroBatch,
                     old: Optional[dict[int, torch.Tensor]], ref: Optional[dict[int, torch.Tensor]],
                     global_tokens: float, global_seqs: float, n_micro: int, m_: Metrics,
                     keep_old: Optional[dict[int, torch.Tensor]] = None) -> torch.Tensor:
    """Forward one micro-batch; return its share of the mini-batch loss; record its metrics.
    old None: this forward runs the sampling weights, and is the old policy (its logprobs go to keep_old)."""
    lp, ent, aux = eng.forward(mb, grad=True, entropy_grad=algo.entropy_coef != 0, measure_routing=old is None)
    if keep_old is not None:
        keep_old.update(zip(mb.index, unpad(lp.detach(), mb)))
    dev = lp.device
    mask = mb.train_mask.to(dev)  # multi-turn: observation tokens take no loss
    if old is None:
        _sampler_diff(m_, batch, dict(zip(mb.index, unpad(lp, mb))))
    ref_t = pad_values(ref, mb).to(dev) if ref is not None else None
    if batch.token_advantages is not None:  # multi-turn turn credit: per-token advantages
        adv = pad_values(batch.token_advantages, mb).to(dev)
    else:
        adv = batch.advantages[mb.index].to(dev) if mb.index else torch.zeros(1, device=dev)
    loss, parts, metrics = policy_loss(
        algo, lp, lp.detach() if old is None else pad_values(old, mb).to(dev),
        pad_values(batch.sampler_logprobs, mb).to(dev), adv, mask,
        ref_logprobs=ref_t, entropy=ent, global_tokens=global_tokens, global_seqs=global_seqs)
    if aux is not None:  # MoE router balance loss, averaged over all micro-batches of all ranks
        loss = loss + eng.aux_loss_coef() * aux / (n_micro * eng.world_size)
        m_.mean("learner/moe_aux_loss", aux.item(), 1.0)
    updates = algo.epochs * algo.mini_batches  # loss metrics: mean over the step's updates
    for name, v in parts.items():
        m_.add(f"learner/{name}_loss", v.item() / updates)
    m_.add("learner/loss", loss.item() / updates)
    tokens = int(mask.sum())
    for name, v in metrics.items():
        m_.mean(f"learner/{name}", v.item(), tokens)
    if ent is not None:
        m_.mean("learner/entropy", _masked_mean(ent, mask), tokens)
    if ref_t is not None:
        m_.mean("learner/ref_logprob_diff", _masked_mean(lp - ref_t, mask), tokens)
    return loss


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    n = int(mask.sum())
    return 0.0 if n == 0 else float(torch.where(mask, x.detach(), torch.zeros_like(x)).sum() / n)


def _sampler_diff(m_: Metrics, batch: LearnerBatch, learner_lp: dict[int, torch.Tensor]) -> None:
    """|learner old logprobs - sampler logprobs|: a large value means the rollout engine is not
    sampling from the weights being trained (stale sync, precision, a bug) — the silent off-policy error."""
    for i, lp in learner_lp.items():
        d = (lp.float() - batch.sampler_logprobs[i].float()).abs()
        if batch.token_masks is not None:  # the sampler has logprobs at the model's tokens only
            d = d[batch.token_masks[i]]
        if d.numel():
            m_.mean("learner/old_sampler_logprob_diff_mean", d.mean().item(), d.numel())
            m_.max("learner/old_sampler_logprob_diff_max", d.max().item())
    m_.max("learner/old_sampler_logprob_diff_max", 0.0)  # key present on every rank
    m_.mean("learner/old_sampler_logprob_diff_mean", 0.0, 0.0)


# ---- supervised (warm start) ------------------------------------------------------------------

def sft_on_batch(eng: Engine, batch: LearnerBatch, lr: Optional[float] = None,
                 aux_coef: Optional[float] = None) -> dict[str, float]:
    """One optimizer step of token-mean cross-entropy on the response tokens (temperature 1), with
    the global token count, so any number of ranks gives the same update. Does not advance the RL
    LR schedule; `lr` overrides the learning rate for this step only, `aux_coef` the MoE router
    balance loss's coefficient (None: the learner's, as in the RL step)."""
    coef = eng.aux_loss_coef() if aux_coef is None else aux_coef
    t0 = time.perf_counter()
    R = batch.loss_token_counts()
    idx = [i for i in range(len(batch)) if bool(batch.loss_mask[i]) and R[i] > 0]
    g_tokens = eng.all_reduce(torch.tensor([sum(R[i] for i in idx)], dtype=torch.float64), "sum")[0].item()
    plan, waste = plan_micro_batches(eng, batch, idx)
    m_ = Metrics()
    for mb_idx in plan:
        mb = collate(batch.input_ids, batch.prompt_lengths, mb_idx, batch.routed_experts, batch.token_masks)
        lp, _, aux = eng.forward(mb, grad=True, temperature=1.0,
                                 router_aux=None if aux_coef is None else aux_coef > 0)
        mask = mb.train_mask.to(lp.device)
        loss = torch.where(mask, -lp, torch.zeros_like(lp)).sum() / max(g_tokens, 1.0)
        m_.add("sft/loss", loss.item())
        if aux is not None:  # MoE router balance loss, as in the RL step
            loss = loss + coef * aux / (len(plan) * eng.world_size)
            m_.mean("sft/moe_aux_loss", aux.item(), 1.0)
        eng.backward(poison_nonfinite(loss) * eng.world_size)
        m_.add("sft/tokens", float(mask.sum()))
    grad_norm, used_lr, applied = eng.optimizer_step(lr=lr, advance_schedule=False)
    m_.mean("sft/padding_waste", waste, 1.0)
    m_.max("sft/seconds", time.perf_counter() - t0)
    out = m_.reduce(eng)
    out.update({"sft/grad_norm": grad_norm, "sft/lr": used_lr, "sft/nonfinite_skipped": float(not applied)})
    return out


def probe(eng: Engine, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int],
          temperature: Optional[float] = None) -> list[list[float]]:
    """Response logprobs of fixed probe sequences (weight-sync check); default: the rollout temperature."""
    seqs = [torch.as_tensor(list(s), dtype=torch.long) for s in sequences]
    batch = LearnerBatch(seqs, list(prompt_lengths), [torch.zeros(len(s) - p) for s, p in zip(seqs, prompt_lengths)],
                         torch.zeros(len(seqs)), torch.zeros(len(seqs)), torch.zeros(len(seqs), dtype=torch.long),
                         torch.zeros(len(seqs), dtype=torch.long), torch.ones(len(seqs), dtype=torch.bool))
    lps = score(eng, batch, list(range(len(seqs))), temperature=temperature)
    return [lps[i].tolist() if i in lps else [] for i in range(len(seqs))]
