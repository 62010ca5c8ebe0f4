"""Where the MoE's learner-vs-sampler logprob gap comes from once routing is replayed: the same bf16
samples from the rollout engine (vLLM), scored by transformers in bf16 with the learner's routing
hooks under variants of the expert block's numerics — and the dense model's gap beside it.

    # the two models: each demo's warm start (plus one RL step), exported to RUN_DIR/final_model
    .venv/bin/relayrl train configs/demo_moe.yaml trainer.total_steps=1 logging.run_dir=/tmp/w_moe \
        trainer.prompts_per_step=32 buffer.dynamic_sampling=false \
        trainer.warm_start.steps=1300 trainer.warm_start.target_accuracy=0  # the config as measured (12-03)
    .venv/bin/relayrl train configs/demo_gspo.yaml trainer.total_steps=1 logging.run_dir=/tmp/w_dense
    .venv/bin/python scripts/moe_expert_numerics.py /tmp/w_moe/final_model /tmp/w_dense/final_model

Variants (MoE; a diagnosis, not options of the learner):
  own routing          the learner's own top-k (replay off)
  replay               as the learner replays: the sampler's experts, fp32 gating weights
  replay, bf16 gating  the gating weights rounded to bf16 first (transformers' router does that)
  replay, fp32 SwiGLU  the experts compute silu(gate) * up in fp32 and round once
Dense: as is, and its MLP's silu(gate) * up in fp32. Per variant: mean, median, p90 and p99 of
|learner logprob - sampler logprob| over all response tokens (temperature 1).

Writes scripts/results/moe_expert_numerics.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import learner.moe as moe  # noqa: E402
from learner.logprobs import collate, response_logprobs, unpad  # noqa: E402

RESULTS = ROOT / "scripts" / "results"


def sample(model_dir: str, prompts: int, n: int, record: bool) -> list:
    from actors.config import RolloutConfig, SamplingConfig
    from actors.rollout import RolloutWorker

    rows = [json.loads(line) for line in (ROOT / "configs/data/arithmetic/train.jsonl").open()][:prompts]
    cfg = RolloutConfig(max_model_len=64, sampling=SamplingConfig(max_new_tokens=8, temperature=1.0),
                        record_routed_experts=record)
    worker = RolloutWorker(model_dir, cfg, "bfloat16")
    try:
        groups = worker.generate([{"prompt_id": f"p{i}", "prompt": r["prompt"]} for i, r in enumerate(rows)], n)
    finally:
        worker.shutdown()
    return [s for g in groups for s in g.samples]


def gaps(model, samples, hooks=None) -> dict[str, float]:
    """|learner - sampler| logprob of every response token, each sample scored alone as the learner does."""
    out = []
    for s in samples:
        mb = collate([torch.tensor(s.prompt_ids + s.response_ids)], [len(s.prompt_ids)], [0], [s.routed_experts])
        ctx = hooks.micro_batch(mb, measure=False, replay=True) if hooks is not None else contextlib.nullcontext()
        with ctx, torch.no_grad():
            lp, _, _ = response_logprobs(model, mb, 1.0, entropy=False)
        out.append((unpad(lp, mb)[0] - torch.tensor(s.logprobs)).abs().numpy())
    a = np.concatenate(out)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p90": float(np.quantile(a, 0.9)),
            "p99": float(np.quantile(a, 0.99)), "tokens": int(a.size)}


@contextlib.contextmanager
def bf16_gating():
    exact = moe.gating_weights
    moe.gating_weights = lambda router, logits, chosen: exact(router, logits, chosen).to(logits.dtype).float()
    try:
        yield
    finally:
        moe.gating_weights = exact


def fp32_swiglu(model) -> None:
    """silu(gate) * up in fp32, rounded once, in every MoE expert block and dense MLP."""

    def experts_gate(gate_up, act):  # transformers' grouped experts: the gate_up output -> activation
        gate, up = gate_up.float().chunk(2, dim=-1)
        return (act(gate) * up).to(gate_up.dtype)

    def mlp_forward(x, m):
        return m.down_proj((m.act_fn(m.gate_proj(x).float()) * m.up_proj(x).float()).to(x.dtype))

    for mod in model.modules():
        name = type(mod).__name__
        if name.endswith("Experts"):
            mod._apply_gate = lambda gate_up, act=mod.act_fn: experts_gate(gate_up, act)
        elif name.endswith("MLP") and hasattr(mod, "gate_proj"):
            mod.forward = lambda x, m=mod: mlp_forward(x, m)


def load(model_dir: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("moe_model")
    parser.add_argument("dense_model")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--n", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    res: dict[str, dict[str, float]] = {}

    samples = sample(args.moe_model, args.prompts, args.n, record=True)
    model = load(args.moe_model)
    hooks = moe.RouterHooks(model, replay=True)
    res["moe: own routing"] = gaps(model, samples)
    res["moe: replay"] = gaps(model, samples, hooks)
    with bf16_gating():
        res["moe: replay, bf16 gating"] = gaps(model, samples, hooks)
    fp32_swiglu(model)
    res["moe: replay, fp32 SwiGLU"] = gaps(model, samples, hooks)

    samples = sample(args.dense_model, args.prompts, args.n, record=False)
    model = load(args.dense_model)
    res["dense"] = gaps(model, samples)
    fp32_swiglu(model)
    res["dense: fp32 SwiGLU"] = gaps(model, samples)

    for name, r in res.items():
        print(f"{name:>26}: mean {r['mean']:.5f}  median {r['median']:.6f}  p90 {r['p90']:.4f}  "
              f"p99 {r['p99']:.4f}  ({r['tokens']} tokens)")
    RESULTS.mkdir(exist_ok=True)
    out = {"date": time.strftime("%Y-%m-%d"), "moe_model": args.moe_model, "dense_model": args.dense_model,
           "prompts": args.prompts, "n": args.n, "gaps": res}
    (RESULTS / "moe_expert_numerics.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS / 'moe_expert_numerics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
