"""The warm start's stopping rule (cluster/warm_start.py) on plain stand-ins for the learner, the
engines and the logger: which steps run, where the accuracy is checked, where it stops. The real stack
(weights pushed, accuracy measured on vLLM) is tests/slow/test_end_to_end.py."""

from __future__ import annotations

import random
import types

import pytest

import cluster.warm_start as ws_mod
from cluster.batching import sft_examples
from cluster.config import load_config

pytestmark = pytest.mark.unit


class Tokenizer:
    eos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + ord(c) % 50 for c in text]}


class Learner:
    def __init__(self):
        self.steps = 0
        self.firsts = []  # each batch's first sequence: which examples were drawn
        self.aux_coefs = set()  # the balance-loss coefficients the calls asked for

    def sft_steps(self, batches, lr, aux_coef=None):
        self.steps += len(batches)
        self.aux_coefs.add(aux_coef)
        self.firsts += [b.input_ids[0].tolist() for b in batches]
        return [{"sft/loss": 1.0} for _ in batches]


class Logger:
    def __init__(self):
        self.rows, self.lines = [], []

    def log(self, step, metrics, kind):
        self.rows.append((step, kind, dict(metrics)))

    def print(self, line):
        self.lines.append(line)


def run_prompts():
    return [{"prompt_id": str(i), "prompt": f"{i}+1=", "meta": {"answer": str(i + 1)}} for i in range(40)]


def run_with(monkeypatch, accuracies, **warm):
    """A warm start whose checks see `accuracies` in turn; returns (learner, logger, checked steps)."""
    over = [f"trainer.warm_start.{k}={v}" for k, v in warm.items()]
    cfg = load_config(None, over)
    run = types.SimpleNamespace(cfg=cfg, tokenizer=Tokenizer(), train_prompts=run_prompts(), learner=Learner(),
                                rollout=types.SimpleNamespace(sleep=lambda: None))
    checked, it = [], iter(accuracies)

    def check_accuracy(run_, logger, check, step, version):
        checked.append((step, len(check), version))
        return next(it)

    monkeypatch.setattr(ws_mod, "check_accuracy", check_accuracy)
    logger = Logger()
    ws_mod.warm_start(run, logger, version=0)
    return run.learner, logger, checked


def test_stops_at_the_first_check_that_reaches_the_target(monkeypatch):
    learner, logger, checked = run_with(monkeypatch, [0.1, 0.2, 0.36, 0.9], steps=2000, target_accuracy=0.35,
                                        check_every=50, check_prompts=16)
    assert checked == [(50, 16, 0), (100, 16, 0), (150, 16, 0)]
    assert learner.steps == 150 and [s for s, _, _ in logger.rows] == list(range(1, 151))
    assert "150 supervised steps" in logger.lines[-1] and "36.0% >= target 35%" in logger.lines[-1]


def test_the_warm_start_passes_its_own_balance_loss_coefficient(monkeypatch):
    # unset: None, so the learner uses learner.moe_aux_loss_coef; set: that value, on every call
    assert run_with(monkeypatch, [], steps=60)[0].aux_coefs == {None}
    assert run_with(monkeypatch, [], steps=60, moe_aux_loss_coef=0.01)[0].aux_coefs == {0.01}


def test_an_unreached_target_takes_every_step_and_checks_the_last(monkeypatch):
    # 60 steps, checked every 25: at 25 and 50, and at 60 (the cap) although it is no multiple
    learner, logger, checked = run_with(monkeypatch, [0.0] * 3, steps=60, target_accuracy=1.0, check_every=25)
    assert [s for s, _, _ in checked] == [25, 50, 60] and learner.steps == 60
    assert checked[0][1] == 40  # check_prompts (256) capped by the training prompts there are
    assert "not reached within warm_start.steps=60" in logger.lines[-1]


def test_checks_do_not_change_which_examples_are_drawn(monkeypatch):
    plain, logger, checked = run_with(monkeypatch, [], steps=130)
    assert checked == [] and plain.steps == 130
    assert logger.lines[-1].startswith("warm start: 130 supervised steps in") and "target" not in logger.lines[-1]
    # the draws are the seeded sequence, one batch per step, with checks (at 50, 100) or without
    rng = random.Random(0)
    examples = sft_examples(run_prompts(), Tokenizer(), "answer")
    assert plain.firsts == [rng.sample(examples, 40)[0][0] for _ in range(130)]
    checking, _, checked = run_with(monkeypatch, [0.0, 0.0, 0.0], steps=130, target_accuracy=0.5)
    assert [s for s, _, _ in checked] == [50, 100, 130] and checking.firsts == plain.firsts


def test_the_check_prompts_are_the_same_for_every_seed():
    prompts = [{"prompt_id": str(i)} for i in range(1000)]
    picks = []
    for seed in (0, 1):
        cfg = load_config(None, [f"trainer.seed={seed}", "trainer.warm_start.check_prompts=8"])
        picks.append(ws_mod.check_prompts(types.SimpleNamespace(cfg=cfg, train_prompts=prompts)))
    assert picks[0] == picks[1] and len(picks[0]) == 8 and len({p["prompt_id"] for p in picks[0]}) == 8
