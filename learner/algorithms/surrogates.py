"""Per-token policy-gradient surrogates: unreduced loss [B, T] plus detached metrics.

A surrogate only turns (logprobs, old_logprobs, advantages) into a per-token loss; reducing it
to a scalar is `aggregate_loss`'s job, so every surrogate composes with every aggregation mode.
Sign convention: loss = -objective. Padding (mask 0) gives loss 0 and no gradient, whatever the
padded inputs hold (inf, nan, 1e9): inputs are cleaned with `where` before any exp.

Shapes: logprobs, old_logprobs, response_mask [B, T]; advantages [B] (broadcast) or [B, T].
old_logprobs never receive gradient (they are detached here).

Metrics (masked means over valid tokens, detached scalars):
  clipfrac_high  fraction of tokens whose ratio was clipped at the upper bound where that clip
                 changes the gradient (A > 0 for PPO/GSPO; any sign for CISPO's weight)
  clipfrac_low   same at the lower bound (A < 0 for PPO/GSPO)
  approx_kl      k3 estimate of KL(pi_old || pi_theta): mean of (ratio - 1 - log ratio), >= 0
  ratio_mean     mean importance ratio (for GSPO the sequence ratio, counted once per token)
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from .masking import as_bool_mask, masked_mean, masked_sum, per_token, valid_or
from .registry import Registry

Surrogate = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
SURROGATES: Registry[Surrogate] = Registry("surrogate loss")

# exp() of a log-ratio beyond this overflows float16/bfloat16 ranges and means the sample is
# hopelessly off-policy anyway; clamping (zero gradient outside) keeps the loss finite (verl: 20).
_MAX_LOG_RATIO = 20.0


@dataclasses.dataclass(frozen=True)
class PPOClipParams:
    """PPO (Schulman et al. 2017). clip_high > clip_low is DAPO's clip-higher (e.g. 0.28).
    clip_c: dual-clip (Ye et al. 2020) lower bound for A < 0, must be > 1 (e.g. 3.0); None = off."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_c: Optional[float] = None

    def __post_init__(self):
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            got = f"{self.clip_low}, {self.clip_high}"
            raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {got}")
        if self.clip_c is not None and self.clip_c <= 1:
            raise ValueError(f"dual-clip clip_c must be > 1, got {self.clip_c}")


@dataclasses.dataclass(frozen=True)
class GSPOParams:
    """GSPO's sequence ratio is a geometric mean of token ratios, so its useful clip range is
    ~1e-4 wide (paper: 3e-4 / 4e-4)."""

    clip_low: float = 3e-4
    clip_high: float = 4e-4


@dataclasses.dataclass(frozen=True)
class CISPOParams:
    """CISPO truncates the IS weight from above only in the paper (clip_low None = no lower bound)."""

    clip_high: float = 0.28
    clip_low: Optional[float] = None


def surrogate_loss(
    name: str,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    **params,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss [B, T] (0 at padding) and metrics for surrogate `name` with `params` overrides."""
    entry = SURROGATES.get(name)
    p = SURROGATES.make_params(entry.name, params)
    mask = as_bool_mask(response_mask)
    lp = valid_or(logprobs, mask)
    old = valid_or(old_logprobs.detach(), mask)
    adv = valid_or(per_token(advantages.detach().to(lp.dtype), mask), mask)
    loss, metrics = entry.fn(lp, old, adv, mask, p)
    return valid_or(loss, mask), {k: v.detach() for k, v in metrics.items()}


def _clipped(ratio, adv, mask, low: float, high: float, clip_c: float | None = None):
    """PPO's pessimistic objective as a loss: max(-A r, -A clip(r, 1-low, 1+high)), optional dual clip.

    `ratio` may be any differentiable tensor (token, sequence or straight-through ratio).
    """
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - low, 1 + high)
    loss = torch.maximum(unclipped, clipped)
    metrics = {
        "clipfrac_high": masked_mean(((ratio > 1 + high) & (adv > 0)).float(), mask),
        "clipfrac_low": masked_mean(((ratio < 1 - low) & (adv < 0)).float(), mask),
    }
    if clip_c is not None:
        # For A < 0 a huge ratio makes -A*r unbounded; cap it at -A*c (gradient 0 beyond c).
        capped = torch.minimum(loss, -adv * clip_c)
        metrics["clipfrac_dual"] = masked_mean(((adv < 0) & (capped < loss)).float(), mask)
        loss = torch.where(adv < 0, capped, loss)
    return loss, metrics


def _ratio_metrics(log_ratio, ratio, mask) -> dict[str, torch.Tensor]:
    k3 = ratio - 1 - log_ratio
    return {"approx_kl": masked_mean(k3, mask), "ratio_mean": masked_mean(ratio, mask)}


@SURROGATES.register("ppo_clip", params=PPOClipParams, aliases=("ppo",))
def _ppo_clip(lp, old, adv, mask, p: PPOClipParams):
    """PPO clipped surrogate (Schulman et al. 2017), per token:

        r_t = exp(logp_t - old_t);  loss_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high))
        dual clip (Ye et al. 2020, clip_c > 1), for A_t < 0:  loss_t = min(loss_t, -A_t clip_c)

    Decoupled bounds clip_high > clip_low are DAPO's clip-higher (Yu et al. 2025).
    """
    log_ratio = (lp - old).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = log_ratio.exp()
    loss, metrics = _clipped(ratio, adv, mask, p.clip_low, p.clip_high, p.clip_c)
    return loss, {**metrics, **_ratio_metrics(log_ratio, ratio, mask)}


def _seq_log_ratio(lp, old, mask) -> torch.Tensor:
    """GSPO's length-normalised sequence log-ratio: mean over valid tokens of (logp - old), [B, 1]."""
    lengths = mask.sum(-1, keepdim=True).clamp(min=1).to(lp.dtype)
    seq = masked_sum(lp - old, mask, dim=-1)[:, None] / lengths
    return seq.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)


@SURROGATES.register("gspo", params=GSPOParams)
def _gspo(lp, old, adv, mask, p: GSPOParams):
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"):

        s_i = exp( (1/|y_i|) sum_t (logp_t - old_t) )
        loss_{i,t} = max(-A_i s_i, -A_i clip(s_i, 1 - clip_low, 1 + clip_high))   (same for every t)

    The paper's objective is the per-sequence mean, i.e. aggregate with `seq-mean-token-mean`.
    With [B, T] advantages, A_{i,t} takes A_i's place token by token.
    """
    seq = _seq_log_ratio(lp, old, mask)
    s = seq.exp().expand(mask.shape)
    loss, metrics = _clipped(s, adv, mask, p.clip_low, p.clip_high)
    return loss, {**metrics, **_ratio_metrics(seq.expand(mask.shape), s, mask)}


@SURROGATES.register("gspo_token", params=GSPOParams)
def _gspo_token(lp, old, adv, mask, p: GSPOParams):
    """GSPO-token (Zheng et al. 2025, eq. 13): s_{i,t} = sg[s_i] * exp(logp_t - sg[logp_t]).

    Same value as s_i, but each token's gradient is its own: grad_t = s_i * grad logp_t. With a
    per-sequence advantage and any aggregation that weights a sequence's tokens equally it gives
    exactly GSPO's loss and gradient; it exists so that per-token advantages can be used.
    """
    seq = _seq_log_ratio(lp, old, mask)
    s = (seq.detach() + lp - lp.detach()).exp()
    loss, metrics = _clipped(s, adv, mask, p.clip_low, p.clip_high)
    return loss, {**metrics, **_ratio_metrics(seq.expand(mask.shape), s, mask)}


@SURROGATES.register("cispo", params=CISPOParams)
def _cispo(lp, old, adv, mask, p: CISPOParams):
    """CISPO (MiniMax 2025, "MiniMax-M1", arXiv:2506.13585):

        loss_t = -sg( clip(r_t, 1 - clip_low, 1 + clip_high) ) * A_t * logp_t

    The IS weight is truncated, never the token: every token keeps a gradient (A_t * w_t *
    grad logp_t), unlike PPO where clipped tokens get none. The loss *value* is not a ratio
    objective (it contains logp), only its gradient is meaningful. clipfrac_* count truncated
    weights regardless of the advantage's sign, since truncation affects every token.
    """
    log_ratio = (lp - old).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = log_ratio.exp()
    low = 0.0 if p.clip_low is None else 1 - p.clip_low
    weight = ratio.detach().clamp(min=low, max=1 + p.clip_high)
    metrics = {
        "clipfrac_high": masked_mean((ratio > 1 + p.clip_high).float(), mask),
        "clipfrac_low": masked_mean((ratio < low).float(), mask),
        **_ratio_metrics(log_ratio, ratio, mask),
    }
    return -weight * adv * lp, metrics
