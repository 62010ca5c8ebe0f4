"""Every algorithm of the library on the embedded demo task, side by side: one `relayrl train` run per
algorithm, one after another, each with the demo's warm start and then --steps steps (offline DPO:
60, the set-up of tests/slow/test_dpo.py, or fewer if --steps is smaller).

    .venv/bin/python scripts/algorithm_table.py [--steps 100] [--only grpo,rloo] [--extra key=value ...]
    .venv/bin/python scripts/algorithm_table.py --rewrite    # the BENCHMARKS.md section from the JSON only

Measures per algorithm: held-out greedy accuracy before and after RL (`eval/accuracy`, with one more
evaluation at half the steps), the wall time of the whole `relayrl train` process (start-up and warm
start included), and the median step (`timing/step`; offline DPO logs `timing/learn`). Writes
scripts/results/algorithm_table.json (saved after every algorithm, so a killed run keeps what
finished; rows of algorithms not run this time are kept when they come from the same machine) and
the table between the algorithm_table markers of BENCHMARKS.md (also after every algorithm).
Run directories: runs/table_<key>-<time>/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "bench")]

from actors.tasks.arithmetic import preference_pairs, write_jsonl  # noqa: E402
from cluster.metrics import read_metrics  # noqa: E402
from machine import describe, git_commit, one_line  # noqa: E402  (scripts/bench/machine.py)
from sections import BEGIN, END, write_algorithm_table  # noqa: E402

GRPO = "configs/demo_grpo.yaml"
DPO = ["algorithm.dpo.enabled=true", "learner.optimizer.lr=1e-3", "algorithm.dpo.nll_coef=1.0"]
PAIRS = "pairs.jsonl"  # stands for the preference file in the recorded config; see preference_pairs()
OFFLINE_STEPS = 60
ALGORITHMS = {  # key: (config, overrides)
    "grpo": (GRPO, []),
    "dapo": ("configs/demo_dapo.yaml", []),
    "gspo": ("configs/demo_gspo.yaml", []),
    # Dr.GRPO normalises by a constant length: the demo's rollout.sampling.max_new_tokens
    "dr_grpo": (GRPO, ["algorithm.advantage.name=dr_grpo", "algorithm.aggregation.name=seq-mean-token-sum-norm",
                       "algorithm.aggregation.params.norm_length=8"]),
    "rloo": (GRPO, ["algorithm.advantage.name=rloo"]),
    "reinforce_pp": (GRPO, ["algorithm.advantage.name=reinforce_pp"]),
    # GFPO as its paper: sample 16 (the demo's rollout.n), train on the 8 shortest
    "gfpo": (GRPO, ["buffer.gfpo.enabled=true", "buffer.gfpo.keep=8", "buffer.gfpo.metric=length"]),
    "cispo": (GRPO, ["algorithm.surrogate.name=cispo"]),  # its defaults: clip_high 0.28, no lower bound
    "ppo": ("configs/demo_ppo.yaml", []),
    "dpo_online": (GRPO, DPO),
    "dpo_offline": (GRPO, ["trainer.mode=offline", *DPO, f"data.preference_files=[{PAIRS}]"]),
}
# every run: no progress bar (the output is captured), no exported model, no sample dumps
COMMON = ["logging.progress=false", "checkpoint.export_hf=false", "logging.dump_samples_every=0"]


def run(key: str, steps: int, extra: list[str], pairs: Path) -> dict:
    """One `relayrl train` process; its run directory is the runs/table_<key>-* it created."""
    config, overrides = ALGORITHMS[key]
    row = {"config": " ".join([config, *overrides]), "steps": steps}
    if not (ROOT / config).exists():
        return {**row, "status": "config missing"}
    if key == "dpo_offline":
        row["steps"] = steps = min(steps, OFFLINE_STEPS)
    over = [o.replace(PAIRS, str(pairs)) for o in overrides]
    cmd = [str(Path(sys.executable).with_name("relayrl")), "train", config, *over, *COMMON,
           f"trainer.total_steps={steps}", f"trainer.eval_every={steps // 2}", f"logging.name=table_{key}", *extra]
    before = set(ROOT.glob(f"runs/table_{key}-*"))
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    new = sorted(set(ROOT.glob(f"runs/table_{key}-*")) - before)
    row["run_dir"] = str(new[-1].relative_to(ROOT)) if new else None
    if done.returncode or not new:
        return {**row, "status": f"failed (exit {done.returncode})", "output_tail": (done.stdout + done.stderr)[-3000:]}
    rows = read_metrics(new[-1])
    evals = sorted((r for r in rows if r["kind"] == "eval"), key=lambda r: r["step"])
    train = [r for r in rows if r["kind"] == "train"]
    step_s = [r.get("timing/step", r.get("timing/learn")) for r in train]
    return {**row, "status": "ok", "accuracy_before": evals[0]["eval/accuracy"],
            "accuracy_after": evals[-1]["eval/accuracy"],
            "eval_accuracy": {str(r["step"]): r["eval/accuracy"] for r in evals},
            "median_step_s": round(statistics.median(s for s in step_s if s is not None), 3)}


def minutes(seconds: float) -> str:
    s = round(seconds)
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60} s"


def table(payload: dict) -> str:
    lines = [BEGIN, "## Algorithms side by side: the embedded demo task", "",
             f"Last written by `{payload['command']}` ({payload['date']}, commit {payload['commit']}); "
             f"JSON: `{payload['out']}` (each row's own date, commit and overrides). One run per algorithm, one "
             "after another: the demo's warm start, then the steps shown, 32 prompts × 16 samples a step; "
             "held-out = greedy accuracy on the 200 test prompts before RL → at half the steps → after; wall = the whole "
             "`relayrl train` process (start-up and warm start included); median step = median `timing/step` "
             "(offline DPO: `timing/learn`, no generation). One run each, no spread. "
             f"`{PAIRS}`: `actors.tasks.arithmetic.preference_pairs()` (1000 train rows; chosen the right sum, "
             "rejected off by 1, 10 or 100).", "", f"**Machine:** {one_line(payload['machine'])}", "",
             "| algorithm | config | steps | held-out before → half-way → after | wall | median step |",
             "|---|---|---:|---|---:|---:|"]
    for key, r in payload["results"].items():
        if r["status"] != "ok":
            lines.append(f"| {key} | `{r['config']}` | {r['steps']} | {r['status']} | | |")
            continue
        held_out = " → ".join(f"{100 * a:.1f}%" for _, a in sorted((int(k), a) for k, a in r["eval_accuracy"].items()))
        lines.append(f"| {key} | `{r['config']}` | {r['steps']} | {held_out} | {minutes(r['wall_s'])} | "
                     f"{r['median_step_s']:.2f} s |")
    return "\n".join(lines + [END])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--only", default=",".join(ALGORITHMS), help="comma-separated keys: " + ",".join(ALGORITHMS))
    parser.add_argument("--extra", nargs="*", default=[], help="overrides passed to every run, e.g. "
                        "trainer.warm_start.steps=20")
    parser.add_argument("--out", default=str(ROOT / "scripts/results/algorithm_table.json"))
    parser.add_argument("--md", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--rewrite", action="store_true", help="only rewrite the BENCHMARKS.md section from --out")
    args = parser.parse_args()
    if args.rewrite:
        write_algorithm_table(Path(args.md), table(json.loads(Path(args.out).read_text())))
        return 0
    keys = args.only.split(",")
    unknown = [k for k in keys if k not in ALGORITHMS]
    if unknown:
        parser.error(f"unknown algorithm(s) {unknown}; known: {', '.join(ALGORITHMS)}")
    out, machine, commit = Path(args.out).resolve(), describe(), git_commit()
    # rows of algorithms not run this time are kept if they were measured on this same machine
    previous = json.loads(out.read_text()) if out.exists() else {}
    kept = previous.get("results", {}) if previous.get("machine") == machine else {}
    results = {k: kept[k] for k in ALGORITHMS if k in kept}
    payload = {"command": " ".join([".venv/bin/python scripts/algorithm_table.py", *sys.argv[1:]]),
               "out": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out),
               "machine": machine, "common_overrides": COMMON, "extra_overrides": args.extra}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = write_jsonl(Path(tmp) / PAIRS, preference_pairs(ROOT / "configs/data/arithmetic/train.jsonl"))
        for key in keys:
            r = run(key, args.steps, args.extra, pairs)
            r.update(date=time.strftime("%Y-%m-%d %H:%M"), commit=commit, cpu_simd=machine["simd"],
                     bf16_instructions=machine["bf16_instructions"], extra_overrides=args.extra)
            results[key] = r
            results = {k: results[k] for k in ALGORITHMS if k in results}  # table order
            payload.update(date=r["date"], commit=commit, results=results)
            out.write_text(json.dumps(payload, indent=1))  # after every algorithm: a killed run keeps these
            write_algorithm_table(Path(args.md), table(payload))
            if r["status"] == "ok":
                print(f"{key:>12}: held-out {100 * r['accuracy_before']:.1f}% -> {100 * r['accuracy_after']:.1f}% "
                      f"in {r['steps']} steps, median step {r['median_step_s']:.2f}s, wall {minutes(r['wall_s'])} "
                      f"({r['run_dir']})", flush=True)
            else:
                print(f"{key:>12}: {r['status']}" + (f" ({r['run_dir']})" if r.get("run_dir") else ""), flush=True)
    print(f"wrote {out} and the algorithm_table section of {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
