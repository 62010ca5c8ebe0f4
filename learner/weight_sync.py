"""The send side of the weight broadcast: learner rank 0 -> every rollout worker, bucketed.

The protocol (manifest, bucket plan, flat tensors, group) is described and implemented in
learner/weight_protocol.py; this module is the learner's machinery around it.

All learner ranks call `broadcast_weights` (ZeRO-3 parameters are gathered collectively, one
bucket at a time, so rank 0's extra memory stays around a bucket plus one fused tensor);
only rank 0 talks to the group. Broadcasts are pipelined: up to `max_in_flight` buckets are on
the wire while the next is being gathered.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import time
from datetime import timedelta
from typing import Iterable, Optional, Sequence

import torch

from learner.weight_protocol import (ManifestEntry, dtype_name, empty_flat, file_layout, file_view, flatten, plan_buckets,
                                     split_flat)


def listen_socket(host: str, port: int = 0) -> socket.socket:
    """A TCP socket listening on `host` alone (port 0: a free one), for a torch TCP store to serve
    from. Left to bind by itself, a TCPStore server listens on every interface whatever host it is
    given; handed this socket (master_listen_fd) it listens where the socket does."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return sock


def init_group(host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float,
               listen: Optional[socket.socket] = None):
    """Join the weight-sync process group (vLLM's stateless group: it leaves torch.distributed's
    default group — the learner's own DeepSpeed group — untouched). Group rank 0 serves the group's
    TCP store from `listen` (or a socket it binds to host:port), so the store listens on host only."""
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    if rank == 0 and listen is None:
        listen = listen_socket(host, port)
    return stateless_init_torch_distributed_process_group(
        host, port, rank, world_size, backend, timeout=timedelta(seconds=timeout_s), listen_socket=listen)


def full_shape(t: torch.Tensor) -> list[int]:
    """A parameter's full shape (ZeRO-3 partitions have shape [0] outside a gather)."""
    return [int(d) for d in (t.ds_shape if hasattr(t, "ds_shape") else t.shape)]


@contextlib.contextmanager
def gathered(params: Sequence[torch.Tensor]):
    """ZeRO-3: full parameters inside the block, collectively on every rank (read-only).
    Other stages and plain tensors: nothing to do."""
    z3 = [p for p in params if hasattr(p, "ds_id")]
    if not z3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(z3, modifier_rank=None):
        yield


class WeightLayout:
    """How the in-memory parameters of a HF model map onto the checkpoint-named manifest.

    Each `model.state_dict()` key is a *source*; transformers' reverse weight conversion turns a
    source into one or more checkpoint tensors (identity for most, per-expert slices for fused MoE
    experts). The conversion is applied per source, so a bucket only gathers the sources it needs.
    """

    def __init__(self, model):
        self.model = model
        self.sources: list[tuple[str, torch.Tensor]] = list(model.state_dict(keep_vars=True).items())
        self.manifest: list[ManifestEntry] = []
        self.owner: list[int] = []  # manifest index -> source index
        for s, (key, t) in enumerate(self.sources):
            meta = torch.empty(full_shape(t), dtype=t.dtype, device="meta")
            for name, out in self.convert({key: meta}).items():
                self.manifest.append((name, dtype_name(out.dtype), [int(d) for d in out.shape]))
                self.owner.append(s)
        names = [e[0] for e in self.manifest]
        if len(set(names)) != len(names):
            raise ValueError("weight manifest has duplicate names")

    def convert(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from transformers.core_model_loading import revert_weight_conversion

        return revert_weight_conversion(self.model, dict(tensors))

    def iter_buckets(self, buckets: Sequence[Sequence[int]], materialise: bool) -> Iterable[list[torch.Tensor]]:
        """Per bucket, the bucket's tensors in manifest order (only if `materialise`, i.e. rank 0;
        other ranks get [] but still take part in the ZeRO-3 gathers). Tensors are detached
        copies/views valid until the next optimizer step."""
        cache: dict[int, torch.Tensor] = {}
        done: set[int] = set()  # sources already converted; tracked on EVERY rank so gathers match
        for bucket in buckets:
            need = {self.owner[i] for i in bucket} - done
            done |= need
            with gathered([self.sources[s][1] for s in sorted(need)]):
                if materialise and need:
                    outs = self.convert({self.sources[s][0]: self.sources[s][1].detach() for s in sorted(need)})
                    for i, s in enumerate(self.owner):
                        if s in need:
                            t = outs[self.manifest[i][0]]
                            # a ZeRO-3 gather frees its memory on exit: keep what later buckets need
                            cache[i] = t.clone() if hasattr(self.sources[s][1], "ds_id") else t
            yield [cache.pop(i) for i in bucket] if materialise else []


class WeightSender:
    """Rank 0's end of the weight-sync group (every learner rank holds one; only rank 0 sends)."""

    def __init__(self, layout: WeightLayout, rank: int, bucket_bytes: int):
        self.layout, self.rank, self.bucket_bytes = layout, rank, bucket_bytes
        self.buckets = plan_buckets(layout.manifest, bucket_bytes)
        self.group = None
        self.file: Optional[str] = None  # colocated: the node's weight file, written if self.file_writer
        self.file_writer = False
        self._file_buf: Optional[torch.Tensor] = None

    def connect(self, host: str, port: int, world_size: int, backend: str, timeout_s: float,
                listen: Optional[socket.socket] = None) -> None:
        """Rank 0 hosts the group (from `listen`, if it already holds host:port) and joins as rank 0."""
        if self.rank == 0:
            self.group = init_group(host, port, 0, world_size, backend, timeout_s, listen)

    def broadcast(self, max_in_flight: int = 2) -> dict[str, float]:
        """Send every bucket (collective over the learner ranks under ZeRO-3). Returns bytes/seconds."""
        if self.rank == 0 and self.group is None:
            raise RuntimeError("weight sync not initialised: call init_weight_sync first")
        t0 = time.perf_counter()
        sent = 0
        in_flight: collections.deque = collections.deque()
        for tensors in self.layout.iter_buckets(self.buckets, materialise=self.rank == 0):
            if self.rank != 0:
                continue
            flat = flatten(tensors)
            in_flight.append((self.group.broadcast(flat, 0), flat))
            sent += flat.numel() * flat.element_size()
            while len(in_flight) > max_in_flight:
                in_flight.popleft()[0].wait()
        while in_flight:
            in_flight.popleft()[0].wait()
        return {"bytes": float(sent), "seconds": time.perf_counter() - t0, "buckets": float(len(self.buckets))}

    def use_file(self, path: str, writer: bool) -> None:
        """Colocated (the protocol's file transport): updates go to `path` in this node's shared memory;
        the node's lowest rank is its `writer`, the others only take part in ZeRO-3's gathers."""
        self.close()
        self.file, self.file_writer = path, writer
        if writer:
            _, size = file_layout(self.layout.manifest, self.buckets)
            with open(path, "wb") as f:
                f.truncate(size)
            self._file_buf = torch.from_file(path, shared=True, size=size, dtype=torch.uint8)

    def write_file(self) -> dict[str, float]:
        """Write every bucket to the weight file (collective over the learner ranks under ZeRO-3)."""
        if self.file is None:
            raise RuntimeError("weight file not set: call init_weight_file first")
        t0, written = time.perf_counter(), 0
        offsets, _ = file_layout(self.layout.manifest, self.buckets)
        for b, tensors in enumerate(self.layout.iter_buckets(self.buckets, materialise=self.file_writer)):
            if self.file_writer:
                view = file_view(self._file_buf, self.layout.manifest, self.buckets[b], offsets[b])
                view.copy_(flatten(tensors))  # GPU-only: a device-to-host copy on CUDA
                written += view.numel() * view.element_size()
        return {"bytes": float(written), "seconds": time.perf_counter() - t0, "buckets": float(len(self.buckets))}

    def close(self) -> None:
        group, self.group = self.group, None
        if group is not None:
            with contextlib.suppress(Exception):
                group.shutdown()
        path, self.file, self._file_buf = self.file, None, None
        if path is not None and self.file_writer:
            with contextlib.suppress(OSError):
                os.unlink(path)


def receive(group, manifest: Sequence[ManifestEntry], buckets: Sequence[Sequence[int]],
            device: str | torch.device = "cpu") -> Iterable[tuple[str, torch.Tensor]]:
    """A plain receiver (rank >= 1) following the protocol: yields (name, tensor) per manifest entry.

    Used by tests and the benchmark; the vLLM worker has its own, loading in place."""
    for bucket in buckets:
        flat = empty_flat(manifest, bucket, device)
        group.broadcast(flat, 0).wait()
        yield from split_flat(flat, manifest, bucket)
