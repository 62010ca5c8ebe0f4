"""Prompt loading (jsonl, parquet, chat template), errors naming file and line, deterministic stream."""

import dataclasses
import json
import re

import pytest

from cluster.data import (DataError, PromptFormat, PromptStream, load_prompt_set, load_prompts,
                          prompt_format_from_config, read_rows)

pytestmark = pytest.mark.unit

FMT = PromptFormat(prompt_key="question", template="Q: {prompt}\nA:")


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_jsonl_rows_become_prompts_with_meta(tmp_path):
    f = write(tmp_path / "d.jsonl", [json.dumps({"question": "1+1?", "answer": "#### 2"}), "",
                                     json.dumps({"question": "2+2?", "answer": "#### 4"})])
    prompts = load_prompts([f], FMT)
    assert [p["prompt"] for p in prompts] == ["Q: 1+1?\nA:", "Q: 2+2?\nA:"]
    assert prompts[1]["meta"]["answer"] == "#### 4"
    assert prompts[1]["prompt_id"] == "d.jsonl:3"  # line numbers survive blank lines


def test_parquet_loader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": ["a", "b"], "answer": ["1", "2"]}), tmp_path / "d.parquet")
    prompts = load_prompts([str(tmp_path / "d.parquet")], FMT)
    assert [p["meta"]["answer"] for p in prompts] == ["1", "2"]


def test_malformed_json_names_file_and_line(tmp_path):
    f = write(tmp_path / "bad.jsonl", [json.dumps({"question": "x"}), "{not json"])
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_prompts([f], FMT)


def test_missing_field_names_file_line_and_fields(tmp_path):
    f = write(tmp_path / "d.jsonl", [json.dumps({"question": "x"}), json.dumps({"q": "y"})])
    with pytest.raises(DataError, match=r"d.jsonl:2: missing field 'question' \(fields present: q\)"):
        load_prompts([f], FMT)


def test_non_object_row(tmp_path):
    f = write(tmp_path / "d.jsonl", ["[1, 2]"])
    with pytest.raises(DataError, match="expected a JSON object"):
        load_prompts([f], FMT)


def test_unsupported_suffix_and_missing_file(tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        read_rows(tmp_path / "d.csv")
    with pytest.raises(DataError, match="file not found"):
        read_rows(tmp_path / "none.jsonl")


def test_required_field_for_warm_start(tmp_path):
    f = write(tmp_path / "d.jsonl", [json.dumps({"question": "x"})])
    fmt = PromptFormat(prompt_key="question", template="{prompt}", required=("answer",))
    with pytest.raises(DataError, match="missing field 'answer'"):
        load_prompts([f], fmt)


def test_stream_is_deterministic_and_resumable():
    prompts = [{"prompt_id": str(i)} for i in range(7)]
    a = PromptStream(prompts, seed=3)
    first = [p["prompt_id"] for p in a.take(10)]  # crosses an epoch boundary
    state = a.state()
    rest = [p["prompt_id"] for p in a.take(9)]
    b = PromptStream(prompts, seed=3)
    b.load_state(state)
    assert [p["prompt_id"] for p in b.take(9)] == rest
    assert sorted(first[:7]) == sorted(str(i) for i in range(7))  # an epoch is a permutation
    assert first[:7] != [str(i) for i in range(7)]  # and it is shuffled
    assert PromptStream(prompts, seed=4).take(7) != PromptStream(prompts, seed=3).take(7)


def test_a_take_across_an_epoch_boundary_never_repeats_a_prompt():
    """Takes of 4 from 10 prompts cross an epoch boundary mid-take every few takes; a generate call
    keys requests by prompt_id, so no take may hold a prompt twice. Epochs stay permutations, the
    order is the plain shuffle wherever no repeat had to be avoided, and a resumed stream
    (state/load_state, swaps included) goes on alike."""
    prompts = [{"prompt_id": str(i)} for i in range(10)]
    ids = lambda ps: [p["prompt_id"] for p in ps]  # noqa: E731
    a = PromptStream(prompts, seed=0)
    takes = [ids(a.take(4)) for _ in range(50)]  # 20 epochs
    assert all(len(set(t)) == 4 for t in takes)
    flat = [i for t in takes for i in t]
    epochs = [flat[e * 10:(e + 1) * 10] for e in range(20)]
    assert all(sorted(e) == sorted(map(str, range(10))) for e in epochs)
    # the plain per-epoch shuffle (takes of 5 never straddle a boundary, so nothing is swapped) ...
    five = PromptStream(prompts, seed=0)
    plain = [i for _ in range(40) for i in ids(five.take(5))]
    assert [sorted(plain[e * 10:(e + 1) * 10]) for e in range(20)] == [sorted(map(str, range(10)))] * 20
    # ... repeats a prompt within some take of 4 (what this guards against); the stream differs from it
    # only in the epochs where it had to
    assert any(len(set(plain[j:j + 4])) < 4 for j in range(0, 200, 4))
    changed = [e for e in range(20) if epochs[e] != plain[e * 10:(e + 1) * 10]]
    assert changed and all(len(set(plain[j:j + 4])) < 4 for j in range(0, 200, 4)
                           if j // 10 != (j + 3) // 10 and (j + 3) // 10 in changed)
    assert len(changed) < 20
    b = PromptStream(prompts, seed=0)
    for _ in range(17):
        b.take(4)
    c = PromptStream(prompts, seed=0)
    c.load_state(json.loads(json.dumps(b.state())))  # as a checkpoint stores it
    assert [ids(c.take(4)) for _ in range(33)] == takes[17:]


# ---- bad rows: all in one report, or skipped and counted (data.bad_rows) ------------------------------

def char_tokenizer(text, add_special_tokens=False):
    """One token per character, like the tiny model's tokenizer; enough for the length check."""
    return {"input_ids": list(text)}


LIMITED = PromptFormat(prompt_key="question", template="{prompt}", max_prompt_tokens=10)
GOOD = [json.dumps({"question": "1+1?", "answer": "2"}), json.dumps({"question": "2+2?", "answer": "4"})]
# (line content, the reason expected for it)
BAD = [
    ("{not json", r"not valid JSON \(Expecting property name enclosed in double quotes at column 2\)"),
    ("[1, 2]", "expected a JSON object per line, got a list"),
    (json.dumps({"q": "y"}), r"missing field 'question' \(fields present: q\)"),
    (json.dumps({"question": None}), "field 'question' is null"),
    (json.dumps({"question": 7}), "field 'question' is a number, not text: '7'"),
    (json.dumps({"question": ["a"]}), "field 'question' is a list, not text"),
    (json.dumps({"question": ""}), "field 'question' is empty"),
    (json.dumps({"question": "  \t"}), "field 'question' is empty"),
    (json.dumps({"question": "x" * 11}), r"prompt is 11 tokens, over the limit of 10 \(data.max_prompt_tokens\)"),
]


def mixed_file(tmp_path):
    """Good rows at lines 1 and 2, then one line of each bad kind (lines 3..), then a good row."""
    return write(tmp_path / "mixed.jsonl", GOOD + [line for line, _ in BAD] + [json.dumps({"question": "3+3?"})])


def test_every_bad_row_kind_is_named_by_file_and_line_in_one_report(tmp_path):
    f = mixed_file(tmp_path)
    with pytest.raises(DataError) as e:
        load_prompts([f], LIMITED, char_tokenizer)
    msg = str(e.value)
    assert msg.startswith(f"{len(BAD)} of {len(BAD) + 3} rows in {f} cannot be used")
    assert "data.bad_rows=skip" in msg  # says what to change
    for lineno, (_, reason) in enumerate(BAD, start=3):
        assert re.search(re.escape(f"{f}:{lineno}: ") + reason, msg), (lineno, reason, msg)


def test_non_utf8_line_is_a_bad_row(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(GOOD[0].encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not UTF-8 text \(byte 0xe9 at column 18\)"):
        load_prompts([str(f)], FMT)


def test_byte_order_mark_is_not_an_error(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + GOOD[0].encode() + b"\n")
    assert load_prompts([str(f)], FMT)[0]["meta"]["answer"] == "2"


def test_report_lists_twenty_and_counts_the_rest(tmp_path):
    f = write(tmp_path / "d.jsonl", GOOD + ["{"] * 30)
    with pytest.raises(DataError) as e:
        load_prompts([f], FMT)
    msg = str(e.value)
    assert f"{f}:22: not valid JSON" in msg and f"{f}:23:" not in msg  # 20 listed: lines 3..22
    assert msg.rstrip().endswith("... and 10 more")


def test_bad_rows_of_several_files_in_one_report(tmp_path):
    a = write(tmp_path / "a.jsonl", GOOD + ["{"])
    b = write(tmp_path / "b.jsonl", [json.dumps({"question": ""})] + GOOD)
    with pytest.raises(DataError) as e:
        load_prompts([a, b], FMT)
    assert f"{a}:3: not valid JSON" in str(e.value) and f"{b}:1: field 'question' is empty" in str(e.value)
    assert "2 of 6 rows" in str(e.value)


def test_skip_mode_drops_counts_and_keeps_good_rows_unchanged(tmp_path):
    f = mixed_file(tmp_path)
    skip = dataclasses.replace(LIMITED, bad_rows="skip")
    loaded = load_prompt_set([f], skip, char_tokenizer)
    assert [p["prompt_id"] for p in loaded.prompts] == ["mixed.jsonl:1", "mixed.jsonl:2", f"mixed.jsonl:{len(BAD) + 3}"]
    assert [p["prompt"] for p in loaded.prompts] == ["1+1?", "2+2?", "3+3?"]
    assert [p["meta"] for p in loaded.prompts[:2]] == [json.loads(g) for g in GOOD]
    assert len(loaded.skipped) == len(BAD) and loaded.rows == len(BAD) + 3
    assert [b.line for b in loaded.skipped] == list(range(3, len(BAD) + 3))
    note = loaded.skip_note("data.train_files")
    assert note.startswith(f"data.bad_rows=skip: skipped {len(BAD)} of {len(BAD) + 3} rows of data.train_files: {f}:3: ")
    assert load_prompt_set([write(tmp_path / "good.jsonl", GOOD)], skip).skip_note("x") is None


def test_skip_mode_with_nothing_left_is_an_error(tmp_path):
    f = write(tmp_path / "d.jsonl", ["{", json.dumps({"question": ""})])
    with pytest.raises(DataError, match=r"no usable rows in .*: all 2 are bad:\n  .*d.jsonl:1: not valid JSON"):
        load_prompt_set([f], dataclasses.replace(FMT, bad_rows="skip"))


def test_load_prompts_in_skip_mode_logs_the_count(tmp_path, caplog):
    f = write(tmp_path / "d.jsonl", GOOD + ["{"])
    with caplog.at_level("WARNING", logger="relayrl"):
        prompts = load_prompts([f], dataclasses.replace(FMT, bad_rows="skip"))
    assert len(prompts) == 2 and "skipped 1 of 3 rows" in caplog.text


def test_parquet_bad_rows_named_by_row_number(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": ["a", None, "", "b"]}), tmp_path / "d.parquet")
    f = str(tmp_path / "d.parquet")
    with pytest.raises(DataError) as e:
        load_prompts([f], FMT)
    assert f"{f}:2: field 'question' is null" in str(e.value) and f"{f}:3: field 'question' is empty" in str(e.value)
    loaded = load_prompt_set([f], dataclasses.replace(FMT, bad_rows="skip"))
    assert [p["meta"]["question"] for p in loaded.prompts] == ["a", "b"] and len(loaded.skipped) == 2


def test_damaged_parquet_file_is_named(tmp_path):
    (tmp_path / "d.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"d.parquet: cannot be read as parquet"):
        load_prompts([str(tmp_path / "d.parquet")], FMT)


def test_json_array_file_gets_a_hint(tmp_path):
    f = write(tmp_path / "d.json", ["[", json.dumps({"question": "x"}) + ",", "]"])
    with pytest.raises(DataError, match="looks like one JSON array; relayrl reads one object per line"):
        load_prompts([f], FMT)


def test_template_errors(tmp_path):
    f = write(tmp_path / "d.jsonl", [json.dumps({"question": "x", "n": "a"})])
    with pytest.raises(DataError, match=r"data.prompt_template 'Q: \{prompt' is not a format string"):
        load_prompts([f], PromptFormat(prompt_key="question", template="Q: {prompt"))
    with pytest.raises(DataError, match=r"d.jsonl:1: data.prompt_template refers to field 'topic'"):
        load_prompts([f], PromptFormat(prompt_key="question", template="{topic}: {prompt}"))
    with pytest.raises(DataError, match=r"d.jsonl:1: data.prompt_template cannot be filled from this row"):
        load_prompts([f], PromptFormat(prompt_key="question", template="{n:d} {prompt}"))


def test_engine_room_bounds_prompts_when_max_prompt_tokens_is_zero(tmp_path):
    from cluster.config import DataConfig

    f = write(tmp_path / "d.jsonl", [json.dumps({"prompt": "x" * 9})])
    fmt = prompt_format_from_config(DataConfig(max_prompt_tokens=0), engine_room=8)
    with pytest.raises(DataError, match=r"prompt is 9 tokens, over the limit of 8 \(rollout.max_model_len - "
                                        r"rollout.sampling.max_new_tokens, as data.max_prompt_tokens=0\)"):
        load_prompts([f], fmt, char_tokenizer)
    fmt = prompt_format_from_config(DataConfig(max_prompt_tokens=9, bad_rows="skip"), engine_room=8)
    assert (fmt.max_prompt_tokens, fmt.bad_rows) == (9, "skip")  # the explicit limit wins
    assert len(load_prompts([f], fmt, char_tokenizer)) == 1


def test_bad_rows_value_is_validated():
    from cluster.config import ConfigError, load_config
    from cluster.validate import validate

    cfg = load_config(None, ["model.path=/tmp", "model.tiny={}", "data.train_files=[configs/data/arithmetic/train.jsonl]",
                             "reward.functions=[{name: arithmetic}]", "data.bad_rows=drop"])
    with pytest.raises(ConfigError, match=r"data.bad_rows='drop' \(valid: error, skip\)"):
        validate(cfg)


def test_skipped_rows_reach_the_run_notes_and_a_file(tmp_path):
    from cluster.run_setup import skipped_rows_notes

    f = write(tmp_path / "d.jsonl", GOOD + ["{"])
    train = load_prompt_set([f], dataclasses.replace(FMT, bad_rows="skip"))
    evals = load_prompt_set([write(tmp_path / "e.jsonl", GOOD)], FMT)
    notes = skipped_rows_notes(tmp_path, {"data.train_files": train, "data.eval_files": evals})
    assert len(notes) == 1 and "skipped 1 of 3 rows of data.train_files" in notes[0]
    assert str(tmp_path / "skipped_rows.txt") in notes[0]
    assert (tmp_path / "skipped_rows.txt").read_text() == f"{f}:3: not valid JSON (Expecting property name enclosed in double quotes at column 2)\n"
    assert skipped_rows_notes(tmp_path, {"data.eval_files": evals}) == []
