"""Multi-turn, tool-using runs on the real stack (relayrl train): the Python tool's path end to end
on a few GSM8K problems, with the code sandbox as the model's calculator, in async mode (one step
stale) with the weight-sync probe every step.

A short supervised warm start teaches the tiny model the call format on these rows: each row's
target is a program built from the last of GSM8K's own calculator annotations (`<<9*2=18>>` ->
`<python>print(9*2)</python>`), the tool's output and the final answer. The RL steps then run
the model's programs in the sandbox; their outputs come back as observations.
"""

import json
import re
from pathlib import Path

import pytest

from actors.envs.calculator import evaluate
from actors.reward.sandbox import isolation_support
from cluster.config import load_config
from cluster.metrics import read_metrics
from cluster.trainer import train
from cluster.validate import validate

pytestmark = pytest.mark.slow

ROWS = 4


def gsm8k_tool_rows(path):
    rows = []
    for line in Path("configs/data/gsm8k/sample.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        calls = re.findall(r"<<([^=<>]+)=([^<>]+)>>", r["answer"])
        if not calls or len(rows) == ROWS:
            continue
        expr, value = calls[-1]
        final = r["answer"].rsplit("####", 1)[-1].strip()
        rows.append({"question": r["question"], "answer": r["answer"], "expr": expr,
                     "demo": f"<python>print({expr})</python><output>{value}</output>\n{final}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def test_python_tool_runs_the_models_code_in_the_sandbox(tmp_path):
    rows = gsm8k_tool_rows(tmp_path / "gsm8k_tool.jsonl")
    isolated, _ = isolation_support()
    cfg = validate(load_config("configs/demo_tools.yaml", [
        f"model.path={tmp_path}/model", f"logging.run_dir={tmp_path}/run",
        f"data.train_files=[{tmp_path}/gsm8k_tool.jsonl]", "data.eval_files=[]", "data.prompt_key=question",
        "data.max_prompt_tokens=300", "rollout.max_model_len=420", "rollout.sampling.max_new_tokens=40",
        "rollout.env.name=python", f"rollout.env.params={{allow_unisolated: {str(not isolated).lower()}, wall_s: 3.0}}",
        "rollout.env.max_total_tokens=100", "rollout.env.max_obs_tokens=16",
        "trainer.warm_start.steps=120", f"trainer.warm_start.batch_size={ROWS}", "trainer.prompts_per_step=4",
        "rollout.n=4", "trainer.total_steps=3", "trainer.eval_every=0", "logging.progress=false",
        "trainer.mode=async", "buffer.max_staleness=1", "algorithm.off_policy.name=tis",
        "logging.tensorboard=false", "logging.dump_samples_every=1", "checkpoint.export_hf=false",
        "weight_sync.verify_every=1"]))
    run_dir = train(cfg)
    assert (run_dir / "tool_use.png").exists()  # tool-call rate, turns, errors, time in the environment
    steps = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert [r["staleness/max"] for r in steps] == [0, 1, 1]  # async: steps 2-3 sampled by older weights
    for r in steps:
        assert r["sync/probe_max_abs_diff"] <= 1e-4  # observation tokens in the batch; weights still synced
        assert r["env/tool_call_rate"] > 0 and r["env/errors"] == 0 and r["env/turns_mean"] > 1
    # the model's programs ran: some observation holds what its own program prints
    dumped = [json.loads(line) for f in sorted((run_dir / "samples").glob("*.jsonl"))
              for line in f.read_text().splitlines()]
    ran = 0
    for d in dumped:
        m = re.search(r"<python>print\(([^()]*)\)</python><output>([^<]*)</output>", d["completion"])
        if m and d["episode"]["tool_calls"] >= 1:
            try:
                ran += float(m.group(2)) == float(evaluate(m.group(1)))
            except ValueError:  # the model's program printed no number (or is no arithmetic)
                pass
    assert ran > 0, [d["completion"] for d in dumped][:4]
