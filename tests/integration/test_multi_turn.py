"""Multi-turn rollouts on the real vLLM engine (actors/multi_turn.py): token-exact trajectories, the
learner's view of them, containment of failing environments, and the limits.

The environment is a scripted user class loaded by module path (tests/integration/scripted_env.py),
so these tests do not depend on what a random model writes. One engine serves the module; each test
installs the environment configuration it needs.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from actors.config import EnvConfig, RolloutConfig, SamplingConfig
from actors.multi_turn import MultiTurnRunner
from actors.reward.scorer import RewardScorer
from actors.rollout import RolloutWorker
from tests.integration import scripted_env

pytestmark = pytest.mark.integration

ENV = "tests.integration.scripted_env:Scripted"  # a user module, loaded by name
TOL = 1e-4  # fp32 sampler vs fp32 learner path: ~1e-6 measured; wrong tokens or context give ~0.1-1


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    cfg = RolloutConfig(n=2, max_model_len=160, sampling=SamplingConfig(max_new_tokens=6),
                        env=EnvConfig(name=ENV, params={"turns": 3}, max_turns=4, max_total_tokens=100))
    w = RolloutWorker(str(tiny_model_dir), cfg, "float32")
    yield w
    w.shutdown()


def use_env(w: RolloutWorker, **changes) -> None:
    """Install an environment configuration on the module's worker."""
    params = changes.pop("params", {})
    w.cfg.env = dataclasses.replace(EnvConfig(name=ENV, max_turns=4, max_total_tokens=100), params=params, **changes)
    w.multi_turn = MultiTurnRunner(w)


def rows(k: int, key: str) -> list[dict]:
    return [{"prompt_id": f"{key}{i}", "prompt": f"{i}*{i + 3}=", "meta": {"key": f"{key}{i}", "answer": "0"},
             "seed": i} for i in range(k)]


def test_trajectory_is_the_engine_tokens_turn_by_turn(worker):
    use_env(worker, params={"turns": 3})
    scripted_env.TURNS.clear()
    groups = worker.generate(rows(2, "exact"), 2)
    tok = worker.tokenizer
    for g in groups:
        made = []
        for s in g.samples:
            assert s.episode.turns == 3 and s.episode.cut == "" and s.episode.error == ""
            # walk the response: model turn t, then observation t (tokenised once, as is), ...
            start = 0
            for t, end in enumerate(s.episode.turn_ends):
                made.append(tuple(s.response_ids[start:end]))
                assert s.response_mask[start:end] == [1] * (end - start) and end > start
                if t < s.episode.turns - 1:
                    obs = tok(f"<obs {t}>\n", add_special_tokens=False)["input_ids"]
                    assert s.response_ids[end:end + len(obs)] == obs
                    assert s.response_mask[end:end + len(obs)] == [0] * len(obs)
                    start = end + len(obs)
            assert start < len(s.response_ids) == s.episode.turn_ends[-1] == len(s.response_mask)
            assert len(s.logprobs) == len(s.response_ids) == len(s.token_versions)
            assert all(lp == 0.0 for lp, m in zip(s.logprobs, s.response_mask) if not m)
            assert s.prompt_ids == list(tok(s.prompt)["input_ids"])
        # each model turn is exactly what the engine sampled and the environment was handed
        assert sorted(made) == sorted(tuple(t.token_ids) for t in scripted_env.TURNS[g.prompt_id])


def test_sampler_and_learner_logprobs_agree_at_model_tokens(worker, tiny_model_dir):
    """The learner's path (collate + response_logprobs) on the trajectory's ids reproduces the sampler's
    logprobs at the model's tokens: the engine's context for each turn was exactly these ids."""
    from cluster.batching import groups_to_batch
    from learner.config import AlgorithmConfig
    from learner.train_step import policy_loss
    from learner.logprobs import collate, response_logprobs
    from learner.sender_process import hf_model

    use_env(worker, params={"turns": 3, "reward": 0.0})
    groups = worker.generate(rows(3, "lp"), 2)
    for i, g in enumerate(groups):
        for j, s in enumerate(g.samples):
            s.reward = float(i + j)  # distinct rewards: non-zero advantages
    batch = groups_to_batch(groups, AlgorithmConfig())
    samples = [s for g in groups for s in g.samples]
    assert [x.tolist() for x in batch.input_ids] == [s.prompt_ids + s.response_ids for s in samples]
    model = hf_model(str(tiny_model_dir))
    mb = collate(batch.input_ids, batch.prompt_lengths, list(range(len(batch))), None, batch.token_masks)
    lp, _, _ = response_logprobs(model, mb, temperature=1.0)
    worst, obs_tokens = 0.0, 0
    for row, s in enumerate(samples):
        for k, (m, ref) in enumerate(zip(s.response_mask, s.logprobs)):
            assert bool(mb.train_mask[row, k]) == bool(m)
            if m:
                worst = max(worst, abs(float(lp[row, k]) - ref))
            else:
                obs_tokens += 1
    assert obs_tokens > 0 and worst <= TOL, worst
    # observation tokens get no gradient through the policy loss; the model's tokens do
    lp.retain_grad()
    algo = AlgorithmConfig()
    loss, _, _ = policy_loss(algo, lp, lp.detach(), torch.zeros_like(lp), batch.advantages, mb.train_mask,
                             global_tokens=float(mb.train_mask.sum()), global_seqs=float(len(batch)))
    loss.backward()
    grad = lp.grad
    assert torch.all(grad[mb.response_mask & ~mb.train_mask] == 0)
    assert torch.count_nonzero(grad[mb.train_mask]) > 0


def test_a_raising_environment_ends_only_its_trajectory(worker):
    use_env(worker, params={"turns": 3, "mode": "raise", "at": 1})
    groups = worker.generate(rows(2, "raise"), 2)
    eps = [s.episode for g in groups for s in g.samples]
    assert all(e.error.startswith("error:RuntimeError: scripted failure") and e.turns == 2 for e in eps)
    scorer = RewardScorer([], env_weight=1.0)
    scorer.score([s for g in groups for s in g.samples])
    assert all(s.reward == 0.0 and s.reward_error.startswith("env:error:RuntimeError") for g in groups for s in g.samples)
    assert scorer.metrics()["reward/errors/env:error:RuntimeError"] == 4


def test_a_hanging_environment_times_out_and_the_rest_go_on(worker):
    # only the first row's environment hangs (its key); the other row's trajectories finish normally
    use_env(worker, params={"turns": 2}, timeout_s=1.0)
    ps = rows(2, "hang")
    hang = {"turns": 2, "mode": "hang", "at": 0, "hang_s": 20}

    class Picky(scripted_env.Scripted):  # the hanging behaviour for the first row only
        def __init__(self, row, params):
            super().__init__(row, hang if row["key"] == "hang0" else params)

    worker.multi_turn.env_cls = Picky
    t0 = time.monotonic()
    groups = {g.prompt_id: g for g in worker.generate(ps, 2)}
    assert time.monotonic() - t0 < 10  # the deadline, not the 20 s sleep
    assert all(s.episode.error == "timeout" for s in groups["hang0"].samples)
    assert all(s.episode.error == "" and s.episode.turns == 2 for s in groups["hang1"].samples)
    assert worker.health()["env_stuck_threads"] == 2


def test_a_slow_tool_does_not_hold_up_the_other_trajectories(worker):
    use_env(worker, params={"turns": 3}, timeout_s=10.0)
    slow = {"turns": 3, "mode": "hang", "at": 0, "hang_s": 3.0}  # a 3 s tool call, within the timeout

    class SlowFirst(scripted_env.Scripted):
        def __init__(self, row, params):
            super().__init__(row, slow if row["key"] == "slow0" else params)

    worker.multi_turn.env_cls = SlowFirst
    streamed = list(worker.generate_stream(rows(2, "slow"), 2))
    groups = {g.prompt_id: g for g in streamed}
    # the other prompt's three turns per trajectory went through the engine while the tool slept
    assert [g.prompt_id for g in streamed] == ["slow1", "slow0"]
    assert groups["slow1"].generate_seconds < 3.0 <= groups["slow0"].generate_seconds
    assert all(s.episode.turns == 3 and not s.episode.error for g in groups.values() for s in g.samples)


def test_max_turns_ends_a_trajectory_the_environment_does_not(worker):
    use_env(worker, params={"turns": 0}, max_turns=3)
    groups = worker.generate(rows(1, "turns"), 2)
    for s in groups[0].samples:
        assert s.episode.turns == 3 and s.episode.cut == "max_turns" and s.finish_reason == "length"


def test_max_total_tokens_and_max_obs_tokens(worker):
    use_env(worker, params={"turns": 0, "obs_repeat": 10}, max_turns=10, max_total_tokens=30, max_obs_tokens=5)
    groups = worker.generate(rows(2, "tokens"), 2)
    tok = worker.tokenizer
    obs5 = tok("<obs 0>", add_special_tokens=False)["input_ids"][:5]
    for g in groups:
        for s in g.samples:
            assert s.episode.cut == "max_total_tokens" and len(s.response_ids) == 30
            assert s.episode.obs_truncated == s.episode.turns  # every observation was cut
            end = s.episode.turn_ends[0]
            assert s.response_ids[end:end + 5] == obs5 and s.response_mask[end:end + 5] == [0] * 5
            assert s.response_mask[end + 5] == 1  # the observation was cut to 5 tokens
