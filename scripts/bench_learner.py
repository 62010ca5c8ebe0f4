"""Benchmark the learner: training throughput against bare PyTorch, and the weight broadcast.

1. Training tokens/s of `LearnerRank.train_step` (world size 1, DeepSpeed ZeRO-2 and ZeRO-3, fp32,
   PPO-clip token-mean, one mini-batch) against a bare PyTorch loop on the same model, the same
   micro-batches and the same number of tokens: forward, log_softmax/gather, advantage-weighted
   token-mean loss, backward, clip, torch AdamW. Medians over repeats after a warm-up. The floor the
   learner must hold is 0.8x bare with its default engine (ZeRO-2). ZeRO-3 is reported too; at world
   size 1 it pays DeepSpeed's per-module parameter fetch/release in every forward and backward
   with nothing to shard, so it sits lower by design (measured ~0.7-0.85x).
2. Weight broadcast by model size (~0.3M, ~10M, ~60M parameters): a world-size-1 learner rank sends
   every bucket of the protocol (learner/weight_protocol.py) to a plain receiver process (rank 1 of the
   gloo group, no vLLM engine), which checks what it got. Seconds per full update and MB/s.

Run (takes a few minutes; it is a heavy job, so take the machine's lock):
    flock /tmp/relayrl-heavy.lock .venv/bin/python scripts/bench_learner.py
Writes JSON to --out and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cluster.tiny_model import TinyModelSpec, make_tiny_model, num_parameters
from learner.batch import LearnerBatch
from learner.config import AlgorithmConfig, LearnerConfig, OptimizerConfig

SIZES = {  # name -> spec (parameter counts printed by the run)
    "0.3M": TinyModelSpec(),
    "10M": TinyModelSpec(hidden_size=384, num_layers=6, num_heads=6, num_kv_heads=2, intermediate_size=1024),
    "60M": TinyModelSpec(hidden_size=768, num_layers=10, num_heads=12, num_kv_heads=4, intermediate_size=2048),
}


def make_batch(n: int, prompt: int, response: tuple[int, int], seed: int = 0) -> LearnerBatch:
    g = torch.Generator().manual_seed(seed)
    ids, plens = [], []
    for _ in range(n):
        r = int(torch.randint(response[0], response[1] + 1, (1,), generator=g))
        ids.append(torch.randint(10, 100, (prompt + r,), generator=g))
        plens.append(prompt)
    adv = torch.randn(n, generator=g)
    return LearnerBatch(ids, plens, [torch.full((len(x) - prompt,), -4.6) for x in ids], adv, torch.zeros(n),
                        torch.arange(n), torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.bool))


# ---- 1. training throughput --------------------------------------------------------------------

def bare_step(model, opt, batch: LearnerBatch, plan: list[list[int]], temperature: float, clip: float) -> None:
    """The floor: what one optimizer step on these micro-batches costs in plain PyTorch."""
    from learner.logprobs import collate

    total = sum(batch.response_lengths())
    for mb_idx in plan:
        mb = collate(batch.input_ids, batch.prompt_lengths, mb_idx)
        logits = model(input_ids=mb.input_ids, use_cache=False).logits
        V = logits.shape[-1]
        sel = logits.gather(1, mb.positions[..., None].expand(-1, -1, V)).float() / temperature
        lp = torch.log_softmax(sel, -1).gather(-1, mb.targets[..., None]).squeeze(-1)
        adv = batch.advantages[mb.index][:, None]
        loss = torch.where(mb.response_mask, -adv * lp, torch.zeros_like(lp)).sum() / total
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_training(model_dir: str, zero_stages: list[int], repeats: int, n_seqs: int, threads: int) -> dict:
    from transformers import AutoModelForCausalLM

    from learner.packing import pack_by_tokens
    from learner.rank import LearnerRank, free_port

    batch = make_batch(n_seqs, prompt=32, response=(64, 160))
    tokens = sum(int(x.numel()) for x in batch.input_ids)
    budget = 1024  # several micro-batches per step, as in real runs
    temperature = 1.0
    torch.set_num_threads(threads)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    lengths = [int(x.numel()) for x in batch.input_ids]
    plan = pack_by_tokens(lengths, budget)
    bare = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        bare_step(model, opt, batch, plan, temperature, 1.0)
        if i:  # first step warms up allocator and kernels
            bare.append(time.perf_counter() - t0)
    del model, opt
    out = {"tokens_per_step": tokens, "micro_batch_tokens": budget, "micro_batches": len(plan),
           "bare_s": statistics.median(bare), "bare_tokens_per_s": tokens / statistics.median(bare), "learner": {}}

    for stage in zero_stages:
        cfg = LearnerConfig(zero_stage=stage, dtype="float32", micro_batch_tokens=budget, threads_per_rank=threads,
                            optimizer=OptimizerConfig(lr=1e-5))
        rank = LearnerRank.create(model_dir, cfg, AlgorithmConfig(), 0, 1, "127.0.0.1", free_port(), total_steps=100,
                           temperature=temperature)
        walls, inner = [], []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            m = rank.train_step(batch)
            if i:
                walls.append(time.perf_counter() - t0)
                inner.append(m["learner/train_seconds"])
        rank.engine.destroy()
        wall = statistics.median(walls)
        out["learner"][f"zero{stage}"] = {
            "step_s": wall, "tokens_per_s": tokens / wall, "ratio_vs_bare": out["bare_s"] / wall,
            "train_pass_s": statistics.median(inner), "padding_waste": m["learner/padding_waste"]}
        print(f"  ZeRO-{stage}: {tokens / wall:,.0f} tok/s (bare {out['bare_tokens_per_s']:,.0f}); "
              f"ratio {out['bare_s'] / wall:.2f}", flush=True)
    return out


# ---- 2. weight broadcast ------------------------------------------------------------------------

def receiver_main(tasks: "mp.Queue", results: "mp.Queue") -> None:
    """Rank 1 of each weight-sync group: receive `repeats` full updates, checksum the last one."""
    from learner.weight_sync import init_group, receive

    torch.set_num_threads(1)
    while True:
        task = tasks.get()
        if task is None:
            return
        host, port, manifest, buckets, repeats = task
        group = init_group(host, port, 1, 2, "gloo", 300.0)
        for _ in range(repeats - 1):  # receive only (what an engine does before its copy-in)
            for _ in receive(group, manifest, buckets):
                pass
        results.put(sum(float(t.double().sum()) for _, t in receive(group, manifest, buckets)))


def bench_broadcast(models: dict[str, str], bucket_mb: float, repeats: int, zero_stage: int) -> list[dict]:
    from learner.rank import LearnerRank, free_port

    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=receiver_main, args=(tasks, results), daemon=True)
    proc.start()
    rows = []
    try:
        for name, model_dir in models.items():
            cfg = LearnerConfig(zero_stage=zero_stage, dtype="float32", threads_per_rank=1)
            rank = LearnerRank.create(model_dir, cfg, AlgorithmConfig(), 0, 1, "127.0.0.1", free_port(), total_steps=1)
            host, port = "127.0.0.1", free_port()
            bucket_bytes = int(bucket_mb * (1 << 20))
            manifest, buckets = rank.weight_plan(bucket_bytes)
            tasks.put((host, port, manifest, buckets, repeats + 2))
            rank.init_weight_sync(host, port, 2, bucket_bytes, timeout_s=300.0)
            # update 0 warms up, 1..repeats are timed, the last one is checksummed by the receiver
            stats = [rank.broadcast_weights(v) for v in range(repeats + 2)][1:-1]
            remote = results.get(timeout=600)
            local = sum(float(t.double().sum()) for t in rank.full_state_dict().values())
            seconds = statistics.median(s["seconds"] for s in stats)
            row = {"model": name, "params": sum(p.numel() for p in rank.engine.module.parameters()),
                   "tensors": len(manifest), "buckets": len(buckets), "bytes": stats[0]["bytes"],
                   "seconds": seconds, "MB_per_s": stats[0]["bytes"] / seconds / 1e6,
                   "checksum_ok": abs(remote - local) <= 1e-6 * max(1.0, abs(local))}
            rows.append(row)
            print(f"  {name}: {row['bytes'] / 1e6:.1f} MB in {seconds * 1e3:.1f} ms "
                  f"({row['MB_per_s']:.0f} MB/s, {len(buckets)} buckets)", flush=True)
            rank._sender.close()
            rank.engine.destroy()
    finally:
        tasks.put(None)
        proc.join(timeout=60)
    return rows


def markdown(result: dict) -> str:
    tr = result["training"]
    lines = [f"### Learner training throughput ({tr['model']}, {tr['params'] / 1e6:.1f}M params, fp32, world size 1, "
             f"{tr['threads']} threads; {tr['tokens_per_step']} tokens/step in {tr['micro_batches']} micro-batches)", "",
             "| loop | s/step (median) | tokens/s | vs bare |", "|---|---|---|---|",
             f"| bare PyTorch (AdamW) | {tr['bare_s']:.3f} | {tr['bare_tokens_per_s']:,.0f} | 1.00 |"]
    for k, v in tr["learner"].items():
        lines.append(f"| LearnerRank {k.replace('zero', 'ZeRO-')} | {v['step_s']:.3f} | {v['tokens_per_s']:,.0f} | "
                     f"{v['ratio_vs_bare']:.2f} |")
    lines += ["", f"### Weight broadcast (gloo, learner rank 0 -> 1 receiver, buckets of {result['bucket_mb']} MB)", "",
              "| model | params | tensors | buckets | MB | ms / update | MB/s | received == sent |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["broadcast"]:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['tensors']} | {r['buckets']} | "
                     f"{r['bytes'] / 1e6:.1f} | {r['seconds'] * 1e3:.1f} | {r['MB_per_s']:.0f} | {r['checksum_ok']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="scripts/results/bench_learner.json")
    ap.add_argument("--models-dir", default=os.path.join(tempfile.gettempdir(), "relayrl-bench-models"))
    ap.add_argument("--train-model", default="10M", choices=list(SIZES))
    ap.add_argument("--train-seqs", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--zero-stages", default="2,3")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--bucket-mb", type=float, default=64.0)
    ap.add_argument("--broadcast-zero-stage", type=int, default=2)
    args = ap.parse_args()

    models = {name: str(make_tiny_model(Path(args.models_dir) / name, spec)) for name, spec in SIZES.items()}
    print(f"training throughput on {args.train_model} ...", flush=True)
    training = bench_training(models[args.train_model], [int(s) for s in args.zero_stages.split(",")],
                              args.repeats, args.train_seqs, args.threads)
    training.update(model=args.train_model, params=num_parameters(models[args.train_model]), threads=args.threads,
                    repeats=args.repeats)
    print("weight broadcast ...", flush=True)
    broadcast = bench_broadcast(models, args.bucket_mb, args.repeats, args.broadcast_zero_stage)
    result = {"training": training, "broadcast": broadcast, "bucket_mb": args.bucket_mb,
              # the floor applies to the default engine (ZeRO-2); ZeRO-3 is reported, see the docstring
              "floor_ok": training["learner"].get("zero2", {}).get("ratio_vs_bare", 0.0) >= 0.8,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print()
    print(markdown(result))
    print(f"\nfloor (learner ZeRO-2 >= 0.8 x bare): {'OK' if result['floor_ok'] else 'FAILED'}; JSON: {out}")


if __name__ == "__main__":
    main()
