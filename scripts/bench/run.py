"""ONE command for every benchmark: relayrl vs TRL's GRPOTrainer vs the machine's own limit.

    .venv/bin/pip install -e ".[parity]"     # TRL (benchmark-only extra, never a runtime dependency)
    .venv/bin/python scripts/bench/run.py [--workloads tiny,gen_heavy,async_split,scaling] [--reps 3]

For each workload (scripts/bench/workloads.py) and each repetition, its sides run one after
another in fresh processes, in an order that alternates between repetitions (relayrl, TRL, bare, then
bare, TRL, relayrl, ...), so a slow minute of the machine does not favour one side. Every figure is
the median over repetitions of each run's own median step, with min-max over repetitions; ratios
are taken within a repetition, then their median reported. Writes scripts/results/bench.json and
BENCHMARKS.md (machine description first: figures from different machines are never compared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import describe, one_line
from sections import write_benchmarks
from workloads import ROOT, WORKLOADS, prompts



def run_side(side: str, workload: str) -> dict:
    out = ROOT / "scripts/results" / f".bench-{side}-{workload}.tmp"
    cmd = [sys.executable, str(Path(__file__).with_name("sides.py")), side, workload, str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} on {workload} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    result["process_s"] = time.perf_counter() - t0
    return result


def have_trl() -> bool:
    try:
        import trl  # noqa: F401
        return True
    except ImportError:
        return False


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(reps: list[dict]) -> dict:
    """reps: [{side: result}] -> medians, spreads and within-repetition ratios."""
    r = lambda side, key: [rep[side][key] for rep in reps if side in rep]  # noqa: E731
    out: dict = {"relayrl_step_s": spread(r("relayrl", "step_s")),
                 "relayrl_samples_per_s": spread(r("relayrl", "samples_per_s")),
                 "relayrl_tokens_per_s": spread(r("relayrl", "tokens_per_s")),
                 "startup_to_first_step_s": spread(r("relayrl", "startup_to_first_step_s")),
                 "ideal_step_s": spread(r("bare", "ideal_step_s")),
                 "bare_vllm_generate_s": spread(r("bare", "vllm_generate_s")),
                 "bare_train_s": spread(r("bare", "train_s")),
                 "hf_generate_s": spread(r("bare", "hf_generate_s")),
                 "ceiling": spread(r("bare", "ceiling")),
                 "overhead_s": spread([rep["relayrl"]["step_s"] - rep["bare"]["ideal_step_s"] for rep in reps]),
                 "relayrl_over_ideal": spread([rep["relayrl"]["step_s"] / rep["bare"]["ideal_step_s"] for rep in reps])}
    phases = [rep["relayrl"]["phases"] for rep in reps]
    inside = [rep["relayrl"]["inside"] for rep in reps]
    out["relayrl_phases_s"] = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
    out["relayrl_inside_s"] = {k: statistics.median(p[k] for p in inside) for k in inside[0]}
    if all("trl" in rep for rep in reps):
        out["trl_step_s"] = spread(r("trl", "step_s"))
        out["trl_samples_per_s"] = spread(r("trl", "samples_per_s"))
        speedups = [rep["trl"]["step_s"] / rep["relayrl"]["step_s"] for rep in reps]
        out["speedup_vs_trl"] = spread(speedups)
        out["share_of_ceiling"] = spread([s / rep["bare"]["ceiling"] for s, rep in zip(speedups, reps)])
    return out


def summarize_async(reps: list[dict]) -> dict:
    """Sync vs async in the same placement: each async variant's step against the sync run's phases."""
    gen = [rep["relayrl"]["phases"]["generate"] for rep in reps]
    learn = [rep["relayrl"]["phases"]["learn"] for rep in reps]
    sync_step = [rep["relayrl"]["step_s"] for rep in reps]
    out = {"sync_step_s": spread(sync_step), "sync_generate_s": spread(gen), "sync_learn_s": spread(learn),
           "bound_sum_over_max": spread([(g + l) / max(g, l) for g, l in zip(gen, learn)])}
    for side in [s for s in reps[0] if s.startswith("relayrl_async")]:
        step = [rep[side]["step_s"] for rep in reps]
        out[side] = {"step_s": spread(step),
                     "over_max_phase": spread([a / max(g, l) for a, g, l in zip(step, gen, learn)]),
                     "samples_per_s_ratio": spread([s / a for s, a in zip(sync_step, step)]),
                     "phases_s": {k: statistics.median(rep[side]["phases"][k] for rep in reps)
                                  for k in reps[0][side]["phases"]},
                     "staleness": {k: statistics.median(rep[side].get("staleness", {}).get(k, 0.0) for rep in reps)
                                   for k in ("mean", "token_mean")}}
    return out


SCALING_SIDES = {"relayrl": "1 worker, 1 rank", "relayrl_w2": "2 workers, 1 rank",
                 "relayrl_k2": "1 worker, 2 ranks", "relayrl_w2k2": "2 workers, 2 ranks"}


def summarize_scaling(reps: list[dict], w) -> dict:
    """Step and phase medians per topology, and the constants docs/scaling.md uses (1 worker, 1 rank)."""
    out = {}
    for side in SCALING_SIDES:
        runs = [rep[side] for rep in reps]
        out[side] = {"step_s": spread([r["step_s"] for r in runs]),
                     **{k: statistics.median(r["phases"][k] for r in runs) for k in ("generate", "learn", "sync")}}
    base = out["relayrl"]
    prompt_len = statistics.mean(len(r["prompt"]) for r in prompts(w.prompts))  # character tokenizer: 1 token/char
    out["constants"] = {
        "gen_tokens_per_s_per_worker": w.prompts * w.group * w.new_tokens / base["generate"],
        "learner_tokens_per_s_per_rank": w.prompts * w.group * (w.new_tokens + prompt_len) / base["learn"],
        "sync_s": base["sync"],
    }
    return out


def report_scaling(name: str, res: dict) -> list[str]:
    w, s = WORKLOADS[name], res["summary"]
    lines = [f"## {name}: the generation-heavy run with 1-2 rollout workers x 1-2 learner ranks ({w.prompts} × "
             f"{w.group} × {w.new_tokens} forced tokens, {res['params']:,} parameters, {res['dtype']}; measured "
             f"{res.get('date', '?')})", "",
             "On 2 cores two workers (or two ranks) each get one core instead of two threads on both: this shows "
             "the cost of splitting the machine, not the gain a cluster gets from adding hardware (see docs/scaling.md).",
             "", "| topology | s / step | generate | learn | weight sync |", "|---|---:|---:|---:|---:|"]
    for side, label in SCALING_SIDES.items():
        r = s[side]
        lines.append(f"| {label} | {fmt(r['step_s'])} | {r['generate']:.2f} | {r['learn']:.2f} | {r['sync']:.3f} |")
    c = s["constants"]
    lines += ["", f"Constants (1 worker, 1 rank): generation {c['gen_tokens_per_s_per_worker']:.0f} tokens/s per "
              f"worker; learner {c['learner_tokens_per_s_per_rank']:.0f} training tokens/s per rank.", ""]
    return lines


ASYNC_SIDES = {"relayrl_async": "async (`trainer.mode=async`, `buffer.max_staleness=1`, TIS)",
               "relayrl_async_partial": "async + `rollout.partial_rollouts=true`"}


def report_async(name: str, res: dict) -> list[str]:
    w, s = WORKLOADS[name], res["summary"]
    sides = [side for side in ASYNC_SIDES if side in s]
    lines = [f"## {name}: sync vs async, rollout worker pinned to core 0 and learner rank to core 1; {w.prompts} "
             f"prompts × {w.group} samples, {w.new_tokens} forced new tokens, {res['params']:,}-parameter Qwen3, "
             f"{res['dtype']} (measured {res.get('date', '?')})", "",
             "| mode | s / step | samples / s | mean staleness of samples / of tokens |", "|---|---:|---:|---:|",
             f"| sync | {fmt(s['sync_step_s'])} | {w.prompts * w.group / s['sync_step_s']['median']:.1f} | 0 / 0 |"]
    for side in sides:
        a = s[side]
        lines.append(f"| {ASYNC_SIDES[side]} | {fmt(a['step_s'])} | {w.prompts * w.group / a['step_s']['median']:.1f} | "
                     f"{a['staleness']['mean']:.2f} / {a['staleness']['token_mean']:.2f} |")
    lines += ["", f"- sync phases: generate {fmt(s['sync_generate_s'])}, learn {fmt(s['sync_learn_s'])}; the bound an "
              f"overlap can reach, sum / max of the two: {fmt(s['bound_sum_over_max'], '×', 2)}"]
    for side in sides:
        a, p = s[side], s[side]["phases_s"]
        lines += [f"- {ASYNC_SIDES[side]}: step / max(sync generate, sync learn) {fmt(a['over_max_phase'], '×', 2)}; "
                  f"samples/s ÷ sync samples/s {fmt(a['samples_per_s_ratio'], '×', 2)}; step by phase (medians, s): "
                  f"waiting for the batch {p['generate']:.2f}, learn {p['learn']:.2f}, weight push and probe {p['sync']:.2f}"]
    return lines + [""]


def fmt(s: dict, unit: str = "s", digits: int = 3) -> str:
    return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def report(machine: dict, results: dict, reps: int) -> str:
    lines = ["# Benchmarks", "",
             f"Made by `.venv/bin/python scripts/bench/run.py` ({time.strftime('%Y-%m-%d')}); JSON: "
             "`scripts/results/bench.json`. Each figure: median over "
             f"{reps} repetitions of each run's median step (min–max over repetitions); ratios taken within a "
             "repetition, sides alternated.", "", f"**Machine:** {one_line(machine)}", ""]
    for name, res in results.items():
        w = WORKLOADS[name]
        s = res["summary"]
        if "relayrl_async" in w.sides:
            lines += report_async(name, res)
            continue
        if "relayrl_w2" in w.sides:
            lines += report_scaling(name, res)
            continue
        lines += [f"## {name}: {w.prompts} prompts × {w.group} samples, {w.new_tokens} "
                  f"{'forced ' if w.fixed_length else 'max '}new tokens, "
                  f"{res['params']:,}-parameter Qwen3, {res['dtype']} (measured {res.get('date', '?')})", "",
                  "| side | s / step | samples / s |", "|---|---:|---:|",
                  f"| relayrl (`relayrl train`: Ray, vLLM worker, scorer, DeepSpeed, weight broadcast) | "
                  f"{fmt(s['relayrl_step_s'])} | {s['relayrl_samples_per_s']['median']:.1f} |"]
        if "trl_step_s" in s:
            lines.append(f"| TRL `GRPOTrainer` (HF generate) | {fmt(s['trl_step_s'])} | "
                         f"{s['trl_samples_per_s']['median']:.1f} |")
        lines += [f"| bare ideal: vLLM `generate` + PyTorch train pass, one process | {fmt(s['ideal_step_s'])} | "
                  f"{w.prompts * w.group / s['ideal_step_s']['median']:.1f} |", ""]
        p, i = s["relayrl_phases_s"], s["relayrl_inside_s"]
        lines += ["relayrl's step, by phase (medians, s): "
                  f"generate+score {p['generate']:.3f} (engine {i['engine']:.3f}, scoring {i['scoring']:.3f} summed over "
                  f"groups; bare vLLM {s['bare_vllm_generate_s']['median']:.3f}), batch {p['batch']:.3f}, "
                  f"learn {p['learn']:.3f} (inside the rank {i['learner_inside']:.3f}; bare PyTorch "
                  f"{s['bare_train_s']['median']:.3f}), weight sync {p['sync']:.3f}; the rest of the step "
                  f"(driver bookkeeping, metrics) "
                  f"{s['relayrl_step_s']['median'] - sum(p[k] for k in ('generate', 'batch', 'learn', 'sync')):.3f}.", "",
                  f"- overhead above the bare ideal: {fmt(s['overhead_s'])}; relayrl / ideal "
                  f"{fmt(s['relayrl_over_ideal'], '×', 2)}",
                  f"- start-up (`relayrl train` to the first step's start): {fmt(s['startup_to_first_step_s'], 's', 1)}"]
        if "speedup_vs_trl" in s:
            lines += [f"- relayrl vs TRL (TRL s/step ÷ relayrl s/step): {fmt(s['speedup_vs_trl'], '×', 2)}; sync "
                      f"ceiling (HF generate + train) / (vLLM generate + train) {fmt(s['ceiling'], '×', 2)}; "
                      f"relayrl reaches {100 * s['share_of_ceiling']['median']:.0f}% of it "
                      f"({100 * s['share_of_ceiling']['min']:.0f}–{100 * s['share_of_ceiling']['max']:.0f}%)"]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="tiny,gen_heavy,async_split,scaling")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "scripts/results/bench.json"))
    ap.add_argument("--md", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args()
    trl = have_trl()
    if not trl:
        print("TRL not installed (pip install -e '.[parity]'): the TRL side is skipped", file=sys.stderr)
    machine = describe()
    out = Path(args.out)
    # workloads not run this time keep their last results, if they were measured on this same machine
    previous = json.loads(out.read_text()) if out.exists() else {}
    results = previous.get("results", {}) if previous.get("machine") == machine else {}
    for kept in results.values():
        kept.setdefault("date", previous.get("date", "?"))
    for name in args.workloads.split(","):
        w = WORKLOADS[name]
        from cluster.tiny_model import make_tiny_model, num_parameters
        from workloads import resolved_dtype

        make_tiny_model(w.model_dir, w.spec)
        reps = []
        for rep in range(args.reps):
            order = [s for s in w.sides if s != "trl" or trl]
            if rep % 2:
                order.reverse()
            res = {}
            for side in order:
                res[side] = run_side(side, name)
                print(f"[bench] {name} rep {rep + 1}/{args.reps} {side}: "  # noqa: E501
                      f"{res[side].get('step_s', res[side].get('ideal_step_s')):.3f} s/step "
                      f"({res[side]['process_s']:.0f}s)", flush=True)
            reps.append(res)
        summary = (summarize_async(reps) if "relayrl_async" in w.sides else
                   summarize_scaling(reps, w) if "relayrl_w2" in w.sides else summarize(reps))
        results[name] = {"params": num_parameters(w.model_dir), "dtype": resolved_dtype(w), "reps": reps,
                         "date": time.strftime("%Y-%m-%d %H:%M"), "summary": summary}
    payload = {"machine": machine, "command": "python scripts/bench/run.py " + " ".join(sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d %H:%M"), "results": results}
    out.write_text(json.dumps(payload, indent=1))
    write_benchmarks(Path(args.md), report(machine, results, args.reps))  # keeps the algorithm table
    print(Path(args.md).read_text())


if __name__ == "__main__":
    main()
