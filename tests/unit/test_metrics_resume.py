"""metrics.jsonl across a crash and a resume: one row per (kind, step), the re-done one; dropped rows
kept in metrics.discarded.jsonl; a line cut short by SIGKILL; the plot reads what read_metrics reads."""

import json

import pytest

from cluster.metrics import DISCARDED_FILE, METRICS_FILE, MetricsLogger, read_metrics, rewind_metrics

pytestmark = pytest.mark.unit


def logger(run_dir, resume_step=None):
    return MetricsLogger(run_dir, total_steps=40, tensorboard=False, progress=False, resume_step=resume_step)


def first_run(run_dir, crash_after=37, truncated=True):
    """Warm start 1..5, eval at 0 and every 10 steps, train 1..crash_after, then a SIGKILL mid-write."""
    log = logger(run_dir)
    for i in range(1, 6):
        log.log(i, {"sft/loss": 1.0 / i}, kind="warm_start")
    log.log(0, {"eval/accuracy": 0.1}, kind="eval")
    for step in range(1, crash_after + 1):
        if step % 10 == 0:
            log.log(step, {"eval/accuracy": step / 100}, kind="eval")
        log.log(step, {"reward/mean": step, "run": 1})
    log.close()
    if truncated:
        with (run_dir / METRICS_FILE).open("a") as f:
            f.write('{"kind": "train", "step": 38, "rew')


def resumed_run(run_dir, resume_step=30, last=40):
    log = logger(run_dir, resume_step=resume_step)
    for step in range(resume_step + 1, last + 1):
        if step % 10 == 0:
            log.log(step, {"eval/accuracy": step / 100 + 0.001}, kind="eval")
        log.log(step, {"reward/mean": step + 0.5, "run": 2})
    log.close()
    return log.rewind


def raw_rows(run_dir, name=METRICS_FILE):
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines() if line.strip()]


def keys(rows):
    return [(r["kind"], r["step"]) for r in rows]


def test_resume_keeps_each_kind_step_once_the_redone_one(tmp_path):
    first_run(tmp_path)
    rewind = resumed_run(tmp_path)
    assert (rewind.dropped, rewind.superseded, rewind.invalid) == (7, 0, 1)  # train 31..37, the cut line
    assert rewind.summary().startswith("resumed: 7 metric rows after step 30 were re-done")

    rows = raw_rows(tmp_path)  # the file itself, not only the reader, holds each (kind, step) once
    assert len(set(keys(rows))) == len(rows)
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 41))
    assert all(r["run"] == (1 if r["step"] <= 30 else 2) for r in train)
    evals = {r["step"]: r["eval/accuracy"] for r in rows if r["kind"] == "eval"}
    assert evals == {0: 0.1, 10: 0.1, 20: 0.2, 30: 0.3, 40: 0.401}  # the eval at the checkpoint step stays
    assert [r["step"] for r in rows if r["kind"] == "warm_start"] == [1, 2, 3, 4, 5]
    assert read_metrics(tmp_path) == rows


def test_warm_start_rows_past_the_resume_step_are_kept(tmp_path):
    log = logger(tmp_path)
    for i in range(1, 21):  # more warm-start steps than RL steps done: warm start is not re-done
        log.log(i, {"sft/loss": 1.0}, kind="warm_start")
    for step in range(1, 6):
        log.log(step, {"reward/mean": 0.0})
    log.close()
    rewind = rewind_metrics(tmp_path, 3)
    assert rewind.dropped == 2
    rows = raw_rows(tmp_path)
    assert [r["step"] for r in rows if r["kind"] == "warm_start"] == list(range(1, 21))
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]


def test_a_warm_start_that_is_done_again_sets_its_first_attempt_aside(tmp_path):
    log = logger(tmp_path)  # a learner rank died at warm-start step 7 of 10: all of it is done again
    for i in range(1, 7):
        log.log(i, {"sft/loss": 1.0}, kind="warm_start")
    rewind = log.rewind_to(-1, "learner_rebuilt", keep_warm_start=False)
    for i in range(1, 11):
        log.log(i, {"sft/loss": 2.0}, kind="warm_start")
    log.log(0, {"eval/accuracy": 0.1}, kind="eval")
    log.close()
    assert rewind.dropped == 6
    rows = raw_rows(tmp_path)
    assert keys(rows) == [("warm_start", i) for i in range(1, 11)] + [("eval", 0)]
    assert all(r["sft/loss"] == 2.0 for r in rows if r["kind"] == "warm_start")
    discarded = raw_rows(tmp_path, DISCARDED_FILE)
    assert [(d["reason"], d["row"]["step"]) for d in discarded] == [("learner_rebuilt", i) for i in range(1, 7)]


def test_discarded_rows_are_preserved_and_appended(tmp_path):
    first_run(tmp_path)
    before = raw_rows_lenient(tmp_path)
    resumed_run(tmp_path, resume_step=30, last=34)  # crashes again after 34 ...
    resumed_run(tmp_path, resume_step=32, last=40)  # ... and resumes from 32
    discarded = raw_rows(tmp_path, DISCARDED_FILE)
    assert [(d["resume_step"], d["reason"]) for d in discarded] == (
        [(30, "after_resume_step")] * 7 + [(30, "invalid")] + [(32, "after_resume_step")] * 2)
    assert [d["row"] for d in discarded[:7]] == [r for r in before if r["kind"] == "train" and r["step"] > 30]
    assert discarded[7]["raw"] == '{"kind": "train", "step": 38, "rew'
    assert [(d["row"]["step"], d["row"]["run"]) for d in discarded[8:]] == [(33, 2), (34, 2)]
    # every row ever logged is in exactly one of the two files
    logged = len(before) + 4 + 9  # first run (valid rows), second run 31..34, third run 33..40 + eval 40
    assert len(raw_rows(tmp_path)) + sum("row" in d for d in discarded) == logged
    rows = raw_rows(tmp_path)
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 41))
    assert [r["run"] for r in rows if r["kind"] == "train"][30:] == [2] * 10


def raw_rows_lenient(run_dir):
    out = []
    for line in (run_dir / METRICS_FILE).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_reader_skips_a_truncated_last_line_and_dedupes_an_old_file(tmp_path):
    first_run(tmp_path)
    # What an older version left: the crash's cut line, then the resumed rows appended after it.
    with (tmp_path / METRICS_FILE).open("a") as f:
        f.write("\n")
        for step in range(31, 41):
            f.write(json.dumps({"kind": "train", "step": step, "reward/mean": step + 0.5, "run": 2}) + "\n")
    with pytest.warns(UserWarning, match="not JSON"):  # a cut line in the middle: skipped, but said
        rows = read_metrics(tmp_path)
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 41))
    assert [r["run"] for r in train] == [1] * 30 + [2] * 10
    assert len(set(keys(rows))) == len(rows)

    # only the final line cut short: skipped silently
    path = tmp_path / "only_last" / METRICS_FILE
    path.parent.mkdir()
    path.write_text('{"kind": "train", "step": 1, "x": 1}\n{"kind": "train", "st')
    assert read_metrics(path.parent) == [{"kind": "train", "step": 1, "x": 1}]


def test_rewind_of_an_old_file_with_duplicates_and_a_cut_line_in_the_middle(tmp_path):
    first_run(tmp_path)
    with (tmp_path / METRICS_FILE).open("a") as f:  # old version: appended straight after the cut
        for step in range(31, 41):
            f.write(json.dumps({"kind": "train", "step": step, "reward/mean": step + 0.5, "run": 2}) + "\n")
    rewind = rewind_metrics(tmp_path, 40)  # now resuming from a later checkpoint
    # the second run's train 31 was glued to the cut line (lost back then): the first run's 31 stays
    assert (rewind.dropped, rewind.invalid) == (0, 1)
    assert rewind.superseded == 6  # train 32..37 of the first run
    rows = raw_rows(tmp_path)
    assert len(set(keys(rows))) == len(rows)
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 41))
    assert [r["run"] for r in train] == [1] * 31 + [2] * 9
    assert read_metrics(tmp_path) == rows
    assert rewind_metrics(tmp_path, 40).kept == len(rows)  # idempotent
    assert raw_rows(tmp_path) == rows


def test_fresh_open_after_a_cut_line_does_not_glue_rows(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"kind": "train", "step": 1}\n{"kind": "train", "st')
    log = logger(tmp_path)
    log.log(2, {"reward/mean": 1.0})
    log.close()
    with pytest.warns(UserWarning):
        assert keys(read_metrics(tmp_path)) == [("train", 1), ("train", 2)]


def test_resume_with_no_metrics_file_and_nothing_to_drop(tmp_path):
    log = logger(tmp_path, resume_step=5)
    assert log.rewind.dropped == 0
    log.close()
    log = logger(tmp_path)
    log.log(1, {"reward/mean": 1.0})
    log.close()
    before = (tmp_path / METRICS_FILE).read_bytes()
    rewind = rewind_metrics(tmp_path, 5)
    assert (rewind.dropped, rewind.kept) == (0, 1)
    assert (tmp_path / METRICS_FILE).read_bytes() == before
    assert not (tmp_path / DISCARDED_FILE).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_plot_draws_what_read_metrics_reads(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    from cluster.plot import plot_run

    first_run(tmp_path)
    with (tmp_path / METRICS_FILE).open("a") as f:  # an old version's resume, not rewound
        f.write("\n")
        for step in range(31, 41):
            if step % 10 == 0:
                f.write(json.dumps({"kind": "eval", "step": step, "eval/accuracy": 0.5}) + "\n")
            f.write(json.dumps({"kind": "train", "step": step, "reward/mean": step + 0.5}) + "\n")
    drawn = []
    real_plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, x, y, *a, **kw: drawn.append((list(x), list(y))) or real_plot(self, x, y, *a, **kw))
    with pytest.warns(UserWarning):
        rows = read_metrics(tmp_path)
        out = plot_run(tmp_path)
    assert out.exists() and out.stat().st_size > 0
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert drawn[0] == ([r["step"] for r in train], [r["reward/mean"] for r in train])
    assert drawn[1] == ([r["step"] for r in evals], [100 * r["eval/accuracy"] for r in evals])
    assert drawn[0][0] == list(range(1, 41)) and drawn[0][1][30:] == [s + 0.5 for s in range(31, 41)]
    assert drawn[1][0] == [0, 10, 20, 30, 40]
