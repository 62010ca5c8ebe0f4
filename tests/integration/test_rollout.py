"""The vLLM rollout worker on the tiny dense Qwen3: grouped sampling, logprob semantics, streaming,
and the weight-receive side of weight sync (against a stand-in for learner rank 0).

One engine serves the whole module; weight updates change it, so every reference comparison is made
against `engine.weights_dir`, the directory holding the weights the engine currently has.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from actors.config import RolloutConfig, SamplingConfig
from actors.engine_io import request_seed
from actors.rollout import RolloutWorker
from learner.sender_process import (
    WeightSender, free_port, hf_logprobs, load_checkpoint, manifest_of, max_abs_diff, perturbed, plan,
    sampler_vs_hf, write_model_dir,
)
from learner.weight_protocol import manifest_bytes

pytestmark = pytest.mark.integration

MAX_NEW = 24
BUCKET_BYTES = 1 << 16  # 64 KiB: the 1.2 MB tiny model travels in many buckets
# fp32 vLLM vs fp32 transformers: measured ~1e-6 (STACK-NOTES: 3e-5 after large weight changes).
# 1e-4 is far below what a wrong temperature (~0.1) or stale weights (~0.1-1) would give.
TOL = 1e-4


@dataclasses.dataclass
class Engine:
    worker: RolloutWorker
    weights_dir: Path  # where the weights the engine currently holds are saved (for the reference)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    cfg = RolloutConfig(max_model_len=256, kv_cache_gib=0.25, sampling=SamplingConfig(max_new_tokens=MAX_NEW))
    worker = RolloutWorker(str(tiny_model_dir), cfg, "float32")
    yield Engine(worker, Path(tiny_model_dir))
    worker.shutdown()


@pytest.fixture(scope="module")
def sender(engine, tiny_model_dir):
    """Learner rank 0 in its own process, joined with the engine in a 2-rank gloo group."""
    s = WeightSender()
    manifest, buckets = plan(load_checkpoint(tiny_model_dir), BUCKET_BYTES)
    port = free_port()
    s.start_init("127.0.0.1", port, world_size=2, timeout_s=60)
    info = engine.worker.init_weight_sync("127.0.0.1", port, 1, 2, manifest, buckets, "gloo", 60.0)
    s.wait()
    assert info["rank"] == 1 and info["buckets"] == len(buckets) > 1
    yield s
    s.close()


def prompts(k: int, **extra) -> list[dict]:
    return [{"prompt_id": f"q{i}", "prompt": f"What is {i} + {i}? ", "meta": {"answer": 2 * i}, **extra} for i in range(k)]


def update(engine: Engine, sender: WeightSender, src_dir: Path, seed: int, scale: float, version: int, tmp: Path) -> dict:
    sender.start_send(src_dir, seed, scale, BUCKET_BYTES)
    info = engine.worker.receive_weights(version)
    sender.wait()
    engine.weights_dir = write_model_dir(src_dir, perturbed(load_checkpoint(src_dir), seed, scale), tmp)
    return info


# ---- sampling -------------------------------------------------------------------------------------

def test_grouped_generation(engine):
    w = engine.worker
    tok = w.tokenizer
    ps = prompts(3)
    ps[1] = {"prompt_id": "ids", "prompt_ids": tok.encode("given as ids"), "meta": {"answer": 1}}
    groups = w.generate(ps, 4)
    assert [g.prompt_id for g in groups] == ["q0", "ids", "q2"]
    for p, g in zip(ps, groups):
        assert len(g) == 4 and g.generate_seconds > 0
        want_ids = p.get("prompt_ids") or tok.encode(p["prompt"])
        for s in g.samples:
            assert s.prompt_id == p["prompt_id"] and s.prompt_ids == want_ids
            assert s.prompt == (p.get("prompt") or tok.decode(want_ids))
            assert 1 <= len(s.response_ids) <= MAX_NEW and len(s.logprobs) == len(s.response_ids)
            assert all(lp <= 0.0 for lp in s.logprobs)
            assert s.finish_reason == ("length" if len(s.response_ids) == MAX_NEW and s.response_ids[-1] != tok.eos_token_id
                                       else "stop")
            assert s.policy_version == w.version == 0
            assert s.meta == p["meta"] and s.meta is not p["meta"]
        assert len({tuple(s.response_ids) for s in g.samples}) > 1  # n distinct draws, not n copies
    # the version stamped on samples can be overridden (async callers label what they launched)
    assert {s.policy_version for g in w.generate(prompts(1), 2, version_override=7) for s in g.samples} == {7}


def test_the_engine_schedules_by_the_rollout_config(engine):
    # vLLM's CPU defaults are 256 / 4096: a round of 64 prompts x 16 samples would take four waves
    sched = engine.worker.llm.llm_engine.vllm_config.scheduler_config
    cfg = engine.worker.cfg
    assert (sched.max_num_seqs, sched.max_num_batched_tokens) == (cfg.max_num_seqs, cfg.max_num_batched_tokens) == (
        1024, 16384)


def test_stop_strings_finish_with_stop(engine):
    stops = list("aeiou0123456789 ")
    groups = engine.worker.generate(prompts(2), 4, {"stop": stops, "max_new_tokens": 64})
    reasons = [s.finish_reason for g in groups for s in g.samples]
    assert "stop" in reasons
    for s in (s for g in groups for s in g.samples if s.finish_reason == "stop"):
        # the stop string is kept, so the text is the decoded ids the learner trains on
        assert s.response_ids[-1] == engine.worker.tokenizer.eos_token_id or s.response[-1] in stops
        assert s.response == engine.worker.tokenizer.decode(s.response_ids, skip_special_tokens=True)


def test_the_text_is_the_same_whether_the_engine_detokenizes_or_not(engine):
    """Without stop strings vLLM does not detokenize while sampling; the worker decodes each finished
    group once. A stop string that never matches turns vLLM's detokenizer on for the same draws."""
    w, tok = engine.worker, engine.worker.tokenizer
    seeded = [{**p, "seed": 40 + i} for i, p in enumerate(prompts(4))]
    assert not w._sampling_params(4, None, seeded[0]).detokenize
    assert w._sampling_params(4, {"stop": ["§§"]}, seeded[0]).detokenize
    ours = [s for g in w.generate(seeded, 4) for s in g.samples]
    vllms = [s for g in w.generate(seeded, 4, {"stop": ["§§"]}) for s in g.samples]
    assert [s.response_ids for s in ours] == [s.response_ids for s in vllms]
    assert [s.response for s in ours] == [s.response for s in vllms]
    assert any(s.response_ids[-1] == tok.eos_token_id for s in ours)  # special tokens were there to skip
    assert all(s.response == tok.decode(s.response_ids, skip_special_tokens=True) and s.response for s in ours)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_are_the_tempered_distribution(engine, temperature):
    """Sample.logprobs == log_softmax(logits / T) of the same weights: what the learner recomputes."""
    groups = engine.worker.generate(prompts(3), 4, {"temperature": temperature})
    assert sampler_vs_hf(engine.weights_dir, groups, temperature) < TOL
    if temperature != 1.0:  # and it is not the untempered distribution (the check has teeth)
        assert sampler_vs_hf(engine.weights_dir, groups, 1.0) > 100 * TOL


def test_greedy_logprobs_are_untempered(engine):
    groups = engine.worker.generate(prompts(2), 1, {"temperature": 0.0})  # vLLM: greedy needs n == 1
    assert sampler_vs_hf(engine.weights_dir, groups, 1.0) < TOL


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_score_logprobs_match_the_learner(engine, temperature):
    """The weight-sync probe: logprobs of given tokens at temperature T (default: the rollout's)."""
    groups = engine.worker.generate(prompts(2), 2)
    samples = [s for g in groups for s in g.samples]
    seqs, lens = [s.prompt_ids + s.response_ids for s in samples], [len(s.prompt_ids) for s in samples]
    got = engine.worker.score_logprobs(seqs, lens, temperature)
    assert [len(x) for x in got] == [len(s.response_ids) for s in samples]
    assert max_abs_diff(got, hf_logprobs(engine.weights_dir, seqs, lens, temperature)) < TOL
    if temperature == engine.worker.cfg.sampling.temperature:
        assert engine.worker.score_logprobs(seqs, lens) == got


def test_stream_yields_each_group_when_done(engine):
    w = engine.worker
    ps = [{"prompt_id": "long", "prompt": "tell me a long story", "sampling": {"max_new_tokens": 160, "ignore_eos": True}},
          {"prompt_id": "short", "prompt": "hi", "sampling": {"max_new_tokens": 2, "ignore_eos": True}}]
    t0 = time.perf_counter()
    arrivals = [(g.prompt_id, time.perf_counter() - t0, g) for g in w.generate_stream(ps, 3)]
    assert [a[0] for a in arrivals] == ["short", "long"]
    short, long_ = arrivals[0][2], arrivals[1][2]
    assert [len(s.response_ids) for s in short.samples] == [2] * 3
    assert [len(s.response_ids) for s in long_.samples] == [160] * 3
    assert short.generate_seconds < long_.generate_seconds / 5  # handed on long before the batch ends
    assert arrivals[0][1] < arrivals[1][1] / 5


def test_abandoned_stream_frees_the_engine(engine):
    w = engine.worker
    ps = [{"prompt_id": "long", "prompt": "x", "sampling": {"max_new_tokens": 200, "ignore_eos": True}},
          {"prompt_id": "short", "prompt": "y", "sampling": {"max_new_tokens": 1, "ignore_eos": True}}]
    stream = w.generate_stream(ps, 2)
    assert next(stream).prompt_id == "short"
    stream.close()
    assert w.health()["unfinished_requests"] == 0
    assert len(w.generate(prompts(1), 2)) == 1


def test_prompt_seeds_reproduce_and_do_not_overlap(engine):
    w = engine.worker
    same = [{"prompt_id": f"s{i}", "prompt": "same text ", "seed": 100 + i} for i in range(2)]
    a, b = w.generate(same, 3), w.generate(same, 3)
    assert [s.response_ids for g in a for s in g.samples] == [s.response_ids for g in b for s in g.samples]
    # vLLM seeds a request's n children with s, s+1, ...: prompt seeds 100 and 101 must not share streams
    assert a[0].samples[1].response_ids != a[1].samples[0].response_ids
    assert len({request_seed(s) for s in range(10_000)}) == 10_000


def test_bad_sampling_override_names_the_valid_ones(engine):
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.worker.generate(prompts(1), 2, {"max_tokens": 5})


# ---- weight sync ----------------------------------------------------------------------------------

def _manifest_without(model_dir, name):
    sd = load_checkpoint(model_dir)
    del sd[name]
    return plan(sd, BUCKET_BYTES)


@pytest.mark.parametrize("name", ["model.layers.1.mlp.down_proj.weight", "lm_head.weight"])
def test_name_check_catches_a_missing_weight(engine, tiny_model_dir, name):
    manifest, buckets = _manifest_without(tiny_model_dir, name)
    with pytest.raises(ValueError, match=f"does not send: {name}"):
        engine.worker.init_weight_sync("127.0.0.1", free_port(), 1, 2, manifest, buckets, "gloo", 5.0)


def test_name_check_catches_an_extra_weight_and_a_wrong_shape(engine, tiny_model_dir):
    import torch

    sd = load_checkpoint(tiny_model_dir)
    sd["model.layers.0.mlp.experts.0.up_proj.weight"] = torch.zeros(4, 4)  # e.g. a model mix-up
    sd["model.norm.weight"] = torch.zeros(7)
    manifest, buckets = plan(sd, BUCKET_BYTES)
    with pytest.raises(ValueError) as err:
        engine.worker.init_weight_sync("127.0.0.1", free_port(), 1, 2, manifest, buckets, "gloo", 5.0)
    msg = str(err.value)
    assert "does not have: model.layers.0.mlp.experts.0.up_proj.weight" in msg
    assert "model.norm.weight sent [7] expected [128]" in msg


def test_weight_update_loads_exactly_the_new_weights(engine, sender, tiny_model_dir, tmp_path):
    w = engine.worker
    # The long prompt fills whole KV blocks (128 tokens on CPU), which the prefix cache keeps: without
    # the reset after an update, its next sampling would reuse KV computed by the old weights (error ~3).
    ps = prompts(2) + [{"prompt_id": "long", "prompt": "0123456789abcdef" * 10}]
    before = w.generate(ps, 4)
    old_dir = engine.weights_dir

    info = update(engine, sender, Path(tiny_model_dir), seed=1, scale=0.05, version=1, tmp=tmp_path / "v1")
    assert w.version == 1 and info["version"] == 1
    assert info["bytes"] == manifest_bytes(manifest_of(load_checkpoint(tiny_model_dir)))
    print(f"\ndense update: {info}")

    after = w.generate(ps, 4)  # same prompts: a stale prefix cache would show here
    assert {s.policy_version for g in after for s in g.samples} == {1}
    assert sampler_vs_hf(engine.weights_dir, after, 1.0) < TOL
    assert sampler_vs_hf(old_dir, after, 1.0) > 1e-2  # the distribution did change
    assert sampler_vs_hf(old_dir, before, 1.0) < TOL

    # a second update (same group, next version) and the probe agree with the learner too
    update(engine, sender, Path(tiny_model_dir), seed=2, scale=0.05, version=2, tmp=tmp_path / "v2")
    samples = [s for g in w.generate(ps, 2) for s in g.samples]
    seqs, lens = [s.prompt_ids + s.response_ids for s in samples], [len(s.prompt_ids) for s in samples]
    assert max_abs_diff(w.score_logprobs(seqs, lens), hf_logprobs(engine.weights_dir, seqs, lens)) < TOL
    assert {s.policy_version for s in samples} == {2}


def test_weights_loaded_mid_generation_continue_the_same_requests(engine, sender, tiny_model_dir, tmp_path):
    """Partial rollouts: a weight load between two engine steps of a generation in progress. The
    requests keep the tokens they had (sampled by the old weights, stamped with the old version) and
    go on with the new weights (stamped with the new version); a sample's version is its oldest."""
    w, old_dir, old = engine.worker, engine.weights_dir, engine.worker.version
    forced = {"max_new_tokens": 200, "ignore_eos": True}  # long enough to span the load (EOS not masked)
    sender.prepare(Path(tiny_model_dir), seed=3, scale=0.05, bucket_bytes=BUCKET_BYTES)  # ready to send
    groups: list = []
    gen = threading.Thread(target=lambda: groups.extend(w.generate_stream(prompts(4), 4, forced)))
    steps = w.health()["engine_steps"]
    gen.start()
    deadline = time.monotonic() + 60
    while w.health()["engine_steps"] < steps + 5 and time.monotonic() < deadline:
        time.sleep(0.001)  # a few engine steps in (the whole generation takes 200)
    loaded: list = []
    load = threading.Thread(target=lambda: loaded.append(w.receive_weights(old + 1)))
    load.start()  # holds the engine from before its next step, waiting there for the broadcast
    sender.start_broadcast()
    load.join(timeout=120)
    sender.wait()
    assert loaded and loaded[0]["version"] == old + 1
    engine.weights_dir = write_model_dir(tiny_model_dir, perturbed(load_checkpoint(tiny_model_dir), 3, 0.05),
                                         tmp_path / "mid")
    gen.join(timeout=120)
    assert not gen.is_alive() and len(groups) == 4
    samples = [s for g in groups for s in g.samples]
    for s in samples:
        assert len(s.token_versions) == len(s.response_ids) == 200
        cut = s.token_versions.index(old + 1)  # the load landed mid-generation ...
        assert 0 < cut < 200
        assert s.token_versions == [old] * cut + [old + 1] * (200 - cut)  # ... once, for every request
        assert s.policy_version == old
    # the kept tokens were sampled by the old weights, exactly
    seqs, lens = [s.prompt_ids + s.response_ids for s in samples], [len(s.prompt_ids) for s in samples]
    ref_old = hf_logprobs(old_dir, seqs, lens, 1.0)
    cuts = [s.token_versions.index(old + 1) for s in samples]
    assert max_abs_diff([s.logprobs[:c] for s, c in zip(samples, cuts)], [r[:c] for r, c in zip(ref_old, cuts)]) < TOL
    # the rest by the new ones (their KV prefix is the old weights', so compare with the old weights: far off)
    assert max_abs_diff([s.logprobs[c:] for s, c in zip(samples, cuts)], [r[c:] for r, c in zip(ref_old, cuts)]) > 1e-2
    # the next generation starts from a clean prefix cache and samples the new weights only
    after = w.generate(prompts(2), 2)
    assert {v for g in after for s in g.samples for v in s.token_versions} == {old + 1}
    assert sampler_vs_hf(engine.weights_dir, after, 1.0) < TOL


def test_the_learners_sender_drives_the_worker(engine, tiny_model_dir, tmp_path):
    """The two halves of the protocol written by different people: learner/weight_sync.py's sender
    (manifest from a transformers model, its own bucket plan) -> this worker. Re-initialises the
    worker's group (the previous one is replaced)."""
    w = engine.worker
    new_dir = write_model_dir(tiny_model_dir, perturbed(load_checkpoint(tiny_model_dir), 5, 0.05), tmp_path / "learner")
    learner = WeightSender()
    try:
        manifest, buckets = learner.learner_plan(new_dir, BUCKET_BYTES)
        port = free_port()
        learner.start_learner_connect("127.0.0.1", port, world_size=2)
        w.init_weight_sync("127.0.0.1", port, 1, 2, manifest, buckets, "gloo", 60.0)
        learner.wait()
        learner.start_learner_broadcast()
        w.receive_weights(10)
        learner.wait()
    finally:
        learner.close()
    engine.weights_dir = new_dir
    groups = w.generate(prompts(3), 4)
    assert {s.policy_version for g in groups for s in g.samples} == {10}
    assert sampler_vs_hf(new_dir, groups, 1.0) < TOL


def test_a_colocated_engine_sleeps_and_loads_from_a_weight_file(engine, tiny_model_dir, tmp_path):
    """Colocated mode's transport and lifecycle (cluster/colocation.py) on the real engine: weights
    written to a file in the protocol's file layout load exactly; a sleeping engine refuses to
    generate, probe or load (vLLM's CPU build frees nothing, but the order is the GPU's)."""
    import torch

    from learner.weight_protocol import file_layout, file_view, flatten

    w = engine.worker
    sd = perturbed(load_checkpoint(tiny_model_dir), 11, 0.05)
    manifest, buckets = plan(sd, BUCKET_BYTES)
    assert w.init_weight_file(manifest, buckets)["buckets"] == len(buckets) > 1
    offsets, size = file_layout(manifest, buckets)
    path = tmp_path / "node.weights"  # the learner's writer does this in /dev/shm
    path.write_bytes(bytes(size))
    buf = torch.from_file(str(path), shared=True, size=size, dtype=torch.uint8)
    for bucket, offset in zip(buckets, offsets):
        file_view(buf, manifest, bucket, offset).copy_(flatten([sd[manifest[i][0]] for i in bucket]))

    w.sleep()
    with pytest.raises(RuntimeError, match="generate while the engine sleeps"):
        w.generate(prompts(1), 2)
    with pytest.raises(RuntimeError, match="weights loaded into a sleeping engine"):
        w.receive_weights_file(str(path), 11)
    w.wake_up(["weights"])
    assert w.receive_weights_file(str(path), 11)["bytes"] == size
    with pytest.raises(RuntimeError, match=r"probe while the engine sleeps \(kv_cache\)"):
        w.score_logprobs([[1, 2, 3]], [1])
    w.wake_up(["kv_cache"])
    engine.weights_dir = write_model_dir(tiny_model_dir, sd, tmp_path / "ref")
    groups = w.generate(prompts(3), 4)
    assert {s.policy_version for g in groups for s in g.samples} == {11}
    assert sampler_vs_hf(engine.weights_dir, groups, 1.0) < TOL
    assert w.events()[-5:] == ["sleep", "wake weights", "load v11", "wake kv_cache", "generate"]
