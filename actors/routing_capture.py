"""MoE routing seen by the rollout engine, per request: which experts each token was sent to.

Runs inside the vLLM worker (actors/vllm_ext.py's extension calls it). vLLM 0.32's MoE layers
(`MoERunner`) accept a capture callback on their router (`router.set_capture_fn`), called in every
forward with the top-k expert ids of the batch's tokens (logical ids, before any expert-parallel
remapping). The V1 model runner lays a step's tokens out request by request in `input_batch.req_ids`
order, `num_scheduled_tokens[req]` each, starting at the request's `num_computed_tokens` — so after
each `execute_model` the captured rows are cut into per-request spans and written at their token
positions. A recomputed span (preemption) overwrites the same positions.

Two products per request:
- expert counts [moe layers, experts] over every token the engine computed for it (load telemetry,
  always on for MoE models: a bincount per layer and step);
- with `record`, the routing itself, uint8 [tokens, moe layers, top_k] (uint16 past 256 experts),
  for routing replay in the learner. Position t holds the experts of input token t; the last sampled
  token is never fed to the model, so a finished sequence of T tokens has T - 1 rows. Prefix caching
  must be off while recording (a cached prompt block is not recomputed, so its routing would be
  missing): the rollout worker turns it off.

"MoE layer l" is the l-th MoE layer in model order (vLLM's `layer_id` sorted), the same order in
which the learner's hooks (learner/moe.py) meet the routers of the Hugging Face model.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch


class _Request:
    def __init__(self, layers: int, experts: int, top_k: int, dtype: np.dtype, record: bool):
        self.counts = np.zeros((layers, experts), dtype=np.int64)
        self.rows = np.zeros((64 if record else 0, layers, top_k), dtype=dtype)
        self.filled = np.zeros(len(self.rows), dtype=bool)

    def put(self, start: int, rows: np.ndarray) -> None:
        end = start + len(rows)
        if end > len(self.rows):  # grow by doubling
            size = max(end, 2 * len(self.rows))
            grown = np.zeros((size, *self.rows.shape[1:]), dtype=self.rows.dtype)
            grown[: len(self.rows)] = self.rows
            filled = np.zeros(size, dtype=bool)
            filled[: len(self.filled)] = self.filled
            self.rows, self.filled = grown, filled
        self.rows[start:end] = rows
        self.filled[start:end] = True


class RoutingCapture:
    """Installed on a vLLM worker's model runner; see the module docstring."""

    def __init__(self, runner: Any, record: bool):
        from vllm.model_executor.layers.fused_moe.layer import MoERunner
        from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter

        moe = sorted((m for m in runner.get_model().modules() if isinstance(m, MoERunner)), key=lambda m: m.layer_id)
        for m in moe:
            if not isinstance(m.router, BaseRouter):
                raise ValueError(f"MoE layer {m.layer_id}: router {type(m.router).__name__} has no capture hook "
                                 f"in vLLM 0.32; expert load and routing replay need one")
        if moe:
            unsupported = _unsupported_engine(runner)
            if unsupported:
                raise ValueError(f"MoE routing capture (expert load, routing replay) does not support {unsupported}")
        self.layer_ids = [int(m.layer_id) for m in moe]
        self.experts = int(moe[0].router.global_num_experts) if moe else 0
        self.top_k = int(moe[0].router.top_k) if moe else 0
        self.record = record
        self._dtype = np.dtype(np.uint8 if self.experts <= 256 else np.uint16)
        self._runner = runner
        self._requests: dict[str, _Request] = {}
        if not moe:
            return
        # One device buffer written by a copy inside the forward (one device-to-host copy per step):
        # rows [tokens, layers, k]. Before each step the rows it will use are set to -1; a -1 left
        # afterwards means a layer did not report.
        rows = int(runner.scheduler_config.max_num_batched_tokens)
        self._buffer = torch.full((rows, len(moe), self.top_k), -1, dtype=torch.int16, device=runner.device)
        for pos, m in enumerate(moe):
            m.router.set_capture_fn(lambda ids, pos=pos: self._buffer[: ids.shape[0], pos].copy_(ids))
        inner = runner.execute_model

        def execute_model(scheduler_output, *args, **kwargs):
            n = int(scheduler_output.total_num_scheduled_tokens)
            self._buffer[:n].fill_(-1)
            out = inner(scheduler_output, *args, **kwargs)
            self._after_step(scheduler_output, n)
            return out

        runner.execute_model = execute_model

    def describe(self) -> Optional[dict[str, Any]]:
        if not self.layer_ids:
            return None  # a dense model
        return {"layers": len(self.layer_ids), "layer_ids": self.layer_ids, "experts": self.experts,
                "top_k": self.top_k, "record": self.record}

    def _after_step(self, so: Any, n_total: int) -> None:
        if n_total == 0:
            return
        step = self._buffer[:n_total].cpu().numpy()  # [tokens, layers, k]; one device-to-host copy per step
        if (step < 0).any():
            missing = [self.layer_ids[i] for i in range(step.shape[1]) if (step[:, i] < 0).any()]
            raise RuntimeError(f"routing capture: MoE layers {missing} reported no routing for some of the "
                               f"step's {n_total} tokens")
        starts = {r.req_id: r.num_computed_tokens for r in so.scheduled_new_reqs}
        cached = so.scheduled_cached_reqs
        starts.update(zip(cached.req_ids, cached.num_computed_tokens))
        offset = 0
        for rid in self._runner.input_batch.req_ids:
            n = int(so.num_scheduled_tokens.get(rid, 0))
            if n == 0:
                continue
            rows = step[offset: offset + n]
            offset += n
            req = self._requests.get(rid)
            if req is None:
                req = self._requests[rid] = _Request(len(self.layer_ids), self.experts, self.top_k, self._dtype,
                                                     self.record)
            for layer in range(rows.shape[1]):
                req.counts[layer] += np.bincount(rows[:, layer].reshape(-1), minlength=self.experts)[: self.experts]
            if self.record:
                req.put(int(starts[rid]), rows.astype(self._dtype))
        if offset != n_total:
            raise RuntimeError(f"routing capture: {offset} of the step's {n_total} tokens matched to requests "
                               f"(the model runner's token layout is not the one this capture assumes)")

    def take(self, request_ids: list[str], lengths: list[int]) -> list[dict[str, Any]]:
        """Per request (and forget it): expert counts, and with `record` the routing of its first
        `length` tokens (bytes + shape; raises if any of them was never computed)."""
        out = []
        for rid, length in zip(request_ids, lengths):
            req = self._requests.pop(rid, None)
            if req is None:
                raise KeyError(f"routing capture: no routing recorded for request {rid}")
            item: dict[str, Any] = {"counts": req.counts.tolist()}
            if self.record:
                if length > len(req.filled) or not req.filled[:length].all():
                    have = int(req.filled[:length].sum())
                    raise RuntimeError(f"routing capture: request {rid} has routing for {have} of its {length} "
                                       f"computed tokens (was prefix caching on?)")
                item.update(routing=req.rows[:length].tobytes(), shape=(length, *req.rows.shape[1:]),
                            dtype=str(self._dtype))
            out.append(item)
        return out

    def reset(self) -> None:
        self._requests.clear()


def _unsupported_engine(runner: Any) -> str:
    """What of the engine's set-up the capture cannot follow ('' = none of it)."""
    from vllm.config import CUDAGraphMode

    cfg = runner.vllm_config
    if cfg.speculative_config is not None:
        return "speculative decoding (the runner re-plans the step's tokens; turn it off)"
    mode = cfg.compilation_config.cudagraph_mode
    if mode is not None and mode != CUDAGraphMode.NONE:
        # GPU-only: graphs are captured before the capture is installed, and a replayed graph runs no callback
        return "CUDA graphs (set rollout.enforce_eager=true)"
    return ""
