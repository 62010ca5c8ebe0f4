"""The embedded demo task: two-number addition, verifiable exactly, learnable on a CPU.

A prompt is "12+345=" and the answer "357": the model writes the digits of the sum, then EOS.
Why this task: a ~0.3M-parameter character-level model learns it in minutes on a CPU, every
answer is checked exactly (no judge, no noise), and its difficulty is one knob (the digits per
operand). Defaults: 1-3 digits per operand. The number of digits is drawn uniformly first and
the value uniformly within it, so short and long problems are equally common (drawing values
uniformly from 0..999 would make nearly every problem a 3-digit one).

The fixed splits in configs/data/arithmetic/ ({"prompt", "answer"} per line; test disjoint from
train) are regenerated, byte for byte, by

    python -m actors.tasks.arithmetic --out configs/data/arithmetic
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import Iterable

TRAIN_SIZE, TEST_SIZE, SEED = 5000, 200, 0
MIN_DIGITS, MAX_DIGITS = 1, 3
_HEAD = re.compile(r"[^\s<]*")  # the answer ends at whitespace or at a special token such as <|endoftext|>


def _operand(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def make_problem(rng: random.Random, min_digits: int = MIN_DIGITS, max_digits: int = MAX_DIGITS) -> dict[str, str]:
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    a, b = _operand(rng, min_digits, max_digits), _operand(rng, min_digits, max_digits)
    return {"prompt": f"{a}+{b}=", "answer": str(a + b)}


def make_split(n: int, seed: int, min_digits: int = MIN_DIGITS, max_digits: int = MAX_DIGITS,
               exclude: Iterable[str] = ()) -> list[dict[str, str]]:
    """`n` distinct problems, none of whose prompts is in `exclude`; deterministic in `seed`."""
    rng, seen, rows = random.Random(seed), set(exclude), []
    for _ in range(100 * n + 1000):  # bounded: asking for more problems than exist fails loudly
        if len(rows) == n:
            return rows
        row = make_problem(rng, min_digits, max_digits)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    raise ValueError(f"could not draw {n} distinct problems with {min_digits}-{max_digits} digits")


def make_splits(train_size: int = TRAIN_SIZE, test_size: int = TEST_SIZE, seed: int = SEED,
                min_digits: int = MIN_DIGITS, max_digits: int = MAX_DIGITS) -> tuple[list[dict], list[dict]]:
    """(train, test): the test split is drawn first, then train excludes every test prompt."""
    test = make_split(test_size, seed, min_digits, max_digits)
    train = make_split(train_size, seed + 1, min_digits, max_digits, exclude=(r["prompt"] for r in test))
    return train, test


def check(completion: str, answer: str, partial_credit: bool = False) -> float:
    """1.0 if the completion, up to its first whitespace or special token, is exactly `answer`.

    partial_credit (off by default: exact answers are what the demo measures) gives the fraction
    of digits that match position by position from the right, over the longer of the two.
    """
    head = _HEAD.match(completion.strip()).group(0)
    answer = str(answer).strip()
    if head == answer:
        return 1.0
    if not partial_credit or not head:
        return 0.0
    same = sum(x == y for x, y in zip(reversed(head), reversed(answer)))
    return same / max(len(head), len(answer))


def preference_pairs(source: str | Path = "configs/data/arithmetic/train.jsonl", n: int = 1000,
                     seed: int = 0) -> list[dict[str, str]]:
    """DPO pairs {"prompt", "chosen", "rejected"} from the first `n` rows of `source`: chosen is the
    right sum, rejected a near miss (off by 1, 10 or 100; a miss below 0 becomes the sum + 1).
    The offline set of tests/slow/test_dpo.py and scripts/algorithm_table.py; deterministic in `seed`."""
    rng, pairs = random.Random(seed), []
    with open(source, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            answer = int(row["answer"])
            wrong = answer + rng.choice([1, 10, 100, -1, -10, -100])
            wrong = wrong if wrong >= 0 else answer + 1
            pairs.append({"prompt": row["prompt"], "chosen": row["answer"], "rejected": str(wrong)})
            if len(pairs) == n:
                break
    return pairs


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return p


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="configs/data/arithmetic", help="directory for train.jsonl and test.jsonl")
    ap.add_argument("--train-size", type=int, default=TRAIN_SIZE)
    ap.add_argument("--test-size", type=int, default=TEST_SIZE)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--min-digits", type=int, default=MIN_DIGITS)
    ap.add_argument("--max-digits", type=int, default=MAX_DIGITS)
    args = ap.parse_args(argv)
    train, test = make_splits(args.train_size, args.test_size, args.seed, args.min_digits, args.max_digits)
    for name, rows in (("train", train), ("test", test)):
        print(f"wrote {len(rows)} rows to {write_jsonl(Path(args.out) / f'{name}.jsonl', rows)}")


if __name__ == "__main__":
    main()
