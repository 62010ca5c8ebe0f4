"""The reliability report: run the fault-injection and bad-input tests, write what they verified.

    .venv/bin/python scripts/reliability.py          # ~10 min on 2 cores

Each row of the table is one test (or a few). The fault tests record, after their assertions
pass, what they verified (steps, prompts trained exactly once, what was replaced or rebuilt, the
step the fault cost) through the `fault_report` fixture (tests/conftest.py); this script runs them
with RELAYRL_RELIABILITY_OUT set, reads the records and pytest's verdicts, and writes
scripts/results/reliability.json and README.md's table (between the `reliability:` markers).
A row whose test failed says so; nothing in the table is written by hand except what each row is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
FT = "tests/slow/test_fault_tolerance.py"
DPO_OFFLINE = "tests/slow/test_dpo.py::test_offline_dpo_prefers_right_answers_and_raises_accuracy_and_resumes_exactly"
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"


@dataclasses.dataclass
class Row:
    fault: str
    tests: list[str]  # pytest node ids (a file, a test, or a parametrised case)
    happens: str  # what relayrl does, in words; the measured part is appended from the records
    lost: str
    measured: Optional[Callable[[dict], str]] = None  # record -> the numbers the test verified
    record: Optional[str] = None  # a test that injects several faults records each: the "fault" of this row's


def _run(f: dict) -> str:
    cost = (f"step {f['fault_step']} (under way at the fault) took {f['fault_step_s']:.1f}s" if "fault_step" in f
            else f"slowest step {f['slowest_step_s']:.1f}s")
    return (f"{f['steps']} steps, {f['prompts']} prompts each trained exactly once; {cost} "
            f"(median {f['median_step_s']:.1f}s)")


WORKER_SCORER = f"{FT}::test_rollout_worker_and_reward_scorer_lost_are_replaced_and_nothing_is_lost"
LEARNER = f"{FT}::test_learner_rank_lost_at_start_in_warm_start_and_in_training_is_rebuilt_each_time"
CRITIC = f"{FT}::test_critic_rank_killed_rebuilds_the_critic_and_brings_the_policy_back_to_the_same_checkpoint"

ROWS = [
    Row("rollout worker SIGKILLed mid-generation", [f"{WORKER_SCORER}[mid_generation]"],
        "replaced in its placement bundle, joins the weight-sync group, gets the current weights (probe-verified), "
        "and is given the prompts the dead worker had not delivered", "nothing", _run, "rollout worker mid_generation"),
    Row("a rollout node removed mid-run (simulated multi-node cluster)",
        ["tests/slow/test_multinode.py::test_actors_land_where_the_labels_say_and_survive_losing_a_rollout_node"],
        "its worker dies with the node; Ray re-places the worker's bundle on another node the labels allow, "
        "the new worker joins at the current weights (probe-verified) and gets the lost prompts", "nothing", _run),
    Row("rollout worker SIGKILLed while idle", [f"{WORKER_SCORER}[while_idle]"],
        "the next weight push notices, replaces it and pushes again", "nothing", _run, "rollout worker while_idle"),
    Row("reward scorer SIGKILLed mid-run", [f"{WORKER_SCORER}[mid_generation]"],
        "replaced; every group it held is scored again from the generated samples", "nothing", _run,
        "reward scorer SIGKILL"),
    Row("reward scorer frozen (SIGSTOP: alive, silent)", [f"{WORKER_SCORER}[while_idle]"],
        "silent past one group's scoring bound with work outstanding: killed, replaced, its groups re-scored",
        "nothing", _run, "reward scorer SIGSTOP"),
    Row("learner rank SIGKILLed while training (rank 1 of 2)", [LEARNER],
        "the whole learner group is rebuilt from the latest checkpoint, the rollout workers re-synced (probe-verified), "
        "the steps since the checkpoint retrained from the samples the driver held",
        "the learner's work since the checkpoint (redone from the same samples; nothing regenerated)",
        lambda f: _run(f) + f"; rebuilt in {f['rebuild_s']:.1f}s, steps {f['redone']} redone", "training"),
    Row("learner rank SIGKILLed as the learner group starts (its processes just launched)", [LEARNER],
        "the group is shut down and a new one built at once; the run then starts as it would have "
        "(the death counts in learner.max_restarts)", "nothing (nothing had started)",
        lambda f: _run(f) + f"; started in {f['started_s']:.1f}s with the second group", "start-up"),
    Row("learner rank 0 SIGKILLed as it hosts the weight-sync group's rendezvous at start-up; then, in the "
        "second try, the rollout worker", ["tests/integration/test_start_up_faults.py"],
        "a learner rank: a new learner group (counts in learner.max_restarts); the rollout workers, whose join "
        "found the dead host's port refusing, failed at once and form the group again around the new rank 0. A "
        "rollout worker: replaced (counts in rollout.max_restarts) and the learner group built again (its rank 0 "
        "would wait for the dead worker). The run then starts (probe-verified)", "nothing (nothing had started)",
        lambda f: f"started in {f['started_s']:.1f}s with the third learner group; probe diff {f['probe']:.1g}"),
    Row("learner rank SIGKILLed during the warm start (before any checkpoint)", [LEARNER],
        "a new learner group from model.path; the warm start is done again with the same seed (its losses "
        "reproduce the first attempt's exactly), the first attempt's rows go to metrics.discarded.jsonl; then RL",
        "the warm start's work so far (redone)",
        lambda f: _run(f) + f"; {f['warm_start_steps_lost']} warm-start steps redone", "warm start"),
    Row("PPO's critic rank SIGKILLed while training", [CRITIC],
        "the critic group is rebuilt from the latest checkpoint; the policy (which may hold the step's update) "
        "reloads it too and the rollout workers get its weights back (probe-verified); the steps since are "
        "retrained from the held samples",
        "both models' work since the checkpoint (redone from the same samples; nothing regenerated)",
        lambda f: _run(f) + f"; rebuilt in {f['rebuild_s']:.1f}s, steps {f['redone']} redone"),
    Row("learner rank SIGKILLed during offline DPO", [DPO_OFFLINE],
        "the learner group is rebuilt from the latest checkpoint (the step-0 one, written after the warm start); "
        "the steps since take the same pairs again (their order is fixed by data.seed) and reproduce the first "
        "attempt's losses, margins and gradient norms",
        "the learner's work since the checkpoint (redone on the same pairs)",
        lambda f: (f"{f['steps']} steps of {f['pairs']} pairs; killed after step {f['killed_after_step']}, "
                   f"steps 1-{f['redone']} redone (row `learner/redone` = 1)"), "training"),
    Row("learner rank SIGKILLed while a run resumes (loading its checkpoint)", [DPO_OFFLINE],
        "a new learner group loads the checkpoint again, then the run goes on as an uninterrupted resume "
        "would (same losses, margins and gradient norms)",
        "nothing (no step had been taken)",
        lambda f: (f"resumed from step {f['resumed_from_step']} to {f['steps']}; learner replaced in "
                   f"{f['replace_s']:.1f}s"), "resume"),
    Row("driver SIGKILLed mid-step (async, a batch in flight)",
        ["tests/slow/test_async.py::test_sigkilled_async_run_resumes_training_every_prompt_once"],
        "`checkpoint.resume=RUN_DIR` continues from the last checkpoint; the batches issued but not trained are in "
        "it and trained first; metrics.jsonl rewound so each step appears once",
        "the steps after the checkpoint are redone (first attempt's rows in metrics.discarded.jsonl)",
        lambda f: (f"{f['steps']} steps, {f['prompts']} prompts each trained exactly once; killed after step "
                   f"{f['killed_after_step']}, resumed from step {f['resumed_from_step']}, redone {f['redone']}")),
    Row("an actor that keeps dying", ["tests/integration/test_actor_group.py::"
                                      "test_a_dead_actor_is_named_replaced_and_too_many_deaths_stop_with_a_report"],
        "replaced in its own placement bundle up to `rollout.max_restarts` / `reward.max_restarts` / "
        "`learner.max_restarts` times, then the run stops with a report of every death (which actor, when, the error)",
        "— (the run stops)"),
    Row("a call fails on one actor because another died (a survivor's collective: \"Connection reset by peer\") "
        "before Ray reports the death", ["tests/integration/test_actor_group.py::"
                                         "test_an_error_that_is_the_symptom_of_another_actors_death_surfaces_as_that_death",
                                         "tests/integration/test_actor_group.py::"
                                         "test_an_error_with_every_other_actor_alive_is_raised_as_itself_after_the_grace"],
        "the error waits up to 10 s (`DEATH_GRACE_S`) for a death among the call's other actors and the death is "
        "raised (so a learner rank's death rebuilds the group, a rollout worker's replaces it); with none, the "
        "error itself", "as for that death"),
    Row("an actor that stalls in a call (SIGSTOP)", ["tests/integration/test_actor_group.py::"
                                                    "test_a_stalled_actor_fails_the_call_within_its_timeout_naming_it_and_the_knob"],
        "the call fails after its timeout naming the actor that did not answer and the setting "
        "(`weight_sync.timeout_s`, `learner.call_timeout_s`); never an endless hang", "—"),
    Row("non-finite loss or gradient (NaN advantages injected into steps 1, 3, 4, 5)",
        ["tests/slow/test_nonfinite_run.py", "tests/integration/test_learner_nonfinite.py"],
        "the update is skipped on every rank (parameters, Adam state and LR schedule untouched), counted "
        "(`learner/nonfinite_skipped`), the batch saved to RUN_DIR/nonfinite/; `learner.max_nonfinite_steps` in a "
        "row stop the run naming the saved batch", "the skipped updates",
        lambda f: (f"steps {f['poisoned_steps']} poisoned: {f['skipped_updates']} updates skipped, "
                   f"{f['batches_saved']} batches saved, stopped at step {f['stopped_at_step']} (3 in a row)")),
    Row("malformed dataset rows (bad JSON, missing/null/non-text/empty prompt, too long, bad template, "
        "not UTF-8)", ["tests/unit/test_data.py"],
        "one error before anything starts listing every bad row as file:line (or `data.bad_rows=skip`: dropped, "
        "counted at the run's start, listed in RUN_DIR/skipped_rows.txt)", "nothing (skip: the rows named)"),
    Row("model directory with missing or mismatched files (config, weights, shards, tokenizer, vocabulary, "
        "context length)", ["tests/unit/test_model_check.py"],
        "one error before any actor starts, each problem with what to change", "nothing"),
    Row("impossible topology or config (more CPUs/GPUs than the cluster has, wrong types and values, "
        "incompatible options)", ["tests/unit/test_resources.py", "tests/unit/test_config.py",
                                  "tests/integration/test_network_exposure.py::"
                                  "test_gpus_asked_on_a_machine_without_them_are_refused_before_any_actor"],
        "refused before any actor starts, naming what is needed and what the cluster has, or the field, the bad "
        "value and the valid ones", "nothing"),
    Row("network exposure of a local run", ["tests/integration/test_network_exposure.py::"
                                            "test_local_run_listens_on_loopback_only_and_keeps_its_directory_private"],
        "Ray, the learner's rendezvous and the weight-sync group listen on 127.0.0.1 only; the run directory is "
        "owner-only (0700)", "—"),
    Row("reward function that raises or hangs", ["tests/unit/test_reward_scorer.py"],
        "that sample scores 0, counted as `reward/errors/<reason>`; the run goes on", "that sample's reward"),
    Row("model-written code that escapes or cheats (loops, memory/fork bombs, huge writes, files outside its "
        "directory, the parent's environment, network, killing its parent; early exit, exit/exception hooks, "
        "patched builtins, always-equal objects, forged result lines)", ["tests/integration/test_reward_sandbox.py"],
        "contained by the sandbox; a cheat scores 0 and is counted (`early_exit`, `failed`, `tampered`)", "—"),
]


def machine() -> str:
    """The CPU class the numbers come from: step times differ ~3x between AVX2-only and AVX512-BF16 CPUs."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = "AVX512-BF16" if "avx512_bf16" in info else ("AVX-512" if "avx512f" in info else "AVX2-only")
    return f"{isa} CPU, {os.cpu_count()} cores"


def junit_verdicts(xml: Path) -> dict[str, str]:
    """nodeid -> passed | failed | skipped, from pytest's junit XML."""
    out = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        path = case.get("classname", "").replace(".", "/")
        nodeid = f"{path}.py::{case.get('name')}"
        bad = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
        out[nodeid] = "passed" if not bad else ("skipped" if bad == ["skipped"] else "failed")
    return out


def verdict(row: Row, verdicts: dict[str, str]) -> tuple[str, int]:
    """('passed' | 'not run' | 'k of n FAILED', number of tests) of a row's tests."""
    mine = [v for nodeid, v in verdicts.items()
            if any(nodeid == t or nodeid.startswith((t + "::", t + "[")) for t in row.tests)]
    if not mine:
        return "not run", 0
    bad = sum(v != "passed" for v in mine)
    return ("passed" if not bad else f"{bad} of {len(mine)} FAILED"), len(mine)


def table(rows: list[dict]) -> str:
    lines = ["| fault or bad input | what happens | measured (this machine) | lost | test |", "|---|---|---|---|---|"]
    for r in rows:
        measured = r["measured"] or ""
        status = "" if r["verdict"] == "passed" else f" **({r['verdict']})**"
        lines.append(f"| {r['fault']} | {r['happens']} | {measured}{status} | {r['lost']} | "
                     + ", ".join(f"`{t.split('::')[0]}`" for t in dict.fromkeys(r["tests"])) + " |")
    return "\n".join(lines)


def main() -> int:
    tests = list(dict.fromkeys(t for row in ROWS for t in row.tests))
    with tempfile.TemporaryDirectory(prefix="relayrl-reliability-") as tmp:
        records, xml = Path(tmp) / "records.jsonl", Path(tmp) / "junit.xml"
        env = {**os.environ, "RELAYRL_RELIABILITY_OUT": str(records)}
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *tests],
                              cwd=ROOT, env=env)
        verdicts = junit_verdicts(xml)
        facts = [json.loads(line) for line in records.read_text().splitlines()] if records.exists() else []
    rows = []
    for row in ROWS:
        mine = [f for f in facts if any(f["test"] == t or f["test"].startswith((t + "[", t + "::")) for t in row.tests)
                and (row.record is None or f.get("fault") == row.record)]
        status, n = verdict(row, verdicts)
        measured = ("; ".join(row.measured(f) for f in mine) if row.measured and mine
                    else f"{n} test{'s' * (n != 1)} passed" if status == "passed" else "")
        rows.append({"fault": row.fault, "tests": row.tests, "happens": row.happens, "lost": row.lost,
                     "measured": measured, "verdict": status, "records": mine})
    out = ROOT / "scripts/results/reliability.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(time.time() - t0),
                               "rows": rows}, indent=1))
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        stamp = (f"Made by `.venv/bin/python scripts/reliability.py` ({time.strftime('%Y-%m-%d')}, {round(time.time() - t0)}s, "
                 f"{machine()}):")
        readme.write_text(f"{head}{BEGIN}\n{stamp}\n\n{table(rows)}\n{END}{tail}")
    print(table(rows))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
