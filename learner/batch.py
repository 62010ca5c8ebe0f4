"""The learner's own input type: ragged sequences as tensors, plus per-sequence training targets.

The driver (cluster/) builds one `LearnerBatch` per step from the buffer's groups; the learner never
sees the rollout side's types. Sequences stay ragged (a list of 1-D tensors) so the learner can pack
them into micro-batches by a token budget instead of padding to the longest sequence.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch


# the ragged per-sequence lists, pickled as one flat tensor each plus their lengths
_RAGGED = ("input_ids", "sampler_logprobs", "token_masks", "token_advantages", "values", "returns")


@dataclasses.dataclass
class LearnerBatch:
    """B sequences. For sequence i with prompt length P_i and response length R_i:

    input_ids[i]:        long [P_i + R_i]   prompt then response token ids
    prompt_lengths[i]:   int                P_i
    sampler_logprobs[i]: float [R_i]        the rollout engine's logprobs of the response tokens
    advantages:          float [B]          per-sequence advantage (0 for samples GFPO did not keep)
    rewards:             float [B]          for logging
    group_index:         long [B]           which prompt group each sequence belongs to
    policy_versions:     long [B]           version of the weights that sampled each sequence
    loss_mask:           bool [B]           False: sequence contributes nothing to the loss
    routed_experts:      optional per-sequence MoE routing from the sampler (routing replay)
    token_masks[i]:      optional bool [R_i]: False at response tokens that take no loss (a multi-turn
                         trajectory's observation tokens); None = every response token trains
    token_advantages[i]: optional float [R_i]: per-token advantages (multi-turn turn credit), used
                         instead of `advantages` when given (also PPO's GAE advantages)
    values[i], returns[i]: optional float [R_i]: PPO with a critic: the critic's values the advantages
                         were computed with, and the GAE returns it is trained towards
    """

    input_ids: list[torch.Tensor]
    prompt_lengths: list[int]
    sampler_logprobs: list[torch.Tensor]
    advantages: torch.Tensor
    rewards: torch.Tensor
    group_index: torch.Tensor
    policy_versions: torch.Tensor
    loss_mask: torch.Tensor
    routed_experts: Optional[list[Any]] = None
    token_masks: Optional[list[torch.Tensor]] = None
    token_advantages: Optional[list[torch.Tensor]] = None
    values: Optional[list[torch.Tensor]] = None
    returns: Optional[list[torch.Tensor]] = None

    def __len__(self) -> int:
        return len(self.input_ids)

    # Pickling (Ray ships a batch to every learner rank each step): the ragged lists travel as one
    # flat tensor each plus their lengths — two tensors instead of 2B, which is most of the cost of
    # sending a batch of hundreds of short sequences.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in _RAGGED:
            seqs = state.pop(key)
            if seqs is None:
                state[key] = None
                continue
            state[key] = (torch.cat(seqs) if seqs else torch.zeros(0), [int(x.numel()) for x in seqs])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key in _RAGGED:
            if state.get(key) is None:
                state[key] = None
                continue
            flat, lengths = state[key]
            state[key] = list(torch.split(flat, lengths)) if lengths else []
        self.__dict__.update(state)

    def response_lengths(self) -> list[int]:
        return [int(x.numel()) - p for x, p in zip(self.input_ids, self.prompt_lengths)]

    def loss_token_counts(self) -> list[int]:
        """Per sequence, the response tokens that take loss (all of them without token masks)."""
        if self.token_masks is None:
            return self.response_lengths()
        return [int(m.sum()) for m in self.token_masks]

    def select(self, idx: list[int]) -> "LearnerBatch":
        """The sub-batch of sequences `idx`, in that order."""
        t = torch.as_tensor(idx, dtype=torch.long)
        return LearnerBatch(
            input_ids=[self.input_ids[i] for i in idx],
            prompt_lengths=[self.prompt_lengths[i] for i in idx],
            sampler_logprobs=[self.sampler_logprobs[i] for i in idx],
            advantages=self.advantages[t],
            rewards=self.rewards[t],
            group_index=self.group_index[t],
            policy_versions=self.policy_versions[t],
            loss_mask=self.loss_mask[t],
            routed_experts=None if self.routed_experts is None else [self.routed_experts[i] for i in idx],
            token_masks=None if self.token_masks is None else [self.token_masks[i] for i in idx],
            token_advantages=None if self.token_advantages is None else [self.token_advantages[i] for i in idx],
            values=None if self.values is None else [self.values[i] for i in idx],
            returns=None if self.returns is None else [self.returns[i] for i in idx],
        )

    def shard(self, rank: int, world_size: int, mini_batches: int = 1) -> "LearnerBatch":
        """This rank's part, laid out so that rank r's mini-batch m is the r-th slice of global mini-batch m.

        That layout is what makes K ranks compute the same update as one rank: each optimizer step
        sees exactly the same global set of sequences whatever the world size. Requires
        len(batch) % (world_size * mini_batches) == 0 (checked in config validation).
        """
        n = len(self)
        parts = world_size * mini_batches
        if n % parts:
            raise ValueError(f"batch of {n} sequences does not split into {world_size} ranks x {mini_batches} mini-batches")
        per_mb, per_rank = n // mini_batches, n // parts
        idx = [m * per_mb + rank * per_rank + j for m in range(mini_batches) for j in range(per_rank)]
        return self.select(idx)

    def mini_batch(self, m: int, mini_batches: int) -> "LearnerBatch":
        per = len(self) // mini_batches
        return self.select(list(range(m * per, (m + 1) * per)))
