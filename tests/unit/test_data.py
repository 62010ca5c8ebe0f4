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
