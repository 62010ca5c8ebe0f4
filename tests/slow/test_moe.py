"""The MoE demo config on the real stack, short: tiny Qwen3-MoE, GSPO, two ZeRO-3 learner ranks, the
weight-sync probe every step, expert load from both sides, routing replay on (async, one step stale)."""

import pytest

from cluster.config import load_config
from cluster.metrics import read_metrics
from cluster.trainer import train
from cluster.validate import validate

pytestmark = pytest.mark.slow

SMALL = ["logging.progress=false", "logging.tensorboard=false", "trainer.warm_start.steps=30",
         "trainer.prompts_per_step=8", "rollout.n=4", "trainer.eval_every=0", "trainer.eval_max_prompts=8",
         "logging.dump_samples_every=0", "checkpoint.export_hf=false", "weight_sync.verify_every=1"]


def moe_rows(tmp_path, name, *extra):
    cfg = validate(load_config("configs/demo_moe.yaml", [f"model.path={tmp_path}/model",
                                                         f"logging.run_dir={tmp_path}/{name}", *SMALL, *extra]))
    assert cfg.learner.num_ranks == 2 and cfg.learner.zero_stage == 3 and cfg.learner.routing_replay
    run_dir = train(cfg)
    assert (run_dir / "expert_load.png").exists()  # the load and agreement curves of an MoE run
    rows = read_metrics(run_dir)
    # the demo's warm start trains the router's balance loss (trainer.warm_start.moe_aux_loss_coef), on
    # both ranks' tokens; RL runs without it (learner.moe_aux_loss_coef 0)
    # (step 30's row is its accuracy check's: read_metrics keeps the last row of a (kind, step))
    warm = [r for r in rows if r["kind"] == "warm_start" and "sft/loss" in r]
    assert [r["step"] for r in warm] == list(range(1, 30)) and all(r["sft/moe_aux_loss"] > 0 for r in warm)
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert train_rows and not any("learner/moe_aux_loss" in r for r in train_rows)
    return train_rows


def check_moe_step(r):
    assert r["sync/probe_max_abs_diff"] <= 1e-4  # the engine's experts hold exactly the learner's weights
    assert r["learner/grad_norm"] > 0 or r["rollout/all_equal_groups"] == r["rollout/groups"]
    # replay: the learner's experts computed with exactly the sampler's choice, every token, every layer
    assert r["moe/compared_tokens"] > 0 and r["moe/used_routing_agreement"] == 1.0
    for side in ("rollout", "learner"):
        assert 0.0 < r[f"moe/{side}/load_entropy"] <= 1.0 and r[f"moe/{side}/max_mean_load"] >= 1.0
        per_layer = [sum(r[f"moe/{side}/layer{l}/tokens_e{e}"] for e in range(8)) for l in range(2)]
        assert per_layer[0] == per_layer[1] > 0  # both MoE layers route every token, top-2 each


def test_moe_demo_config_trains_with_replay_sync_and_one_step_stale(tmp_path):
    """One run (the slow tier's budget): async, one step stale. Step 1 is generated when it asks (the
    sync case); steps 2-3 were sampled by the previous weights, and the routing replayed is the one
    recorded when their tokens were sampled, not the learner's current choice."""
    rows = moe_rows(tmp_path, "async", "trainer.total_steps=3", "trainer.mode=async", "buffer.max_staleness=1",
                    "algorithm.off_policy.name=tis")
    assert [r["version"] for r in rows] == [1, 2, 3]
    assert [r["staleness/max"] for r in rows] == [0, 1, 1]
    for r in rows:
        check_moe_step(r)
    # fp32 on both sides, same weights: the learner's own top-k agrees with the sampler's almost
    # everywhere, and so do the logprobs
    assert rows[0]["moe/routing_agreement"] > 0.99
    assert rows[0]["learner/old_sampler_logprob_diff_max"] < 1e-3


def test_moe_tool_trajectories_replay_the_routing_of_every_turn(tmp_path):
    """The calculator demo on the tiny MoE: multi-turn trajectories (model turns and the tool's
    observations) recorded turn by turn, replayed by the ZeRO-3 learner, weights probed every step."""
    cfg = validate(load_config("configs/demo_tools.yaml", [
        f"model.path={tmp_path}/model", f"logging.run_dir={tmp_path}/tools", *SMALL,
        "model.tiny={moe: true, moe_intermediate_size: 128}", "rollout.record_routed_experts=true",
        "learner.routing_replay=true", "learner.num_ranks=2", "learner.zero_stage=3",
        "trainer.warm_start.steps=100", "trainer.total_steps=2"]))
    run_dir = train(cfg)
    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert len(rows) == 2
    for r in rows:
        check_moe_step(r)
        assert r["env/turns_mean"] > 1 and r["env/tool_call_rate"] > 0  # trajectories of several turns
    # the learner's own top-k agrees with the turns' record almost everywhere, and so do the logprobs at
    # the model's tokens (each turn's engine context was exactly the trajectory's ids)
    assert rows[0]["moe/routing_agreement"] > 0.99
    assert rows[0]["learner/old_sampler_logprob_diff_max"] < 1e-3
