"""PPO with a critic on the real stack (relayrl train configs/demo_ppo.yaml): vLLM rollouts, the
policy's DeepSpeed group and the critic's own group training in the same step, GAE from the
critic's values with the KL to the reference in the reward (classic RLHF), the weight-sync probe
every step; and a resumed run continues exactly: the critic's checkpoint restored, the reference
(the warm-started policy, not model.path) reloaded from the run's warm_started/ export."""

import json
import math
import shutil
from pathlib import Path

import pytest

from cluster.config import load_config
from cluster.trainer import train
from cluster.validate import validate

pytestmark = pytest.mark.slow


def ppo_config(tmp_path, run_name, *extra):
    """From a short warm start (the critic starts from the warm-started policy), rewarded for an
    answer of exactly three digits: part of the completions earn it, so returns vary within a batch."""
    return validate(load_config("configs/demo_ppo.yaml", [
        f"model.path={tmp_path}/model", f"logging.run_dir={tmp_path}/{run_name}", "logging.progress=false",
        "logging.tensorboard=false", "logging.dump_samples_every=0", "checkpoint.export_hf=false",
        "trainer.warm_start.steps=20", "reward.functions=[{name: format, params: {pattern: '^[0-9]{3}$'}}]",
        "trainer.prompts_per_step=8", "rollout.n=4", "trainer.eval_every=0", "trainer.eval_max_prompts=8",
        "trainer.total_steps=4", "checkpoint.every=3", "checkpoint.keep_last=2",
        "algorithm.kl_coef=0.05", "algorithm.kl_in_reward=true", *extra]))


def rows(run_dir, kind="train"):
    return [r for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_ppo_trains_policy_and_critic_and_resumes_exactly(tmp_path, capsys):
    full = train(ppo_config(tmp_path, "full", "weight_sync.verify_every=1"))
    assert f"value model from {full}/warm_started" in capsys.readouterr().out  # the critic: the warm-started policy
    steps = rows(full)
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        assert r["sync/probe_max_abs_diff"] <= 1e-4  # the engines sample from the PPO-updated weights
        assert r["learner/optimizer_steps"] == 2 and r["critic/nonfinite_skipped"] == 0
        assert r["critic/loss"] > 0 and r["critic/grad_norm"] > 0 and math.isfinite(r["critic/explained_variance"])
        assert 0 < r["critic/returns_mean"] < 1  # returns of 0/1 rewards: some completions earned it
        assert abs(r["critic/advantages_mean"]) < 1e-4 and abs(r["critic/advantages_std"] - 1) < 1e-2  # whitened
    # the reference is the warm-started policy: step 1 samples from it exactly, so no KL; later steps move away
    assert steps[0]["critic/kl_in_reward"] < 1e-6 and all(r["critic/kl_in_reward"] > 0 for r in steps[1:])
    assert "learner/kl_loss" not in steps[0]  # in the reward, not in the loss
    assert (Path(full) / "warm_started" / "config.json").exists()  # the critic started from the warm-started policy
    assert (Path(full) / "checkpoints" / "step_000003" / "critic").is_dir()

    # the same job stopped right after its step-3 checkpoint, resumed: step 4 as in the uninterrupted run
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed, ignore=shutil.ignore_patterns("step_000004"))
    (crashed / "checkpoints" / "latest").write_text("step_000003")
    train(ppo_config(tmp_path, "unused", "weight_sync.verify_every=1", f"checkpoint.resume={crashed}"))
    a, b = rows(full)[3], rows(crashed)[3]
    assert a["step"] == b["step"] == 4
    for key in ("reward/mean", "critic/values_mean", "critic/kl_in_reward", "critic/loss", "critic/grad_norm", "learner/loss",
                "learner/grad_norm"):
        assert b[key] == pytest.approx(a[key], abs=1e-6), key  # the critic's values: its checkpoint was restored
