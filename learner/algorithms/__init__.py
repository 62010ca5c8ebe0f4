"""Pure-torch RL algorithm library: advantages, per-token surrogates, loss aggregation, KL,
off-policy correction, value and preference losses, group filters.

Imports only torch and the standard library, so config validation and rollout workers can use
the registries without pulling in the training stack. See docs/algorithms.md.

The package's names load their module on first use (PEP 562 `__getattr__`): importing the
package, or its torch-free `registry` module alone (as config, reward scorers and environments
do), does not import torch; `learner.algorithms.SURROGATES` imports `surrogates` (and torch) then.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {  # module -> the names the package exports from it
    "advantages": ("ADVANTAGE_ESTIMATORS", "NEEDS_CRITIC", "TURN_CREDIT_ESTIMATORS", "compute_advantages",
                   "decoupled_advantages", "expand_to_tokens", "gae", "token_rewards", "turn_advantages"),
    "aggregation": ("AGGREGATIONS", "aggregate_loss", "local_counts"),
    "group_filters": ("dynamic_sampling_keep", "gfpo_mask", "gfpo_select", "overlong_penalty"),
    "kl": ("KL_ESTIMATORS", "kl_penalty"),
    "masking": ("masked_mean", "masked_sum"),
    "off_policy": ("OFF_POLICY", "off_policy_weights"),
    "preference": ("DPOParams", "GroupPreferenceParams", "dpo_loss", "group_preference_loss"),
    "registry": ("Entry", "NoParams", "Registry", "build_dataclass", "suggest"),
    "surrogates": ("SURROGATES", "surrogate_loss"),
    "value": ("ValueLossParams", "explained_variance", "value_loss"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:  # a submodule not imported yet: `learner.algorithms.surrogates`
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
