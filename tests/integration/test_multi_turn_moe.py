"""Multi-turn trajectories on an MoE model (actors/multi_turn.py + actors/routing_capture.py): every
position's routing is recorded once, by the turn's request that first computed it, and the expert
counts add up every turn's request.

Its own module (own engine): the dense multi-turn tests keep theirs in test_multi_turn.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from actors.config import EnvConfig, RolloutConfig, SamplingConfig
from actors.multi_turn import MultiTurnRunner
from actors.rollout import RolloutWorker
from learner.moe import routing_tensor
from tests.integration.test_rollout_moe import hf_routing

pytestmark = pytest.mark.integration

ENV = "tests.integration.scripted_env:Scripted"


@pytest.fixture(scope="module")
def worker(tiny_moe_model_dir):
    cfg = RolloutConfig(n=2, max_model_len=160, sampling=SamplingConfig(max_new_tokens=6), record_routed_experts=True,
                        env=EnvConfig(name=ENV, params={"turns": 3}, max_turns=4, max_total_tokens=100))
    w = RolloutWorker(str(tiny_moe_model_dir), cfg, "float32")
    yield w
    w.shutdown()


def rows(k: int, key: str) -> list[dict]:
    return [{"prompt_id": f"{key}{i}", "prompt": f"{i}*{i + 3}=", "meta": {"key": f"{key}{i}"}, "seed": i}
            for i in range(k)]


@pytest.mark.parametrize("ending", ["environment", "max_turns"])
def test_each_position_keeps_the_routing_it_was_computed_with(worker, tiny_moe_model_dir, ending):
    """'environment': the scripted environment ends each trajectory after its third turn, so the
    record covers every token but the last. 'max_turns': the environment never ends it; the limit does,
    after an observation the engine never saw, so the record stops at the last model token."""
    params, max_turns = ({"turns": 3}, 4) if ending == "environment" else ({"turns": 0}, 2)
    worker.cfg.env = dataclasses.replace(EnvConfig(name=ENV, max_turns=max_turns, max_total_tokens=100), params=params)
    worker.multi_turn = MultiTurnRunner(worker)
    groups = worker.generate(rows(2, ending), 2)
    for g in groups:
        computed = 0  # tokens the group's turn requests fed to the engine (each turn recomputes its prefix)
        for s in g.samples:
            ids = s.prompt_ids + s.response_ids
            last_model = len(s.prompt_ids) + s.episode.turn_ends[-1]  # tokens up to the last model token
            assert s.episode.turns == (3 if ending == "environment" else 2)
            assert (s.episode.cut == "max_turns") == (ending == "max_turns")
            assert s.routed_experts.shape == (last_model - 1, 2, 2) and s.routed_experts.dtype == np.uint8
            if ending == "max_turns":
                assert last_model < len(ids)  # the last observation was never fed to the engine
            else:
                assert last_model == len(ids)
            # fp32, same weights: transformers routes the whole trajectory as the engine's turns did
            assert (np.sort(s.routed_experts, -1) == hf_routing(tiny_moe_model_dir, ids)[: last_model - 1]).all()
            computed += sum(len(s.prompt_ids) + end - 1 for end in s.episode.turn_ends)
        counts = np.array(g.expert_counts)
        assert counts.shape == (2, 8) and (counts.sum(1) == computed * 2).all()
        # the learner takes the record as it is; positions past it route by themselves
        lengths = [len(s.prompt_ids) + len(s.response_ids) for s in g.samples]
        _, valid = routing_tensor([s.routed_experts for s in g.samples], lengths, max(lengths), 2, 2)
        assert int(valid.sum()) == sum(len(s.routed_experts) for s in g.samples)
