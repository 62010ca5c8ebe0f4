"""The rollout engine's batch limits on the demo tasks: vLLM's CPU defaults (max_num_seqs 256,
max_num_batched_tokens 4096) against relayrl's (rollout.max_num_seqs 1024, max_num_batched_tokens
16384, vLLM's own for an H100 and verl's). A demo round is 512-1024 samples: the CPU defaults split
it into 2-4 waves of engine steps.

    flock /tmp/relayrl-heavy.lock .venv/bin/python scripts/bench_engine_batch.py [--reps 3] [--steps 40]

Workloads, each trained from its own warm start (made once, exported to runs/bench_engine_batch/,
reused by every run so that all start from the same weights):
  moe    configs/demo_moe.yaml at 64 prompts x 16 samples with dynamic sampling (README "MoE"'s recipe)
  dense  configs/demo_grpo.yaml (the README demo: 32 prompts x 16 samples)
Per repetition, one `relayrl train` run of --steps steps per side, the sides' order alternated
between repetitions. Per run: the median over its steps (the first 5 dropped: start-up transients) of
timing/step, timing/generate and rollout/engine_seconds (the sum of a step's generation rounds; in the
results of 12-06, the slowest round); reported: the median over repetitions
(min-max), and the per-repetition ratio of the two sides' step times. Writes
scripts/results/engine_batch.json and the engine_batch section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "bench")]

from cluster.metrics import read_metrics  # noqa: E402
from machine import describe, git_commit, one_line  # noqa: E402  (scripts/bench/machine.py)
from sections import markers, publish  # noqa: E402

WORK = ROOT / "runs" / "bench_engine_batch"
WORKLOADS = {  # name: (config, overrides)
    "moe": ("configs/demo_moe.yaml", ["trainer.prompts_per_step=64", "buffer.dynamic_sampling=true",
                                      "buffer.max_extra_rounds=2",  # the warm start as measured (12-06)
                                      "trainer.warm_start.steps=1300", "trainer.warm_start.target_accuracy=0"]),
    "dense": ("configs/demo_grpo.yaml", []),
}
SIDES = {
    "vllm_cpu_defaults": ["rollout.max_num_seqs=256", "rollout.max_num_batched_tokens=4096"],
    "relayrl_defaults": [],
}
COMMON = ["logging.progress=false", "checkpoint.export_hf=false", "logging.dump_samples_every=0",
          "trainer.eval_every=0"]
SKIP = 5  # first steps dropped from each run's median
KEYS = {"step_s": "timing/step", "generate_s": "timing/generate", "engine_s": "rollout/engine_seconds"}


def relayrl(config: str, overrides: list[str], run_dir: Path, env: Optional[dict[str, str]] = None) -> None:
    """One `relayrl train` run into run_dir (replaced if there); env: the process's whole environment."""
    shutil.rmtree(run_dir, ignore_errors=True)  # a run of an earlier invocation
    cmd = [str(Path(sys.executable).with_name("relayrl")), "train", config, *overrides, *COMMON,
           f"logging.run_dir={run_dir}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")


def warm_start(name: str) -> Path:
    """The workload's warm-started model (its config's warm start), exported once: a run with a KL term
    writes RUN_DIR/warm_started (cluster/trainer.py start_from_warm_start)."""
    out = WORK / f"{name}_warm"
    if not (out / "warm_started" / "config.json").exists():
        config, overrides = WORKLOADS[name]
        relayrl(config, [*overrides, "algorithm.kl_coef=0.001", "trainer.total_steps=1"], out)
    return out / "warm_started"


def timed_run(name: str, extra: list[str], run_dir: Path, steps: int, model: Path, keys: dict[str, str],
              env: Optional[dict[str, str]] = None) -> dict:
    """`steps` RL steps of workload `name` from its exported warm start `model`, plus `extra` overrides:
    the run's wall time and, per entry of `keys` (result name: metric), the median over its steps after
    the first SKIP. The scripts that compare sides of the workloads (bench_isa.py, bench_moe_knobs.py) share it."""
    config, overrides = WORKLOADS[name]
    t0 = time.perf_counter()
    relayrl(config, [*overrides, *extra, f"model.path={model}", "model.tiny=null",
                     "trainer.warm_start.steps=0", f"trainer.total_steps={steps}"], run_dir, env=env)
    train = [r for r in read_metrics(run_dir) if r["kind"] == "train"][SKIP:]
    return {"wall_s": round(time.perf_counter() - t0, 1),
            **{k: statistics.median(r[m] for r in train) for k, m in keys.items()}}


def run_side(name: str, side: str, rep: int, steps: int, model: Path) -> dict:
    return timed_run(name, SIDES[side], WORK / f"{name}_{side}_{rep}", steps, model, KEYS)


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def section(payload: dict) -> str:
    begin, end = markers("engine_batch")
    lines = [begin, "## Rollout engine batch limits: vLLM's CPU defaults vs relayrl's, on the demo tasks", "",
             f"Made by `{payload['command']}` ({payload['date']}, commit {payload['commit']}); JSON: "
             f"`scripts/results/engine_batch.json`. {payload['steps']} steps per run from the workload's "
             f"exported warm start, medians over steps {SKIP + 1}-{payload['steps']}; figures: median over "
             f"{payload['reps']} repetitions (min-max), sides alternated; ratio = vLLM defaults' step / relayrl's, "
             "per repetition.", "", f"**Machine:** {one_line(payload['machine'])}", "",
             "| workload | side | s / step | generate | engine | ratio |", "|---|---|---:|---:|---:|---:|"]
    for name, res in payload["results"].items():
        for side in SIDES:
            s = res[side]
            cells = [f"{s[k]['median']:.3f} s ({s[k]['min']:.3f}-{s[k]['max']:.3f})" for k in KEYS]
            r = res["ratio"]
            ratio = f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})" if side == "relayrl_defaults" else ""
            lines.append(f"| {name} | {side.replace('_', ' ')} | {' | '.join(cells)} | {ratio} |")
    return "\n".join(lines + [end])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--only", default=",".join(WORKLOADS))
    parser.add_argument("--out", default=str(ROOT / "scripts/results/engine_batch.json"))
    parser.add_argument("--md", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    if args.steps <= SKIP + 1:
        parser.error(f"--steps must exceed {SKIP + 1}: the first {SKIP} steps of a run are dropped")
    commit = git_commit()
    results = {}
    for name in args.only.split(","):
        model = warm_start(name)
        reps: dict[str, list[dict]] = {side: [] for side in SIDES}
        for rep in range(args.reps):
            order = list(SIDES) if rep % 2 == 0 else list(SIDES)[::-1]
            for side in order:
                reps[side].append(run_side(name, side, rep, args.steps, model))
                print(f"{name} rep {rep} {side}: {reps[side][-1]}", flush=True)
        results[name] = {side: {k: spread([r[k] for r in rs]) for k in KEYS} for side, rs in reps.items()}
        results[name]["ratio"] = spread([a["step_s"] / b["step_s"] for a, b in
                                         zip(reps["vllm_cpu_defaults"], reps["relayrl_defaults"])])
        results[name]["runs"] = reps
    payload = {"command": " ".join([".venv/bin/python scripts/bench_engine_batch.py", *sys.argv[1:]]),
               "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit, "machine": describe(),
               "steps": args.steps, "reps": args.reps, "results": results}
    publish(payload, Path(args.out), Path(args.md), "engine_batch", section(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
