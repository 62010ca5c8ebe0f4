"""The weight-sync wire protocol: learner rank 0 -> every rollout worker, bucketed.

This module is its one written description and its one implementation: the learner's send side
(learner/weight_sync.py), the rollout worker's receive side (actors/vllm_ext.py) and the stand-in
sender of the tests (learner/sender_process.py) all import it. It imports no torch at module level
(and no vLLM, DeepSpeed, transformers or Ray), so anything can use it.

manifest  list of (name, dtype, shape), in send order. `name` is the Hugging Face checkpoint name
          (what save_pretrained writes: `model.state_dict()` keys; `lm_head.weight` INCLUDED even
          when tied to the embeddings, because vLLM's loader wants one; MoE experts per expert —
          `experts.{e}.gate_proj.weight` — not transformers 5's fused in-memory
          `experts.gate_up_proj`). `dtype` a torch dtype name without the "torch." prefix
          ("float32", "bfloat16"), one of DTYPE_BYTES. `shape` a list of ints.
buckets   `plan_buckets(manifest, bucket_bytes)`: lists of consecutive manifest indices, one dtype
          per bucket, each <= bucket_bytes unless a single tensor is larger (then alone). A
          receiver accepts any plan that `check_plan` passes: every index exactly once, one dtype
          per bucket.
group     `vllm.distributed.utils.stateless_init_torch_distributed_process_group(host, port, rank,
          world_size=1 + rollout ranks, backend, timeout=...)`. Learner rank 0 is group rank 0; TP
          rank r of rollout worker i joins as `rank_offset_i + r` (offsets 1, 1 + tp_0, ...).
          gloo on CPU, nccl on GPU. Rank 0 listens on host:port before any receiver is asked to join
          (`LearnerRank.weight_sync_address`), so a receiver that finds the port refusing knows rank 0
          is gone and fails at once (`check_rendezvous_host`).
update    for each bucket, in order: rank 0 broadcasts (root 0) ONE flat 1-D tensor of the
          bucket's dtype, `flatten` of the bucket's tensors (each `.reshape(-1)`, concatenated in
          bucket order). Receivers allocate it with `empty_flat` and cut it with `split_flat`.
          Nothing else travels on the group: the version is agreed by the driver's calls.

file      (colocated mode, cluster/colocation.py: sender and receivers on one node) instead of the
          group, the update is one file in the node's shared memory: bucket b's flat tensor (the
          same `flatten`) at byte offset `file_layout(manifest, buckets)[0][b]`, each offset a
          multiple of FILE_ALIGN so a byte view of the file can be viewed as any dtype. The driver
          orders the calls: every write is done before any receiver reads.

Manifest and plan are agreed once, at set-up, and checked there (names and shapes by the receiver
against its engine, the plan by `check_plan`), so an update only moves bytes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

ManifestEntry = tuple[str, str, list[int]]

# Bytes per element of every dtype the protocol carries (tests check it against torch's itemsize).
DTYPE_BYTES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
}


def check_rendezvous_host(host: str, port: int, timeout_s: float) -> None:
    """Before a receiver joins: is rank 0 still listening on host:port? It opened the port before the
    receiver was asked to join, so a refused connection means it is gone (a learner rank lost while
    the group forms). Raise now: the TCP store's own connect would retry a refused port for about
    twice timeout_s, holding this worker from the group formed again around a new rank 0. (Rank 0's
    store sees this probe as a client that connected and left.)"""
    import socket

    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except ConnectionRefusedError as e:
        raise ConnectionError(f"weight-sync rendezvous {host}:{port} refused the connection: the learner's rank 0 "
                              f"that opened it is gone or no longer serving it") from e


def dtype_name(dtype: torch.dtype) -> str:
    """The manifest's name of a torch dtype: torch.bfloat16 -> "bfloat16" (a name passes through)."""
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a manifest names (a leading "torch." is tolerated)."""
    import torch

    dt = getattr(torch, dtype_name(name), None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"weight sync manifest: {name!r} is not a torch dtype name (e.g. 'float32', 'bfloat16')")
    return dt


def dtype_bytes(name: str) -> int:
    size = DTYPE_BYTES.get(dtype_name(name))
    if size is None:
        raise ValueError(f"weight sync manifest: dtype {name!r} is not one the protocol carries "
                         f"({', '.join(DTYPE_BYTES)})")
    return size


def numel(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def entry_bytes(entry: ManifestEntry) -> int:
    _, dtype, shape = entry
    return numel(shape) * dtype_bytes(dtype)


def manifest_bytes(manifest: Sequence[ManifestEntry]) -> int:
    """Bytes one full update moves."""
    return sum(map(entry_bytes, manifest))


def plan_buckets(manifest: Sequence[ManifestEntry], bucket_bytes: int) -> list[list[int]]:
    """Consecutive manifest indices grouped into buckets of one dtype and <= bucket_bytes each
    (a tensor larger than bucket_bytes travels alone)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    buckets: list[list[int]] = []
    size, dtype = 0, None
    for i, entry in enumerate(manifest):
        nbytes = entry_bytes(entry)
        if buckets and entry[1] == dtype and size + nbytes <= bucket_bytes:
            buckets[-1].append(i)
            size += nbytes
        else:
            buckets.append([i])
            size, dtype = nbytes, entry[1]
    return buckets


def check_plan(manifest: Sequence[ManifestEntry], buckets: Sequence[Sequence[int]]) -> list[str]:
    """What is wrong with a (manifest, buckets) pair a receiver was handed ([] if nothing): a
    receiver that accepted a bad plan would cut the flat tensors wrongly or hang the group."""
    problems = []
    unknown = sorted({dt for _, dt, _ in manifest if dtype_name(dt) not in DTYPE_BYTES})
    if unknown:
        problems.append(f"dtypes the protocol does not carry: {unknown} (known: {', '.join(DTYPE_BYTES)})")
    flat = [i for b in buckets for i in b]
    if sorted(flat) != list(range(len(manifest))):
        problems.append(f"bucket plan must cover manifest indices 0..{len(manifest) - 1} exactly once "
                        f"(got {len(flat)} indices, {len(set(flat))} distinct)")
    valid = range(len(manifest))
    bad = [j for j, b in enumerate(buckets) if len({manifest[i][1] for i in b if i in valid}) != 1]
    if bad:
        problems.append(f"buckets {bad[:10]} are empty or mix dtypes (each bucket must have one dtype)")
    return problems


FILE_ALIGN = 64  # bytes: every bucket of the weight file starts at a multiple of this


def file_layout(manifest: Sequence[ManifestEntry], buckets: Sequence[Sequence[int]]) -> tuple[list[int], int]:
    """The weight file's layout: the byte offset of each bucket's flat tensor, and the file's size."""
    offsets, end = [], 0
    for bucket in buckets:
        start = -(-end // FILE_ALIGN) * FILE_ALIGN
        offsets.append(start)
        end = start + sum(entry_bytes(manifest[i]) for i in bucket)
    return offsets, end


def file_view(buf: torch.Tensor, manifest: Sequence[ManifestEntry], bucket: Sequence[int], offset: int) -> torch.Tensor:
    """Bucket `bucket`'s flat tensor inside `buf`, the weight file mapped as uint8 (sender and receiver)."""
    nbytes = sum(entry_bytes(manifest[i]) for i in bucket)
    return buf[offset:offset + nbytes].view(torch_dtype(manifest[bucket[0]][1]))


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sender's flat tensor of one bucket: each tensor `.reshape(-1)`, concatenated in order."""
    if len(tensors) == 1:
        return tensors[0].reshape(-1).contiguous()
    import torch

    return torch.cat([t.reshape(-1) for t in tensors])


def empty_flat(manifest: Sequence[ManifestEntry], bucket: Sequence[int], device="cpu") -> torch.Tensor:
    """The receiver's buffer for one bucket's flat tensor."""
    import torch

    n = sum(numel(manifest[i][2]) for i in bucket)
    return torch.empty(n, dtype=torch_dtype(manifest[bucket[0]][1]), device=device)


def split_flat(flat: torch.Tensor, manifest: Sequence[ManifestEntry], bucket: Sequence[int]) -> list[tuple[str, torch.Tensor]]:
    """The receiver's half of `flatten`: (name, tensor view) of each manifest entry in `bucket`."""
    expected = sum(numel(manifest[i][2]) for i in bucket)
    if expected != flat.numel():
        raise ValueError(f"flat bucket has {flat.numel()} elements, manifest says {expected}")
    out, offset = [], 0
    for i in bucket:
        name, _, shape = manifest[i]
        n = numel(shape)
        out.append((name, flat[offset:offset + n].view(list(shape))))
        offset += n
    return out
