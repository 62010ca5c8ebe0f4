"""The wire types that travel from rollout workers through reward scorers and the buffer to the driver.

Plain dataclasses of Python lists and scalars (no tensors): they pickle cheaply through Ray's
object store and need no heavy import. The driver turns released groups into the learner's own
tensor batch (learner/batch.py); the learner never sees these types.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional


# the limits that can end a multi-turn trajectory (Episode.cut)
EPISODE_CUTS = ("max_turns", "max_total_tokens", "max_model_len")


@dataclasses.dataclass
class Episode:
    """A multi-turn trajectory's record (actors/multi_turn.py).

    turn_ends[t]: response-token offset where model turn t ends (its observation follows);
    turn_rewards[t]: the environment's reward for turn t; cut: the limit that ended the trajectory
    ("max_turns", "max_total_tokens", "max_model_len"; "" = the environment said done, or a turn
    ended by length on the last budget); error: why the environment failed ("" = it did not).
    """

    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    env_seconds: float = 0.0  # summed over the environment's steps
    obs_truncated: int = 0  # observations cut to max_obs_tokens
    turn_ends: list[int] = dataclasses.field(default_factory=list)
    turn_rewards: list[float] = dataclasses.field(default_factory=list)
    cut: str = ""
    error: str = ""

    @property
    def env_reward(self) -> float:
        return float(sum(self.turn_rewards))


@dataclasses.dataclass
class Sample:
    """One completion of one prompt.

    prompt_ids / response_ids: token ids; logprobs[i] is the sampler's log-probability of
    response_ids[i] under the sampling distribution (temperature applied), len == len(response_ids).
    finish_reason: "stop" (EOS or a stop string), "length" (hit max new tokens) or "abort".
    policy_version: the weight version of the engine that produced the sample — every sample knows it;
    with partial rollouts (weights loaded mid-generation) the version of its OLDEST token.
    token_versions: per response token, the version of the weights that sampled it (one value
    throughout unless the worker loaded new weights mid-generation); [] when not recorded.
    """

    prompt_id: str
    prompt: str
    prompt_ids: list[int]
    response: str
    response_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    policy_version: int
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # task fields, e.g. the answer
    token_versions: list[int] = dataclasses.field(default_factory=list)
    reward: float = 0.0
    reward_components: dict[str, float] = dataclasses.field(default_factory=dict)
    reward_error: str | None = None  # set when a scorer failed or timed out (reward is then 0)
    # MoE routing replay (rollout.record_routed_experts): numpy uint8 [prompt + response - 1 tokens,
    # MoE layers, top_k], the experts the engine routed each input token to (actors/routing_capture.py);
    # a multi-turn trajectory's ends at its last model token (actors/multi_turn.py)
    routed_experts: Any = None
    # multi-turn (rollout.env): 1 at the model's tokens, 0 at observation tokens, per response token
    # ([] = every response token is the model's); the sampler's logprobs are 0.0 at observation tokens
    response_mask: list[int] = dataclasses.field(default_factory=list)
    episode: Optional[Episode] = None  # multi-turn: what happened in the trajectory

    @property
    def response_length(self) -> int:
        return len(self.response_ids)


@dataclasses.dataclass
class Group:
    """All n completions of one prompt; advantages are computed within a group."""

    prompt_id: str
    samples: list[Sample]
    generate_seconds: float = 0.0
    score_seconds: float = 0.0
    kept: list[int] | None = None  # GFPO: indices of the samples trained on (None = all)
    expert_counts: list[list[int]] | None = None  # MoE: tokens per [MoE layer][expert] the engine computed

    @property
    def rewards(self) -> list[float]:
        return [s.reward for s in self.samples]

    @property
    def policy_version(self) -> int:
        """The oldest version among the samples: staleness is judged by the worst sample."""
        return min(s.policy_version for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def trained_samples(self) -> list[Sample]:
        return self.samples if self.kept is None else [self.samples[i] for i in self.kept]
