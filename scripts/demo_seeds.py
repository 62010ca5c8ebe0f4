"""A demo config run once per seed, summarised as README's seed tables report it, and checked against
a floor ("+20 held-out points within 15 minutes", issue #12's for the MoE demo).

    flock /tmp/relayrl-heavy.lock .venv/bin/python scripts/demo_seeds.py configs/demo_moe.yaml \
        --seeds 0 1 2 3 [--floor 20] [--minutes 15] [-- override ...]

Each seed is `relayrl train CONFIG trainer.seed=S data.seed=S logging.run_dir=... [overrides]`, run
from the repository root, one seed after another (a run repeats exactly on one machine, its timings do
not; the same seed on another machine kind is another run: the kernels round differently). Per seed:
the warm start (steps, seconds), held-out accuracy at every evaluation, the gain (last minus first),
the wall time of the whole command, the median RL step, and where the config has them the largest
weight-sync probe difference and the lowest routing agreements (the learner's own top-k against the
sampler's, and the experts its forward used: 1.0 with routing replay). A seed meets the floor when its gain
is at least --floor points and its wall time at most --minutes.

A seed whose run fails is recorded as failed (exit code, last line, its log) and the next seed runs.
Appends to scripts/results/demo_seeds.json (one entry per invocation: config, overrides, machine,
commit, date, the seeds) and prints the rows in README's table format. Run directories go under
--work (default: a temporary directory, removed afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from cluster.metrics import read_metrics  # noqa: E402

RESULTS = ROOT / "scripts" / "results" / "demo_seeds.json"


def summarise(rows: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """One run's figures from its metrics rows (cluster.metrics.read_metrics) and its wall time."""
    by_kind = lambda kind: sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["step"])  # noqa: E731
    warm, train, evals = by_kind("warm_start"), by_kind("train"), by_kind("eval")
    if len(evals) < 2:
        raise ValueError("a run needs held-out evaluations before and after RL (data.eval_files) to have a gain")
    accuracy = [(int(r["step"]), round(100 * r["eval/accuracy"], 1)) for r in evals]
    over_steps = lambda pick, key: pick((r[key] for r in train if key in r), default=None)  # noqa: E731
    return {
        # the first row is logged after its step: its own seconds stand for the time before it
        "warm_start_steps": int(warm[-1]["step"]) if warm else 0,
        "warm_start_s": round(warm[-1]["time"] - warm[0]["time"] + warm[0].get("sft/seconds", 0.0), 1) if warm else 0.0,
        "accuracy": accuracy,
        "gain": round(accuracy[-1][1] - accuracy[0][1], 1),
        "rl_steps": len(train),
        "median_step_s": round(statistics.median(r["timing/step"] for r in train), 3) if train else None,
        "wall_s": round(wall_s, 1),
        "probe_max": over_steps(max, "sync/probe_max_abs_diff"),
        # the learner's own top-k against the sampler's, and the experts it computed with (1.0 with replay)
        "routing_agreement_min": over_steps(min, "moe/routing_agreement"),
        "used_routing_agreement_min": over_steps(min, "moe/used_routing_agreement"),
    }


def meets(s: dict[str, Any], floor: float, minutes: float) -> bool:
    return "failed" not in s and s["gain"] >= floor and s["wall_s"] <= 60 * minutes


def minutes_seconds(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(round(seconds % 60))} s"


def table_row(seed: int, s: dict[str, Any], floor: float, minutes: float) -> str:
    """README's row: | seed | warm start | before -> after RL (in-between) | gain | wall (median step) |."""
    if "failed" in s:
        return f"| {seed} | failed: {s['failed']} | | | {minutes_seconds(s['wall_s'])} |"
    acc = s["accuracy"]
    between = " / ".join(f"{a:.1f}" for _, a in acc[1:-1])
    gain = f"{s['gain']:+.1f}"
    step = f" ({s['median_step_s']:.2f} s)" if s["median_step_s"] is not None else ""
    return (f"| {seed} | {s['warm_start_steps']:,} steps, {s['warm_start_s']:.0f} s | {acc[0][1]:.1f}% → "
            f"{acc[-1][1]:.1f}% ({between}) | {f'**{gain}**' if meets(s, floor, minutes) else gain} | "
            f"{minutes_seconds(s['wall_s'])}{step} |")


def run_seed(config: str, seed: int, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    cmd = [str(Path(sys.executable).with_name("relayrl")), "train", config, f"trainer.seed={seed}",
           f"data.seed={seed}", f"logging.run_dir={run_dir}", "logging.progress=false", *overrides]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log = run_dir.parent / f"seed{seed}.log"
    log.write_text(done.stdout + done.stderr)
    if done.returncode:  # recorded, and the other seeds still run
        last = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()][-1:] or [""]
        print(f"seed {seed} failed ({' '.join(cmd)}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}", file=sys.stderr)
        return {"failed": f"exit {done.returncode}: {last[0][:200]}", "wall_s": round(wall, 1), "log": str(log)}
    return summarise(read_metrics(run_dir), wall)


def record(entry: dict[str, Any], path: Optional[Path] = None) -> None:
    """Append `entry` to the results file (default RESULTS; a JSON list, earlier entries kept)."""
    path = path or RESULTS
    entries = json.loads(path.read_text()) if path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([*entries, entry], indent=1) + "\n")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--floor", type=float, default=20.0, help="held-out points a seed must gain")
    parser.add_argument("--minutes", type=float, default=15.0, help="within this wall time, start-up included")
    parser.add_argument("--work", type=Path, default=None, help="keep the run directories here")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, overrides = parser.parse_args(argv[:split]), argv[split + 1:]  # overrides as relayrl train takes them
    from machine import describe, git_commit, one_line

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        seeds = {}
        for seed in args.seeds:
            seeds[seed] = s = run_seed(args.config, seed, overrides, work / f"seed{seed}")
            print(table_row(seed, s, args.floor, args.minutes), flush=True)
    met = [seed for seed, s in seeds.items() if meets(s, args.floor, args.minutes)]
    machine = describe()
    record({"config": args.config, "overrides": overrides, "machine": machine, "commit": git_commit(),
            "date": time.strftime("%Y-%m-%d"), "floor": args.floor, "minutes": args.minutes, "seeds": seeds})
    print(f"{len(met)} of {len(seeds)} seeds gained >= {args.floor:g} points within {args.minutes:g} min "
          f"on {one_line(machine)}; wrote {os.path.relpath(RESULTS, ROOT)}")
    return 0 if len(met) == len(seeds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
