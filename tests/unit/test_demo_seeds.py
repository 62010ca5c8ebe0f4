"""scripts/demo_seeds.py: one run's figures from its metrics rows, README's table row, the floor check."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import demo_seeds  # noqa: E402
from demo_seeds import meets, record, summarise, table_row  # noqa: E402

pytestmark = pytest.mark.unit


def rows(after: float = 0.58, probe: float = 5e-5) -> list[dict]:
    warm = [{"kind": "warm_start", "step": s, "time": 100.0 + s, "sft/seconds": 0.5} for s in (1, 2, 50)]
    evals = [{"kind": "eval", "step": s, "time": 200.0 + s, "eval/accuracy": a}
             for s, a in ((0, 0.32), (2, 0.47), (4, after))]  # logged out of order below: sorted by step
    train = [{"kind": "train", "step": s, "time": 200.0 + s, "timing/step": t, "sync/probe_max_abs_diff": probe,
              "moe/routing_agreement": g, "moe/used_routing_agreement": u}
             for s, t, g, u in ((1, 1.5, 1.0, 1.0), (2, 1.2, 1.0, 0.995), (3, 2.0, 0.98, 1.0), (4, 1.3, 1.0, 1.0))]
    return [*warm, *train, evals[2], evals[0], evals[1]]


def test_a_runs_figures():
    s = summarise(rows(), wall_s=700.04)
    assert s["warm_start_steps"] == 50 and s["warm_start_s"] == 49.5  # 150 - 101 + the first step's 0.5 s
    assert s["accuracy"] == [(0, 32.0), (2, 47.0), (4, 58.0)] and s["gain"] == 26.0
    assert s["rl_steps"] == 4 and s["median_step_s"] == 1.4 and s["wall_s"] == 700.0
    assert s["probe_max"] == 5e-5 and s["routing_agreement_min"] == 0.98 and s["used_routing_agreement_min"] == 0.995


def test_a_run_without_checks_or_warm_start_and_one_without_a_gain():
    bare = [r for r in rows() if r["kind"] != "warm_start"]
    for r in bare:
        for key in ("sync/probe_max_abs_diff", "moe/routing_agreement", "moe/used_routing_agreement"):
            r.pop(key, None)
    s = summarise(bare, 10.0)
    assert (s["warm_start_steps"], s["warm_start_s"], s["probe_max"]) == (0, 0.0, None)
    assert s["routing_agreement_min"] is None and s["used_routing_agreement_min"] is None
    with pytest.raises(ValueError, match="data.eval_files"):
        summarise([r for r in rows() if r["kind"] != "eval" or r["step"] == 0], 10.0)


def test_the_floor_needs_the_gain_and_the_time():
    assert meets(summarise(rows(), 900.0), 20, 15)  # +26 in exactly 15 min
    assert not meets(summarise(rows(), 900.1), 20, 15)  # too slow
    assert not meets(summarise(rows(after=0.515), 600.0), 20, 15)  # +19.5: too little
    assert meets(summarise(rows(after=0.52), 600.0), 20, 15)  # +20.0


def test_readme_row(tmp_path):
    assert table_row(3, summarise(rows(), 716.0), 20, 15) == \
        "| 3 | 50 steps, 50 s | 32.0% → 58.0% (47.0) | **+26.0** | 11 min 56 s (1.40 s) |"
    assert "| +19.5 |" in table_row(3, summarise(rows(after=0.515), 716.0), 20, 15)  # not bold: below the floor
    out = tmp_path / "r.json"
    record({"seeds": {0: 1}}, out)
    record({"seeds": {1: 2}}, out)
    assert json.loads(out.read_text()) == [{"seeds": {"0": 1}}, {"seeds": {"1": 2}}]  # appended, kept


def test_a_failed_seed_is_recorded_and_the_next_still_runs(tmp_path, monkeypatch):
    """A seed whose run exits non-zero: its row says so, it misses the floor, the seeds after it run,
    and the results file gets the entry (it used to stop there and record nothing)."""
    import subprocess
    import types

    calls, real_run = [], subprocess.run

    def fake_run(cmd, *args, **kwargs):
        if "train" not in cmd:  # machine.py's own probes (git, lscpu)
            return real_run(cmd, *args, **kwargs)
        seed = int(next(a for a in cmd if a.startswith("trainer.seed=")).split("=")[1])
        calls.append(seed)
        if seed == 1:
            return types.SimpleNamespace(returncode=1, stdout="step 400\n", stderr="RuntimeError: probe\n\n")
        run_dir = Path(next(a for a in cmd if a.startswith("logging.run_dir=")).split("=", 1)[1])
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows()))
        return types.SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(demo_seeds, "RESULTS", tmp_path / "results.json")
    code = demo_seeds.main(["configs/demo_moe.yaml", "--seeds", "0", "1", "2", "--work", str(tmp_path / "w"),
                            "--", "trainer.total_steps=4"])
    assert code == 1 and calls == [0, 1, 2]
    entry = json.loads((tmp_path / "results.json").read_text())[-1]
    assert entry["overrides"] == ["trainer.total_steps=4"]
    assert entry["seeds"]["1"]["failed"] == "exit 1: RuntimeError: probe"
    assert entry["seeds"]["0"]["gain"] == entry["seeds"]["2"]["gain"] == 26.0
    assert table_row(1, entry["seeds"]["1"], 20, 15).startswith("| 1 | failed: exit 1: RuntimeError: probe |")
