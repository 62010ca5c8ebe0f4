"""Pure-torch RL algorithm library: advantages, per-token surrogates, loss aggregation, KL,
off-policy correction, value and preference losses, group filters.

Imports only torch and the standard library, so config validation and rollout workers can use
the registries without pulling in the training stack. See docs/algorithms.md.
"""

from .advantages import (ADVANTAGE_ESTIMATORS, NEEDS_CRITIC, TURN_CREDIT_ESTIMATORS, compute_advantages,
                         decoupled_advantages, expand_to_tokens, gae, token_rewards, turn_advantages)
from .aggregation import AGGREGATIONS, aggregate_loss, local_counts
from .group_filters import dynamic_sampling_keep, gfpo_mask, gfpo_select, overlong_penalty
from .kl import KL_ESTIMATORS, kl_penalty
from .masking import masked_mean, masked_sum
from .off_policy import OFF_POLICY, off_policy_weights
from .preference import DPOParams, GroupPreferenceParams, dpo_loss, group_preference_loss
from .registry import Entry, NoParams, Registry, build_dataclass, suggest
from .surrogates import SURROGATES, surrogate_loss
from .value import ValueLossParams, explained_variance, value_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "NEEDS_CRITIC",
    "OFF_POLICY",
    "SURROGATES",
    "DPOParams",
    "Entry",
    "GroupPreferenceParams",
    "NoParams",
    "Registry",
    "ValueLossParams",
    "aggregate_loss",
    "build_dataclass",
    "compute_advantages",
    "decoupled_advantages",
    "dpo_loss",
    "dynamic_sampling_keep",
    "expand_to_tokens",
    "explained_variance",
    "gae",
    "gfpo_mask",
    "gfpo_select",
    "group_preference_loss",
    "kl_penalty",
    "local_counts",
    "masked_mean",
    "masked_sum",
    "off_policy_weights",
    "overlong_penalty",
    "suggest",
    "surrogate_loss",
    "token_rewards",
    "value_loss",
]
