"""Routing replay measured: how often the learner's router picks the sampler's experts, and how far
learner and sampler logprobs are apart, with replay off and on — and the dense model's gap beside them.

    .venv/bin/python scripts/moe_replay.py [--steps 30] [--dtype bfloat16] [--rounds 1]

Arms (each: the demo's warm start, then --steps RL steps of its config, model.dtype=--dtype):
  dense       configs/demo_gspo.yaml (the dense tiny Qwen3, GSPO)
  moe_off     configs/demo_moe.yaml at the dense arm's batch (32 prompts, no dynamic sampling), routing
              recorded (for the agreement), learner.routing_replay=false
  moe_on      the same with replay on, as shipped
Per step the learner recomputes the sampling policy's logprobs (mini_batches=2), which gives the
learner-vs-sampler gap (learner/old_sampler_logprob_diff_mean/max) and, for MoE, the agreement of
its own top-k with the recorded one (moe/routing_agreement) and of the experts actually used
(moe/used_routing_agreement). Round r runs every arm with seed r (trainer.seed and data.seed; a run
is deterministic for a seed, so repeating one seed measures nothing): another warm start, other
samples. Reported: medians over steps and rounds, each round's median (the spread over seeds), and
the step-time median.
bf16 is where the engines' routing disagree (fp32 agrees to ~1.0); on an AVX2-only machine bf16 is
~3x slower than fp32 (STACK-NOTES), so expect the run to take longer there.

Writes scripts/results/moe_replay.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.metrics import read_metrics  # noqa: E402

RESULTS = ROOT / "scripts" / "results"
# the MoE arms train the dense arm's batch: 32 prompts, every group, after the fixed 1,300-step warm
# start (the MoE demo's 64 prompts with dynamic sampling since 12-06, and its warm start to a target
# accuracy since 12-07, would change what is compared, and the recorded measurement)
SAME_BATCH = ["trainer.prompts_per_step=32", "buffer.dynamic_sampling=false", "trainer.warm_start.steps=1300",
              "trainer.warm_start.target_accuracy=0"]
ARMS = {
    "dense": ("configs/demo_gspo.yaml", []),
    "moe_off": ("configs/demo_moe.yaml", [*SAME_BATCH, "learner.routing_replay=false"]),
    "moe_on": ("configs/demo_moe.yaml", SAME_BATCH),
}
KEYS = ["moe/routing_agreement", "moe/used_routing_agreement", "learner/old_sampler_logprob_diff_mean",
        "learner/old_sampler_logprob_diff_max", "timing/step"]


def machine() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = "AVX512-BF16" if "avx512_bf16" in flags else ("AVX-512" if "avx512f" in flags else "AVX2-only")
    return f"{platform.machine()} {isa}"


def run(arm: str, steps: int, dtype: str, seed: int, workdir: Path) -> dict:
    config, extra = ARMS[arm]
    run_dir = workdir / arm
    over = [*extra, f"model.dtype={dtype}", f"trainer.seed={seed}", f"data.seed={seed}",
            f"trainer.total_steps={steps}", "trainer.eval_every=0", "trainer.eval_max_prompts=1",
            f"logging.run_dir={run_dir}", "logging.progress=false", "checkpoint.export_hf=false",
            "logging.dump_samples_every=0", "weight_sync.verify_every=0"]
    t0 = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).with_name("relayrl")), "train", config, *over],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{arm} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    train = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    return {"seconds": time.perf_counter() - t0, "steps": {k: [r[k] for r in train if k in r] for k in KEYS}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    per_arm: dict[str, dict[str, list[float]]] = {a: {k: [] for k in KEYS} for a in ARMS}
    per_round: dict[str, dict[str, list[float]]] = {a: {k: [] for k in KEYS} for a in ARMS}  # each round's median
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            order = list(ARMS) if rnd % 2 == 0 else list(reversed(ARMS))  # sides alternated
            for arm in order:
                res = run(arm, args.steps, args.dtype, rnd, Path(tmp) / f"r{rnd}")
                for k, v in res["steps"].items():
                    per_arm[arm][k] += v
                    if v:
                        per_round[arm][k].append(statistics.median(v))
                print(f"round {rnd + 1} (seed {rnd}) {arm}: {res['seconds']:.0f}s", flush=True)
    summary = {arm: {k: statistics.median(v) for k, v in vals.items() if v} for arm, vals in per_arm.items()}
    for arm, s in summary.items():
        print(f"{arm:>8}: " + ", ".join(
            f"{k.split('/')[-1]} {v:.4g} (rounds {min(per_round[arm][k]):.4g}-{max(per_round[arm][k]):.4g})"
            for k, v in s.items()))
    RESULTS.mkdir(exist_ok=True)
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "dtype": args.dtype, "steps": args.steps,
           "rounds": args.rounds, "median": summary,
           "round_medians": {a: {k: v for k, v in vals.items() if v} for a, vals in per_round.items()},
           "per_step": per_arm}
    (RESULTS / "moe_replay.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS / 'moe_replay.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
