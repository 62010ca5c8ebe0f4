"""Environments (actors/envs/): the calculator's arithmetic and protocol, the Python tool in the
sandbox, loading a user's class by path, and the learner-side pieces of multi-turn trajectories
(token masks through batching, pickling and collation; the scorer's env component; the metrics)."""

from __future__ import annotations

import pickle

import pytest
import torch

from actors.envs.base import Step, Turn, environment_class, environment_params, environment_stop
from actors.envs.calculator import Calculator, CalculatorParams, evaluate
from actors.reward.scorer import RewardScorer
from actors.types import Episode, Group, Sample
from cluster.batching import groups_to_batch
from cluster.evaluation import episode_stats
from learner.config import AlgorithmConfig
from learner.logprobs import collate

pytestmark = pytest.mark.unit


def turn(text: str, finish: str = "stop", index: int = 0) -> Turn:
    return Turn(text=text, token_ids=[1] * len(text), index=index, finish_reason=finish)


@pytest.mark.parametrize("expr, value", [("37*48", "1776"), ("7/2", "3.5"), ("(3+4)*-2", "-14"), ("10//3", "3"),
                                         ("1/3", "0.333333"), ("2.5*4", "10"), ("17%5", "2")])
def test_calculator_arithmetic(expr, value):
    assert evaluate(expr) == value


@pytest.mark.parametrize("expr", ["__import__('os')", "2**10", "a+1", "1/0", "1" * 70, "3*", "[1]"])
def test_calculator_refuses_what_is_not_arithmetic(expr):
    with pytest.raises(ValueError):
        evaluate(expr)


def test_calculator_protocol():
    env = Calculator({"answer": "1776"}, CalculatorParams())
    assert env.step(turn("[37*48]")) == Step(observation="=1776\n", tool_call=True)
    assert env.step(turn("[37*x]")) == Step(observation="=error\n", tool_call=True, tool_error=True)
    assert env.step(turn("1776", index=1)) == Step(reward=1.0, done=True)
    assert env.step(turn("1777", index=1)) == Step(reward=0.0, done=True)
    # a call cut off by the turn's token budget is not a call: the trajectory ends unrewarded
    assert env.step(turn("[37*48]", finish="length")) == Step(reward=0.0, done=True)
    with pytest.raises(KeyError, match="no 'answer'"):
        Calculator({"prompt": "1*2="}, CalculatorParams())


def test_registry_and_user_classes(tmp_path):
    assert environment_class("calculator") is Calculator and environment_stop("calculator") == ["]"]
    with pytest.raises(KeyError, match="did you mean 'calculator'"):
        environment_class("calculatr")
    mod = tmp_path / "my_env.py"
    mod.write_text("import dataclasses\n"
                   "class Echo:\n    stop = ('END',)\n"
                   "    @dataclasses.dataclass\n    class Params:\n        word: str = 'hi'\n"
                   "    def __init__(self, row, params): self.p = params\n"
                   "    def step(self, turn): return None\n"
                   "class NoStep:\n    pass\n")
    name = f"{mod}:Echo"
    assert environment_class(name).__name__ == "Echo" and environment_stop(name) == ["END"]
    assert environment_params(name, {"word": "yo"}).word == "yo"
    with pytest.raises(ValueError, match="has no parameter 'wrd'.*did you mean 'word'"):
        environment_params(name, {"wrd": "yo"})
    with pytest.raises(ValueError, match="not a class with a step"):
        environment_class(f"{mod}:NoStep")


def test_python_tool_runs_the_code_in_the_sandbox():
    from actors.reward.sandbox import isolation_support

    isolated, _ = isolation_support()
    env_cls = environment_class("python")
    env = env_cls({"answer": "Natalia sold 48 clips ... #### 72"},
                  environment_params("python", {"allow_unisolated": not isolated, "wall_s": 3.0}))
    step = env.step(turn("Let me compute. <python>print(48 + 48 // 2)</python>"))
    assert step == Step(observation="<output>72</output>\n", tool_call=True)
    bad = env.step(turn("<python>print(1/0)</python>"))
    assert bad.tool_error and bad.observation == "<output>ZeroDivisionError: division by zero</output>\n"
    slow = env.step(turn("<python>while True: pass</python>"))
    assert slow.tool_error and not slow.done
    assert env.step(turn("The answer is 72.", index=1)) == Step(reward=1.0, done=True)
    assert env.step(turn("The answer is 71.", index=1)).reward == 0.0


def multi_turn_sample(pid: str, reward: float, error: str = "") -> Sample:
    # prompt [5, 6]; model turn [7, 8], observation [9], model turn [10]
    return Sample(prompt_id=pid, prompt="p", prompt_ids=[5, 6], response="r", response_ids=[7, 8, 9, 10],
                  logprobs=[-0.1, -0.2, 0.0, -0.3], finish_reason="stop", policy_version=0,
                  response_mask=[1, 1, 0, 1],
                  episode=Episode(turns=2, tool_calls=1, env_seconds=0.5, turn_ends=[2, 4],
                                  turn_rewards=[0.0, reward], error=error))


def test_token_masks_travel_from_samples_to_the_micro_batch():
    g = Group("a", [multi_turn_sample("a", 1.0), multi_turn_sample("a", 0.0)])
    batch = groups_to_batch([g], AlgorithmConfig())
    assert [m.tolist() for m in batch.token_masks] == [[True, True, False, True]] * 2
    assert batch.loss_token_counts() == [3, 3] and batch.response_lengths() == [4, 4]
    back = pickle.loads(pickle.dumps(batch))
    assert [m.tolist() for m in back.token_masks] == [m.tolist() for m in batch.token_masks]
    assert back.select([1]).token_masks[0].dtype == torch.bool
    mb = collate(batch.input_ids, batch.prompt_lengths, [0, 1], None, batch.token_masks)
    assert mb.response_mask.tolist() == [[True] * 4] * 2
    assert mb.train_mask.tolist() == [[True, True, False, True]] * 2
    # single-turn batches carry no masks and train on every response token
    single = groups_to_batch([Group("b", [Sample("b", "p", [1], "r", [2, 3], [-1.0, -1.0], "stop", 0)] * 2)],
                             AlgorithmConfig())
    assert single.token_masks is None
    assert collate(single.input_ids, single.prompt_lengths, [0], None, None).train_mask.tolist() == [[True, True]]


def test_scorer_adds_the_environment_reward_and_counts_its_failures():
    samples = [multi_turn_sample("a", 1.0), multi_turn_sample("a", 1.0, error="timeout")]
    scorer = RewardScorer([{"name": "format", "weight": 0.5, "params": {"pattern": "r"}}], env_weight=2.0)
    scorer.score(samples)
    assert samples[0].reward == pytest.approx(2.0 * 1.0 + 0.5 * 1.0) and samples[0].reward_components["env"] == 1.0
    assert samples[1].reward == 0.0 and samples[1].reward_error == "env:timeout"
    assert scorer.metrics()["reward/errors/env:timeout"] == 1.0
    assert "env" not in RewardScorer([{"name": "format", "params": {"pattern": "r"}}]).score(
        [multi_turn_sample("a", 1.0)])[0].reward_components  # no environment configured: no env component


def test_episode_stats():
    a, b = multi_turn_sample("a", 1.0), multi_turn_sample("a", 0.0, error="timeout")
    b.episode.tool_calls, b.episode.cut = 0, "max_turns"
    stats = episode_stats([Group("a", [a, b], generate_seconds=2.0)], "env")
    assert stats["env/tool_call_rate"] == 0.5 and stats["env/errors"] == 1.0
    assert stats["env/cut_max_turns"] == 1.0 and stats["env/cut_max_total_tokens"] == 0.0
    assert stats["env/time_share"] == pytest.approx(0.25) and stats["env/turns_mean"] == 2.0
    assert episode_stats([Group("c", [Sample("c", "p", [1], "r", [2], [-1.0], "stop", 0)])], "env") == {}


def test_turn_advantages_by_hand():
    from learner.algorithms import turn_advantages

    # one group of two trajectories: rewards 1 and 0; trajectory 0 earned 0.5 of its 1 in turn 0
    rewards, group = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    earlier = torch.tensor([[0.0, 0.5], [0.0, 0.0]])
    std = 2 ** -0.5  # unbiased std of {1, 0}
    grpo = turn_advantages("grpo", rewards, group, earlier, eps=0.0)
    assert torch.allclose(grpo, torch.tensor([[0.5 / std, 0.0 / std], [-0.5 / std, -0.5 / std]]))
    # (turn 1 of trajectory 0 is credited with G = 0.5, the group mean: advantage 0)
    assert torch.allclose(turn_advantages("dr_grpo", rewards, group, earlier), torch.tensor([[0.5, 0.0], [-0.5, -0.5]]))
    assert torch.allclose(turn_advantages("rloo", rewards, group, earlier), torch.tensor([[1.0, 0.0], [-1.0, -1.0]]))
    # no earlier rewards: every turn gets the trajectory's advantage
    from learner.algorithms import compute_advantages

    flat = turn_advantages("grpo", rewards, group, torch.zeros(2, 3))
    assert torch.equal(flat, compute_advantages("grpo", rewards, group)[:, None].expand(2, 3))
    with pytest.raises(ValueError, match="turn credit works with grpo, dr_grpo, rloo"):
        turn_advantages("reinforce_pp", rewards, group, earlier)


def test_turn_credit_reaches_each_turns_tokens():
    a = multi_turn_sample("a", 0.5)  # model turn [7, 8] (turn 0), observation [9], model turn [10] (turn 1)
    a.episode.turn_rewards = [0.5, 0.5]
    a.reward = 1.0
    b = multi_turn_sample("a", 0.0)
    b.reward = 0.0
    algo = AlgorithmConfig(turn_credit=True)
    algo.advantage.name = "dr_grpo"
    batch = groups_to_batch([Group("a", [a, b])], algo, {"env": 1.0})
    # dr_grpo: mean 0.5; a: turn 0 G=1 -> 0.5, turn 1 G=0.5 -> 0; b: -0.5 throughout
    assert batch.token_advantages[0].tolist() == [0.5, 0.5, 0.0, 0.0]  # the observation (masked) takes turn 1's
    assert batch.token_advantages[1].tolist() == [-0.5] * 4
    back = pickle.loads(pickle.dumps(batch)).select([1, 0])
    assert back.token_advantages[1].tolist() == [0.5, 0.5, 0.0, 0.0]
