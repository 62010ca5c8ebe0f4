"""Two speed knobs of the MoE demo on 2 cores: the rollout engine split into two workers of one
thread each (`rollout.num_workers=2`, each pinned to its own core) instead of one worker of two
threads, and the learner's micro-batches raised from the demo's 4,096 tokens to 16,384
(`learner.micro_batch_tokens`: one micro-batch per mini-batch and rank instead of two, so ZeRO-3
gathers the parameters half as often).

    flock /tmp/relayrl-heavy.lock .venv/bin/python scripts/bench_moe_knobs.py [--reps 2] [--steps 40] [--rounds 8]

Part 1, generation alone: one 2-thread RolloutWorker and two 1-thread ones (pinned to cores 0 and
1, half the prompts each), all on the MoE workload's exported warm start (scripts/bench_engine_batch.py
makes it once), alive side by side; a round is 64 training prompts x 16 samples (a step's first
generation round) or 24 (a refill round), the arms alternated round by round; the median round time
(min-max) and the per-pair ratio. Part 2, whole RL steps: per repetition one `relayrl train` run of
--steps steps per side (the MoE workload of bench_engine_batch.py), the sides' order rotated between
repetitions; per run the median over its steps (the first 5 dropped) of timing/step, timing/generate
and timing/learn; reported: the median over repetitions (min-max) and each side's step time over the
shipped config's in the same repetition. Writes scripts/results/moe_knobs.json and the moe_knobs
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "scripts" / "bench")]

from bench_engine_batch import SKIP, WORK, spread, timed_run, warm_start  # noqa: E402
from machine import describe, git_commit, one_line  # noqa: E402  (scripts/bench/machine.py)
from sections import markers, publish  # noqa: E402

SIDES = {
    "shipped": [],
    "two_workers": ["rollout.num_workers=2"],
    "micro_batch_16k": ["learner.micro_batch_tokens=16384"],
    "both": ["rollout.num_workers=2", "learner.micro_batch_tokens=16384"],
}
KEYS = {"step_s": "timing/step", "generate_s": "timing/generate", "learn_s": "timing/learn"}
ROUND_SIZES = (64, 24)  # a step's first round; a typical refill round of the demo
ARMS = {"one_worker_2_threads": 1, "two_workers_1_thread": 2}


def generation_alone(model: Path, rounds: int) -> dict:
    """Part 1: round times of each arm (workers as Ray actors, as in a run; both arms alive throughout)."""
    import ray

    from actors.config import RolloutConfig, SamplingConfig
    from actors.rollout import RolloutWorker

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=0)(RolloutWorker)
        arms = {}
        for arm, count in ARMS.items():
            cfg = RolloutConfig(n=16, max_model_len=64, sampling=SamplingConfig(temperature=1.0, max_new_tokens=8),
                                record_routed_experts=True, num_workers=count)
            arms[arm] = [remote.remote(str(model), cfg, "float32", i) for i in range(count)]
        rows = [json.loads(line) for line in (ROOT / "configs/data/arithmetic/train.jsonl").open()]
        k = 0  # rounds so far: each takes new prompts

        def one_round(workers: list, size: int) -> float:
            nonlocal k
            first = (k * size) % (len(rows) - size)
            batch = [{"prompt_id": f"r{k}_{i}", "prompt": row["prompt"], "seed": k * size + i}
                     for i, row in enumerate(rows[first:first + size])]
            k += 1
            t0 = time.perf_counter()
            ray.get([w.generate.remote(batch[i::len(workers)], 16) for i, w in enumerate(workers)])
            return time.perf_counter() - t0

        times = {arm: {size: [] for size in ROUND_SIZES} for arm in ARMS}
        for r in range(-1, rounds):  # round -1: one of each, not timed (first-call set-up)
            for arm in (list(ARMS) if r % 2 == 0 else list(ARMS)[::-1]):
                for size in ROUND_SIZES:
                    t = one_round(arms[arm], size)
                    if r >= 0:
                        times[arm][size].append(t)
        one, two = ARMS
        return {str(size): {**{arm: spread(times[arm][size]) for arm in ARMS},
                            "ratio": spread([a / b for a, b in zip(times[one][size], times[two][size])]),
                            "rounds": {arm: times[arm][size] for arm in ARMS}} for size in ROUND_SIZES}
    finally:
        ray.shutdown()


def run_side(side: str, rep: int, steps: int, model: Path) -> dict:
    return timed_run("moe", SIDES[side], WORK / f"knobs_{side}_{rep}", steps, model, KEYS)


def section(payload: dict) -> str:
    begin, end = markers("moe_knobs")
    lines = [begin, "## Two speed knobs of the MoE demo on 2 cores: two rollout workers, larger micro-batches", "",
             f"Made by `{payload['command']}` ({payload['date']}, commit {payload['commit']}); JSON: "
             "`scripts/results/moe_knobs.json`. Generation alone: rounds of 64 x 16 and 24 x 16 samples on the MoE "
             f"workload's exported warm start, {payload['rounds']} rounds per arm, alternated; median (min-max); "
             "ratio = one worker's round / two workers', per pair. Whole RL steps: "
             f"{payload['steps']} steps per run, medians over steps {SKIP + 1}-{payload['steps']}; figures: median "
             f"over {payload['reps']} repetitions (min-max), order rotated; vs shipped = the side's step / the "
             "shipped config's, per repetition.", "", f"**Machine:** {one_line(payload['machine'])}", "",
             "| round | one worker, 2 threads (s) | two workers, 1 thread each (s) | ratio |", "|---|---:|---:|---:|"]
    for size, res in payload["generation"].items():
        cells = [f"{res[a]['median']:.3f} ({res[a]['min']:.3f}-{res[a]['max']:.3f})" for a in ARMS]
        r = res["ratio"]
        lines.append(f"| {size} x 16 | {' | '.join(cells)} | {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f}) |")
    lines += ["", "| side | overrides | s / step | generate | learn | vs shipped |", "|---|---|---:|---:|---:|---:|"]
    for side, overrides in SIDES.items():
        s = payload["steps_results"][side]
        cells = [f"{s[k]['median']:.3f} s ({s[k]['min']:.3f}-{s[k]['max']:.3f})" for k in KEYS]
        r = s.get("vs_shipped")
        rel = f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})" if r else ""
        lines.append(f"| {side.replace('_', ' ')} | {' '.join(f'`{o}`' for o in overrides) or '—'} | "
                     f"{' | '.join(cells)} | {rel} |")
    return "\n".join(lines + [end])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "scripts/results/moe_knobs.json"))
    parser.add_argument("--md", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    if args.steps <= SKIP + 1:
        parser.error(f"--steps must exceed {SKIP + 1}: the first {SKIP} steps of a run are dropped")
    if args.reps < 1 or args.rounds < 1:
        parser.error("--reps and --rounds must be >= 1")
    model = warm_start("moe")
    generation = generation_alone(model, args.rounds)
    print(f"generation alone: { {s: r['ratio'] for s, r in generation.items()} }", flush=True)
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    names = list(SIDES)
    for rep in range(args.reps):
        for side in names[rep % len(names):] + names[:rep % len(names)]:
            runs[side].append(run_side(side, rep, args.steps, model))
            print(f"rep {rep} {side}: {runs[side][-1]}", flush=True)
    results = {side: {k: spread([r[k] for r in rs]) for k in KEYS} for side, rs in runs.items()}
    for side in names[1:]:
        results[side]["vs_shipped"] = spread([a["step_s"] / b["step_s"] for a, b in zip(runs[side], runs["shipped"])])
    payload = {"command": " ".join([".venv/bin/python scripts/bench_moe_knobs.py", *sys.argv[1:]]),
               "date": time.strftime("%Y-%m-%d %H:%M"), "commit": git_commit(), "machine": describe(),
               "steps": args.steps, "reps": args.reps, "rounds": args.rounds, "generation": generation,
               "steps_results": results, "runs": runs}
    publish(payload, Path(args.out), Path(args.md), "moe_knobs", section(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
