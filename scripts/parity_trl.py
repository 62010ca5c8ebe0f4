"""Learning parity with TRL: does relayrl's GRPO learn what TRL's GRPOTrainer learns, with matched settings?

"The same algorithm must learn the same, whatever the machinery around it." For each seed, both
trainers start from ONE shared warm-started model and run S steps of GRPO with the same settings;
ONE evaluator then scores every final model on the held-out split, and the per-seed accuracies of
the two sides are compared against their seed-to-seed spread.

1. Starting model: the project's tiny Qwen3 (cluster.tiny_model, ~0.3M parameters, char tokenizer),
   warm-started by a short plain-PyTorch supervised run on the arithmetic train split (answer + EOS
   tokens; AdamW) so that RL starts from partial accuracy. Deterministic, cached by its settings.
2. relayrl: `relayrl train configs/demo_grpo.yaml` as a subprocess with overrides (see
   `relayrl_overrides`): Ray + vLLM rollouts + DeepSpeed learner; its exported final_model is scored.
3. TRL: `trl.GRPOTrainer` (the `parity` extra) in a subprocess of this script, HF generate on CPU.
   Matched (see `trl_config`): prompts per step P and group size G (generation batch = P*G
   completions = one optimizer step; num_iterations=1, so the PPO ratio is 1 on both sides),
   token-mean aggregation over the whole batch (loss_type "dapo"), GRPO advantages
   (r - mean_g) / (std_g + 1e-4) with unbiased std on both sides, clip 0.2, no KL, AdamW
   (betas, eps, weight decay 0), constant lr without warm-up, grad clip 1.0, temperature 1,
   8 new tokens, fp32. The prompts too: TRL gets relayrl's prompt stream for that seed, in order,
   unshuffled, so both sides train on the same P prompts at every step. Reward: the same
   `actors.tasks.arithmetic.check` (exact answer up to EOS).
4. Evaluation: greedy decoding, exact match, all rows of configs/data/arithmetic/test.jsonl, with
   one HF greedy loop (prompts batched by length, so no padding) for every model.
5. Verdict: |mean_relayrl - mean_trl| <= 2 * SE, SE = sqrt(s_r^2/n + s_t^2/n) over the n seeds.

What cannot be matched: the sampling RNG streams (vLLM's per-request seeds vs torch's global
generator in HF generate), so the same seed gives different completions on the two sides; and
float summation order in the two forward/backward implementations. Seeds average these out.

    .venv/bin/pip install -e ".[parity]"     # TRL and its data stack; changes no pinned package
    flock /tmp/relayrl-heavy.lock .venv/bin/python scripts/parity_trl.py [--seeds 0,1,2] [--steps S]

Run from the repository root. Writes scripts/results/parity_trl.json and prints a markdown table;
docs/parity.md has the measured table. Defaults (S=300, P=16, G=8, lr 3e-4): ~1.7 min per seed on
2 CPU cores (relayrl ~75 s incl. ~25 s start-up, TRL ~30 s incl. ~10 s imports).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRAIN = ROOT / "configs/data/arithmetic/train.jsonl"
TEST = ROOT / "configs/data/arithmetic/test.jsonl"
CONFIG = ROOT / "configs/demo_grpo.yaml"


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """The plain-PyTorch supervised run that makes the shared starting model."""

    steps: int = 1200  # ~25% greedy held-out accuracy: room to improve, enough reward to learn from
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Matched:
    """The GRPO settings both trainers get. Each field maps to one relayrl key and one TRL field."""

    steps: int = 300  # optimizer steps S (= generation rounds: one step per batch on both sides)
    prompts_per_step: int = 16  # P
    group_size: int = 8  # G completions per prompt
    lr: float = 3e-4  # constant, no warm-up
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_eps: float = 0.2  # PPO clip, both sides (irrelevant at ratio 1, kept equal anyway)
    std_eps: float = 1e-4  # TRL's fixed epsilon in (r - mean) / (std + eps); relayrl's grpo param
    temperature: float = 1.0
    max_new_tokens: int = 8


# ---- 1. the shared starting model ---------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def warm_started_model(cache: Path, ws: WarmStart) -> Path:
    """Tiny Qwen3 + supervised warm start, saved as a HF directory; reused when its settings match."""
    from cluster.tiny_model import TinyModelSpec, make_tiny_model

    spec = TinyModelSpec()
    key = json.dumps({"spec": dataclasses.asdict(spec), "warm": dataclasses.asdict(ws),
                      "data": hashlib.sha256(TRAIN.read_bytes()).hexdigest()[:16]}, sort_keys=True)
    out = cache / f"warm-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    stamp = out / "parity_warm_start.json"
    if stamp.exists() and stamp.read_text() == key:
        return out

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = make_tiny_model(cache / "tiny-init", spec)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(ws.seed)
    rng = random.Random(ws.seed)
    rows = read_jsonl(TRAIN)
    opt = torch.optim.AdamW(model.parameters(), lr=ws.lr, weight_decay=0.0)
    model.train()
    t0 = time.perf_counter()
    for step in range(1, ws.steps + 1):
        ids, labels = sft_batch(rng.sample(rows, ws.batch_size), tok)
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, ws.steps // 5) == 0:
            print(f"warm start {step}/{ws.steps}: loss {loss.item():.4f}", flush=True)
    print(f"warm start: {ws.steps} steps in {time.perf_counter() - t0:.1f}s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    stamp.write_text(key)
    return out


def sft_batch(rows: list[dict], tok):
    """Right-padded prompt + answer + EOS; the loss is on the answer and EOS tokens only."""
    import torch

    seqs, targets = [], []
    for r in rows:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        a = tok(r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seqs.append(p + a)
        targets.append([-100] * len(p) + a)
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
    return ids, labels


# ---- 4. the one evaluator ------------------------------------------------------------------------

def greedy_accuracy(model_dir: Path, rows: list[dict], max_new_tokens: int) -> float:
    """Exact-match accuracy of greedy completions (HF generate, fp32). Prompts are batched by token
    length, so no sequence is padded and positions are the plain 0..L-1 every trainer used."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.tasks.arithmetic import check

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    by_len: dict[int, list[tuple[list[int], str]]] = {}
    for r in rows:
        ids = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        by_len.setdefault(len(ids), []).append((ids, r["answer"]))
    correct = 0
    with torch.no_grad():
        for items in by_len.values():
            ids = torch.tensor([i for i, _ in items])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
            texts = tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
            correct += sum(check(t, a) == 1.0 for t, (_, a) in zip(texts, items))
    return correct / len(rows)


# ---- 2. relayrl ------------------------------------------------------------------------------------

def relayrl_overrides(m: Matched, seed: int, model_dir: Path, run_dir: Path) -> list[str]:
    return [
        f"model.path={model_dir}", "model.tiny=null", "trainer.warm_start.steps=0",
        f"trainer.seed={seed}", f"rollout.seed={seed}", f"learner.seed={seed}", f"data.seed={seed}",
        f"trainer.total_steps={m.steps}", f"trainer.prompts_per_step={m.prompts_per_step}", f"rollout.n={m.group_size}",
        "algorithm.advantage.name=grpo", f"algorithm.advantage.params.eps={m.std_eps}",
        "algorithm.surrogate.name=ppo_clip",
        f"algorithm.surrogate.params.clip_low={m.clip_eps}", f"algorithm.surrogate.params.clip_high={m.clip_eps}",
        "algorithm.aggregation.name=token-mean", "algorithm.off_policy.name=none",
        "algorithm.kl_coef=0.0", "algorithm.entropy_coef=0.0", "algorithm.epochs=1", "algorithm.mini_batches=1",
        "learner.optimizer.name=adamw", f"learner.optimizer.lr={m.lr}", "learner.optimizer.schedule=constant",
        "learner.optimizer.warmup_steps=0", f"learner.optimizer.betas=[{m.betas[0]},{m.betas[1]}]",
        f"learner.optimizer.eps={m.adam_eps}", f"learner.optimizer.weight_decay={m.weight_decay}",
        f"learner.grad_clip={m.grad_clip}", "learner.dtype=float32", "model.dtype=float32",
        f"rollout.sampling.temperature={m.temperature}", "rollout.sampling.top_p=1.0", "rollout.sampling.top_k=-1",
        f"rollout.sampling.max_new_tokens={m.max_new_tokens}",
        # bookkeeping only (none of these changes what is learned)
        "trainer.eval_every=0", "checkpoint.export_hf=true", "logging.progress=false", "logging.tensorboard=false",
        "logging.dump_samples_every=0", "weight_sync.verify_every=0", f"logging.run_dir={run_dir}",
    ]


def run_relayrl(m: Matched, seed: int, model_dir: Path, work: Path) -> dict:
    run_dir = work / f"relayrl-seed{seed}"
    cli = Path(sys.executable).with_name("relayrl")
    cmd = [str(cli), "train", str(CONFIG), *relayrl_overrides(m, seed, model_dir, run_dir)]
    t0 = time.perf_counter()
    log = work / f"relayrl-seed{seed}.log"
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"relayrl seed {seed} failed (exit {proc.returncode}); see {log}")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in metrics if "reward/mean" in r]
    evals = [r for r in metrics if "eval/accuracy" in r]
    return {"model": run_dir / "final_model", "wall_s": wall, "train_reward": [r["reward/mean"] for r in steps],
            # relayrl's own held-out eval (vLLM greedy) of the same weights: a check on the shared evaluator
            "own_eval_after": evals[-1]["eval/accuracy"] if evals else None}


# ---- 3. TRL ------------------------------------------------------------------------------------------

def relayrl_prompt_order(seed: int, steps: int, per_step: int) -> list[dict]:
    """The rows relayrl's PromptStream gives its first `steps` steps with data.seed=seed (shuffle on,
    as in the demo), taken step by step as the trainer does (a take crossing an epoch boundary keeps
    its own prompts out of the new epoch, so one big take would differ)."""
    from cluster.data import PromptStream

    stream = PromptStream(read_jsonl(TRAIN), seed, shuffle=True)
    return [row for _ in range(steps) for row in stream.take(per_step)]


def trl_config(m: Matched, seed: int, out_dir: Path):
    from trl import GRPOConfig

    batch = m.prompts_per_step * m.group_size
    return GRPOConfig(
        output_dir=str(out_dir), seed=seed, data_seed=seed, use_cpu=True, bf16=False, fp16=False,
        max_steps=m.steps,
        # one generation batch of P*G completions == one optimizer step, used once (num_iterations=1)
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, num_generations=m.group_size,
        num_iterations=1, shuffle_dataset=False,  # the dataset already is relayrl's stream, in order
        loss_type="dapo", scale_rewards="group", epsilon=m.clip_eps, beta=0.0,
        learning_rate=m.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        adam_beta1=m.betas[0], adam_beta2=m.betas[1], adam_epsilon=m.adam_eps, weight_decay=m.weight_decay,
        max_grad_norm=m.grad_clip,
        use_vllm=False, temperature=m.temperature, top_p=1.0, top_k=0, max_completion_length=m.max_new_tokens,
        gradient_checkpointing=False, disable_dropout=True,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )


# the GRPOConfig fields recorded in the results (the matched ones and those that define the batch)
TRL_KEYS_SHOWN = ("per_device_train_batch_size", "gradient_accumulation_steps", "generation_batch_size",
                  "steps_per_generation", "num_generations", "num_iterations", "shuffle_dataset", "loss_type",
                  "scale_rewards", "epsilon", "epsilon_high", "beta", "learning_rate", "lr_scheduler_type",
                  "warmup_steps", "optim", "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay",
                  "max_grad_norm", "use_vllm", "temperature", "top_p", "top_k", "max_completion_length",
                  "bf16", "fp16", "max_steps", "seed")


def trl_child(args: argparse.Namespace) -> None:
    """Runs in its own process: one TRL GRPO run, final model saved to args.out."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from actors.tasks.arithmetic import check

    m = Matched(**json.loads(args.matched))
    rows = relayrl_prompt_order(args.seed, m.steps, m.prompts_per_step)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])

    def arithmetic(prompts, completions, answer, **_) -> list[float]:
        return [check(c, a) for c, a in zip(completions, answer)]

    out = Path(args.out)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=arithmetic, args=trl_config(m, args.seed, out / "trainer"),
                          train_dataset=dataset, processing_class=tok)
    trainer.train()
    trainer.model.save_pretrained(out / "final_model")
    tok.save_pretrained(out / "final_model")
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    (out / "train_reward.json").write_text(json.dumps(rewards))


def run_trl(m: Matched, seed: int, model_dir: Path, work: Path) -> dict:
    out = work / f"trl-seed{seed}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "_trl", "--seed", str(seed), "--model", str(model_dir),
           "--out", str(out), "--matched", json.dumps(dataclasses.asdict(m))]
    log = work / f"trl-seed{seed}.log"
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"TRL seed {seed} failed (exit {proc.returncode}); see {log}")
    return {"model": out / "final_model", "wall_s": wall,
            "train_reward": json.loads((out / "train_reward.json").read_text())}


# ---- 5. comparison -----------------------------------------------------------------------------------

def summarize(start: float, per_seed: dict[int, dict], n_test: int) -> dict:
    rows = list(per_seed.values())
    acc = compare([r["relayrl"] for r in rows], [r["trl"] for r in rows])
    sd = (lambda side: statistics.stdev([r[side] for r in rows]) if len(rows) > 1 else float("nan"))
    mean_acc = (acc["relayrl"] + acc["trl"]) / 2
    return {
        "start": start,
        "relayrl": {"mean": acc["relayrl"], "std": sd("relayrl")},
        "trl": {"mean": acc["trl"], "std": sd("trl")},
        "gain": {"relayrl": acc["relayrl"] - start, "trl": acc["trl"] - start},
        "diff_of_means": acc["diff"],
        "se_of_diff": acc["tolerance_2se"] / 2,
        # what the test can resolve: a difference smaller than this would not be called significant
        "tolerance_2se": acc["tolerance_2se"],
        # evaluation noise alone (binomial, one model on n_test prompts), for scale
        "binomial_se_one_model": math.sqrt(mean_acc * (1 - mean_acc) / n_test),
        "within_noise": acc["within_noise"],
        "rule": "|mean_relayrl - mean_trl| <= 2 * sqrt(sd_relayrl^2/n + sd_trl^2/n), sd over seeds (n-1)",
        "train_reward_mean": compare([r["relayrl_train_reward_mean"] for r in rows],
                                     [r["trl_train_reward_mean"] for r in rows]),
    }


def compare(r: list[float], t: list[float]) -> dict:
    """The same rule for any per-seed statistic."""
    n = len(r)
    se = math.sqrt(statistics.variance(r) / n + statistics.variance(t) / n) if n > 1 else float("nan")
    diff = statistics.fmean(r) - statistics.fmean(t)
    return {"relayrl": statistics.fmean(r), "trl": statistics.fmean(t), "diff": diff, "tolerance_2se": 2 * se,
            "within_noise": bool(abs(diff) <= 2 * se) if n > 1 else None}


def table(res: dict) -> str:
    pct = (lambda x: f"{100 * x:.1f}")
    lines = ["| seed | start | relayrl | TRL | relayrl − TRL | relayrl wall (s) | TRL wall (s) |",
             "|---|---|---|---|---|---|---|"]
    for s, row in res["per_seed"].items():
        lines.append(f"| {s} | {pct(res['summary']['start'])} | {pct(row['relayrl'])} | {pct(row['trl'])} | "
                     f"{100 * (row['relayrl'] - row['trl']):+.1f} | {row['relayrl_wall_s']:.0f} | "
                     f"{row['trl_wall_s']:.0f} |")
    sm = res["summary"]
    lines.append(f"| mean ± sd | {pct(sm['start'])} | {pct(sm['relayrl']['mean'])} ± {pct(sm['relayrl']['std'])} | "
                 f"{pct(sm['trl']['mean'])} ± {pct(sm['trl']['std'])} | {100 * sm['diff_of_means']:+.1f} "
                 f"(2·SE {100 * sm['tolerance_2se']:.1f}) | | |")
    verdict = "within noise" if sm["within_noise"] else "NOT within noise"
    tr = sm["train_reward_mean"]
    return ("\n".join(lines) + f"\n\nheld-out greedy accuracy (%), {len(res['per_seed'])} seeds: {verdict}\n"
            f"mean sampled training reward over the run: relayrl {tr['relayrl']:.3f}, TRL {tr['trl']:.3f} "
            f"(diff {tr['diff']:+.3f}, 2·SE {tr['tolerance_2se']:.3f}: "
            f"{'within noise' if tr['within_noise'] else 'NOT within noise'})")


def run_side(side: str, m: Matched, seed: int, start_dir: Path, work: Path, test_rows: list[dict]) -> dict:
    """Train one side from the shared start, score its final model with the shared evaluator."""
    got = {"relayrl": run_relayrl, "trl": run_trl}[side](m, seed, start_dir, work)
    rewards = got["train_reward"]
    row = {side: greedy_accuracy(got["model"], test_rows, m.max_new_tokens), f"{side}_wall_s": got["wall_s"],
           f"{side}_train_reward_first10": statistics.fmean(rewards[:10]),
           f"{side}_train_reward_last10": statistics.fmean(rewards[-10:]),
           # both sides see the same prompts at every step: the run's mean sampled reward is a second,
           # lower-variance learning statistic (it integrates the whole curve)
           f"{side}_train_reward_mean": statistics.fmean(rewards)}
    if got.get("own_eval_after") is not None:  # relayrl's own vLLM greedy eval: checks the shared evaluator
        row["relayrl_own_vllm_eval"] = got["own_eval_after"]
    print(f"seed {seed} {side}: held-out accuracy {100 * row[side]:.1f}% (train reward "
          f"{row[f'{side}_train_reward_first10']:.3f} -> {row[f'{side}_train_reward_last10']:.3f}, "
          f"{got['wall_s']:.0f}s)", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    d = Matched()
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--prompts-per-step", type=int, default=d.prompts_per_step)
    ap.add_argument("--group-size", type=int, default=d.group_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--sides", default="relayrl,trl", help="for trying one side; the comparison needs both")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/relayrl/parity"))
    ap.add_argument("--work", default="", help="run directories (default: runs/parity-<time>)")
    ap.add_argument("--out", default=str(ROOT / "scripts/results/parity_trl.json"))
    args = ap.parse_args(argv)

    m = Matched(steps=args.steps, prompts_per_step=args.prompts_per_step, group_size=args.group_size, lr=args.lr)
    ws = WarmStart()
    seeds = [int(s) for s in args.seeds.split(",")]
    sides = args.sides.split(",")
    work = Path(args.work or ROOT / f"runs/parity-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    test_rows = read_jsonl(TEST)
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    start_dir = warm_started_model(Path(args.cache).expanduser(), ws)
    warm_s = time.perf_counter() - t0
    start = greedy_accuracy(start_dir, test_rows, m.max_new_tokens)
    print(f"starting model {start_dir}: held-out accuracy {100 * start:.1f}% ({warm_s:.0f}s)", flush=True)

    per_seed = {seed: {k: v for side in sides for k, v in run_side(side, m, seed, start_dir, work, test_rows).items()}
                for seed in seeds}

    import torch
    import transformers
    import trl

    res = {
        "what": "held-out greedy exact-match accuracy of relayrl GRPO vs TRL GRPOTrainer from one shared start",
        "command": " ".join(["flock /tmp/relayrl-heavy.lock .venv/bin/python scripts/parity_trl.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "matched": dataclasses.asdict(m),
        "warm_start": dataclasses.asdict(ws),
        "relayrl_overrides": relayrl_overrides(m, seeds[0], Path("<warm>"), Path("<run_dir>")),
        "trl_config": {k: v for k, v in trl_config(m, seeds[0], Path("<out>")).to_dict().items()
                       if k in TRL_KEYS_SHOWN},
        "eval": {"split": str(TEST.relative_to(ROOT)), "rows": len(test_rows), "decoding": "greedy, HF generate, fp32",
                 "max_new_tokens": m.max_new_tokens, "metric": "actors.tasks.arithmetic.check == 1"},
        "per_seed": per_seed,
        # seconds; warm_start is ~0 when the starting model is cached; <side>_mean: one run, start-up included
        "timing_s": {"warm_start": warm_s, "total": time.perf_counter() - t_all,
                     **{f"{side}_mean": statistics.fmean(r[f"{side}_wall_s"] for r in per_seed.values())
                        for side in sides}},
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                     "python": platform.python_version(), "cpus": os.cpu_count()},
        "work_dir": str(work),
    }
    if set(sides) >= {"relayrl", "trl"}:
        res["summary"] = summarize(start, per_seed, len(test_rows))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
        print(table(res))
        print(f"wrote {args.out}")
    else:
        print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_trl":
        p = argparse.ArgumentParser()
        p.add_argument("_trl")
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--model", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--matched", required=True)
        trl_child(p.parse_args())
    else:
        main()
