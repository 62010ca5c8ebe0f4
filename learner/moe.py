"""MoE routing in the learner: expert-load statistics, routing agreement with the sampler, and
routing replay (R3).

Routing replay. The rollout engine records, for every input token, the top-k experts its router
chose (actors/routing_capture.py; `Sample.routed_experts`). With replay on, each router of the
learner's model keeps computing its logits and softmax as usual, but the experts it hands to the
expert block are the recorded ones, and their gating weights are the learner's own probabilities
of those experts (renormalised over the k when the model does): the forward computes with the
sampler's expert choice, and the router still gets gradients through the gating weights — as
verl, slime and Megatron do it. The weights are handed over in fp32, as vLLM's CUDA top-k kernel
computes them (transformers' router rounds them to the model's dtype first; vLLM's CPU router takes
a softmax of the bf16 top-k logits, so its weights are bf16-rounded: README "MoE"). Tokens without a
record (the last token of a sequence, which the engine never fed to the model; observation tokens
after a multi-turn trajectory's last model turn; padding) keep the learner's own routing: their
outputs never reach a trained logprob.

Hooks. A forward hook on each top-k router (transformers 5's `*TopKRouter`: returns
(logits, top-k weights, top-k indices)) and a forward pre-hook on the expert block beside it, which
records the indices the experts actually computed with. The learner's "MoE layer l" is the l-th
router in model order, the rollout side's is the l-th MoE layer by vLLM layer id: the same order.
Under ZeRO-3 the hooks see full weights: they run inside the router's forward and the experts'
(DeepSpeed gathers a module's parameters before it runs, and the hooks only read its inputs and outputs).

Measured per step (on the forward that runs the weights which sampled the batch):
  agreement      fraction of recorded tokens (all MoE layers) whose learner top-k set equals the
                 sampler's — the mismatch routing replay removes
  used agreement the same for the indices the experts computed with: 1.0 exactly with replay on
  expert load    tokens per expert and MoE layer (real tokens only)
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch


# ---- statistics (pure) ------------------------------------------------------------------------

def expert_load_stats(counts: Any, prefix: str) -> dict[str, float]:
    """Metrics of a [MoE layers, experts] token-count matrix: per layer the tokens per expert, the
    load entropy normalised by log(experts) (1 = perfectly balanced, 0 = one expert takes all) and
    max/mean load (1 = balanced); and the layers' mean entropy and worst max/mean."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] < 2:
        raise ValueError(f"expert counts must be [layers, experts>=2], got shape {c.shape}")
    out: dict[str, float] = {}
    entropies, ratios = [], []
    for layer, row in enumerate(c):
        total = row.sum()
        if total > 0:
            p = row / total
            nz = p[p > 0]
            entropy = float(-(nz * np.log(nz)).sum() / np.log(len(row)))
            ratio = float(row.max() / row.mean())
        else:
            entropy, ratio = 0.0, 0.0
        entropies.append(entropy)
        ratios.append(ratio)
        out[f"{prefix}/layer{layer}/load_entropy"] = entropy
        out[f"{prefix}/layer{layer}/max_mean_load"] = ratio
        for e, v in enumerate(row):
            out[f"{prefix}/layer{layer}/tokens_e{e}"] = float(v)
    out[f"{prefix}/load_entropy"] = float(np.mean(entropies))
    out[f"{prefix}/max_mean_load"] = float(np.max(ratios))
    return out


def topk_agreement(own: torch.Tensor, recorded: torch.Tensor, valid: torch.Tensor) -> tuple[int, int]:
    """(rows of `valid` whose top-k sets agree, rows of `valid`); own/recorded [N, k], valid [N] bool."""
    same = (own.sort(-1).values == recorded.to(own.dtype).sort(-1).values).all(-1)
    return int((same & valid).sum()), int(valid.sum())


def routing_tensor(routed: Sequence[Optional[np.ndarray]], lengths: Sequence[int], length: int, layers: int,
                   top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Recorded routing of a micro-batch's rows (`routed[row]` for a row of `lengths[row]` tokens, None =
    no record), right-padded to `length` like its input_ids: (long [rows * length, layers, top_k],
    bool [rows * length] where a record exists). A record covers a sequence's first tokens: every
    token but the last (a multi-turn trajectory: up to its last model token)."""
    rows = len(routed)
    out = torch.zeros(rows, length, layers, top_k, dtype=torch.long)
    valid = torch.zeros(rows, length, dtype=torch.bool)
    for row, (rec, n) in enumerate(zip(routed, lengths)):
        if rec is None:
            continue
        if rec.ndim != 3 or rec.shape[1:] != (layers, top_k) or not 0 < len(rec) <= n - 1:
            raise ValueError(f"recorded routing of shape {tuple(rec.shape)} does not fit a sequence of {n} tokens "
                             f"on this model's {layers} MoE layers x top-{top_k} (expected (1..{n - 1}, {layers}, "
                             f"{top_k}); was the rollout engine serving another model?)")
        out[row, : len(rec)] = torch.from_numpy(np.asarray(rec, dtype=np.int64))
        valid[row, : len(rec)] = True
    return out.reshape(rows * length, layers, top_k), valid.reshape(-1)


# ---- hooks on the model -----------------------------------------------------------------------

def topk_routers(model: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(router, expert block) of each MoE layer, in model order; [] for a dense model."""
    pairs = []
    for module in model.modules():
        gate, experts = getattr(module, "gate", None), getattr(module, "experts", None)
        if gate is not None and experts is not None and type(gate).__name__.endswith("TopKRouter"):
            pairs.append((gate, experts))
    return pairs


def gating_weights(router: torch.nn.Module, logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """The router's weights for experts `chosen` [N, k]: its softmax over all experts (fp32, as
    transformers' Qwen3-MoE router computes it) gathered at them, renormalised over the k when the
    model does (`norm_topk_prob`). Gradients flow into the logits."""
    weights = torch.softmax(logits.float(), dim=-1).gather(-1, chosen)
    if getattr(router, "norm_topk_prob", False):
        weights = weights / weights.sum(-1, keepdim=True)
    return weights


class _Context:
    def __init__(self, routing: Optional[torch.Tensor], valid: Optional[torch.Tensor], real: torch.Tensor,
                 replay: bool, measure: bool):
        self.routing, self.valid, self.real, self.replay, self.measure = routing, valid, real, replay, measure


class RouterHooks:
    """Expert load, agreement and (optionally) routing replay on a Hugging Face MoE model."""

    def __init__(self, model: torch.nn.Module, replay: bool):
        self.pairs = topk_routers(model)
        if not self.pairs:
            raise ValueError("no top-k MoE router found in the model (a *TopKRouter `gate` beside `experts`)")
        gate = self.pairs[0][0]
        self.layers, self.experts, self.top_k = len(self.pairs), int(gate.num_experts), int(gate.top_k)
        self.replay = replay
        self._ctx: Optional[_Context] = None
        self._checked: set[int] = set()  # layers whose router the replay formula was checked against
        self.reset()
        for layer, (router, experts) in enumerate(self.pairs):
            router.register_forward_hook(lambda m, i, o, layer=layer: self._router_out(layer, m, o))
            experts.register_forward_pre_hook(lambda m, args, layer=layer: self._experts_in(layer, args))

    def reset(self) -> dict[str, Any]:
        """The accumulated measurements (and start over)."""
        old = getattr(self, "_acc", None)
        self._acc = {"counts": np.zeros((self.layers, self.experts), dtype=np.int64),
                     "agree": 0, "used_agree": 0, "compared": 0}
        return old

    def begin(self, mb: Any, *, measure: bool, replay: bool) -> None:
        """Before the forward of a micro-batch (learner/logprobs.py MicroBatch; `mb.routed` its rows'
        records or None). Stays in force until `end`: with gradient checkpointing the backward
        recomputes the layers, and the recomputation must route as the forward did."""
        rows, length = mb.input_ids.shape
        real = torch.arange(length)[None, :] < torch.tensor(list(mb.lengths))[:, None]
        real = real.reshape(-1) if mb.index else torch.zeros(rows * length, dtype=torch.bool)
        routing = valid = None
        if mb.routed is not None and mb.index:
            routing, valid = routing_tensor(mb.routed, mb.lengths, length, self.layers, self.top_k)
        self._ctx = _Context(routing, valid, real, replay and routing is not None, measure)

    def forward_done(self) -> None:
        """After the forward: nothing more is measured (a recomputation in backward would count twice)."""
        if self._ctx is not None:
            self._ctx.measure = False

    def end(self) -> None:
        self._ctx = None

    @contextlib.contextmanager
    def micro_batch(self, mb: Any, *, measure: bool, replay: bool) -> Iterator[None]:
        """begin ... end around a block (a forward, and its backward when it has one)."""
        self.begin(mb, measure=measure, replay=replay)
        try:
            yield
        finally:
            self.end()

    def _router_out(self, layer: int, module: torch.nn.Module, output: Any) -> Any:
        ctx = self._ctx
        if ctx is None:
            return None
        logits, scores, indices = output
        if ctx.measure:
            own = indices.detach().cpu()
            real = ctx.real[: len(own)]
            self._acc["counts"][layer] += np.bincount(own[real].reshape(-1).numpy(), minlength=self.experts)
            if ctx.routing is not None:
                agree, n = topk_agreement(own, ctx.routing[:, layer], ctx.valid)
                self._acc["agree"] += agree
                self._acc["compared"] += n
        if not ctx.replay:
            return None
        if layer not in self._checked:  # the replay formula must reproduce this router's own weights
            own = gating_weights(module, logits, indices.long()).to(scores.dtype)
            if not torch.allclose(own.float(), scores.float(), rtol=1e-3, atol=1e-5):
                raise NotImplementedError(
                    f"routing replay: {type(module).__name__} computes its gating weights differently from "
                    f"softmax-then-gather (max difference {(own.float() - scores.float()).abs().max():.3g}); "
                    f"replay is verified for Qwen3-MoE-style routers only")
            self._checked.add(layer)
        rec = ctx.routing[:, layer].to(indices.device)
        chosen = torch.where(ctx.valid.to(indices.device)[:, None], rec, indices.long())
        # The gating weights stay fp32, as vLLM's CUDA top-k kernel computes them (its CPU router
        # rounds them to bf16 first; measured: no consistent difference here, README "MoE"); the
        # expert outputs are scaled by them, summed in fp32 and rounded once, as the engine does.
        return logits, gating_weights(module, logits, chosen), chosen.to(indices.dtype)

    def _experts_in(self, layer: int, args: tuple) -> None:
        ctx = self._ctx
        if ctx is None or not ctx.measure or ctx.routing is None:
            return None
        used = args[1].detach().cpu()  # (hidden_states, top_k_index, top_k_weights)
        agree, _ = topk_agreement(used, ctx.routing[:, layer], ctx.valid)
        self._acc["used_agree"] += agree
        return None


def routing_metrics(acc: dict[str, Any]) -> dict[str, float]:
    """Raw sums (to be summed over ranks) of one step's measurements, with fixed keys."""
    out = {"moe/compared_tokens": float(acc["compared"]), "moe/agree_tokens": float(acc["agree"]),
           "moe/used_agree_tokens": float(acc["used_agree"])}
    for layer, row in enumerate(acc["counts"]):
        for e, v in enumerate(row):
            out[f"moe/_count/{layer}/{e}"] = float(v)
    return out


def summarise_routing(reduced: dict[str, float]) -> dict[str, float]:
    """Replace the summed raw keys of `routing_metrics` with agreement rates and load statistics."""
    counts: dict[tuple[int, int], float] = {}
    for key in [k for k in reduced if k.startswith("moe/_count/")]:
        _, _, layer, e = key.split("/")
        counts[(int(layer), int(e))] = reduced.pop(key)
    out = dict(reduced)
    if counts:
        layers = 1 + max(k[0] for k in counts)
        experts = 1 + max(k[1] for k in counts)
        mat = np.zeros((layers, experts))
        for (layer, e), v in counts.items():
            mat[layer, e] = v
        out.update(expert_load_stats(mat, "moe/learner"))
    compared = out.get("moe/compared_tokens", 0.0)
    if compared > 0:
        out["moe/routing_agreement"] = out["moe/agree_tokens"] / compared
        out["moe/used_routing_agreement"] = out["moe/used_agree_tokens"] / compared
    return out
