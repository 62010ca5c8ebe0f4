"""What a rollout worker asks of vLLM (actors/engine_args.py): the LLM arguments and CPU placement."""

import pytest

from actors.config import EnvConfig, RolloutConfig
from actors.engine_args import cpu_placement, llm_kwargs

pytestmark = pytest.mark.unit


def test_cpu_engine_arguments():
    kw = llm_kwargs("/m", RolloutConfig(seed=5, kv_cache_gib=0.5), "float32", worker_index=2, device="cpu",
                    colocated=False)
    assert kw["model"] == "/m" and kw["dtype"] == "float32" and kw["seed"] == 7  # distinct seed per worker
    # vLLM's CPU defaults are 256 / 4096: a round of 64 prompts x 16 samples would take four waves
    assert (kw["max_num_seqs"], kw["max_num_batched_tokens"]) == (1024, 16384)
    assert kw["kv_cache_memory_bytes"] == 1 << 29 and kw["logprobs_mode"] == "processed_logprobs"
    assert not {"tensor_parallel_size", "gpu_memory_utilization", "enable_sleep_mode", "enable_prefix_caching",
                "enable_chunked_prefill"} & set(kw)
    assert llm_kwargs("/m", RolloutConfig(), "", 0, "cpu", False)["dtype"] == "auto"


def test_gpu_engine_arguments():
    kw = llm_kwargs("/m", RolloutConfig(tensor_parallel_size=2), "bfloat16", 0, "cuda", colocated=True)
    assert (kw["tensor_parallel_size"], kw["gpu_memory_utilization"], kw["enable_sleep_mode"]) == (2, 0.85, True)
    assert "kv_cache_memory_bytes" not in kw


def test_routing_capture_multi_turn_and_engine_kwargs():
    kw = llm_kwargs("/m", RolloutConfig(record_routed_experts=True, env=EnvConfig(name="calculator"),
                                        engine_kwargs={"swap_space": 0}), "float32", 0, "cpu", False)
    assert kw["enable_prefix_caching"] is False  # every token's routing computed by its own request
    assert kw["enable_chunked_prefill"] is False  # multi-turn prefills prompts whole
    assert kw["swap_space"] == 0


def test_cpu_placement(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert cpu_placement(RolloutConfig(num_workers=1), 0) == (4, [])  # one worker: all cores, not pinned
    two = RolloutConfig(num_workers=2)
    assert [cpu_placement(two, i) for i in range(3)] == [(2, [0, 1]), (2, [2, 3]), (2, [0, 1])]
    assert cpu_placement(RolloutConfig(num_workers=2, cpu_cores=[3, 1], threads_per_worker=1), 1) == (1, [1])
    with pytest.raises(ValueError, match=r"cores \[7\] are not available"):
        cpu_placement(RolloutConfig(cpu_cores=[7]), 0)
