"""The rollout worker: one in-process vLLM engine that samples grouped completions and loads new weights.

A plain class (the cluster wraps it with `ray.remote`); it also runs in tests without Ray.

Logprobs. The engine runs with `logprobs_mode="processed_logprobs"`, so `Sample.logprobs[i]` is the
log-probability of `response_ids[i]` under the distribution the token was actually drawn from:
`log_softmax(logits / T)` (T = sampling temperature). The learner reproduces it by dividing its
logits by the same T. With top_p < 1 or top_k > 0 the processed distribution is also truncated and
renormalised, which the learner does not reproduce: keep top_p=1, top_k=-1 when the learner compares
against these logprobs (importance ratios, truncated IS). With T = 0 (greedy; vLLM then requires
n = 1) the logits are left untempered, so the logprobs are those of T = 1.

`score_logprobs` (the weight-sync probe) returns `log_softmax(logits / T)` of given tokens, by
default at the rollout's sampling temperature, like the learner's probe.

Streaming. `generate_stream` drives the engine step by step (the same loop `LLM.generate` runs) and
yields a prompt's Group as soon as its n completions are finished, so scoring starts while other
prompts are still generating. In a Ray actor, call it with `.options(num_returns="streaming")`.

Multi-turn (`rollout.env`): generate_stream runs actors/multi_turn.py's loop instead — one engine
request per model turn, an environment's observation between turns — and yields the same Groups.

Versions and partial rollouts. The engine labels every sampled token with the weight version it
was sampled by (vLLM's weight-version spans); `Sample.token_versions` keeps that label per response
token and `Sample.policy_version` is the oldest of them. Every engine use holds `_engine_lock` one
engine step at a time, and a weight load waiting for it goes before the generation loop's next
step. With one call at a time (the default actor) a push therefore reaches a worker after its
generation; on an actor with max_concurrency >= 2 (`rollout.partial_rollouts`) `receive_weights`
runs between two engine steps of a generation in progress: the requests keep their tokens (and
their KV cache, computed by the old weights) and continue with the new weights, and the tokens
sampled from then on carry the new version. Generations and probes still run one at a time.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import threading
import time
from typing import Any, Iterator, Optional

from actors.config import RolloutConfig
from actors.engine_args import cpu_placement, llm_kwargs
from actors.engine_io import engine_input, finish_reason, request_seed, sampled_logprobs, taken_routing, token_versions
from actors.types import Group, Sample

# Per-call / per-prompt sampling overrides: SamplingConfig's fields, plus these SamplingParams fields.
_EXTRA_SAMPLING_KEYS = ("ignore_eos", "stop_token_ids", "seed")


class RolloutWorker:
    def __init__(self, model_path: str, cfg: RolloutConfig, dtype: str, worker_index: int = 0, device: str = "cpu",
                 colocated: bool = False):
        self.model_path, self.cfg, self.worker_index, self.device = model_path, cfg, worker_index, device
        self._version = 0
        self._weight_sync = False
        # colocated (cluster.colocate): the engine sleeps while the learner beside it computes; what is
        # asleep ("weights", "kv_cache") and the last engine calls, in order, for the driver to check
        self.colocated = colocated
        self._asleep: set[str] = set()
        self._events: collections.deque = collections.deque(maxlen=256)
        # One engine step (or weight load, or probe) at a time; a waiting load goes before the next step.
        self._engine_lock = threading.Condition()
        self._loads_waiting = 0
        self._engine_steps = 0  # since the engine started: a generation's progress, in health()
        self._generation_lock = threading.Lock()  # one generation or probe at a time
        self._prefix_cache_stale = False  # weights changed while requests held cached blocks
        # In-process engine (no engine-core subprocess): ~2 s init instead of ~20 s, same speed, one
        # process per Ray actor. Must be set before vLLM reads it.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.threads, self.cores = (0, []) if device != "cpu" else cpu_placement(cfg, worker_index)
        if self.cores:
            # In-process, VLLM_CPU_OMP_THREADS_BIND does not confine the engine: the process affinity does.
            os.sched_setaffinity(0, self.cores)
        import torch

        if self.threads:
            # vLLM drops torch to 1 thread for serving unless OMP_NUM_THREADS is set, and its CPU worker
            # disables torch.set_num_threads afterwards: both must happen before LLM().
            os.environ["OMP_NUM_THREADS"] = str(self.threads)
            torch.set_num_threads(self.threads)
        if device == "cpu" and cfg.enforce_eager:
            # The model is not compiled (eager), but vLLM still torch.compiles small helpers on first use
            # (the sampled token's logprob rank): 2-3.5 s of each engine's start-up on CPU, to fuse a
            # comparison and a sum. Run them eagerly (same integers). GPU and compiled engines untouched.
            import torch._dynamo

            torch._dynamo.config.disable = True
        from vllm import LLM

        self.llm = LLM(**llm_kwargs(model_path, cfg, dtype, worker_index, device, colocated))
        # MoE: per-request expert counts (load telemetry) and, when recorded, routing (actors/routing_capture.py)
        self.moe = self.llm.collective_rpc("routing_init", args=(cfg.record_routed_experts,))[0]
        self.llm.llm_engine.set_weight_version(str(self._version))  # the label on every sampled token
        self.tokenizer = self.llm.get_tokenizer()
        self.multi_turn = None
        if cfg.env.name:  # multi-turn rollouts with an environment (actors/multi_turn.py)
            from actors.multi_turn import MultiTurnRunner

            self.multi_turn = MultiTurnRunner(self)
        self._warm_up()

    def _warm_up(self) -> None:
        """One tiny sampled request with logprobs: the engine's first such request pays one-time
        set-up (seconds on CPU) that would otherwise land in the first evaluation or step."""
        from vllm import SamplingParams

        eos = self.tokenizer.eos_token_id
        prompt = {"prompt_token_ids": [eos if eos is not None else 0] * 4}
        self.llm.generate([prompt], SamplingParams(n=2, max_tokens=2, logprobs=0, flat_logprobs=True, seed=0,
                                                  ignore_eos=True, detokenize=False), use_tqdm=False)

    # ---- generation -------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Policy version of the weights the engine holds (0 = the checkpoint it was started from)."""
        return self._version

    def generate(self, prompts: list[dict[str, Any]], n: int, sampling: Optional[dict[str, Any]] = None, *,
                 version_override: Optional[int] = None) -> list[Group]:
        """n completions per prompt; one Group per prompt, in prompt order. See generate_stream."""
        order = {p["prompt_id"]: i for i, p in enumerate(prompts)}
        groups = list(self.generate_stream(prompts, n, sampling, version_override=version_override))
        return sorted(groups, key=lambda g: order[g.prompt_id])

    def generate_stream(self, prompts: list[dict[str, Any]], n: int, sampling: Optional[dict[str, Any]] = None, *,
                        version_override: Optional[int] = None) -> Iterator[Group]:
        """Yield each prompt's Group as soon as all n of its completions have finished.

        prompts: dicts with `prompt_id`, `prompt` (text) or `prompt_ids` (token ids; preferred when
        both are given), optional `meta` (copied into each sample), optional `seed` (per-prompt
        sampling seed, for reproducible runs) and optional `sampling` (per-prompt overrides).
        sampling: overrides of SamplingConfig fields (temperature, top_p, top_k, max_new_tokens,
        stop) and of the SamplingParams fields in _EXTRA_SAMPLING_KEYS, for this call.
        version_override: the policy version stamped on every token (default: the engine's label of the
        weights that sampled each token).
        Each Group's generate_seconds is the time from submission until its last completion finished.
        """
        if sampling is not None and not isinstance(sampling, dict):
            raise TypeError(f"sampling must be a dict of overrides or None, got {type(sampling).__name__} "
                            f"(version_override is keyword-only)")
        version_override = None if version_override is None else int(version_override)
        engine = self.llm.llm_engine
        if len({p["prompt_id"] for p in prompts}) != len(prompts):
            raise ValueError("prompt_id must be unique within one generate call")
        inputs = [engine_input(p) for p in prompts]
        params = [self._sampling_params(n, sampling, p) for p in prompts]
        if self.multi_turn is not None:
            yield from self._generate_multi_turn(prompts, n, sampling, version_override)
            return
        with self._generation_lock:
            with self._engine():
                self._begin_generation()
                t0 = time.perf_counter()
                # enqueue renders and adds the requests exactly as LLM.generate does; the loop below is the
                # one LLM.generate runs, except that finished groups leave it as soon as they are done.
                request_ids = self.llm.enqueue(inputs, params, use_tqdm=False)
            # enqueue returns internal ids "<external>-<random suffix>"; outputs carry the external id.
            pending = {rid.split("-", 1)[0]: (p, sp) for rid, p, sp in zip(request_ids, prompts, params)}
            internal = {rid.split("-", 1)[0]: rid for rid in request_ids}
            try:
                while (outs := self._engine_step()) is not None:
                    for out in outs:
                        if out.finished:
                            group = self._group(*pending.pop(out.request_id), out, version_override,
                                                time.perf_counter() - t0)
                            if self.moe:
                                with self._engine():
                                    self._attach_routing(group, internal[out.request_id], n)
                            yield group
            finally:
                if pending:  # the consumer stopped early (or a step failed): free the engine
                    with self._engine():
                        engine.abort_request(list(pending))
        if pending:
            raise RuntimeError(f"engine finished without outputs for prompts {[p['prompt_id'] for p, _ in pending.values()]}")

    def _generate_multi_turn(self, prompts: list[dict[str, Any]], n: int, sampling: Optional[dict[str, Any]],
                             version_override: Optional[int]) -> Iterator[Group]:
        with self._generation_lock:
            with self._engine():
                self._begin_generation()
            yield from self.multi_turn.run(prompts, n, sampling, version_override)

    def _begin_generation(self) -> None:
        """Before a generation's first request (holding the engine): nothing left from another call."""
        self._awake("generate")
        if self.llm.llm_engine.has_unfinished_requests():
            raise RuntimeError("RolloutWorker runs one generation at a time; the engine still has requests")
        self._reset_stale_prefix_cache()
        if self.moe:
            self.llm.collective_rpc("routing_reset")  # what an aborted call left behind

    @contextlib.contextmanager
    def _engine(self, load: bool = False) -> Iterator[None]:
        """Hold the engine for one step (or, load=True, for a weight load / group set-up, which goes
        before the generation loop's next step)."""
        with self._engine_lock:
            if load:
                self._loads_waiting += 1
        try:
            with self._engine_lock:
                if not load:
                    self._engine_lock.wait_for(lambda: self._loads_waiting == 0)
                self._omp_threads()
                yield
        finally:
            if load:
                with self._engine_lock:
                    self._loads_waiting -= 1
                    self._engine_lock.notify_all()

    def _engine_step(self) -> Optional[list]:
        """One engine step (a weight load may run between two: partial rollouts); None when the engine
        has no request left."""
        with self._engine():
            if not self.llm.llm_engine.has_unfinished_requests():
                return None
            outs = self.llm.llm_engine.step()
            self._engine_steps += 1
            return outs

    def _omp_threads(self) -> None:
        """OpenMP's thread count is per calling thread, and an actor with max_concurrency >= 2 runs calls
        on pool threads that start with Ray's OMP_NUM_THREADS=1; vLLM's CPU attention refuses to run
        with fewer threads than its metadata was built for. (vLLM replaced torch.set_num_threads with a
        no-op after its thread binding; the binding is the process's, the count is this thread's.)"""
        import torch

        if self.threads and torch.get_num_threads() != self.threads:
            torch._C._set_num_threads(self.threads)

    def _reset_stale_prefix_cache(self) -> None:
        """Blocks cached before a weight load that happened mid-generation must not serve new requests."""
        if self._prefix_cache_stale and self.llm.reset_prefix_cache():
            self._prefix_cache_stale = False

    def completion_texts(self, completions: list, params: Any) -> list[str]:
        """The completions' texts: vLLM's when it detokenized them (stop strings need it), else the
        token ids decoded here in one batch, as vLLM's detokenizer would have (special tokens skipped)."""
        if params.detokenize:
            return [c.text for c in completions]
        return self.tokenizer.batch_decode([list(c.token_ids) for c in completions],
                                           skip_special_tokens=params.skip_special_tokens)

    def _group(self, prompt: dict[str, Any], params: Any, out: Any, version_override: Optional[int],
               seconds: float) -> Group:
        prompt_ids = list(out.prompt_token_ids)
        text = prompt.get("prompt")
        if text is None:
            text = out.prompt if out.prompt is not None else self.tokenizer.decode(prompt_ids)
        meta = prompt.get("meta") or {}
        samples = []
        completions = sorted(out.outputs, key=lambda c: c.index)
        for c, response in zip(completions, self.completion_texts(completions, params)):
            response_ids = list(c.token_ids)
            versions = ([version_override] * len(response_ids) if version_override is not None
                        else token_versions(c.weight_versions, len(response_ids), self._version))
            samples.append(Sample(
                prompt_id=prompt["prompt_id"], prompt=text, prompt_ids=list(prompt_ids),
                response=response, response_ids=response_ids, logprobs=sampled_logprobs(c.logprobs, response_ids),
                finish_reason=finish_reason(c.finish_reason),
                policy_version=min(versions, default=self._version if version_override is None else version_override),
                token_versions=versions, meta=dict(meta),
            ))
        return Group(prompt_id=prompt["prompt_id"], samples=samples, generate_seconds=seconds)

    def _attach_routing(self, group: Group, request_id: str, n: int) -> None:
        """Expert counts of the group's requests (summed) and, when recorded, each sample's routing."""
        import numpy as np

        ids = [request_id] if n == 1 else [f"{i}_{request_id}" for i in range(n)]  # vLLM's fan-out of n
        lengths = [len(s.prompt_ids) + len(s.response_ids) - 1 for s in group.samples]
        taken = self.llm.collective_rpc("routing_take", args=(ids, lengths))[0]
        group.expert_counts = np.sum([t["counts"] for t in taken], axis=0).tolist()
        for sample, t in zip(group.samples, taken):
            sample.routed_experts = taken_routing(t)

    def _sampling_params(self, n: int, call: Optional[dict[str, Any]], prompt: dict[str, Any]):
        from vllm import SamplingParams

        knobs = dataclasses.asdict(self.cfg.sampling)
        extra: dict[str, Any] = {}
        for overrides in (call or {}, prompt.get("sampling") or {}):
            for k, v in overrides.items():
                if k in knobs:
                    knobs[k] = v
                elif k in _EXTRA_SAMPLING_KEYS:
                    extra[k] = v
                else:
                    valid = sorted([*knobs, *_EXTRA_SAMPLING_KEYS])
                    raise ValueError(f"unknown sampling override {k!r}; valid: {', '.join(valid)}")
        if prompt.get("seed") is not None:
            extra["seed"] = prompt["seed"]
        if extra.get("seed") is not None:
            extra["seed"] = request_seed(int(extra["seed"]))
        stop = list(knobs["stop"]) or None
        return SamplingParams(
            n=n,
            temperature=knobs["temperature"],
            top_p=knobs["top_p"],
            top_k=knobs["top_k"],
            max_tokens=knobs["max_new_tokens"],
            min_tokens=knobs["min_new_tokens"],
            stop=stop,
            include_stop_str_in_output=True,  # response text == decode(response_ids), which the learner trains on
            # vLLM detokenizes every sequence token by token, and decodes each sampled token again for its
            # logprob entry: ~15% of a round of short completions on CPU. Only stop strings need that
            # text while sampling; otherwise completion_texts decodes each finished group once.
            detokenize=stop is not None,
            logprobs=0,  # the sampled token's logprob only
            flat_logprobs=True,  # a few flat lists per sequence instead of one dict per token
            **extra,
        )

    # ---- sync verification probe ----------------------------------------------------------------
    def score_logprobs(self, sequences: list[list[int]], prompt_lengths: list[int],
                       temperature: Optional[float] = None) -> list[list[float]]:
        """log_softmax(logits / T) of sequences[i][prompt_lengths[i]:] given their prefixes, under the
        current weights — the learner's probe_logprobs computes the same numbers.

        temperature: None = the rollout's sampling temperature (what the learner's probe uses);
        T = 1 (and T = 0, greedy, which vLLM leaves untempered): prompt logprobs of one request per
        sequence — vLLM computes them from the raw logits whatever the request's temperature. Other
        T: prompt logprobs cannot be tempered, so each scored token becomes a one-token request on its
        prefix whose processed (tempered) logprob of exactly that token is read back
        (`logprob_token_ids`): one request per token, for a small probe only.
        """
        from vllm import SamplingParams

        if len(sequences) != len(prompt_lengths):
            raise ValueError("score_logprobs: one prompt length per sequence")
        for seq, k in zip(sequences, prompt_lengths):
            if not 1 <= k <= len(seq):
                raise ValueError(f"score_logprobs: prompt length {k} outside [1, {len(seq)}]")
        t = self.cfg.sampling.temperature if temperature is None else float(temperature)
        with self._generation_lock, self._engine(load=True):  # never inside a generation's engine loop
            self._awake("probe")
            self._reset_stale_prefix_cache()
            return self._score(sequences, prompt_lengths, t)

    def _score(self, sequences: list[list[int]], prompt_lengths: list[int], t: float) -> list[list[float]]:
        from vllm import SamplingParams

        if t in (0.0, 1.0):
            params = SamplingParams(max_tokens=1, prompt_logprobs=0, flat_logprobs=True, detokenize=False)
            outs = self.llm.generate([{"prompt_token_ids": list(s)} for s in sequences], params, use_tqdm=False)
            # prompt_logprobs[j] = {seq[j]: logprob of seq[j] given seq[:j]} (None at j = 0)
            return [[out.prompt_logprobs[j][seq[j]].logprob for j in range(k, len(seq))]
                    for seq, k, out in zip(sequences, prompt_lengths, outs)]
        inputs, params = [], []
        for seq, k in zip(sequences, prompt_lengths):
            for j in range(k, len(seq)):
                inputs.append({"prompt_token_ids": list(seq[:j])})
                params.append(SamplingParams(max_tokens=1, temperature=t, top_p=1.0, top_k=0,
                                             logprob_token_ids=[seq[j]], detokenize=False))
        outs = iter(self.llm.generate(inputs, params, use_tqdm=False))
        return [[next(outs).outputs[0].logprobs[0][seq[j]].logprob for j in range(k, len(seq))]
                for seq, k in zip(sequences, prompt_lengths)]

    # ---- weights ----------------------------------------------------------------------------------
    def init_weight_sync(self, host: str, port: int, rank_offset: int, world_size: int,
                         manifest: list, buckets: list, backend: str = "gloo", timeout_s: float = 120.0) -> dict[str, Any]:
        """Check the manifest against the engine (both ways, shapes too) and join the weight-sync group.

        Protocol: learner/weight_protocol.py. Every TP rank of this engine joins as rank_offset + tp_rank.
        """
        with self._engine(load=True):
            infos = self.llm.collective_rpc(
                "init_weight_sync", args=(host, port, rank_offset, world_size, manifest, buckets, backend, timeout_s))
        self._weight_sync = True
        return infos[0]

    def receive_weights(self, version: int) -> dict[str, float]:
        """Receive the learner's broadcast, load it in place and become `version`. Collective with the sender."""
        return self._load("receive_weights", (int(version),), version)

    def init_weight_file(self, manifest: list, buckets: list) -> dict[str, Any]:
        """Colocated: check the manifest against the engine; updates then come as a file on this node
        (`receive_weights_file`), not over the weight-sync group."""
        with self._engine(load=True):
            infos = self.llm.collective_rpc("init_weight_file", args=(manifest, buckets))
        self._weight_sync = True
        return infos[0]

    def receive_weights_file(self, path: str, version: int) -> dict[str, float]:
        """Colocated: load the weights the learner rank on this node wrote to `path` (shared memory)."""
        return self._load("receive_weights_file", (path, int(version)), version)

    def _load(self, method: str, args: tuple, version: int) -> dict[str, float]:
        t0 = time.perf_counter()
        with self._engine(load=True):  # between two engine steps when a generation is in progress
            if "weights" in self._asleep:
                raise RuntimeError(f"rollout[{self.worker_index}]: weights loaded into a sleeping engine "
                                   f"(colocated: wake_up(['weights']) first)")
            stats = self.llm.collective_rpc(method, args=args)
            self._events.append(f"load v{int(version)}")
            self._version = int(version)
            self.llm.llm_engine.set_weight_version(str(self._version))
            # cached KV blocks were computed by the old weights; while requests still hold blocks the
            # reset must wait for the end of their generation
            self._prefix_cache_stale = not self.llm.reset_prefix_cache()
        return {
            "version": int(version),
            "seconds": time.perf_counter() - t0,
            "recv_seconds": max(s["recv_seconds"] for s in stats),
            "load_seconds": max(s["load_seconds"] for s in stats),
            "bytes": stats[0]["bytes"],
        }

    # ---- colocation -------------------------------------------------------------------------------
    def sleep(self) -> None:
        """Colocated: give the device to the learner. GPU: vLLM's sleep level 1 (weights copied to host
        RAM, KV cache dropped). CPU: vLLM's build has no sleep mode, so nothing is freed; the state and
        its checks (no generation, probe or load while asleep) are the same."""
        with self._engine(load=True):
            if self.device == "cuda":  # GPU-only: vLLM sleep mode
                self.llm.sleep(level=1)
            self._asleep = {"weights", "kv_cache"}
            self._events.append("sleep")

    def wake_up(self, tags: list[str]) -> None:
        """Colocated: wake `tags` ("weights" before a load, "kv_cache" after it: the load's buffers and
        the KV cache are never on the device at once)."""
        with self._engine(load=True):
            tags = [t for t in tags if t in self._asleep]  # a new (replacement) engine is awake already
            if not tags:
                return
            if self.device == "cuda":  # GPU-only: vLLM sleep mode
                self.llm.wake_up(tags=tags)
            self._asleep -= set(tags)
            self._events.append("wake " + "+".join(tags))

    def events(self) -> list[str]:
        """The last engine calls in order (generate, probe, load vN, sleep, wake ...)."""
        return list(self._events)

    def _awake(self, what: str) -> None:
        if self._asleep:
            raise RuntimeError(f"rollout[{self.worker_index}]: {what} while the engine sleeps "
                               f"({', '.join(sorted(self._asleep))}); colocated: wake_up first")
        self._events.append(what)

    # ---- lifecycle --------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        if self.llm is None:
            return {"worker_index": self.worker_index, "alive": False}
        return {
            "alive": True,
            "worker_index": self.worker_index,
            "version": self._version,
            "device": self.device,
            "model": self.model_path,
            "pid": os.getpid(),
            "threads": self.threads,
            "cores": list(self.cores),
            "weight_sync": self._weight_sync,
            "unfinished_requests": self.llm.llm_engine.get_num_unfinished_requests(),
            "engine_steps": self._engine_steps,
            "env_stuck_threads": self.multi_turn.stuck_threads() if self.multi_turn is not None else 0,
        }

    def shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        if self._weight_sync:
            with self._engine(load=True):
                llm.collective_rpc("close_weight_sync")
            self._weight_sync = False
        llm.llm_engine.engine_core.shutdown()
        self.llm = None
        # In-process engine: its distributed state lives in this process; clear it so another engine
        # (a test's next module, a restarted worker) can start here.
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
