"""Benchmark the reward scorer: its cost per group, alone and beside a generating rollout worker.

1. In one process: RewardScorer.score_group over groups of `--n` arithmetic samples (the demo's
   reward), against calling the reward function directly on the same samples (the floor).
2. Through Ray, as a run does it: a RolloutWorker actor streams the groups of `--prompts` prompts x
   `--n` samples (the tiny Qwen3-MoE, routing recorded, fp32, seeded requests) to the driver, which
   (a) only fetches them or (b) also sends each to a RewardScorer actor as it arrives and waits for
   all of them; sides alternated, `--reps` each, the first of each side dropped as warm-up.

    flock /tmp/relayrl-heavy.lock .venv/bin/python scripts/bench_scorer.py [--out PATH]

Writes JSON to --out and prints a markdown table. The scorer measured is the one on the import path
(run with PYTHONPATH=<another checkout> to measure that checkout's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def arithmetic_rows(k: int) -> list[dict]:
    with open(ROOT / "configs/data/arithmetic/train.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(k), f)]


def bench_in_process(args) -> dict:
    from actors.reward.registry import REWARD_FUNCTIONS
    from actors.reward.scorer import RewardScorer
    from actors.types import Group, Sample

    rows = arithmetic_rows(args.groups)
    groups = [Group(f"p{k}", [Sample(f"p{k}", r["prompt"], [1], r["answer"] if i % 2 else "x", [2], [-0.1], "stop", 0,
                                     meta=r) for i in range(args.n)]) for k, r in enumerate(rows)]
    scorer = RewardScorer([{"name": "arithmetic"}])
    fn, params = REWARD_FUNCTIONS.get("arithmetic").fn, REWARD_FUNCTIONS.make_params("arithmetic", {})
    runs: dict[str, list[float]] = {"scorer": [], "direct": []}
    for rep in range(args.reps + 1):
        for name in ("scorer", "direct") if rep % 2 == 0 else ("direct", "scorer"):
            t = time.perf_counter()
            for g in groups:
                if name == "scorer":
                    scorer.score_group(g)
                else:
                    [fn(s, params) for s in g.samples]
            if rep:  # the first round warms up
                runs[name].append((time.perf_counter() - t) / len(groups) * 1e3)
    assert all(s.reward == (1.0 if i % 2 else 0.0) for g in groups for i, s in enumerate(g.samples))
    return {"ms_per_group": {k: statistics.median(v) for k, v in runs.items()}, "runs_ms": runs}


def bench_through_ray(args) -> dict:
    import ray

    from actors.config import RolloutConfig
    from actors.reward.scorer import RewardScorer
    from actors.rollout import RolloutWorker
    from cluster.tiny_model import TinyModelSpec, make_tiny_model

    model = make_tiny_model(Path(args.cache) / "moe", TinyModelSpec(moe=True))
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        cfg = RolloutConfig(max_model_len=64, record_routed_experts=True)
        worker = ray.remote(num_cpus=1)(RolloutWorker).remote(str(model), cfg, "float32")
        scorer = ray.remote(num_cpus=0.01, max_concurrency=4)(RewardScorer).remote([{"name": "arithmetic"}])
        rows = arithmetic_rows(args.prompts)
        sampling = {"temperature": 1.0, "max_new_tokens": 8}

        def prompts(rep: int) -> list[dict]:
            return [{"prompt_id": f"p{i}", "prompt": r["prompt"], "meta": r, "seed": 1000 * rep + i}
                    for i, r in enumerate(rows)]

        def stream(rep: int, score: bool) -> int:
            gen = worker.generate_stream.options(num_returns="streaming").remote(prompts(rep), args.n, sampling)
            if not score:
                return sum(len(ray.get(r).samples) for r in gen)
            return sum(len(g.samples) for g in ray.get([scorer.score_group.remote(ray.get(r)) for r in gen]))

        runs: dict[str, list[float]] = {"generate": [], "generate+score": []}
        for rep in range(args.reps + 1):
            for name in ("generate", "generate+score") if rep % 2 == 0 else ("generate+score", "generate"):
                t = time.perf_counter()
                assert stream(rep, name == "generate+score") == args.prompts * args.n
                if rep:
                    runs[name].append(time.perf_counter() - t)
    finally:
        ray.shutdown()
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"seconds": med, "scoring_adds_s": med["generate+score"] - med["generate"], "runs_s": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "scripts/results/bench_scorer.json"))
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "relayrl-bench-models"))
    ap.add_argument("--groups", type=int, default=200, help="groups per in-process repetition")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()

    import actors.reward.scorer as scorer_module

    results = {"settings": vars(args), "scorer_module": scorer_module.__file__,
               "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
               "in_process": bench_in_process(args), "through_ray": bench_through_ray(args)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    ip, tr = results["in_process"]["ms_per_group"], results["through_ray"]["seconds"]
    print(f"\n### reward scorer ({scorer_module.__file__}; groups of {args.n} arithmetic samples, "
          f"median of {args.reps})\n")
    print("| measure | value |\n|---|---:|")
    print(f"| score_group, one process | {ip['scorer']:.2f} ms / group |")
    print(f"| the reward function called directly | {ip['direct']:.2f} ms / group |")
    print(f"| Ray: {args.prompts} prompts x {args.n} streamed from a rollout worker | {tr['generate']:.3f} s |")
    print(f"| the same, each group scored by a RewardScorer actor as it arrives | {tr['generate+score']:.3f} s |")
    print(f"\nscoring adds {results['through_ray']['scoring_adds_s']:.3f} s per round; wrote {out}")


if __name__ == "__main__":
    main()
