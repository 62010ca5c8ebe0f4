"""Advantage estimators: one scalar reward per sequence in, one advantage per sequence out.

Groups are the G samples drawn for one prompt; `group_index[i]` says which group sample i is in
(any integers, in any order). Statistics are computed with scatter ops, so groups of different
sizes and shuffled batches need no reshaping to [num_groups, G].

Singleton groups (one sample, no peers): there is no baseline to compare against, so every
estimator here uses baseline 0 and scale 1, as verl does. The advantage is then the raw reward
(grpo: r / (1 + eps)). A batch that should have none can check for them upstream.

`keep_mask` (bool [B], GFPO and similar filters): samples with False are left out of every
statistic (group mean/std, batch whitening) and get advantage exactly 0.

`gae` (PPO with a critic) works on token-level rewards and values, so it has its own function;
it is registered here only so that its params can be validated by name like the others.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .masking import as_bool_mask, masked_mean, valid_or
from .registry import NoParams, Registry

Estimator = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object], torch.Tensor]
ADVANTAGE_ESTIMATORS: Registry[Estimator] = Registry("advantage estimator")

# Estimators that need values from a critic and token-level rewards: call `gae`, not
# `compute_advantages`. Config validation uses this to require a critic.
NEEDS_CRITIC = frozenset({"gae"})


@dataclasses.dataclass(frozen=True)
class GRPOParams:
    eps: float = 1e-6  # added to the std outside the sqrt; keeps all-equal groups finite (adv 0)


@dataclasses.dataclass(frozen=True)
class ReinforcePPParams:
    eps: float = 1e-6  # added to the batch std when whitening


@dataclasses.dataclass(frozen=True)
class GAEParams:
    gamma: float = 1.0  # LLM rewards are terminal and episodes short: no discount by default
    lam: float = 1.0
    whiten: bool = True  # whiten advantages over valid tokens, as verl/OpenRLHF PPO do


def compute_advantages(
    estimator: str,
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    *,
    keep_mask: torch.Tensor | None = None,
    **params,
) -> torch.Tensor:
    """Per-sequence advantages [B] from per-sequence rewards [B] and group ids [B].

    Raises KeyError for an unknown estimator (listing valid names), ValueError for unknown params.
    """
    entry = ADVANTAGE_ESTIMATORS.get(estimator)
    if entry.name in NEEDS_CRITIC:
        raise ValueError(f"'{entry.name}' needs a critic: call gae(values, token_rewards, mask, ...)")
    p = ADVANTAGE_ESTIMATORS.make_params(entry.name, params)
    rewards = torch.as_tensor(rewards)
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    group_index = torch.as_tensor(group_index, device=rewards.device)
    if rewards.dim() != 1 or group_index.shape != rewards.shape:
        shapes = f"{tuple(rewards.shape)}, {tuple(group_index.shape)}"
        raise ValueError(f"rewards and group_index must both be [B]; got {shapes}")
    keep = torch.ones_like(rewards, dtype=torch.bool) if keep_mask is None else as_bool_mask(keep_mask)
    with torch.no_grad():  # advantages are targets, never differentiated
        adv = entry.fn(rewards, group_index, keep, p)
    return valid_or(adv, keep)


def decoupled_advantages(
    estimator: str,
    components: torch.Tensor,
    weights: torch.Tensor,
    group_index: torch.Tensor,
    *,
    keep_mask: torch.Tensor | None = None,
    batch_norm: bool = True,
    eps: float = 1e-6,
    **params,
) -> torch.Tensor:
    """GDPO (arXiv 2601.05242): several reward components, each normalised within its group on its own.

    components [B, K] (one column per reward signal, unweighted), weights [K]. Column k gets the
    estimator's advantages A_k as if it were the only reward; the sequence's advantage is
    sum_k weights[k] * A_k, then (batch_norm) whitened over the batch's kept sequences: mean 0,
    unbiased std 1 (eps added to the std). Normalising the weighted sum instead (today's default)
    lets the component with the widest spread decide every sign: a group where everyone is correct
    but lengths differ gets advantages from length alone, at full scale.
    """
    components = torch.as_tensor(components, dtype=torch.float32)
    weights = torch.as_tensor(weights, dtype=components.dtype)
    if components.dim() != 2 or weights.shape != components.shape[1:]:
        raise ValueError(f"components must be [B, K] and weights [K]; got {tuple(components.shape)}, "
                         f"{tuple(weights.shape)}")
    per = [compute_advantages(estimator, components[:, k], group_index, keep_mask=keep_mask, **params)
           for k in range(components.shape[1])]
    combined = (torch.stack(per, dim=1) * weights).sum(dim=1) if per else components.new_zeros(components.shape[0])
    keep = torch.ones_like(combined, dtype=torch.bool) if keep_mask is None else as_bool_mask(keep_mask)
    n = int(keep.sum())
    if not batch_norm or n < 2:
        return valid_or(combined, keep)
    mean = masked_mean(combined, keep)
    std = (valid_or(combined - mean, keep).pow(2).sum() / (n - 1)).sqrt()
    return valid_or((combined - mean) / (std + eps), keep)


# Estimators whose advantage is (r_i - baseline) * scale with a baseline and scale that turn_advantages
# reproduces; the others (batch whitening, GAE) have no per-turn form here.
TURN_CREDIT_ESTIMATORS = ("grpo", "dr_grpo", "rloo")


def turn_advantages(
    estimator: str,
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    earlier: torch.Tensor,
    *,
    keep_mask: torch.Tensor | None = None,
    **params,
) -> torch.Tensor:
    """Per-turn advantages [B, K] of multi-turn trajectories (turn-level credit).

    rewards [B]: each trajectory's whole reward R_i (as compute_advantages gets it). earlier [B, K]:
    the part of R_i earned before turn k (the environment's rewards of turns 0..k-1, weighted; 0 for
    k = 0). Turn k is credited with what was earned from it on, G_ik = R_i - earlier[i, k], against the
    same group baseline and scale as the trajectory: A_ik = A_i - scale_i * earlier[i, k], i.e.
    grpo (G_ik - mean_g) / (std_g + eps); dr_grpo G_ik - mean_g; rloo n/(n-1) (G_ik - mean_g).
    With rewards only at the end (earlier = 0) every turn gets A_i. Columns past a trajectory's last
    turn are ignored by the caller.
    """
    entry = ADVANTAGE_ESTIMATORS.get(estimator)
    if entry.name not in TURN_CREDIT_ESTIMATORS:
        raise ValueError(f"turn credit works with {', '.join(TURN_CREDIT_ESTIMATORS)}, not '{entry.name}'")
    p = ADVANTAGE_ESTIMATORS.make_params(entry.name, params)
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    earlier = torch.as_tensor(earlier, dtype=torch.float32)
    group_index = torch.as_tensor(group_index)
    if earlier.dim() != 2 or earlier.shape[0] != rewards.shape[0]:
        raise ValueError(f"earlier must be [B, K] with B = {rewards.shape[0]}; got {tuple(earlier.shape)}")
    keep = torch.ones_like(rewards, dtype=torch.bool) if keep_mask is None else as_bool_mask(keep_mask)
    count, _, std = _group_stats(rewards, group_index, keep)
    scale = {"grpo": lambda: 1.0 / (std + p.eps), "dr_grpo": lambda: torch.ones_like(std),
             "rloo": lambda: torch.where(count > 1, count / (count - 1).clamp(min=1), torch.ones_like(count))}
    adv = compute_advantages(entry.name, rewards, group_index, keep_mask=keep, **params)
    out = adv[:, None] - scale[entry.name]()[:, None] * earlier
    return torch.where(keep[:, None], out, torch.zeros_like(out))


def _group_stats(rewards: torch.Tensor, group_index: torch.Tensor, keep: torch.Tensor):
    """Per-sample (count, mean, unbiased std) of its group's kept rewards.

    Singletons get mean 0 and std 1 (see module docstring); std of a group of n>1 is
    torch.std's unbiased estimate (divide by n - 1).
    """
    _, inv = torch.unique(group_index, return_inverse=True)
    num_groups = int(inv.max()) + 1 if inv.numel() else 0
    zeros = rewards.new_zeros(num_groups)
    r = valid_or(rewards, keep)  # non-kept rewards may be garbage; they must not count
    count = zeros.index_add(0, inv, keep.to(rewards.dtype))
    mean = zeros.index_add(0, inv, r) / count.clamp(min=1)
    dev = valid_or(rewards - mean[inv], keep)
    var = zeros.index_add(0, inv, dev * dev) / (count - 1).clamp(min=1)
    single = count <= 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(var), var.sqrt())
    return count[inv], mean[inv], std[inv]


@ADVANTAGE_ESTIMATORS.register("grpo", params=GRPOParams)
def _grpo(rewards, group_index, keep, p: GRPOParams) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath): A_i = (r_i - mean_g) / (std_g + eps), std unbiased."""
    _, mean, std = _group_stats(rewards, group_index, keep)
    return (rewards - mean) / (std + p.eps)


@ADVANTAGE_ESTIMATORS.register("dr_grpo", params=NoParams, aliases=("drgrpo",))
def _dr_grpo(rewards, group_index, keep, p) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A_i = r_i - mean_g.

    Dropping the std removes GRPO's bias toward too-easy and too-hard prompts.
    """
    _, mean, _ = _group_stats(rewards, group_index, keep)
    return rewards - mean


@ADVANTAGE_ESTIMATORS.register("rloo", params=NoParams)
def _rloo(rewards, group_index, keep, p) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = r_i - mean_{j != i} r_j = n/(n-1) * (r_i - mean_g).

    The leave-one-out baseline does not depend on r_i, so the estimate is unbiased.
    Group of one: A = r (baseline 0), like verl.
    """
    count, mean, _ = _group_stats(rewards, group_index, keep)
    scale = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.ones_like(count))
    return scale * (rewards - mean)


@ADVANTAGE_ESTIMATORS.register("reinforce_pp", params=ReinforcePPParams, aliases=("reinforce++",))
def _reinforce_pp(rewards, group_index, keep, p: ReinforcePPParams) -> torch.Tensor:
    """REINFORCE++ with group baseline (Hu 2025): A = whiten_batch(r_i - mean_g).

    Whitening uses the mean and unbiased std over the kept sequences of the whole batch, one value
    per sequence (verl whitens over tokens, which weights long responses more; we do not).
    """
    _, mean, _ = _group_stats(rewards, group_index, keep)
    centred = rewards - mean
    n = int(keep.sum())
    if n < 2:  # no spread to normalise by
        return centred
    batch_mean = masked_mean(centred, keep)
    batch_std = (valid_or(centred - batch_mean, keep).pow(2).sum() / (n - 1)).sqrt()
    return (centred - batch_mean) / (batch_std + p.eps)


@ADVANTAGE_ESTIMATORS.register("gae", params=GAEParams)
def gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, **params):
    """Generalised Advantage Estimation (Schulman et al. 2016) -> (advantages [B,T], returns [B,T]).

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1};  R_t = A_t + V_t,
    where t+1 means the next *valid* token: masked positions in the middle (tool output in a
    multi-turn rollout) are skipped, as in verl. Padding gets advantage 0 and return 0.
    Keyword params: gamma=1.0, lam=1.0, whiten=True (see GAEParams).
    """
    p = ADVANTAGE_ESTIMATORS.make_params("gae", params)
    mask = as_bool_mask(mask)
    with torch.no_grad():
        values, rewards = valid_or(values, mask), valid_or(rewards, mask)
        next_value = values.new_zeros(values.shape[0])
        running = values.new_zeros(values.shape[0])
        adv = torch.zeros_like(values)
        for t in reversed(range(values.shape[1])):
            delta = rewards[:, t] + p.gamma * next_value - values[:, t]
            valid = mask[:, t]
            running = torch.where(valid, delta + p.gamma * p.lam * running, running)
            next_value = torch.where(valid, values[:, t], next_value)
            adv[:, t] = running
        adv = valid_or(adv, mask)
        returns = valid_or(adv + values, mask)
        if p.whiten:
            adv = _whiten(adv, mask)
    return adv, returns


def token_rewards(rewards: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None,
                  kl_coef: float = 0.0) -> torch.Tensor:
    """Per-token rewards [B, T] for `gae` from per-sequence rewards [B]: each sequence's reward at its
    last valid token, and (classic RLHF PPO) minus kl_coef * kl[B, T] at every valid token. Padding 0."""
    mask = as_bool_mask(mask)
    out = torch.zeros(mask.shape, dtype=torch.float32)
    if kl is not None and kl_coef:
        out = valid_or(-kl_coef * kl.float(), mask)
    T = mask.shape[1]
    last = (T - 1 - mask.flip(1).int().argmax(1))  # index of the last valid token
    has = mask.any(1)
    rows = torch.arange(mask.shape[0])[has]
    out[rows, last[has]] += torch.as_tensor(rewards, dtype=torch.float32)[has]
    return out


def _whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over valid positions, unbiased var, padding 0."""
    mean = masked_mean(x, mask)
    n = mask.sum().clamp(min=2).to(x.dtype)
    var = valid_or(x - mean, mask).pow(2).sum() / (n - 1)
    return valid_or((x - mean) * torch.rsqrt(var + 1e-8), mask)


def expand_to_tokens(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence advantages [B] -> per-token [B, T], 0 at padding."""
    mask = as_bool_mask(response_mask)
    return valid_or(advantages[:, None].expand(mask.shape), mask)
