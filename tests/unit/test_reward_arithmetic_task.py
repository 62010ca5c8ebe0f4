"""The embedded arithmetic task: problem generation, the checker, and the shipped fixed splits."""

import json
import random
import re
from pathlib import Path

import pytest

from actors.tasks import arithmetic
from actors.tasks.arithmetic import check, make_problem, make_split, make_splits

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[2] / "configs/data/arithmetic"


def test_problem_is_a_correct_sum_within_the_digit_range():
    rng = random.Random(0)
    for _ in range(500):
        row = make_problem(rng, 1, 3)
        a, b = map(int, re.fullmatch(r"(\d+)\+(\d+)=", row["prompt"]).groups())
        assert row["answer"] == str(a + b) and a < 1000 and b < 1000
    for _ in range(100):
        a, b = map(int, make_problem(rng, 2, 2)["prompt"][:-1].split("+"))
        assert 10 <= a <= 99 and 10 <= b <= 99
    with pytest.raises(ValueError):
        make_problem(rng, 0, 3)


def test_digit_counts_are_balanced():
    rows = make_split(3000, seed=3)
    lengths = [len(r["prompt"].split("+")[0]) for r in rows]
    # 1-digit operands are fewer: only 10 values exist, so duplicate prompts are redrawn
    assert lengths.count(3) / len(rows) == pytest.approx(1 / 3, abs=0.05)


def test_splits_are_deterministic_distinct_and_disjoint():
    assert make_split(50, seed=7) == make_split(50, seed=7) != make_split(50, seed=8)
    train, test = make_splits(800, 100, seed=5)
    train_prompts, test_prompts = {r["prompt"] for r in train}, {r["prompt"] for r in test}
    assert len(train_prompts) == 800 and len(test_prompts) == 100
    assert not train_prompts & test_prompts
    with pytest.raises(ValueError, match="distinct"):
        make_split(101, seed=0, min_digits=1, max_digits=1)  # only 100 one-digit problems exist


@pytest.mark.parametrize("completion, score", [
    ("357", 1.0), ("357<|endoftext|>", 1.0), (" 357\n", 1.0), ("357 is it", 1.0),
    ("3570", 0.0), ("35", 0.0), ("", 0.0), ("<|endoftext|>", 0.0), ("0357", 0.0),
])
def test_check_is_exact(completion, score):
    assert check(completion, "357") == score


def test_check_partial_credit_is_off_by_default():
    assert check("347", "357") == 0.0
    assert check("347", "357", partial_credit=True) == pytest.approx(2 / 3)
    assert check("57", "357", partial_credit=True) == pytest.approx(2 / 3)
    assert check("357", "357", partial_credit=True) == 1.0


def test_shipped_splits_match_the_generator(tmp_path):
    arithmetic.main(["--out", str(tmp_path)])
    for name, n in (("train", 5000), ("test", 200)):
        shipped = (DATA / f"{name}.jsonl").read_bytes()
        assert shipped == (tmp_path / f"{name}.jsonl").read_bytes(), f"{name}.jsonl differs from the generator"
        rows = [json.loads(line) for line in shipped.decode().splitlines()]
        assert len(rows) == n and all(set(r) == {"prompt", "answer"} for r in rows)
        assert all(check(r["answer"], r["answer"]) == 1.0 for r in rows)
    train = {json.loads(x)["prompt"] for x in (DATA / "train.jsonl").read_text().splitlines()}
    test = {json.loads(x)["prompt"] for x in (DATA / "test.jsonl").read_text().splitlines()}
    assert not train & test
