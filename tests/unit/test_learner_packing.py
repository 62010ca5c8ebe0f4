"""Micro-batch packing: budget respected, every sequence exactly once, equal counts across ranks."""

import random

import pytest

from learner.packing import pack_by_tokens, padded_tokens, padding_waste, split_to_count

pytestmark = pytest.mark.unit


def flat(mbs):
    return sorted(i for mb in mbs for i in mb)


def test_budget_and_coverage_random():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 50) for _ in range(rng.randint(0, 30))]
        budget = rng.randint(10, 200)
        mbs = pack_by_tokens(lengths, budget)
        assert flat(mbs) == list(range(len(lengths)))
        for mb in mbs:
            assert mb, "no empty micro-batch from packing"
            # only a single over-long sequence may exceed the budget
            assert padded_tokens(mb, lengths) <= budget or len(mb) == 1


def test_longest_first_and_closed_form():
    lengths = [3, 10, 4, 10, 2]
    # budget 20: [10,10] (20), then [4,3,2] padded to 4*3 = 12
    assert pack_by_tokens(lengths, 20) == [[1, 3], [2, 0, 4]]
    assert padding_waste([[1, 3], [2, 0, 4]], lengths) == pytest.approx(1 - 29 / 32)
    # an over-long sequence gets its own micro-batch
    assert pack_by_tokens([50, 1], 10) == [[0], [1]]


def test_split_to_count_keeps_every_sequence_once():
    lengths = [8, 8, 8, 8, 2, 2]
    mbs = pack_by_tokens(lengths, 64)
    assert len(mbs) == 1
    out = split_to_count(mbs, lengths, 3)
    assert len(out) == 3 and flat(out) == list(range(6)) and all(out)
    # cannot split single sequences: pad with empty micro-batches
    out = split_to_count([[0], [1]], lengths, 4)
    assert out == [[0], [1], [], []]
    assert split_to_count(mbs, lengths, 1) == mbs
    with pytest.raises(ValueError):
        split_to_count([[0], [1]], lengths, 1)


def test_split_targets_the_largest_micro_batch():
    lengths = [10, 10, 10, 10, 1, 1]
    out = split_to_count([[0, 1, 2, 3], [4, 5]], lengths, 3)
    assert out == [[0, 1], [2, 3], [4, 5]]


def test_empty_rank_plans():
    assert pack_by_tokens([], 100) == []
    assert split_to_count([], [], 2) == [[], []]
    assert padding_waste([[], []], []) == 0.0
