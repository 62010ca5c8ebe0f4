"""Masked reductions shared by the loss modules.

Why `torch.where` and never `x * mask`: padding positions may hold inf or nan (a logprob of a
token the model never produced, an uninitialised buffer). `nan * 0 == nan` and `inf * 0 == nan`,
so multiplying by the mask leaks garbage into sums and gradients; `where` selects instead.
Inputs are cleaned with `valid_or` *before* any non-linear op (exp, square), because the backward
of `where(m, exp(x), 0)` is `0 * exp(x)`, which is nan when x is inf at a masked position.
"""

from __future__ import annotations

import torch


def valid_or(x: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """`x` where `mask` is true, `fill` elsewhere; padding gets no gradient."""
    return torch.where(mask, x, torch.full_like(x, fill))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    clean = valid_or(x, mask)
    return clean.sum() if dim is None else clean.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over valid positions; 0 (not nan) when there are none."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """Accept 0/1 float, int or bool masks; everything downstream uses bool."""
    return mask if mask.dtype == torch.bool else mask != 0


def per_token(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sequence [B] tensor to [B, T]; a [B, T] tensor passes through."""
    if x.dim() == 1:
        return x[:, None].expand(mask.shape)
    if x.shape != mask.shape:
        raise ValueError(f"expected shape [B] or {tuple(mask.shape)}, got {tuple(x.shape)}")
    return x
