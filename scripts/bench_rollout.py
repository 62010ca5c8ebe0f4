"""Benchmark the rollout worker: its overhead over bare vLLM, and the weight-update time vs model size.

1. Throughput. On ONE engine (the worker's own `vllm.LLM`), with the same prompts and the same
   sampling parameters (n completions of forced length, logprobs of the sampled tokens), alternate
   (a) `RolloutWorker.generate_stream` consumed to the end (building Groups/Samples, their texts
   decoded once per finished group) and (b) bare `LLM.generate` (vLLM's default: it detokenizes while
   sampling), `--reps` times each; report median tokens/s and their ratio.
   Floor: rollout >= 0.9 x bare.
2. Weight update. For dense tiny Qwen3s of ~0.3M, ~10M and ~60M parameters (and the tiny MoE, which
   pays the CPU MoE reload fix), a stand-in learner rank 0 broadcasts a perturbed checkpoint over
   gloo; report the median of `RolloutWorker.receive_weights` (receive + in-place load + prefix-cache
   reset) and its split. The sender's buckets are built before the clock starts.
3. The weight-sync probe (`score_logprobs` of 4 sampled sequences) at T = 1 and T = 0.7.

    flock /tmp/relayrl-heavy.lock .venv/bin/python scripts/bench_rollout.py [--out PATH]

Writes JSON to --out and prints a markdown table. Needs the package installed (`pip install -e .`);
the stand-in learner rank 0 is learner/sender_process.py, the one the integration tests use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> TinyModelSpec kwargs. Dense sizes for the update-time curve; "moe" is the tiny Qwen3-MoE.
MODELS = {
    "tiny": {},
    "10m": dict(hidden_size=256, num_layers=12, num_heads=4, num_kv_heads=2, intermediate_size=768),
    "60m": dict(hidden_size=512, num_layers=16, num_heads=8, num_kv_heads=4, intermediate_size=2048),
    "moe": dict(moe=True),
}


def build(name: str, cache: Path) -> Path:
    from cluster.tiny_model import TinyModelSpec, make_tiny_model

    return make_tiny_model(cache / name, TinyModelSpec(**MODELS[name]))


def bench_throughput(worker, args) -> dict:
    from vllm import SamplingParams

    prompts = [{"prompt_id": f"p{i}", "prompt": f"Question {i}: what is {i} * {i + 3}? Answer: "}
               for i in range(args.prompts)]
    sampling = {"max_new_tokens": args.max_new, "ignore_eos": True, "temperature": 1.0}
    bare_params = SamplingParams(n=args.n, temperature=1.0, max_tokens=args.max_new, ignore_eos=True,
                                 logprobs=0, flat_logprobs=True, include_stop_str_in_output=True)
    texts = [p["prompt"] for p in prompts]

    def rollout() -> int:
        return sum(s.response_length for g in worker.generate_stream(prompts, args.n, sampling) for s in g.samples)

    def bare() -> int:
        return sum(len(c.token_ids) for o in worker.llm.generate(texts, bare_params, use_tqdm=False) for c in o.outputs)

    rollout(), bare()  # warm-up: the first logprobs request pays a one-time ~2 s
    runs: dict[str, list[float]] = {"rollout": [], "bare": []}
    for rep in range(args.reps):
        order = [("rollout", rollout), ("bare", bare)]
        for name, fn in order if rep % 2 == 0 else order[::-1]:  # alternate who goes first
            t = time.perf_counter()
            tokens = fn()
            runs[name].append(tokens / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in runs.items()}
    # The weight-sync probe: score 4 sequences (prompt + max_new response tokens). T = 1 is one
    # prompt-logprobs request per sequence; T != 1 is one request per scored token.
    samples = [g.samples[0] for g in worker.generate(prompts[:4], 1, sampling)]
    seqs, lens = [s.prompt_ids + s.response_ids for s in samples], [len(s.prompt_ids) for s in samples]
    probe = {}
    for t in (1.0, 0.7):
        t0 = time.perf_counter()
        worker.score_logprobs(seqs, lens, temperature=t)
        probe[f"T={t}"] = time.perf_counter() - t0
    return {"tokens_per_rep": args.prompts * args.n * args.max_new, "rollout_tok_s": med["rollout"],
            "bare_tok_s": med["bare"], "ratio": med["rollout"] / med["bare"], "runs": runs,
            "probe_seconds": probe, "probe_tokens": sum(len(s) - k for s, k in zip(seqs, lens))}


def bench_update(worker, model_dir: Path, args) -> dict:
    from learner.sender_process import WeightSender, free_port, load_checkpoint, plan

    bucket_bytes = int(args.bucket_mb * (1 << 20))
    manifest, buckets = plan(load_checkpoint(model_dir), bucket_bytes)
    sender = WeightSender()
    try:
        port = free_port()
        sender.start_init("127.0.0.1", port, world_size=2, timeout_s=120)
        worker.init_weight_sync("127.0.0.1", port, 1, 2, manifest, buckets, "gloo", 120.0)
        sender.wait()
        infos = []
        for version in range(1, args.update_reps + 2):  # the first update is a warm-up
            sender.prepare(model_dir, seed=version, scale=0.02, bucket_bytes=bucket_bytes)
            sender.start_broadcast()
            info = worker.receive_weights(version)
            sender.wait()
            if version > 1:
                infos.append(info)
    finally:
        sender.close()
    nbytes = infos[0]["bytes"]
    sec = statistics.median(i["seconds"] for i in infos)
    return {"bytes": nbytes, "buckets": len(buckets), "seconds": sec, "min_seconds": min(i["seconds"] for i in infos),
            "recv_seconds": statistics.median(i["recv_seconds"] for i in infos),
            "load_seconds": statistics.median(i["load_seconds"] for i in infos),
            "MBps": nbytes / sec / 1e6, "runs": [i["seconds"] for i in infos]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "scripts/results/bench_rollout.json"))
    ap.add_argument("--cache", default="/tmp/relayrl-bench-models", help="where the tiny models are built (reused)")
    ap.add_argument("--throughput-models", default="tiny,10m")
    ap.add_argument("--update-models", default="tiny,10m,60m,moe")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--update-reps", type=int, default=5)
    ap.add_argument("--bucket-mb", type=float, default=64.0)
    ap.add_argument("--threads", type=int, default=0, help="rollout.threads_per_worker (0 = all allowed cores)")
    args = ap.parse_args()

    from actors.config import RolloutConfig
    from actors.rollout import RolloutWorker
    from cluster.tiny_model import num_parameters

    tput, upd = args.throughput_models.split(","), args.update_models.split(",")
    results: dict = {"settings": vars(args), "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                     "throughput": {}, "weight_update": {}}
    for name in [m for m in MODELS if m in tput or m in upd]:
        model_dir = build(name, Path(args.cache))
        cfg = RolloutConfig(max_model_len=512, kv_cache_gib=0.5, threads_per_worker=args.threads)
        t = time.perf_counter()
        worker = RolloutWorker(str(model_dir), cfg, "float32")
        init_s = time.perf_counter() - t
        params = num_parameters(model_dir)
        try:
            if name in tput:
                results["throughput"][name] = {"params": params, **bench_throughput(worker, args)}
            if name in upd:
                results["weight_update"][name] = {"params": params, "engine_init_s": init_s,
                                                  **bench_update(worker, model_dir, args)}
        finally:
            worker.shutdown()
        print(f"[bench] {name} done", file=sys.stderr, flush=True)

    results["floor_ok"] = all(r["ratio"] >= 0.9 for r in results["throughput"].values())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))

    print(f"\n### rollout worker vs bare LLM.generate ({args.prompts} prompts x n={args.n}, "
          f"{args.max_new} forced tokens, fp32, median of {args.reps})\n")
    print("| model | params | rollout tok/s | bare tok/s | ratio | probe s (T=1 / T=0.7) |\n|---|---:|---:|---:|---:|---:|")
    for name, r in results["throughput"].items():
        p = r["probe_seconds"]
        print(f"| {name} | {r['params'] / 1e6:.2f}M | {r['rollout_tok_s']:,.0f} | {r['bare_tok_s']:,.0f} | {r['ratio']:.3f} "
              f"| {p['T=1.0']:.3f} / {p['T=0.7']:.3f} ({r['probe_tokens']} tokens) |")
    print(f"\n### weight update (gloo broadcast + in-place reload, median of {args.update_reps})\n")
    print("| model | params | MB | buckets | update s | min s | receive s | load s | MB/s |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results["weight_update"].items():
        print(f"| {name} | {r['params'] / 1e6:.2f}M | {r['bytes'] / 1e6:.1f} | {r['buckets']} | {r['seconds']:.3f} | "
              f"{r['min_seconds']:.3f} | {r['recv_seconds']:.3f} | {r['load_seconds']:.3f} | {r['MBps']:.0f} |")
    print(f"\nfloor (rollout >= 0.9 x bare): {'OK' if results['floor_ok'] else 'FAILED'}; wrote {out}")


if __name__ == "__main__":
    main()
