"""Response-token logprobs and entropy of right-padded micro-batches of ragged sequences.

For sequence i (prompt length P_i, response length R_i) the response token at position P_i + k is
predicted by the logits at position P_i + k - 1, so

    logprob[i, k] = log_softmax(logits[i, P_i + k - 1] / temperature)[input_ids[i, P_i + k]]

— the distribution vLLM samples from at that temperature and whose logprobs it returns as
"processed" logprobs, so learner and sampler logprobs are comparable token by token.

Right padding needs no attention mask: with causal attention a real token never attends to the
padding after it, so the model runs its unmasked causal fast path (the logits at padded positions
are garbage and masked out). Only the logits from the earliest response position on are computed
(`logits_to_keep`), which skips the LM head over the prompts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import torch


@dataclasses.dataclass
class MicroBatch:
    """b sequences, right-padded to L tokens; T = longest response in the micro-batch.

    index:           which sequences of the caller's list these are (len b; [] for a dummy)
    input_ids:       long [b, L]
    positions:       long [b, T]  position of the logits that predict response token k
    targets:         long [b, T]  response token ids (0 at padding)
    response_mask:   bool [b, T]  True at real response tokens
    lengths:         real (unpadded) length of each row
    routed:          MoE: each row's recorded rollout routing (learner/moe.py), or None
    train_mask:      bool [b, T]  True at response tokens that take loss (response_mask without a
                                  multi-turn trajectory's observation tokens); None = response_mask
    """

    index: list[int]
    input_ids: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    response_mask: torch.Tensor
    lengths: list[int]
    routed: Optional[list[Any]] = None
    train_mask: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.train_mask is None:
            self.train_mask = self.response_mask

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths) if self.index else 0

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel() if self.index else 0


def collate(seqs: Sequence[torch.Tensor], prompt_lengths: Sequence[int], index: Sequence[int],
            routed: Optional[Sequence[Any]] = None, token_masks: Optional[Sequence[torch.Tensor]] = None) -> MicroBatch:
    """Right-pad sequences `index` of `seqs` into a MicroBatch. An empty `index` gives a dummy
    one-sequence micro-batch with no response token (for ranks with fewer micro-batches).
    `routed`: per-sequence recorded MoE routing, indexed like `seqs` (None = none recorded).
    `token_masks`: per-sequence bool [R_i] of the response tokens that take loss (None = all)."""
    index = list(index)
    if not index:
        ids = torch.zeros(1, 2, dtype=torch.long)
        return MicroBatch([], ids, torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long),
                          torch.zeros(1, 1, dtype=torch.bool), [2])
    lens = [int(seqs[i].numel()) for i in index]
    plens = [int(prompt_lengths[i]) for i in index]
    rlens = [n - p for n, p in zip(lens, plens)]
    if min(plens) < 1:
        raise ValueError("every sequence needs a prompt of at least one token (the first response token's context)")
    b, L, T = len(index), max(lens), max(1, max(rlens))
    ids = torch.zeros(b, L, dtype=torch.long)
    k = torch.arange(T)
    positions = torch.zeros(b, T, dtype=torch.long)
    mask = torch.zeros(b, T, dtype=torch.bool)
    for row, (i, p, r) in enumerate(zip(index, plens, rlens)):
        ids[row, :lens[row]] = seqs[i]
        positions[row] = (p - 1 + k).clamp(min=0, max=max(L - 2, 0))
        mask[row, :r] = True
    targets = torch.where(mask, ids.gather(1, (positions + 1).clamp(max=L - 1)), torch.zeros_like(positions))
    train = None
    if token_masks is not None:
        train = torch.zeros(b, T, dtype=torch.bool)
        for row, (i, r) in enumerate(zip(index, rlens)):
            if int(token_masks[i].numel()) != r:
                raise ValueError(f"sequence {i}: token mask of {int(token_masks[i].numel())} for {r} response tokens")
            train[row, :r] = token_masks[i]
    return MicroBatch(index, ids, positions, targets, mask, lens,
                      None if routed is None else [routed[i] for i in index], train)


def response_logprobs(
    model,
    mb: MicroBatch,
    temperature: float = 1.0,
    *,
    entropy: bool = True,
    entropy_grad: bool = False,
    router_aux_loss: bool = False,
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(logprobs [b, T] fp32, entropy [b, T] fp32 or None, router aux loss or None).

    Gradient flows into logprobs when grad is enabled; into entropy only with `entropy_grad`
    (computing its graph costs memory, so metrics-only entropy is detached).
    """
    device = _device_of(model)
    ids = mb.input_ids.to(device)
    positions = mb.positions.to(device)
    L = ids.shape[1]
    start = int(mb.positions.min())  # earliest logits position needed
    keep = L - start
    kwargs = dict(input_ids=ids, use_cache=False, logits_to_keep=keep)
    if router_aux_loss:
        # with the aux loss on, padding must not count as routed tokens: pass the real mask
        kwargs.update(output_router_logits=True, attention_mask=_attention_mask(mb).to(device))
    out = model(**kwargs)
    logits = out.logits  # [b, keep, V] for positions start .. L-1
    V = logits.shape[-1]
    sel = logits.gather(1, (positions - start)[..., None].expand(-1, -1, V)).float() / temperature
    logp_all = torch.log_softmax(sel, dim=-1)
    logprobs = logp_all.gather(-1, mb.targets.to(device)[..., None]).squeeze(-1)
    ent = None
    if entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            src = logp_all if entropy_grad else logp_all.detach()
            ent = -(src.exp() * src).sum(-1)
    aux = getattr(out, "aux_loss", None) if router_aux_loss else None
    return logprobs, ent, aux


def _attention_mask(mb: MicroBatch) -> torch.Tensor:
    L = mb.input_ids.shape[1]
    return (torch.arange(L)[None, :] < torch.tensor(mb.lengths)[:, None]).long()


def _device_of(model) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    return next(iter(model.parameters())).device


def unpad(values: torch.Tensor, mb: MicroBatch) -> list[torch.Tensor]:
    """Per-sequence 1-D tensors (length R_i) from a [b, T] tensor of `mb`."""
    lengths = mb.response_mask.sum(-1).tolist()
    return [values[row, :n].detach().cpu() for row, n in enumerate(lengths)][: len(mb.index)]


def pad_values(per_seq: Sequence[torch.Tensor], mb: MicroBatch, fill: float = 0.0) -> torch.Tensor:
    """[b, T] float tensor of `mb` from per-sequence values indexed like the caller's list."""
    out = torch.full(mb.response_mask.shape, fill, dtype=torch.float32)
    for row, i in enumerate(mb.index):
        v = per_seq[i]
        out[row, : v.numel()] = v.float()
    return out
