"""The rollout worker as a Ray actor: generate_stream is a streaming generator method, so a caller
receives each prompt's group while the others are still generating (what cluster/rollout_pool.py uses)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


RAY_INIT = dict(log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # conftest's ray_cluster


def test_generate_stream_through_ray(tiny_model_dir, ray_cluster):
    import ray

    from actors.config import RolloutConfig, SamplingConfig
    from actors.rollout import RolloutWorker

    cfg = RolloutConfig(max_model_len=256, sampling=SamplingConfig(max_new_tokens=8))
    actor = ray.remote(num_cpus=1)(RolloutWorker).remote(str(tiny_model_dir), cfg, "float32")
    ps = [{"prompt_id": "long", "prompt": "a", "sampling": {"max_new_tokens": 250, "ignore_eos": True}},
          {"prompt_id": "short", "prompt": "b", "sampling": {"max_new_tokens": 2, "ignore_eos": True}},
          {"prompt_id": "plain", "prompt": "c", "meta": {"k": 1}}]
    ray.get(actor.generate.remote(ps[1:], 2))  # warm-up (the engine's first requests are slower)
    t0 = time.perf_counter()
    arrivals = []
    for ref in actor.generate_stream.options(num_returns="streaming").remote(ps, 2):
        arrivals.append((ray.get(ref), time.perf_counter() - t0))
    groups = [g for g, _ in arrivals]
    assert groups[0].prompt_id == "short" and groups[-1].prompt_id == "long"
    # the first group reached the caller long before the long prompt finished
    assert arrivals[0][1] < arrivals[-1][1] / 3, [(g.prompt_id, round(t, 3)) for g, t in arrivals]
    assert sorted(g.prompt_id for g in groups) == ["long", "plain", "short"]
    assert all(len(g) == 2 and len(s.logprobs) == len(s.response_ids) for g in groups for s in g.samples)
    ray.get(actor.shutdown.remote())
