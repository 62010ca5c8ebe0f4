"""Generation rounds with and without vLLM's detokenizer on the demo tasks. Without stop strings the
rollout worker has vLLM skip detokenization (which also decodes every sampled token again for its
logprob entry) and decodes each finished group once itself (actors/rollout.py completion_texts).

    flock /tmp/relayrl-heavy.lock .venv/bin/python scripts/bench_detokenize.py [--rounds 10]

One RolloutWorker per workload, on the workload's exported warm start (scripts/bench_engine_batch.py
makes it once), a round = 64 training prompts x 16 samples at the demo's sampling (temperature 1, at
most 8 new tokens); the arms alternate round by round on the same engine, each round on new prompts.
Arm "vllm_detokenizes" is the worker with SamplingParams.detokenize forced on (as before d9bce76).
Reports the median round time (min-max) per arm and the per-pair ratio. Writes
scripts/results/detokenize.json and the detokenize section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "scripts" / "bench")]

from bench_engine_batch import spread, warm_start  # noqa: E402
from machine import describe, git_commit, one_line  # noqa: E402  (scripts/bench/machine.py)
from sections import markers, publish  # noqa: E402

PROMPTS, N = 64, 16
ARMS = ("vllm_detokenizes", "relayrl")


def bench(name: str, rounds: int) -> dict:
    from actors.config import RolloutConfig, SamplingConfig
    from actors.rollout import RolloutWorker

    model = warm_start(name)
    cfg = RolloutConfig(n=N, max_model_len=64, sampling=SamplingConfig(temperature=1.0, max_new_tokens=8),
                        record_routed_experts=name == "moe")
    worker = RolloutWorker(str(model), cfg, "float32")
    shipped = worker._sampling_params

    def detokenizing(*args, **kwargs):
        params = shipped(*args, **kwargs)
        params.detokenize = True
        return params

    rows = [json.loads(line) for line in (ROOT / "configs/data/arithmetic/train.jsonl").open()]
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    batches = len(rows) // PROMPTS
    k = 0  # rounds so far: each takes the next PROMPTS training prompts
    try:
        for r in range(-1, rounds):  # round -1: one of each, not timed (first-call set-up)
            for arm in (ARMS if r % 2 == 0 else ARMS[::-1]):
                first = (k % batches) * PROMPTS
                batch = [{"prompt_id": f"r{k}_{i}", "prompt": row["prompt"], "seed": k * PROMPTS + i}
                         for i, row in enumerate(rows[first:first + PROMPTS])]
                k += 1
                worker._sampling_params = detokenizing if arm == "vllm_detokenizes" else shipped
                t0 = time.perf_counter()
                worker.generate(batch, N)
                if r >= 0:
                    times[arm].append(time.perf_counter() - t0)
    finally:
        worker.shutdown()
    out = {arm: spread(ts) for arm, ts in times.items()}
    out["ratio"] = spread([a / b for a, b in zip(times["vllm_detokenizes"], times["relayrl"])])
    out["rounds"] = times
    return out


def section(payload: dict) -> str:
    begin, end = markers("detokenize")
    lines = [begin, "## Generation rounds with and without vLLM's detokenizer, on the demo tasks", "",
             f"Made by `{payload['command']}` ({payload['date']}, commit {payload['commit']}); JSON: "
             f"`scripts/results/detokenize.json`. A round: {PROMPTS} prompts x {N} samples from the workload's "
             f"exported warm start; {payload['rounds']} rounds per arm, alternated on one engine; "
             "median (min-max); ratio = vLLM detokenizing / relayrl, per pair of rounds.", "",
             f"**Machine:** {one_line(payload['machine'])}", "",
             "| workload | vLLM detokenizes (s / round) | relayrl decodes finished groups (s / round) | ratio |",
             "|---|---:|---:|---:|"]
    for name, res in payload["results"].items():
        cells = [f"{res[a]['median']:.3f} ({res[a]['min']:.3f}-{res[a]['max']:.3f})" for a in ARMS]
        r = res["ratio"]
        lines.append(f"| {name} | {' | '.join(cells)} | {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f}) |")
    return "\n".join(lines + [end])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--only", default="moe,dense")
    parser.add_argument("--out", default=str(ROOT / "scripts/results/detokenize.json"))
    parser.add_argument("--md", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    results = {name: bench(name, args.rounds) for name in args.only.split(",")}
    payload = {"command": " ".join([".venv/bin/python scripts/bench_detokenize.py", *sys.argv[1:]]),
               "date": time.strftime("%Y-%m-%d %H:%M"), "commit": git_commit(), "machine": describe(),
               "rounds": args.rounds, "results": results}
    publish(payload, Path(args.out), Path(args.md), "detokenize", section(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
