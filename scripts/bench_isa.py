"""How much of an AVX2-only machine's slowness is the instruction set: the MoE demo's RL steps on this
machine as it is, and with torch, oneDNN and vLLM held to their AVX2 kernels.

    flock /tmp/relayrl-heavy.lock .venv/bin/python scripts/bench_isa.py [--reps 2] [--steps 40]

Side "avx2_kernels" runs `relayrl train` with ATEN_CPU_CAPABILITY=avx2 (torch's kernel dispatch),
ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN's), MKL_ENABLE_INSTRUCTIONS=AVX2, and scripts/bench/avx2_only on
PYTHONPATH (vLLM then loads vllm/_C_AVX2, as on a CPU without AVX-512); the script checks that a
process so started really does both before it measures. What it cannot hold back: DeepSpeed's CPU ops
(built with -march=native), the clock, caches and memory of the machine. The workload is
scripts/bench_engine_batch.py's "moe" (its exported warm start, 64 prompts x 16 samples with dynamic
sampling); per repetition one run of --steps steps per side, the order alternated; per run the median
over its steps (the first 5 dropped) of timing/step, timing/generate and timing/learn; reported: the
median over repetitions (min-max) and the per-repetition ratio of step times. Writes
scripts/results/isa.json and the isa section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "scripts" / "bench")]

from bench_engine_batch import SKIP, WORK, spread, timed_run, warm_start  # noqa: E402
from machine import describe, git_commit, one_line  # noqa: E402  (scripts/bench/machine.py)
from sections import markers, publish  # noqa: E402

AVX2_ENV = {"RELAYRL_EMULATE_AVX2": "1", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2", "PYTHONPATH": str(ROOT / "scripts" / "bench" / "avx2_only")}
SIDES = {"native": {}, "avx2_kernels": AVX2_ENV}
KEYS = {"step_s": "timing/step", "generate_s": "timing/generate", "learn_s": "timing/learn"}
CHECK = """
import torch
from vllm.platforms import current_platform
current_platform.import_kernels()
libs = {line.split()[-1].rsplit('/', 1)[-1] for line in open('/proc/self/maps') if '/vllm/_C' in line}
print(torch.backends.cpu.get_cpu_capability(), ','.join(sorted(libs)))
"""


def env_of(side: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AVX2_ENV}
    return {**env, **SIDES[side]}


def check_emulation() -> str:
    """Fail unless a process started as the avx2 side is really held to AVX2 (torch) and vLLM's AVX2 kernels."""
    done = subprocess.run([sys.executable, "-c", CHECK], env=env_of("avx2_kernels"), capture_output=True, text=True)
    line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode or line != "AVX2 _C_AVX2.abi3.so":
        raise RuntimeError(f"AVX2 emulation not in effect (got {line!r}; want 'AVX2 _C_AVX2.abi3.so'):\n{done.stderr[-2000:]}")
    return line


def run_side(side: str, rep: int, steps: int, model: Path) -> dict:
    return timed_run("moe", [], WORK / f"isa_{side}_{rep}", steps, model, KEYS, env=env_of(side))


def section(payload: dict) -> str:
    begin, end = markers("isa")
    lines = [begin, "## The instruction set alone: the MoE demo's steps with AVX2 kernels on an AVX-512 machine", "",
             f"Made by `{payload['command']}` ({payload['date']}, commit {payload['commit']}); JSON: "
             f"`scripts/results/isa.json`. {payload['steps']} RL steps per run from the MoE workload's exported "
             f"warm start, medians over steps {SKIP + 1}-{payload['steps']}; figures: median over "
             f"{payload['reps']} repetitions (min-max), sides alternated; ratio = AVX2 kernels' step / native, "
             f"per repetition. Check before measuring: `{payload['check']}`.", "",
             f"**Machine:** {one_line(payload['machine'])}", "",
             "| side | s / step | generate | learn | ratio |", "|---|---:|---:|---:|---:|"]
    for side in SIDES:
        s = payload["results"][side]
        cells = [f"{s[k]['median']:.3f} s ({s[k]['min']:.3f}-{s[k]['max']:.3f})" for k in KEYS]
        r = payload["results"]["ratio"]
        ratio = f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})" if side == "avx2_kernels" else ""
        lines.append(f"| {side.replace('_', ' ')} | {' | '.join(cells)} | {ratio} |")
    return "\n".join(lines + [end])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default=str(ROOT / "scripts/results/isa.json"))
    parser.add_argument("--md", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    if args.steps <= SKIP + 1:
        parser.error(f"--steps must exceed {SKIP + 1}: the first {SKIP} steps of a run are dropped")
    check = check_emulation()
    model = warm_start("moe")
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for rep in range(args.reps):
        for side in (list(SIDES) if rep % 2 == 0 else list(SIDES)[::-1]):
            runs[side].append(run_side(side, rep, args.steps, model))
            print(f"rep {rep} {side}: {runs[side][-1]}", flush=True)
    results = {side: {k: spread([r[k] for r in rs]) for k in KEYS} for side, rs in runs.items()}
    results["ratio"] = spread([a["step_s"] / b["step_s"] for a, b in zip(runs["avx2_kernels"], runs["native"])])
    payload = {"command": " ".join([".venv/bin/python scripts/bench_isa.py", *sys.argv[1:]]),
               "date": time.strftime("%Y-%m-%d %H:%M"), "commit": git_commit(), "machine": describe(),
               "steps": args.steps, "reps": args.reps, "check": check, "results": results, "runs": runs}
    publish(payload, Path(args.out), Path(args.md), "isa", section(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
