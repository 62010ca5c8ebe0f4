"""Groups (rollout side) -> LearnerBatch (learner side): the one place the two vocabularies meet.

Advantages are computed here, on the whole global batch, before it is sharded across learner ranks:
group statistics (and REINFORCE++'s batch whitening) must see every sample, whatever the world size.
"""

from __future__ import annotations

from typing import Any

import torch

from actors.types import Group
from learner.algorithms import NEEDS_CRITIC, compute_advantages, decoupled_advantages, turn_advantages
from learner.batch import LearnerBatch
from learner.config import AlgorithmConfig


def reward_weights(cfg: Any) -> dict[str, float]:
    """The reward components of a run (a RunConfig) and their weights in the sample's reward."""
    weights = {f.name: f.weight for f in cfg.reward.functions}
    if cfg.reward.model_path:
        weights["model"] = cfg.reward.model_weight
    if cfg.buffer.overlong.enabled:
        weights["overlong"] = 1.0  # the buffer adds the penalty to the reward as is
    if cfg.rollout.env.name:
        weights["env"] = cfg.rollout.env.reward_weight  # the environment's rewards (actors/multi_turn.py)
    return weights


def groups_to_batch(groups: list[Group], algo: AlgorithmConfig, weights: dict[str, float] | None = None) -> LearnerBatch:
    """Flatten the trained samples of `groups` (GFPO: only the kept ones) and attach advantages.
    algo.reward_combine=per_component needs the components' `weights` (reward_weights)."""
    samples, gidx = [], []
    for g_i, group in enumerate(groups):
        for s in group.trained_samples():
            samples.append(s)
            gidx.append(g_i)
    rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
    group_index = torch.tensor(gidx, dtype=torch.long)
    if algo.advantage.name in NEEDS_CRITIC:  # PPO: per-token GAE advantages from the critic (cluster/ppo.py)
        advantages = torch.zeros(len(samples))
    elif algo.reward_combine == "per_component":
        if not weights:
            raise ValueError("algorithm.reward_combine=per_component needs the reward components' weights")
        # a sample whose scoring failed has no components: it scores 0 on each, as its reward is 0
        components = torch.tensor([[s.reward_components.get(k, 0.0) for k in weights] for s in samples],
                                  dtype=torch.float32).reshape(len(samples), len(weights))
        advantages = decoupled_advantages(algo.advantage.name, components, torch.tensor(list(weights.values())),
                                          group_index, batch_norm=algo.reward_batch_norm, **algo.advantage.params)
    else:
        advantages = compute_advantages(algo.advantage.name, rewards, group_index, **algo.advantage.params)
    token_advantages = None
    if algo.turn_credit:
        if not weights or "env" not in weights:
            raise ValueError("algorithm.turn_credit needs the environment's reward weight (reward_weights)")
        token_advantages = _turn_credit(samples, rewards, group_index, algo, weights["env"])
    routed = [s.routed_experts for s in samples]
    masked = any(s.response_mask for s in samples)  # multi-turn: observation tokens take no loss
    return LearnerBatch(
        input_ids=[torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.long) for s in samples],
        prompt_lengths=[len(s.prompt_ids) for s in samples],
        sampler_logprobs=[torch.tensor(s.logprobs, dtype=torch.float32) for s in samples],
        advantages=advantages.float(),
        rewards=rewards,
        group_index=group_index,
        policy_versions=torch.tensor([s.policy_version for s in samples], dtype=torch.long),
        loss_mask=torch.ones(len(samples), dtype=torch.bool),
        routed_experts=routed if any(r is not None for r in routed) else None,
        token_masks=[_token_mask(s) for s in samples] if masked else None,
        token_advantages=token_advantages,
    )


def _turn_credit(samples: list, rewards: torch.Tensor, group_index: torch.Tensor, algo: AlgorithmConfig,
                 env_weight: float) -> list[torch.Tensor]:
    """Per response token, its model turn's advantage (turn_advantages); observation tokens (masked
    out of the loss) take the next turn's value."""
    turns = max(len(s.episode.turn_ends) if s.episode else 1 for s in samples)
    earlier = torch.zeros(len(samples), turns)
    for i, s in enumerate(samples):
        if s.episode is not None and not s.reward_error:  # a failed trajectory's reward is 0: nothing earlier
            paid = torch.tensor([0.0] + list(s.episode.turn_rewards), dtype=torch.float32).cumsum(0)
            k = min(turns, len(s.episode.turn_ends))
            earlier[i, :k] = env_weight * paid[:k]
    per_turn = turn_advantages(algo.advantage.name, rewards, group_index, earlier, **algo.advantage.params)
    out = []
    for i, s in enumerate(samples):
        ends = s.episode.turn_ends if s.episode is not None and s.episode.turn_ends else [len(s.response_ids)]
        # token p is in the turn k with ends[k-1] <= p < ends[k] (an observation: the next turn's, masked)
        turn_of = torch.bucketize(torch.arange(len(s.response_ids)), torch.tensor(ends), right=True)
        out.append(per_turn[i, turn_of.clamp(max=len(ends) - 1)].clone())
    return out


def _token_mask(sample: Any) -> torch.Tensor:
    mask = sample.response_mask or [1] * len(sample.response_ids)
    if len(mask) != len(sample.response_ids):
        raise ValueError(f"sample {sample.prompt_id!r}: response_mask has {len(mask)} entries for "
                         f"{len(sample.response_ids)} response tokens")
    return torch.tensor(mask, dtype=torch.bool)


def sft_examples(prompts: list[dict[str, Any]], tokenizer: Any, target_key: str) -> list[tuple[list[int], int]]:
    """(prompt + meta[target_key] + EOS token ids, prompt length) of each prompt, tokenised once."""
    out = []
    for p in prompts:
        prompt_ids = tokenizer(p["prompt"], add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(str(p["meta"][target_key]), add_special_tokens=False)["input_ids"]
        out.append((prompt_ids + target_ids + [tokenizer.eos_token_id], len(prompt_ids)))
    return out


def sft_batch(examples: list[tuple[list[int], int]]) -> LearnerBatch:
    """A supervised batch of sft_examples: loss on the target tokens (and EOS) only."""
    ids = [torch.tensor(seq, dtype=torch.long) for seq, _ in examples]
    plens = [p for _, p in examples]
    n = len(ids)
    return LearnerBatch(
        input_ids=ids,
        prompt_lengths=plens,
        sampler_logprobs=[torch.zeros(int(x.numel()) - p) for x, p in zip(ids, plens)],
        advantages=torch.zeros(n),
        rewards=torch.zeros(n),
        group_index=torch.arange(n),
        policy_versions=torch.zeros(n, dtype=torch.long),
        loss_mask=torch.ones(n, dtype=torch.bool),
    )
