"""One reward component of a run: which function, its weight in the sum, its knobs.

A plain dataclass (usable as an OmegaConf structured config); the knobs stay an untyped dict here
and are checked against the function's own params dataclass by REWARD_FUNCTIONS.make_params when
a RewardScorer is built (and by the config validation before any actor starts).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass
class RewardSpec:
    name: str  # a name registered in REWARD_FUNCTIONS (actors/reward/registry.py)
    weight: float = 1.0
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def coerce(cls, spec: Any) -> "RewardSpec":
        """A RewardSpec from a mapping ({"name", "weight", "params"}), an OmegaConf node or any object
        with those attributes (e.g. the config's own spec dataclass). Unknown keys are errors."""
        if isinstance(spec, cls):
            return cls(spec.name, float(spec.weight), dict(spec.params))
        if not isinstance(spec, Mapping):
            if not hasattr(spec, "name"):
                raise TypeError(f"a reward spec needs 'name', 'weight', 'params'; got {spec!r}")
            spec = {f.name: getattr(spec, f.name) for f in dataclasses.fields(cls) if hasattr(spec, f.name)}
        unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"reward spec {dict(spec)!r}: unknown key(s) {sorted(unknown)}; valid: name, weight, params")
        if not spec.get("name"):
            raise ValueError(f"reward spec {dict(spec)!r} has no 'name'")
        return cls(str(spec["name"]), float(spec.get("weight", 1.0)), dict(spec.get("params") or {}))
