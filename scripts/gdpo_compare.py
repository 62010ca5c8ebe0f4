"""Two reward components, two ways to turn them into advantages: the demo task trained with
`algorithm.reward_combine=sum` (normalise the weighted sum within each group) and `per_component`
(GDPO: each component normalised within its group, then combined and whitened over the batch).

Components: `arithmetic` (the answer is right, weight 1) and `format` (weight 0.5): the completion is
at most three digits. The two disagree on purpose: a sum of 1000 or more needs four digits, so for
those prompts the right answer loses the format credit — the reward ambiguity GDPO is about (a sum
of components hides which behaviour was rewarded).

    .venv/bin/python scripts/gdpo_compare.py [--steps 100]

Runs both variants one after the other on the same seeds (each: the demo's warm start, then --steps
RL steps), and writes scripts/results/gdpo_compare.json and scripts/results/gdpo_compare.png: per
variant, each component's mean reward per step and held-out accuracy before and after.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.metrics import read_metrics  # noqa: E402

RESULTS = ROOT / "scripts" / "results"
COMPONENTS = ["arithmetic", "format"]
REWARDS = ("reward.functions=[{name: arithmetic, weight: 1.0}, "
           "{name: format, weight: 0.5, params: {pattern: '\\d{1,3}', mode: fullmatch}}]")
VARIANTS = {"sum": ["algorithm.reward_combine=sum"], "per_component": ["algorithm.reward_combine=per_component"]}


def run(variant: str, steps: int, workdir: Path) -> dict:
    run_dir = workdir / variant
    over = [REWARDS, *VARIANTS[variant], f"trainer.total_steps={steps}", f"trainer.eval_every={steps}",
            f"logging.run_dir={run_dir}", "logging.progress=false", "checkpoint.export_hf=false",
            "logging.dump_samples_every=0"]
    t0 = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).with_name("relayrl")), "train", "configs/demo_grpo.yaml", *over],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{variant} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rows = read_metrics(run_dir)
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    return {"seconds": round(time.perf_counter() - t0, 1),
            "accuracy_before": evals[0]["eval/accuracy"], "accuracy_after": evals[-1]["eval/accuracy"],
            "curves": {c: [r[f"reward/{c}"] for r in train] for c in COMPONENTS}}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COMPONENTS), figsize=(10, 3.6))
    for ax, comp in zip(axes, COMPONENTS):
        for variant, res in results.items():
            ys = res["curves"][comp]
            k = 10  # moving average over 10 steps
            smooth = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1]) for i in range(len(ys))]
            ax.plot(range(1, len(ys) + 1), smooth, label=variant)
        ax.set_title(f"reward/{comp} (10-step mean)")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            results[variant] = run(variant, args.steps, Path(tmp))
            r = results[variant]
            tail = {c: sum(v[-10:]) / len(v[-10:]) for c, v in r["curves"].items()}
            print(f"{variant:>13}: held-out {100 * r['accuracy_before']:.1f}% -> {100 * r['accuracy_after']:.1f}%, "
                  f"last 10 steps: " + ", ".join(f"{c} {v:.3f}" for c, v in tail.items()) + f" ({r['seconds']:.0f}s)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gdpo_compare.json").write_text(json.dumps({"steps": args.steps, "results": results}, indent=1))
    plot(results, RESULTS / "gdpo_compare.png")
    print(f"wrote {RESULTS / 'gdpo_compare.json'} and {RESULTS / 'gdpo_compare.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
