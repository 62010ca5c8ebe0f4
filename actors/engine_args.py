"""What a rollout worker asks of its vLLM engine: the `vllm.LLM` arguments and, on CPU, its threads
and cores. Pure functions of the rollout config (no vLLM import), so they are tested without an engine."""

from __future__ import annotations

import os
from typing import Any

from actors.config import RolloutConfig
from learner.cpu_cores import core_block


def llm_kwargs(model_path: str, cfg: RolloutConfig, dtype: str, worker_index: int, device: str,
               colocated: bool) -> dict[str, Any]:
    """The keyword arguments of rollout worker `worker_index`'s `vllm.LLM`."""
    kwargs: dict[str, Any] = dict(
        model=model_path,
        dtype=dtype or "auto",
        seed=cfg.seed + worker_index,  # unseeded requests: distinct workers draw distinct samples
        max_model_len=cfg.max_model_len,
        max_num_seqs=cfg.max_num_seqs,
        max_num_batched_tokens=cfg.max_num_batched_tokens,
        enforce_eager=cfg.enforce_eager,
        logprobs_mode="processed_logprobs",
        worker_extension_cls="actors.vllm_ext.WeightReceiver",
    )
    if device == "cuda":
        # GPU-only: tensor parallelism and a KV cache sized as a share of GPU memory; colocated
        # engines can sleep (vLLM's CPU build has no sleep mode).
        kwargs.update(tensor_parallel_size=cfg.tensor_parallel_size,
                      gpu_memory_utilization=cfg.gpu_memory_utilization, enable_sleep_mode=colocated)
    else:
        # On CPU vLLM would otherwise reserve gpu_memory_utilization x host RAM and refuse to start.
        kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gib * (1 << 30))
    if cfg.record_routed_experts:
        kwargs["enable_prefix_caching"] = False  # every token's routing is computed by its own request
    if cfg.env.name:
        # multi-turn: a turn's request joins a running batch with a long prompt, and a chunked prefill
        # discards its sample by rewinding the request's generator, which vLLM's CPU generator cannot
        # do ("CPU Generator does not use offset") for seeded requests: prefill prompts whole
        kwargs["enable_chunked_prefill"] = False
    kwargs.update(cfg.engine_kwargs)
    return kwargs


def cpu_placement(cfg: RolloutConfig, worker_index: int) -> tuple[int, list[int]]:
    """(torch threads, cores to pin to) of CPU rollout worker `worker_index`.

    Threads: cfg.threads_per_worker, or the process's allowed cores / num_workers. Cores: worker i
    takes the i-th block of `threads` cores from cfg.cpu_cores (or, when that is empty and there are
    several workers, from the process's allowed cores), wrapping around; one worker with no
    cfg.cpu_cores is not pinned.
    """
    allowed = sorted(os.sched_getaffinity(0))
    threads = cfg.threads_per_worker or max(1, len(allowed) // max(1, cfg.num_workers))
    pool = list(cfg.cpu_cores) or (allowed if cfg.num_workers > 1 else [])
    if not pool:
        return threads, []
    return threads, core_block(pool, worker_index, threads, "rollout.cpu_cores")
