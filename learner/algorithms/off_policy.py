"""Off-policy correction for the sampler/learner mismatch.

The rollout engine (vLLM) and the learner compute different probabilities for the same tokens
under the same weights (kernels, precision, MoE routing), and async rollouts are a few versions
stale. The PPO ratio uses the learner's old_logprobs, so the sampler-vs-learner gap needs its
own importance weight:  rho_t = pi_old(y_t) / pi_sampler(y_t) = exp(old_t - sampler_t).

`off_policy_weights` returns detached per-token weights [B, T] (0 at padding) that the caller
multiplies into the per-token surrogate loss before aggregation, plus metrics:
  mismatch_kl   k3 estimate of KL(pi_sampler || pi_old), mean over valid tokens
  is_ratio_mean mean of rho_t over valid tokens
  plus one per method (capped_frac / masked_seq_frac / masked_frac).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .masking import as_bool_mask, masked_mean, masked_sum, valid_or
from .registry import NoParams, Registry

Correction = Callable[[torch.Tensor, torch.Tensor, object], tuple[torch.Tensor, dict]]
OFF_POLICY: Registry[Correction] = Registry("off-policy correction")

_MAX_LOG_RATIO = 20.0


@dataclasses.dataclass(frozen=True)
class TISParams:
    cap: float = 2.0  # Yao et al. use C = 2

    def __post_init__(self):
        if self.cap <= 0:
            raise ValueError(f"tis cap must be > 0, got {self.cap}")


@dataclasses.dataclass(frozen=True)
class SeqMaskParams:
    """Bounds on the sequence ratio. The defaults suit `stat="geometric"`, a per-token average,
    hence tight; with `stat="product"` (the full sequence likelihood ratio) use wide bounds."""

    low: float = 0.999
    high: float = 1.001
    stat: str = "geometric"  # "geometric": exp(mean_t log rho_t); "product": exp(sum_t log rho_t)

    def __post_init__(self):
        if self.stat not in ("geometric", "product"):
            raise ValueError(f"seq_mask stat must be 'geometric' or 'product', got '{self.stat}'")
        if not 0 <= self.low < self.high:
            raise ValueError(f"seq_mask needs 0 <= low < high, got {self.low}, {self.high}")


@dataclasses.dataclass(frozen=True)
class IcePopParams:
    low: float = 0.5  # Ring-1T / IcePop band [alpha, beta] = [0.5, 5]
    high: float = 5.0

    def __post_init__(self):
        if not 0 <= self.low < self.high:
            raise ValueError(f"icepop needs 0 <= low < high, got {self.low}, {self.high}")


def off_policy_weights(
    name: str,
    old_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    **params,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Detached per-token weights [B, T] for correction `name`, and detached scalar metrics."""
    entry = OFF_POLICY.get(name)
    p = OFF_POLICY.make_params(entry.name, params)
    mask = as_bool_mask(response_mask)
    with torch.no_grad():
        log_rho = (valid_or(old_logprobs, mask) - valid_or(sampler_logprobs, mask))
        log_rho = log_rho.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        rho = log_rho.exp()
        weights, metrics = entry.fn(log_rho, mask, p)
        metrics["mismatch_kl"] = masked_mean(rho - 1 - log_rho, mask)
        metrics["is_ratio_mean"] = masked_mean(rho, mask)
    return valid_or(weights, mask), metrics


@OFF_POLICY.register("none", params=NoParams)
def _none(log_rho, mask, p):
    return torch.ones_like(log_rho), {}


@OFF_POLICY.register("tis", params=TISParams)
def _tis(log_rho, mask, p: TISParams):
    """Truncated importance sampling (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings
    You Off-Policy RL Training"): w_t = min(rho_t, C). Truncation bounds the variance."""
    rho = log_rho.exp()
    return rho.clamp(max=p.cap), {"capped_frac": masked_mean((rho > p.cap).float(), mask)}


@OFF_POLICY.register("seq_mask", params=SeqMaskParams)
def _seq_mask(log_rho, mask, p: SeqMaskParams):
    """Sequence-level masked IS (rejection): w_{i,t} = 1[low <= rho_i <= high], with
    rho_i = exp(mean_t log rho_t) ("geometric", length-independent) or exp(sum_t log rho_t)
    ("product"). A sequence the sampler generated under a noticeably different distribution is
    dropped whole rather than reweighted (cf. verl rollout correction, DeepSeek-V3.2 off-policy masking)."""
    total = masked_sum(log_rho, mask, dim=-1)
    if p.stat == "geometric":
        total = total / mask.sum(-1).clamp(min=1).to(total.dtype)
    seq_rho = total.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO).exp()
    keep = (seq_rho >= p.low) & (seq_rho <= p.high)
    has_tokens = mask.any(-1)
    metrics = {"masked_seq_frac": masked_mean((~keep).float(), has_tokens)}
    return keep[:, None].expand(mask.shape).to(log_rho.dtype), metrics


@OFF_POLICY.register("icepop", params=IcePopParams)
def _icepop(log_rho, mask, p: IcePopParams):
    """IcePop (Ling Team 2025, "Every Step Evolves: Scaling RL for Trillion-Scale Thinking Model",
    Ring-1T): w_t = rho_t if low <= rho_t <= high else 0. Tokens with a large train/inference
    discrepancy are masked out; the rest keep their importance correction."""
    rho = log_rho.exp()
    inside = (rho >= p.low) & (rho <= p.high)
    weights = torch.where(inside, rho, torch.zeros_like(rho))
    return weights, {"masked_frac": masked_mean((~inside).float(), mask)}
