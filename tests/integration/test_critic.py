"""PPO's critic on real Ray actors (cluster/learner_group.py CriticGroup, learner/critic.py) with the
tiny Qwen3 (fp32, CPU, gloo).

Checked: the value model starts from the policy's checkpoint (backbone equal, a new scalar head) and
gives one value per response token; trained towards fixed returns its value loss falls and it comes
to explain most of their variance; two ranks (ZeRO-2, ZeRO-3) compute the update one rank does (loss and
gradient norm per step within 1e-4 relative: the reductions only sum in another order) and leave
no shared-memory segment behind; a saved checkpoint restores the critic exactly.

The learning rate is 1e-3: at 1e-2 the loss jumped 0.41 -> 0.93 in the second step, a regime that
amplifies rounding (Adam steps every noise-level gradient element by ~lr, its sign set by the sum
order): one rank and two ZeRO-3 ranks then differed by 1.2e-4 relative in the third step's loss on an
AVX512-FP16 machine (2.9e-5 in the second), over the 1e-4 check. At 1e-3 they agree within 1.3e-6 at
every step there, and the value loss falls further in 30 steps (0.18 -> 8e-6; at 1e-2 0.41 -> 3.5e-4).
"""

from __future__ import annotations

import pytest
import torch

from learner.algorithms import explained_variance
from learner.batch import LearnerBatch
from learner.config import AlgorithmConfig, Choice, LearnerConfig, OptimizerConfig

pytestmark = pytest.mark.integration

ALGO = AlgorithmConfig(advantage=Choice("gae", {}), surrogate=Choice("ppo_clip", {}),
                       aggregation=Choice("token-mean", {}), epochs=1, mini_batches=2)


def critic_cfg(num_ranks: int, zero_stage: int = 2) -> LearnerConfig:
    return LearnerConfig(num_ranks=num_ranks, zero_stage=zero_stage, dtype="float32", optimizer=OptimizerConfig(lr=1e-3),
                         micro_batch_tokens=40, cpus_per_rank=0.5, threads_per_rank=1, call_timeout_s=180)


def make_critic(path: str, num_ranks: int, zero_stage: int = 2):
    from cluster.learner_group import CriticGroup

    return CriticGroup(path, critic_cfg(num_ranks, zero_stage), ALGO, total_steps=40, value_clip=0.2)


def batch_with_returns(n: int = 8, seed: int = 0) -> LearnerBatch:
    """Ragged sequences whose return is 1 for even-numbered first response tokens, else 0."""
    g = torch.Generator().manual_seed(seed)
    ids, plens, returns = [], [], []
    for i in range(n):
        p, r = 3 + i % 3, int(torch.randint(3, 12, (1,), generator=g))
        seq = torch.randint(10, 100, (p + r,), generator=g)
        ids.append(seq)
        plens.append(p)
        returns.append(torch.full((r,), float(int(seq[p]) % 2 == 0)))
    return LearnerBatch(input_ids=ids, prompt_lengths=plens, sampler_logprobs=[torch.zeros(len(r)) for r in returns],
                        advantages=torch.zeros(n), rewards=torch.zeros(n), group_index=torch.arange(n),
                        policy_versions=torch.zeros(n, dtype=torch.long), loss_mask=torch.ones(n, dtype=torch.bool),
                        returns=returns)


def padded(xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(x) for x in xs)
    out, mask = torch.zeros(len(xs), T), torch.zeros(len(xs), T, dtype=torch.bool)
    for i, x in enumerate(xs):
        out[i, :len(x)], mask[i, :len(x)] = x, True
    return out, mask


def train(critic, batch: LearnerBatch, steps: int) -> list[dict[str, float]]:
    """PPO's loop for the critic alone: values (the clip centre) from the current critic, one update."""
    out = []
    for _ in range(steps):
        batch.values = critic.values(batch)
        out.append(critic.finish_step(critic.train_step_async(batch)))
    return out


@pytest.fixture(scope="module")
def one_rank(ray_cluster, tiny_model_dir):
    critic = make_critic(tiny_model_dir, 1)
    try:
        batch = batch_with_returns()
        state = critic.full_state_dict()
        first = critic.values(batch)
        metrics = train(critic, batch, 3)
        yield {"critic": critic, "batch": batch, "state": state, "first": first, "metrics": metrics}
    finally:
        critic.shutdown()


def test_value_model_starts_from_the_policy(one_rank, tiny_model_dir):
    import glob

    from safetensors.torch import load_file

    policy = {}
    for f in glob.glob(f"{tiny_model_dir}/*.safetensors"):
        policy.update(load_file(f))
    state = one_rank["state"]
    backbone = [k for k in state if k.startswith("model.")]
    assert backbone and all(torch.equal(state[k], policy[k]) for k in backbone)
    assert state["score.weight"].shape == (1, policy["model.embed_tokens.weight"].shape[1])
    assert "lm_head.weight" not in state
    batch = one_rank["batch"]
    assert [len(v) for v in one_rank["first"]] == batch.response_lengths()
    assert float(torch.cat(one_rank["first"]).std()) > 0  # values depend on the tokens


def test_value_loss_falls_and_explains_the_returns(one_rank):
    critic, batch = one_rank["critic"], one_rank["batch"]
    metrics = one_rank["metrics"] + train(critic, batch, 27)
    returns, mask = padded(batch.returns)
    before = explained_variance(padded(one_rank["first"])[0], returns, mask)
    after = explained_variance(padded(critic.values(batch))[0], returns, mask)
    losses = [m["critic/loss"] for m in metrics]
    assert losses[-1] < 0.25 * losses[0], losses
    assert before < 0.2 and after > 0.6, (before, after)
    assert all(m["critic/nonfinite_skipped"] == 0 for m in metrics)


def test_checkpoint_restores_the_critic(one_rank, tmp_path):
    critic, batch = one_rank["critic"], one_rank["batch"]
    critic.save_checkpoint(str(tmp_path / "critic"))
    saved = critic.values(batch)
    train(critic, batch, 2)
    assert not all(torch.equal(a, b) for a, b in zip(saved, critic.values(batch)))
    critic.load_checkpoint(str(tmp_path / "critic"))
    assert all(torch.equal(a, b) for a, b in zip(saved, critic.values(batch)))


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_ranks_equal_one_rank(one_rank, ray_cluster, tiny_model_dir, zero_stage):
    """Two ranks (ZeRO-2, and ZeRO-3: the value head and backbone sharded, gathered for the forward)
    train like one ZeRO-2 rank. Also: DeepSpeed's CPU all-reduce segments in /dev/shm (69 MB per rank,
    never unlinked by DeepSpeed) are gone once the group is built, and its all-reduces still work."""
    import glob

    before = set(glob.glob("/dev/shm/deepspeed_allreduce_buffer_*"))
    two = make_critic(tiny_model_dir, 2, zero_stage)
    try:
        assert set(glob.glob("/dev/shm/deepspeed_allreduce_buffer_*")) - before == set()
        state = two.full_state_dict()  # ZeRO-3: gathered from the shards; the same start as one rank's
        assert sorted(state) == sorted(one_rank["state"])
        assert all(torch.equal(state[k], v) for k, v in one_rank["state"].items())
        m2 = train(two, batch_with_returns(), 3)
    finally:
        two.shutdown()
    for a, b in zip(one_rank["metrics"], m2):
        for key in ("critic/loss", "critic/grad_norm", "critic/clipfrac"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a, b)

