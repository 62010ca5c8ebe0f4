"""Micro-batch packing by a token budget (dynamic batch size), pure Python.

Sequences of one rank's mini-batch are grouped into right-padded micro-batches so that
`count x longest <= micro_batch_tokens`: long sequences run a few at a time, short ones many at a
time, and sorting by length keeps padding low. A sequence longer than the budget gets a
micro-batch of its own (it cannot be split: the seq-* aggregation modes need whole sequences).

Why not true packing (several sequences in one row with position ids restarting): on CPU the
attention kernels (sdpa) would need a block-diagonal mask, which costs more than the padding it
saves at our lengths. The padding waste is reported so the choice stays visible.

ZeRO-3 gathers parameters inside every forward and ZeRO-2 reduces gradients inside every
backward: those are collectives, so every rank must run the SAME number of micro-batches.
`split_to_count` brings a rank's plan up to the group-wide maximum by splitting its largest
micro-batches, and pads with empty micro-batches (a dummy forward with no loss) only when no
micro-batch can be split further.
"""

from __future__ import annotations

from typing import Sequence


def pack_by_tokens(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Indices of `lengths` grouped into micro-batches with len(mb) * max(length in mb) <= budget.

    Longest first (deterministic ties by index), greedy: the first sequence of a micro-batch is
    its longest, so the padded size of a candidate micro-batch is known as it grows.
    """
    if token_budget <= 0:
        raise ValueError(f"token budget must be > 0, got {token_budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    micro_batches: list[list[int]] = []
    for i in order:
        mb = micro_batches[-1] if micro_batches else None
        if mb and (len(mb) + 1) * lengths[mb[0]] <= token_budget:
            mb.append(i)
        else:
            micro_batches.append([i])
    return micro_batches


def padded_tokens(mb: Sequence[int], lengths: Sequence[int]) -> int:
    return len(mb) * max((lengths[i] for i in mb), default=0)


def split_to_count(micro_batches: list[list[int]], lengths: Sequence[int], count: int) -> list[list[int]]:
    """`micro_batches` turned into exactly `count` micro-batches (count >= len(micro_batches)).

    Repeatedly halves the micro-batch with the most padded tokens (among those with >= 2
    sequences); when none is left to split, appends empty micro-batches.
    """
    if count < len(micro_batches):
        raise ValueError(f"cannot shrink {len(micro_batches)} micro-batches to {count}")
    out = [list(mb) for mb in micro_batches]
    while len(out) < count:
        splittable = [j for j, mb in enumerate(out) if len(mb) >= 2]
        if not splittable:
            out.extend([] for _ in range(count - len(out)))
            break
        j = max(splittable, key=lambda k: (padded_tokens(out[k], lengths), -k))
        mb = out[j]
        half = len(mb) // 2
        out[j:j + 1] = [mb[:half], mb[half:]]
    return out


def padding_waste(micro_batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Fraction of the padded token slots that hold padding (0 = no waste)."""
    padded = sum(padded_tokens(mb, lengths) for mb in micro_batches)
    real = sum(lengths[i] for mb in micro_batches for i in mb)
    return 0.0 if padded == 0 else 1.0 - real / padded
