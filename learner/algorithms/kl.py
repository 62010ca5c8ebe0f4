"""Per-token KL estimators between the policy and a reference policy (Schulman, "Approximating
KL Divergence", 2020). With samples from pi_theta and delta = logp - ref_logp:

  k1   delta                                  unbiased, high variance, can be negative
  abs  |delta|
  k2   0.5 * delta^2                          biased, low variance; its gradient is the right one
  k3   exp(-delta) + delta - 1                unbiased, low variance, >= 0 (verl "low_var_kl")
  k3+  value of k3, gradient of k2            straight-through (verl "k3+"): k1/k3 estimate KL's
                                              value well but their expected gradient is not KL's

k3 follows verl's `low_var_kl`: the log-ratio is clamped to [-20, 20] before exp and the result
to [-10, 10], so one wildly off token cannot dominate the penalty (gradient is 0 where clamped).

Usable as a reward penalty (call under no_grad / detach the result) or as a loss term.
"""

from __future__ import annotations

from typing import Callable

import torch

from .masking import as_bool_mask, valid_or
from .registry import NoParams, Registry

KLEstimator = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]
KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")


def kl_penalty(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    estimator: str,
    *,
    response_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token KL estimate [B, T]. With `response_mask`, padding gives 0 and no gradient even if
    it holds inf/nan; without it the caller owns the masking."""
    entry = KL_ESTIMATORS.get(estimator)
    params = KL_ESTIMATORS.make_params(entry.name)
    if response_mask is not None:
        mask = as_bool_mask(response_mask)
        logprobs, ref_logprobs = valid_or(logprobs, mask), valid_or(ref_logprobs, mask)
        return valid_or(entry.fn(logprobs, ref_logprobs, params), mask)
    return entry.fn(logprobs, ref_logprobs, params)


@KL_ESTIMATORS.register("k1", params=NoParams, aliases=("kl",))
def _k1(logp, ref, p):
    return logp - ref


@KL_ESTIMATORS.register("abs", params=NoParams)
def _abs(logp, ref, p):
    return (logp - ref).abs()


@KL_ESTIMATORS.register("k2", params=NoParams, aliases=("mse",))
def _k2(logp, ref, p):
    return 0.5 * (logp - ref).square()


@KL_ESTIMATORS.register("k3", params=NoParams, aliases=("low_var_kl",))
def _k3(logp, ref, p):
    log_ratio = (ref - logp).clamp(-20.0, 20.0)
    return (log_ratio.exp() - log_ratio - 1).clamp(-10.0, 10.0)


@KL_ESTIMATORS.register("k3+", params=NoParams, aliases=("low_var_kl+",))
def _k3_plus(logp, ref, p):
    k2 = _k2(logp, ref, p)
    return k2 - k2.detach() + _k3(logp, ref, p).detach()
