"""DPO on the actor–learner system (cluster/preference.py): pairs from rollout groups, from files,
and the pair batch layout the learner's preference_step reads."""

from __future__ import annotations

import json

import pytest

from actors.types import Group, Sample
from cluster.preference import group_pairs, load_pairs, pair_batch, pair_order
from cluster.tiny_model import build_tokenizer
from learner.config import DPOConfig

pytestmark = pytest.mark.unit


def sample(reward: float, response: list[int], error: str | None = None) -> Sample:
    s = Sample("g", "p", [1, 2], "r", response, [-1.0] * len(response), "stop", 0, reward=reward)
    s.reward_error = error
    return s


def test_best_worst_and_all_pairs():
    g = Group("g", [sample(0.5, [3]), sample(1.0, [4]), sample(0.0, [5]), sample(1.0, [6], error="timeout")])
    # the failed sample never becomes a pair, whatever its reward field says
    assert group_pairs([g], DPOConfig(pairs="best_worst")) == [([1, 2], [4], [5])]
    assert group_pairs([g], DPOConfig(pairs="all")) == [([1, 2], [3], [5]), ([1, 2], [4], [3]), ([1, 2], [4], [5])]
    assert group_pairs([g], DPOConfig(pairs="all", tau=0.5)) == [([1, 2], [4], [5])]
    equal = Group("e", [sample(1.0, [3]), sample(1.0, [4])])
    assert group_pairs([equal], DPOConfig()) == []  # no preference in an all-equal group


def test_pair_batch_layout():
    batch = pair_batch([([1, 2], [4], [5, 6]), ([7], [8, 9], [10])])
    assert [x.tolist() for x in batch.input_ids] == [[1, 2, 4], [1, 2, 5, 6], [7, 8, 9], [7, 10]]
    assert batch.prompt_lengths == [2, 2, 1, 1] and batch.group_index.tolist() == [0, 0, 1, 1]


def test_load_pairs(tmp_path):
    tok = build_tokenizer()
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "1+2=", "chosen": "3", "rejected": "4"}) + "\n")
    [(prompt, chosen, rejected)] = load_pairs([str(f)], tok)
    assert tok.decode(prompt) == "1+2=" and chosen[-1] == rejected[-1] == tok.eos_token_id
    assert tok.decode(chosen[:-1]) == "3"
    f.write_text(json.dumps({"prompt": "1+2=", "chosen": "3"}) + "\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: preference row lacks rejected"):
        load_pairs([str(f)], tok)


def test_pair_order_takes_every_pair_once_per_epoch_and_is_a_function_of_the_seed():
    from itertools import islice

    got = list(islice(pair_order(7, seed=3), 21))
    assert all(sorted(got[e * 7:(e + 1) * 7]) == list(range(7)) for e in range(3))
    assert got[:7] != got[7:14]  # each epoch shuffled anew
    assert list(islice(pair_order(7, seed=3), 21)) == got  # a resumed run skips to the same place
    assert list(islice(pair_order(7, seed=4), 21)) != got
    # the order of the loop it replaced (one rng, a shuffled list popped from the end), so runs measured
    # before keep their pair sequence
    import random
    rng, order, old = random.Random(3), [], []
    while len(old) < 21:
        if not order:
            order = list(range(7))
            rng.shuffle(order)
        old.append(order.pop())
    assert old == got
