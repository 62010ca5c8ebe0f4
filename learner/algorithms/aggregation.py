"""Reduce a per-token loss [B, T] to the scalar that is backpropagated.

Modes (N = valid tokens, S = sequences with at least one valid token, L_i = valid tokens of seq i):
  token-mean               sum_{i,t} l_it / N                      DAPO (Yu et al. 2025); TRL "dapo"/"bnpo"
  seq-mean-token-mean      (1/S) sum_i (1/L_i) sum_t l_it           GRPO (Shao et al. 2024); TRL "grpo"
  seq-mean-token-sum       (1/S) sum_i sum_t l_it
  seq-mean-token-sum-norm  sum_{i,t} l_it / (S * norm_length)       Dr. GRPO (Liu et al. 2025); TRL "dr_grpo"
                           norm_length is a constant (e.g. max response length), so no length bias.

Sequences with no valid token (filtered out, padding rows) contribute 0 and are not counted in S.

Data-parallel / micro-batch contract
------------------------------------
Let one optimizer step see a global batch split over K ranks and M micro-batches per rank.
Pass the *global* counts of that whole step:
    global_tokens = N summed over all ranks and micro-batches   (read by token-mean)
    global_seqs   = S summed over all ranks and micro-batches   (read by the seq-* modes)
(`local_counts(mask)` gives one micro-batch's (N, S); all-reduce the sums.) The function then
returns this micro-batch's *share*: its local numerator divided by the global denominator, so

    sum over all ranks and micro-batches of aggregate_loss(...) == aggregate_loss(whole batch)

in value and in gradient. A sequence must not be split across micro-batches for the seq-* modes.
Engines that *average* gradients undo this sum: DeepSpeed all-reduces the mean over the K
data-parallel ranks and, by default, divides the loss by gradient_accumulation_steps. To get the
gradient of the global loss the caller backpropagates `share * K * M` under DeepSpeed defaults
(`share * K` if the engine is told not to scale by accumulation steps). Without global counts
the local counts are used, i.e. each call is a self-contained loss over its own micro-batch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from .masking import as_bool_mask, valid_or
from .registry import NoParams, Registry

Aggregation = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, object], torch.Tensor]
AGGREGATIONS: Registry[Aggregation] = Registry("loss aggregation mode")


@dataclasses.dataclass(frozen=True)
class SumNormParams:
    norm_length: Optional[float] = None  # required; typically the maximum response length

    def __post_init__(self):
        if self.norm_length is None or self.norm_length <= 0:
            raise ValueError("seq-mean-token-sum-norm needs norm_length > 0 (e.g. the max response length)")


def local_counts(response_mask: torch.Tensor) -> tuple[int, int]:
    """(valid tokens, sequences with >= 1 valid token) of one micro-batch; sum these over ranks."""
    mask = as_bool_mask(response_mask)
    return int(mask.sum()), int(mask.any(-1).sum())


def aggregate_loss(
    per_token_loss: torch.Tensor,
    response_mask: torch.Tensor,
    mode: str,
    *,
    global_tokens: int | float | torch.Tensor | None = None,
    global_seqs: int | float | torch.Tensor | None = None,
    norm_length: float | None = None,
) -> torch.Tensor:
    """Scalar loss for `mode`; see the module docstring for formulas and the data-parallel contract.

    Each mode reads the count it needs and ignores the other, so callers can always pass both.
    Padding values of `per_token_loss` (even inf/nan) are ignored. An empty batch gives 0.
    """
    entry = AGGREGATIONS.get(mode)
    params = AGGREGATIONS.make_params(entry.name, {} if norm_length is None else {"norm_length": norm_length})
    mask = as_bool_mask(response_mask)
    loss = valid_or(per_token_loss, mask)
    tokens, seqs = local_counts(mask)
    n_tokens = _count(tokens if global_tokens is None else global_tokens, loss)
    n_seqs = _count(seqs if global_seqs is None else global_seqs, loss)
    return entry.fn(loss, mask, n_tokens, n_seqs, params)


def _count(value, like: torch.Tensor) -> torch.Tensor:
    # clamp: an all-padding micro-batch yields 0 (still with a grad_fn), not nan
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).clamp(min=1)


@AGGREGATIONS.register("token-mean", params=NoParams)
def _token_mean(loss, mask, n_tokens, n_seqs, p):
    return loss.sum() / n_tokens


@AGGREGATIONS.register("seq-mean-token-mean", params=NoParams)
def _seq_mean_token_mean(loss, mask, n_tokens, n_seqs, p):
    lengths = mask.sum(-1).clamp(min=1).to(loss.dtype)
    return (loss.sum(-1) / lengths).sum() / n_seqs


@AGGREGATIONS.register("seq-mean-token-sum", params=NoParams)
def _seq_mean_token_sum(loss, mask, n_tokens, n_seqs, p):
    return loss.sum() / n_seqs


@AGGREGATIONS.register("seq-mean-token-sum-norm", params=SumNormParams)
def _seq_mean_token_sum_norm(loss, mask, n_tokens, n_seqs, p: SumNormParams):
    return loss.sum() / (n_seqs * p.norm_length)
