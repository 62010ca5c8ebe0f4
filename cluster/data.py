"""Prompt datasets: jsonl / parquet rows -> prompt dicts, deterministic shuffling, a checkpointable position.

A row becomes {"prompt_id", "prompt", "meta"}: the prompt text is `data.prompt_template` formatted
with the row's fields (optionally wrapped in the tokenizer's chat template); every field of the row
goes to `meta`, where reward functions find the reference answer.

Bad rows (not JSON, not an object, a missing or null field, a prompt that is not text or is empty, a
template that does not fit the row, a prompt over the token limit) are found at start-up, all of them
in one pass: by default one error lists them as file:line (data.bad_rows=error); with
data.bad_rows=skip they are dropped, counted in `PromptSet.skipped` and reported at the run's start.
Never a silent skip, never a failure in the middle of a run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import string
from collections.abc import Collection
from pathlib import Path
from typing import Any, Optional


MAX_LISTED = 20  # bad rows listed in one error before "... and N more"


class DataError(ValueError):
    pass


@dataclasses.dataclass
class BadRow:
    """A row that cannot become a prompt: where it is (line of a jsonl file, row of a parquet file) and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def read_rows(path: str | Path) -> tuple[list[tuple[int, dict[str, Any]]], list[BadRow]]:
    """The (line or row number starting at 1, row) pairs of a .jsonl / .json / .parquet file, and the
    lines that are not a JSON object. A file that cannot be read at all raises DataError."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as e:  # pyarrow's errors vary by damage; the file is the fact to report
            raise DataError(f"{p}: cannot be read as parquet ({e})") from None
        return [(i + 1, row) for i, row in enumerate(table.to_pylist())], []
    if p.suffix not in (".jsonl", ".json"):
        raise DataError(f"{p}: unsupported file type '{p.suffix}' (use .jsonl or .parquet)")
    rows, bad = [], []
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # -sig: a leading byte-order mark
            except UnicodeDecodeError as e:
                bad.append(BadRow(str(p), lineno, f"not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})"))
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))  # the newline would move the error's column to a next "line"
            except json.JSONDecodeError as e:
                bad.append(BadRow(str(p), lineno, f"not valid JSON ({e.msg} at column {e.colno}){_array_hint(rows, bad, line)}"))
                continue
            if not isinstance(row, dict):
                bad.append(BadRow(str(p), lineno, f"expected a JSON object per line, got {_kind(row)}"
                                                  f"{_array_hint(rows, bad, line)}"))
                continue
            rows.append((lineno, row))
    return rows, bad


def _array_hint(rows: list, bad: list, line: str) -> str:
    if rows or bad or not line.lstrip().startswith("["):
        return ""
    return " — the file looks like one JSON array; relayrl reads one object per line (convert: jq -c '.[]' in.json > out.jsonl)"


def _kind(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "text",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


@dataclasses.dataclass
class PromptFormat:
    prompt_key: str
    template: str
    chat_template: bool = False
    system_prompt: Optional[str] = None
    max_prompt_tokens: int = 0  # 0 = no check
    limit_source: str = "data.max_prompt_tokens"  # where max_prompt_tokens comes from, for the error message
    required: tuple[str, ...] = ()  # fields every row must have (e.g. the warm start's target)
    bad_rows: str = "error"  # error | skip (data.bad_rows)


@dataclasses.dataclass
class PromptSet:
    """The prompts of some files, in file order, and the bad rows skipped (data.bad_rows=skip)."""

    prompts: list[dict[str, Any]]
    skipped: list[BadRow]
    rows: int  # rows read: len(prompts) + len(skipped)

    def skip_note(self, label: str) -> Optional[str]:
        """One line for the run's start when rows were skipped, with the first few reasons."""
        if not self.skipped:
            return None
        first = "; ".join(map(str, self.skipped[:3])) + (" ..." if len(self.skipped) > 3 else "")
        return f"data.bad_rows=skip: skipped {len(self.skipped)} of {self.rows} rows of {label}: {first}"


class RowError(ValueError):
    """Why one row cannot become a prompt."""


def prompt_text(row: dict[str, Any], fmt: PromptFormat, tokenizer: Any = None) -> str:
    """The prompt of one row; raises RowError saying what is wrong with the row."""
    missing = [k for k in (fmt.prompt_key, *fmt.required) if k not in row]
    if missing:
        raise RowError(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)} "
                       f"(fields present: {', '.join(sorted(row)) or 'none'}); "
                       f"set data.prompt_key / the field names to match your file")
    nulls = [k for k in (fmt.prompt_key, *fmt.required) if row[k] is None]
    if nulls:
        raise RowError(f"field {', '.join(repr(k) for k in nulls)} is null")
    prompt = row[fmt.prompt_key]
    if not isinstance(prompt, str):
        raise RowError(f"field '{fmt.prompt_key}' is {_kind(prompt)}, not text: {str(prompt)[:40]!r}")
    if not prompt.strip():
        raise RowError(f"field '{fmt.prompt_key}' is empty")
    try:
        text = fmt.template.format(**{**row, "prompt": prompt})
    except (KeyError, IndexError) as e:
        raise RowError(f"data.prompt_template refers to field {e} that the row lacks") from None
    except (ValueError, AttributeError, TypeError) as e:  # e.g. a format spec that does not fit the value
        raise RowError(f"data.prompt_template cannot be filled from this row ({e})") from None
    if fmt.chat_template:
        msgs = ([{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else [])
        msgs.append({"role": "user", "content": text})
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if fmt.max_prompt_tokens and tokenizer is not None:
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n > fmt.max_prompt_tokens:
            raise RowError(f"prompt is {n} tokens, over the limit of {fmt.max_prompt_tokens} ({fmt.limit_source})")
    return text


def load_prompt_set(files: list[str], fmt: PromptFormat, tokenizer: Any = None) -> PromptSet:
    """Every row of `files` as a prompt dict. Bad rows are all collected first; then, with
    fmt.bad_rows=error, one DataError lists them as file:line; with skip, they are dropped and counted."""
    try:
        list(string.Formatter().parse(fmt.template))
    except ValueError as e:
        raise DataError(f"data.prompt_template {fmt.template!r} is not a format string ({e}): write fields as "
                        f"{{name}} and literal braces as {{{{ }}}}") from None
    if fmt.chat_template and tokenizer is None:
        raise DataError("data.chat_template=true needs the model's tokenizer")
    prompts: list[dict[str, Any]] = []
    bad: list[BadRow] = []
    for f in files:
        rows, file_bad = read_rows(f)
        for lineno, row in rows:
            try:
                text = prompt_text(row, fmt, tokenizer)
            except RowError as e:
                file_bad.append(BadRow(str(Path(f).expanduser()), lineno, str(e)))
                continue
            prompts.append({"prompt_id": f"{Path(f).name}:{lineno}", "prompt": text, "meta": row})
        bad += sorted(file_bad, key=lambda b: b.line)
    total = len(prompts) + len(bad)
    if bad and (fmt.bad_rows != "skip" or not prompts):
        head = (f"no usable rows in {', '.join(files)}: all {total} are bad" if not prompts else
                f"{len(bad)} of {total} rows in {', '.join(files)} cannot be used; fix them, or set data.bad_rows=skip "
                f"to skip and count them")
        raise DataError(f"{head}:\n  " + "\n  ".join(map(str, bad[:MAX_LISTED]))
                        + (f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""))
    if not prompts:
        raise DataError(f"no rows in {', '.join(files)}")
    return PromptSet(prompts, bad, total)


def load_prompts(files: list[str], fmt: PromptFormat, tokenizer: Any = None) -> list[dict[str, Any]]:
    """The prompts of load_prompt_set (raises DataError naming file:line for bad rows unless
    fmt.bad_rows=skip; skipped rows are logged here, since the count is not returned)."""
    loaded = load_prompt_set(files, fmt, tokenizer)
    if note := loaded.skip_note(", ".join(files)):
        logging.getLogger("relayrl").warning(note)
    return loaded.prompts


class PromptStream:
    """Endless, deterministic stream of prompts: shuffled per epoch with `seed + epoch`.

    `state()` / `load_state()` give the data position (epoch, index) for checkpoints, so a resumed
    run sees exactly the prompts the uninterrupted run would have.

    A take that spans two epochs never holds a prompt twice (a generate call keys its requests by
    prompt_id): a new epoch's prompt that this take already has from the last epoch (or that `avoid`
    names) is swapped with the first later one it has not — only then does the order differ from the
    plain shuffle. The swaps are part of the state. A take larger than the prompt set must repeat
    prompts.
    """

    def __init__(self, prompts: list[dict[str, Any]], seed: int, shuffle: bool = True):
        self.prompts = prompts
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.index = 0
        self._swaps: list[tuple[int, int]] = []  # applied to this epoch's shuffled order
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(len(self.prompts)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        for p, q in self._swaps:
            order[p], order[q] = order[q], order[p]
        return order

    def _keep_out(self, taken: set[int], need: int) -> None:
        """Swap the new epoch's first `need` positions clear of the prompts `taken` from the last epoch."""
        q = need
        for p in range(min(need, len(self._order))):
            if self._order[p] not in taken:
                continue
            while q < len(self._order) and self._order[q] in taken:
                q += 1
            if q >= len(self._order):
                return  # fewer prompts than the take: repeats cannot be avoided
            self._swaps.append((p, q))
            self._order[p], self._order[q] = self._order[q], self._order[p]
            q += 1

    def take(self, k: int, avoid: Collection[str] = ()) -> list[dict[str, Any]]:
        """The next k prompts. `avoid`: prompt_ids an earlier take of the same generate round holds
        (a step's extra dynamic-sampling rounds), kept out of a new epoch like the take's own."""
        out: list[int] = []
        while len(out) < k:
            if self.index == len(self._order):
                self.epoch, self.index, self._swaps = self.epoch + 1, 0, []
                self._order = self._make_order()
                avoided = {i for i, p in enumerate(self.prompts) if p.get("prompt_id") in avoid} if avoid else set()
                self._keep_out(set(out) | avoided, k - len(out))
            out.append(self._order[self.index])
            self.index += 1
        return [self.prompts[i] for i in out]

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "swaps": [list(s) for s in self._swaps]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._swaps = [(int(p), int(q)) for p, q in state.get("swaps", [])]  # older checkpoints: none
        self._order = self._make_order()


def prompt_format_from_config(data_cfg: Any, required: tuple[str, ...] = (), engine_room: int = 0) -> PromptFormat:
    """engine_room: the prompt tokens the rollout engine has room for (rollout.max_model_len -
    rollout.sampling.max_new_tokens); it bounds prompts when data.max_prompt_tokens is 0."""
    limit, source = data_cfg.max_prompt_tokens, "data.max_prompt_tokens"
    if not limit and engine_room > 0:
        limit, source = engine_room, "rollout.max_model_len - rollout.sampling.max_new_tokens, as data.max_prompt_tokens=0"
    return PromptFormat(
        prompt_key=data_cfg.prompt_key,
        template=data_cfg.prompt_template,
        chat_template=data_cfg.chat_template,
        system_prompt=data_cfg.system_prompt,
        max_prompt_tokens=limit,
        limit_source=source,
        required=required,
        bad_rows=data_cfg.bad_rows,
    )

