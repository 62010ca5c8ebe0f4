"""Preference losses on sequence log-probabilities: DPO/IPO on pairs, and a pairwise logistic
loss over all better/worse pairs inside a prompt group.

Inputs are summed sequence logprobs [N] (policy and frozen reference); h = logp - ref_logp is
the implicit reward / beta.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .registry import build_dataclass


@dataclasses.dataclass(frozen=True)
class DPOParams:
    beta: float = 0.1
    loss_type: str = "sigmoid"  # "sigmoid" (DPO) or "ipo"
    label_smoothing: float = 0.0  # cDPO: assumed probability that a preference label is flipped

    def __post_init__(self):
        if self.loss_type not in ("sigmoid", "ipo"):
            raise ValueError(f"dpo loss_type must be 'sigmoid' or 'ipo', got '{self.loss_type}'")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ValueError("label_smoothing applies to loss_type='sigmoid' only")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


@dataclasses.dataclass(frozen=True)
class GroupPreferenceParams:
    beta: float = 0.1
    tau: float = 0.0  # a pair counts only if r_i - r_j > tau (ignore reward noise)


def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, **params):
    """Per-pair loss [N] and metrics. With m = (lp_c - ref_c) - (lp_r - ref_r):

        sigmoid (DPO, Rafailov et al. 2023; cDPO label smoothing eps):
            loss = -(1 - eps) * logsigmoid(beta * m) - eps * logsigmoid(-beta * m)
        ipo (IPO, Azar et al. 2023):  loss = (m - 1 / (2 * beta))^2

    Keyword params: beta=0.1, loss_type="sigmoid", label_smoothing=0.0 (see DPOParams).
    Reference logps get no gradient.
    """
    p = build_dataclass(DPOParams, params, where="dpo_loss")
    chosen_h = chosen_logps - ref_chosen_logps.detach()
    rejected_h = rejected_logps - ref_rejected_logps.detach()
    m = chosen_h - rejected_h
    if p.loss_type == "ipo":
        loss = (m - 1 / (2 * p.beta)).square()
    else:
        eps = p.label_smoothing
        loss = -(1 - eps) * F.logsigmoid(p.beta * m) - eps * F.logsigmoid(-p.beta * m)
    with torch.no_grad():
        metrics = {
            "reward_chosen": (p.beta * chosen_h).mean(),
            "reward_rejected": (p.beta * rejected_h).mean(),
            "reward_margin": (p.beta * m).mean(),
            "reward_accuracy": (m > 0).float().mean(),
        }
    return loss, metrics


def group_preference_loss(seq_logps, ref_seq_logps, rewards, group_index, **params):
    """Pairwise logistic loss over every ordered pair (i, j) of one group with r_i - r_j > tau:

        loss = mean_{(i,j)} -logsigmoid(beta * (h_i - h_j)),   h = logp - ref_logp

    i.e. DPO (Rafailov et al. 2023) applied to all better/worse pairs a group of samples yields,
    a Bradley-Terry ranking over the group. Returns (scalar, metrics). With no qualifying pair the
    loss is 0 but still attached to the graph, so every rank can call backward.
    Keyword params: beta=0.1, tau=0.0. O(B^2) memory: call per group or per micro-batch.
    """
    p = build_dataclass(GroupPreferenceParams, params, where="group_preference_loss")
    rewards = torch.as_tensor(rewards, device=seq_logps.device, dtype=seq_logps.dtype)
    group_index = torch.as_tensor(group_index, device=seq_logps.device)
    h = seq_logps - ref_seq_logps.detach()
    margin = h[:, None] - h[None, :]  # [i, j] = h_i - h_j
    pairs = (group_index[:, None] == group_index[None, :]) & (rewards[:, None] - rewards[None, :] > p.tau)
    per_pair = -F.logsigmoid(p.beta * torch.where(pairs, margin, torch.zeros_like(margin)))
    num_pairs = pairs.sum()
    loss = torch.where(pairs, per_pair, torch.zeros_like(per_pair)).sum() / num_pairs.clamp(min=1)
    with torch.no_grad():
        n = num_pairs.clamp(min=1)
        metrics = {
            "num_pairs": num_pairs.float(),
            "pair_accuracy": (pairs & (margin > 0)).sum() / n,
            "margin_mean": torch.where(pairs, margin, torch.zeros_like(margin)).sum() / n,
        }
    return loss, metrics
