"""Critic loss for PPO with a value model."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .masking import as_bool_mask, valid_or
from .registry import build_dataclass


@dataclasses.dataclass(frozen=True)
class ValueLossParams:
    clip_range: Optional[float] = 0.2  # None: plain squared error

    def __post_init__(self):
        if self.clip_range is not None and self.clip_range <= 0:
            raise ValueError(f"value clip_range must be > 0 or None, got {self.clip_range}")


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    **params,
) -> torch.Tensor:
    """PPO clipped value loss (Schulman et al. 2017; as in OpenAI baselines / verl), per token [B, T]:

        v_clip = old_v + clip(v - old_v, -clip_range, clip_range)
        loss_t = 0.5 * max((v - R)^2, (v_clip - R)^2)

    Clipping keeps the critic from moving far from the values the advantages were computed with.
    Only `values` receives gradient; padding gives 0. Keyword params: clip_range=0.2 (None: off).
    """
    p = build_dataclass(ValueLossParams, params, where="value_loss")
    mask = as_bool_mask(response_mask)
    v = valid_or(values, mask)
    old, ret = valid_or(old_values.detach(), mask), valid_or(returns.detach(), mask)
    loss = (v - ret).square()
    if p.clip_range is not None:
        v_clip = old + (v - old).clamp(-p.clip_range, p.clip_range)
        loss = torch.maximum(loss, (v_clip - ret).square())
    return valid_or(0.5 * loss, mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over valid tokens: 1 = the critic predicts the returns,
    0 = no better than their mean, < 0 = worse. NaN when the returns do not vary (variance < 1e-10:
    e.g. every reward 0, the returns then only float noise around 0)."""
    mask = as_bool_mask(mask)
    r, v = returns[mask].double(), values[mask].double()
    var = r.var(unbiased=False) if r.numel() else torch.tensor(0.0)
    if var < 1e-10:
        return float("nan")
    return float(1.0 - (r - v).var(unbiased=False) / var)
