"""Prompt datasets: jsonl / parquet rows -> prompt dicts, deterministic shuffling, a checkpointable position.

A row becomes {"prompt_id", "prompt", "meta"}: the prompt text is `data.prompt_template` formatted
with the row's fields (optionally wrapped in the tokenizer's chat template); every field of the row
goes to `meta`, where reward functions find the reference answer. Bad rows are errors that name the
file and line, raised at start-up — never a silent skip in the middle of a run.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any, Optional


class DataError(ValueError):
    pass


def read_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line or row number starting at 1, row) pairs from a .jsonl / .json / .parquet file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(i + 1, row) for i, row in enumerate(pq.read_table(p).to_pylist())]
    if p.suffix not in (".jsonl", ".json"):
        raise DataError(f"{p}: unsupported file type '{p.suffix}' (use .jsonl or .parquet)")
    rows = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{p}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
            rows.append((lineno, row))
    return rows


@dataclasses.dataclass
class PromptFormat:
    prompt_key: str
    template: str
    chat_template: bool = False
    system_prompt: Optional[str] = None
    max_prompt_tokens: int = 0  # 0 = no check
    required: tuple[str, ...] = ()  # fields every row must have (e.g. the warm start's target)


def load_prompts(files: list[str], fmt: PromptFormat, tokenizer: Any = None) -> list[dict[str, Any]]:
    """All rows of `files` as prompt dicts, in file order; raises DataError naming file:line on a bad row."""
    prompts = []
    for f in files:
        for lineno, row in read_rows(f):
            where = f"{f}:{lineno}"
            for key in (fmt.prompt_key, *fmt.required):
                if key not in row:
                    raise DataError(f"{where}: missing field '{key}' (fields present: {', '.join(sorted(row)) or 'none'}); "
                                    f"set data.prompt_key / the field names to match your file")
            try:
                text = fmt.template.format(**{**row, "prompt": row[fmt.prompt_key]})
            except (KeyError, IndexError) as e:
                raise DataError(f"{where}: data.prompt_template refers to field {e} that the row lacks") from None
            if fmt.chat_template:
                if tokenizer is None:
                    raise DataError("data.chat_template=true needs the model's tokenizer")
                msgs = ([{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else [])
                msgs.append({"role": "user", "content": text})
                text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            if fmt.max_prompt_tokens and tokenizer is not None:
                n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
                if n > fmt.max_prompt_tokens:
                    raise DataError(f"{where}: prompt is {n} tokens, over data.max_prompt_tokens={fmt.max_prompt_tokens}")
            prompts.append({"prompt_id": f"{Path(f).name}:{lineno}", "prompt": text, "meta": row})
    if not prompts:
        raise DataError(f"no rows in {', '.join(files)}")
    return prompts


class PromptStream:
    """Endless, deterministic stream of prompts: shuffled per epoch with `seed + epoch`.

    `state()` / `load_state()` give the data position (epoch, index) for checkpoints, so a resumed
    run sees exactly the prompts the uninterrupted run would have.
    """

    def __init__(self, prompts: list[dict[str, Any]], seed: int, shuffle: bool = True):
        self.prompts = prompts
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.index = 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(len(self.prompts)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[dict[str, Any]]:
        out = []
        while len(out) < k:
            if self.index == len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._make_order()
            out.append(self.prompts[self._order[self.index]])
            self.index += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._make_order()


def prompt_format_from_config(data_cfg: Any, required: tuple[str, ...] = ()) -> PromptFormat:
    return PromptFormat(
        prompt_key=data_cfg.prompt_key,
        template=data_cfg.prompt_template,
        chat_template=data_cfg.chat_template,
        system_prompt=data_cfg.system_prompt,
        max_prompt_tokens=data_cfg.max_prompt_tokens,
        required=required,
    )

