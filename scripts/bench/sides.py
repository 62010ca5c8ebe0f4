"""The three sides of a benchmark, each run in its own process by run.py:

    python scripts/bench/sides.py relayrl|bare|trl WORKLOAD OUT.json

relayrl  `relayrl train` as a user runs it (Ray, vLLM rollout worker, reward scorer, DeepSpeed
         learner, weight broadcast), sized to the workload; per-step wall times from metrics.jsonl.
bare     the machine's own limit for the same work in one process: vLLM `LLM.generate` of the
         step's samples, then a plain PyTorch training pass over them (same micro-batches, AdamW,
         bf16 autocast where the workload's dtype is bf16); also HF `generate` of the same samples,
         which is what TRL's generation costs (for the sync ceiling).
trl      TRL's GRPOTrainer with the same model, batch, completion length, optimizer, lr, loss
         aggregation (token-mean: loss_type "dapo"), dtype; per-step times from a callback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workloads import ROOT, WORKLOADS, Workload, prompts, resolved_dtype

THREADS = 2  # both cores, on every side


def ensure_model(w: Workload) -> str:
    from cluster.tiny_model import make_tiny_model

    return str(make_tiny_model(w.model_dir, w.spec))


# ---- relayrl --------------------------------------------------------------------------------------

def relayrl_overrides(w: Workload, run_dir: Path, mode: str = "sync") -> list[str]:
    spec = [f"model.tiny.{k}={v}" for k, v in dataclasses.asdict(w.spec).items()]
    extra = []
    if w.split_cores:
        extra += ["rollout.cpu_cores=[0]", "rollout.threads_per_worker=1", "learner.cpu_cores=[1]",
                  "learner.threads_per_rank=1"]
    if mode.startswith("async"):  # one step ahead, truncated IS against the sampler's logprobs
        extra += ["trainer.mode=async", "buffer.max_staleness=1", "algorithm.off_policy.name=tis"]
    if mode == "async_partial":  # weights loaded mid-generation
        extra += ["rollout.partial_rollouts=true"]
    if "w2" in mode:  # two rollout workers, one core each
        extra += ["rollout.num_workers=2"]
    if "k2" in mode:  # two learner ranks (DeepSpeed data parallel), one thread each
        extra += ["learner.num_ranks=2"]
    return [*extra,
        f"model.path={w.model_dir}", *spec, f"model.dtype={w.dtype}",
        "trainer.warm_start.steps=0", "data.eval_files=[]", "data.max_prompt_tokens=16",
        f"trainer.total_steps={w.warmup + w.steps}", f"trainer.prompts_per_step={w.prompts}", f"rollout.n={w.group}",
        f"rollout.sampling.max_new_tokens={w.new_tokens}",
        f"rollout.sampling.min_new_tokens={w.new_tokens if w.fixed_length else 0}",
        f"rollout.max_model_len={16 + w.new_tokens + 8}", "rollout.kv_cache_gib=0.5",
        "algorithm.mini_batches=1", "algorithm.aggregation.name=token-mean", f"learner.optimizer.lr={w.lr}",
        "learner.micro_batch_tokens=8192",
        "trainer.eval_every=0", "checkpoint.export_hf=false", "logging.progress=false", "logging.tensorboard=false",
        "logging.dump_samples_every=0", "weight_sync.verify_every=0", f"logging.run_dir={run_dir}",
    ]


def run_relayrl(w: Workload, mode: str = "sync") -> dict:
    ensure_model(w)
    with tempfile.TemporaryDirectory(prefix="relayrl-bench-") as tmp:
        run_dir = Path(tmp) / "run"
        cli = Path(sys.executable).with_name("relayrl")
        t0 = time.time()
        proc = subprocess.run([str(cli), "train", str(ROOT / "configs/demo_grpo.yaml"), *relayrl_overrides(w, run_dir, mode)],
                              cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"relayrl failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    train = [r for r in rows if r["kind"] == "train"]
    measured = [r for r in train if r["step"] > w.warmup]
    # wall time between consecutive step rows: everything the loop does, bookkeeping included
    walls = [b["time"] - a["time"] for a, b in zip(train, train[1:]) if b["step"] > w.warmup]
    first = train[0]
    phases = {k: statistics.median(r[f"timing/{k}"] for r in measured)
              for k in ("generate", "batch", "learn", "sync", "eval", "checkpoint")}
    inner = {
        "engine": statistics.median(r["rollout/engine_seconds"] for r in measured),
        "scoring": statistics.median(r["rollout/score_seconds"] for r in measured),
        "learner_inside": statistics.median(r["learner/step_seconds"] for r in measured),
        "sync_inside": statistics.median(r["sync/seconds"] for r in measured),
    }
    samples = w.prompts * w.group
    tokens = statistics.median(r["rollout/response_tokens"] for r in measured)
    step = statistics.median(walls)
    staleness = {k: statistics.median(r.get(f"staleness/{k}", 0.0) for r in measured) for k in ("mean", "token_mean")}
    return {"step_s": step, "phases": phases, "inside": inner, "samples_per_s": samples / step,
            "tokens_per_s": tokens / step, "staleness": staleness,
            "startup_to_first_step_s": first["time"] - first["timing/step"] - t0}


# ---- bare -----------------------------------------------------------------------------------------

def bare_train_step(model, opt, seqs: list[list[int]], plens: list[int], budget: int, bf16: bool) -> None:
    """One optimizer step of -A * logp token-mean over the samples (ratio 1: the on-policy PPO loss)."""
    import torch

    from learner.logprobs import collate
    from learner.packing import pack_by_tokens

    ids = [torch.tensor(s) for s in seqs]
    total = sum(len(s) - p for s, p in zip(seqs, plens))
    adv = torch.randn(len(seqs), generator=torch.Generator().manual_seed(0))
    for mb_idx in pack_by_tokens([len(s) for s in seqs], budget):
        mb = collate(ids, plens, mb_idx)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=mb.input_ids, use_cache=False).logits
        V = logits.shape[-1]
        sel = logits.gather(1, mb.positions[..., None].expand(-1, -1, V)).float()
        lp = torch.log_softmax(sel, -1).gather(-1, mb.targets[..., None]).squeeze(-1)
        loss = torch.where(mb.response_mask, -adv[mb.index][:, None] * lp, torch.zeros_like(lp)).sum() / total
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def run_bare(w: Workload) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    import torch

    torch.set_num_threads(THREADS)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams

    model_dir, dtype = ensure_model(w), resolved_dtype(w)
    llm = LLM(model=model_dir, dtype=dtype, enforce_eager=True, kv_cache_memory_bytes=1 << 29,
              max_model_len=16 + w.new_tokens + 8, seed=0, logprobs_mode="processed_logprobs")
    texts = [r["prompt"] for r in prompts(w.prompts)]
    params = SamplingParams(n=w.group, temperature=1.0, max_tokens=w.new_tokens,
                            min_tokens=w.new_tokens if w.fixed_length else 0, logprobs=0, flat_logprobs=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=w.lr)
    bf16 = dtype == "bfloat16"
    gen, train, hf = [], [], []
    for i in range(w.warmup + w.steps):
        t0 = time.perf_counter()
        outs = llm.generate(texts, params, use_tqdm=False)
        t1 = time.perf_counter()
        seqs = [list(o.prompt_token_ids) + list(c.token_ids) for o in outs for c in o.outputs]
        plens = [len(o.prompt_token_ids) for o in outs for c in o.outputs]
        bare_train_step(model, opt, seqs, plens, 8192, bf16)
        t2 = time.perf_counter()
        if i >= w.warmup:
            gen.append(t1 - t0)
            train.append(t2 - t1)
    # HF generate of the same samples (TRL's generation path): for the sync ceiling
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    model.eval()
    for i in range(1 + w.steps):
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=w.new_tokens,
                           min_new_tokens=w.new_tokens if w.fixed_length else 0, num_return_sequences=w.group,
                           pad_token_id=tok.pad_token_id)
        if i >= 1:
            hf.append(time.perf_counter() - t0)
    g, t, h = (statistics.median(x) for x in (gen, train, hf))
    return {"vllm_generate_s": g, "train_s": t, "hf_generate_s": h, "ideal_step_s": g + t,
            "ceiling": (h + t) / (g + t), "dtype": dtype}


# ---- TRL ------------------------------------------------------------------------------------------

def run_trl(w: Workload) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from actors.tasks.arithmetic import check

    torch.set_num_threads(THREADS)
    model_dir, dtype = ensure_model(w), resolved_dtype(w)
    steps = w.warmup + w.steps
    rows = prompts(w.prompts * steps)
    data = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])

    def reward(prompts, completions, answer, **_):
        return [check(c, a) for c, a in zip(completions, answer)]

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_end(self, args, state, control, **kw):
            self.marks.append(time.perf_counter())

    clock = Clock()
    out = tempfile.mkdtemp(prefix="trl-bench-")
    cfg = GRPOConfig(
        output_dir=out, seed=0, use_cpu=True, bf16=dtype == "bfloat16", fp16=False, max_steps=steps,
        per_device_train_batch_size=w.prompts * w.group, gradient_accumulation_steps=1, num_generations=w.group,
        num_iterations=1, shuffle_dataset=False, loss_type="dapo", beta=0.0, learning_rate=w.lr,
        lr_scheduler_type="constant", optim="adamw_torch", max_grad_norm=1.0, use_vllm=False, temperature=1.0,
        top_p=1.0, top_k=0, max_completion_length=w.new_tokens,
        generation_kwargs={"min_new_tokens": w.new_tokens} if w.fixed_length else None,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[clock])
    t0 = time.perf_counter()
    trainer.train()
    marks = [t0, *clock.marks]
    walls = [b - a for a, b in zip(marks, marks[1:])][w.warmup:]
    step = statistics.median(walls)
    return {"step_s": step, "samples_per_s": w.prompts * w.group / step}


if __name__ == "__main__":
    side, name, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    sides = {"relayrl": run_relayrl, "bare": run_bare, "trl": run_trl,
             **{f"relayrl_{m}": (lambda w, m=m: run_relayrl(w, m)) for m in ("async", "async_partial", "w2", "k2", "w2k2")}}
    result = sides[side](WORKLOADS[name])
    out.write_text(json.dumps(result))
