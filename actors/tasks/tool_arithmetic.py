"""The multi-turn demo task: multiplication with a calculator ("37*248=" -> "9176").

A tiny model cannot multiply multi-digit numbers, but it can learn to call the `calculator`
environment (actors/envs/calculator.py) and copy its result: "37*248=" then the model's call
"[37*248]", the observation "=9176\\n", and the model's answer "9176". Rows carry the reference
`answer` and, in train, a `demo` target for the supervised warm start: for a `tool_fraction` of the
rows the whole tool-using trajectory, for the rest the bare answer (which the model can only guess);
test rows carry the tool-using one (never trained on: every file of a run has the same fields).
After the warm start the model calls the tool on part of the prompts; RL has to learn to call it
on all of them. Operands have 2-3 digits. The splits in configs/data/tool_arithmetic/ are
regenerated, byte for byte, by

    python -m actors.tasks.tool_arithmetic --out configs/data/tool_arithmetic
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from actors.tasks.arithmetic import write_jsonl

TRAIN_SIZE, TEST_SIZE, SEED, TOOL_FRACTION = 4000, 200, 0, 0.25
MIN_DIGITS, MAX_DIGITS = 2, 3


def make_problem(rng: random.Random) -> dict[str, str]:
    a, b = (rng.randint(10 ** (rng.randint(MIN_DIGITS, MAX_DIGITS) - 1), 10 ** MAX_DIGITS - 1) for _ in range(2))
    return {"prompt": f"{a}*{b}=", "answer": str(a * b)}


def tool_trajectory(row: dict[str, str]) -> str:
    """The call, the calculator's observation and the answer, as the warm start's target text."""
    expr = row["prompt"].rstrip("=")
    return f"[{expr}]={row['answer']}\n{row['answer']}"


def make_splits(train_size: int = TRAIN_SIZE, test_size: int = TEST_SIZE, seed: int = SEED,
                tool_fraction: float = TOOL_FRACTION) -> tuple[list[dict], list[dict]]:
    """(train, test), disjoint prompts; deterministic in `seed`."""
    if not 0.0 <= tool_fraction <= 1.0:
        raise ValueError(f"tool_fraction must be in [0, 1], got {tool_fraction}")
    rng, seen, rows = random.Random(seed), set(), []
    while len(rows) < train_size + test_size:
        row = make_problem(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    test, train = rows[:test_size], rows[test_size:]
    for row in train:
        row["demo"] = tool_trajectory(row) if rng.random() < tool_fraction else row["answer"]
    for row in test:  # never trained on; present because every file of a run has the same fields
        row["demo"] = tool_trajectory(row)
    return train, test


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="configs/data/tool_arithmetic")
    ap.add_argument("--train-size", type=int, default=TRAIN_SIZE)
    ap.add_argument("--test-size", type=int, default=TEST_SIZE)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--tool-fraction", type=float, default=TOOL_FRACTION)
    args = ap.parse_args(argv)
    train, test = make_splits(args.train_size, args.test_size, args.seed, args.tool_fraction)
    for name, rows in (("train", train), ("test", test)):
        print(f"wrote {len(rows)} rows to {write_jsonl(Path(args.out) / f'{name}.jsonl', rows)}")


if __name__ == "__main__":
    main()
