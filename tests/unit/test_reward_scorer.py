"""RewardScorer: weighted sums and components, validation at construction, and the failure paths
(exception, timeout, bad return values) that give reward 0 with a counted reason and never raise."""

import dataclasses
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from actors.reward.scorer import RewardScorer
from actors.reward.spec import RewardSpec
from actors.types import Group, Sample

pytestmark = pytest.mark.unit

USER_REWARDS = '''
import time

def boom(sample):
    raise ValueError("cannot score " + sample.response)

def slow(sample, seconds=5.0):
    time.sleep(seconds)
    return 1.0

def nan(sample):
    return float("nan")

def text(sample):
    return "1.0"

def no_score(sample):
    return {"accuracy": 1.0}

def parts(sample):
    return {"score": 0.5, "length": float(len(sample.response))}
'''


@pytest.fixture()
def user_rewards(tmp_path, monkeypatch):
    (tmp_path / "relayrl_test_user_rewards.py").write_text(USER_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "relayrl_test_user_rewards"


def sample(response, answer="357", n_tokens=3):
    return Sample("q", "12+345=", [1], response, [5] * n_tokens, [-0.1] * n_tokens, "stop", 0, meta={"answer": answer})


def test_weighted_sum_and_unweighted_components():
    scorer = RewardScorer([
        {"name": "arithmetic", "weight": 1.0},
        {"name": "format", "weight": 0.5, "params": {"pattern": r"\d+"}},
        {"name": "overlong", "weight": 2.0, "params": {"max_length": 4, "cache_length": 2}},
    ])
    right, wrong, long_wrong = sample("357"), sample("abc"), sample("358", n_tokens=3)
    scorer.score([right, wrong, long_wrong])
    assert right.reward_components == {"arithmetic": 1.0, "format": 1.0, "overlong": -0.5}
    assert right.reward == pytest.approx(1.0 + 0.5 - 1.0)
    assert wrong.reward_components == {"arithmetic": 0.0, "format": 0.0, "overlong": -0.5}
    assert wrong.reward == pytest.approx(-1.0)
    assert long_wrong.reward == pytest.approx(0.5 - 1.0)
    assert all(s.reward_error is None for s in (right, wrong, long_wrong))
    m = scorer.metrics()
    assert m["reward/samples"] == 3 and m["reward/calls"] == 9 and m["reward/failed_samples"] == 0


def test_dict_result_gives_name_and_name_slash_key_components(user_rewards):
    scorer = RewardScorer([{"name": "python_function", "weight": 2.0, "params": {"path": f"{user_rewards}:parts"}}])
    (s,) = scorer.score([sample("abcd")])
    assert s.reward_components == {"python_function": 0.5, "python_function/length": 4.0}
    assert s.reward == pytest.approx(1.0)


def test_specs_are_validated_at_construction():
    with pytest.raises(ValueError, match=r"reward function 0 \('exact_mach'\).*did you mean 'exact_match'"):
        RewardScorer([{"name": "exact_mach"}])
    with pytest.raises(ValueError, match=r"reward function 1 \('format'\).*no parameter 'patern'.*did you mean 'pattern'"):
        RewardScorer([{"name": "arithmetic"}, {"name": "format", "params": {"patern": "x"}}])
    with pytest.raises(ValueError, match="unknown key.*wieght"):
        RewardScorer([{"name": "arithmetic", "wieght": 2}])
    with pytest.raises(ValueError, match="listed twice"):
        RewardScorer([{"name": "arithmetic"}, {"name": "arithmetic", "weight": 2}])
    with pytest.raises(ValueError, match="cannot import"):
        RewardScorer([{"name": "python_function", "params": {"path": "not_a_module_abc:f"}}])


def test_specs_accept_dataclasses_and_reward_spec():
    @dataclasses.dataclass
    class ConfigSpec:  # the shape of the run config's own spec dataclass
        name: str
        weight: float = 1.0
        params: dict = dataclasses.field(default_factory=dict)

    scorer = RewardScorer([RewardSpec("arithmetic", 2.0), ConfigSpec("exact_match", 1.0, {"answer_key": "answer"})])
    assert scorer.names() == ["arithmetic", "exact_match"]
    assert scorer.score([sample("357")])[0].reward == pytest.approx(3.0)


def test_exception_gives_zero_reward_with_reason_and_is_counted(user_rewards):
    scorer = RewardScorer([
        {"name": "arithmetic"},
        {"name": "python_function", "params": {"path": f"{user_rewards}:boom"}},
    ])
    a, b = scorer.score([sample("357"), sample("1")])
    for s in (a, b):
        assert s.reward == 0.0
        assert s.reward_error.startswith("error:python_function:ValueError: cannot score")
    assert a.reward_components == {"arithmetic": 1.0}  # what did succeed is still logged
    m = scorer.metrics()
    assert m["reward/errors/error:python_function:ValueError"] == 2 and m["reward/failed_samples"] == 2


def test_missing_answer_field_is_an_error_not_a_crash():
    s = Sample("q", "p", [1], "3", [5], [-0.1], "stop", 0, meta={"question": "1+2"})
    RewardScorer([{"name": "exact_match"}]).score([s])
    assert s.reward == 0.0 and "no 'answer'" in s.reward_error and s.reward_error.startswith("error:exact_match:KeyError")


def test_timeout_gives_zero_reward_counted_and_returns_promptly(user_rewards):
    scorer = RewardScorer([{"name": "arithmetic"},
                           {"name": "python_function", "params": {"path": f"{user_rewards}:slow", "kwargs": {"seconds": 5.0}}}],
                          timeout_s=0.3)
    start = time.monotonic()
    samples = scorer.score([sample("357"), sample("357"), sample("1")])
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, f"scorer waited {elapsed:.1f}s for a function that sleeps 5s (timeout 0.3s)"
    assert [s.reward for s in samples] == [0.0, 0.0, 0.0]
    assert {s.reward_error for s in samples} == {"timeout:python_function"}
    m = scorer.metrics()
    assert m["reward/errors/timeout:python_function"] == 3
    assert m["reward/stuck_threads"] >= 1  # abandoned calls are visible until they end


@pytest.mark.parametrize("fn, reason", [
    ("nan", "error:python_function:ValueError: reward score is not finite"),
    ("text", "error:python_function:TypeError: reward score must be a number"),
    ("no_score", "error:python_function:ValueError: a reward function returning a dict must include 'score'"),
])
def test_bad_return_values_are_errors(user_rewards, fn, reason):
    (s,) = RewardScorer([{"name": "python_function", "params": {"path": f"{user_rewards}:{fn}"}}]).score([sample("1")])
    assert s.reward == 0.0 and s.reward_error.startswith(reason)


def test_rescoring_clears_a_previous_error(user_rewards):
    s = sample("357")
    s.reward_error, s.reward_components = "timeout:old", {"old": 1.0}
    RewardScorer([{"name": "arithmetic"}]).score([s])
    assert s.reward == 1.0 and s.reward_error is None and s.reward_components == {"arithmetic": 1.0}


def test_score_group():
    scorer = RewardScorer([{"name": "arithmetic"}])
    g = scorer.score_group(Group("q", [sample("357"), sample("356")]))
    assert g.rewards == [1.0, 0.0] and g.score_seconds > 0
    assert scorer.metrics()["reward/samples"] == 2


def test_no_functions_gives_zero_reward():
    (s,) = RewardScorer([]).score([sample("357")])
    assert s.reward == 0.0 and s.reward_components == {} and s.reward_error is None


def test_reward_modules_import_light():
    """The scorer, registry, spec and sandbox modules pull in no torch, ray, vllm, transformers or
    math libraries at import: a reward scorer actor starts without them (torch alone is ~1 s of
    CPU and ~200 MB of memory per scorer process)."""
    code = textwrap.dedent("""
        import sys
        import actors.reward, actors.reward.spec, actors.reward.scorer, actors.reward.sandbox, actors.reward.model_rm
        import actors.tasks.arithmetic
        heavy = [m for m in ("torch", "ray", "vllm", "transformers", "deepspeed", "math_verify", "sympy")
                 if m in sys.modules]
        print(",".join(heavy))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


def test_scorer_timeout_must_exceed_the_sandbox_deadline():
    with pytest.raises(ValueError, match="code_exec' may run for up to 9s.*timeout_s=5"):
        RewardScorer([{"name": "code_exec", "params": {"wall_s": 6}}], timeout_s=5)
    RewardScorer([{"name": "code_exec", "params": {"wall_s": 1}}], timeout_s=5)


def test_reward_spec_is_an_omegaconf_structured_config():
    from omegaconf import OmegaConf

    node = OmegaConf.merge(OmegaConf.structured(RewardSpec), {"name": "format", "params": {"mode": "fullmatch"}})
    assert RewardSpec.coerce(node) == RewardSpec("format", 1.0, {"mode": "fullmatch"})
    assert RewardScorer([node]).names() == ["format"]


def test_call_pool_replaces_abandoned_threads_and_does_not_count_queued_time():
    from actors.reward.scorer import CallPool

    pool, release = CallPool(2), threading.Event()
    hung = [pool.submit(lambda: release.wait()) for _ in range(2)]  # both threads taken
    quick = pool.submit(lambda: 7)
    # quick waits in the queue until the hung calls are abandoned (0.2 s): queued time is not its own
    assert [pool.wait(c, 0.2) for c in hung] == [False, False]
    assert pool.wait(quick, 0.2) and quick.value == 7  # run by a thread that replaced an abandoned one
    stuck = [c.thread for c in hung]
    assert all(t.is_alive() for t in stuck)
    release.set()  # the abandoned calls return: their threads leave the pool
    for t in stuck:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in stuck)
    both = threading.Barrier(2, timeout=5)  # passes only if two threads run the calls at once
    calls = [pool.submit(both.wait) for _ in range(2)]
    assert all(pool.wait(c, 10) for c in calls) and all(c.error is None for c in calls)


def test_one_score_call_runs_at_most_max_workers_calls_at_once():
    """And a call never waits for a thread while fewer than max_workers run: the calls here finish
    only together, three at a time, so one left waiting would break the barrier (CI caught a pool
    that counted a thread as idle after it had taken a call)."""
    for _ in range(20):
        scorer = RewardScorer([{"name": "arithmetic"}], max_workers=3)
        lock, now, peak = threading.Lock(), [0], [0]
        together = threading.Barrier(3, timeout=5)  # passes only while 3 calls run at once

        def call(j, sample):
            def run():
                with lock:
                    now[0] += 1
                    peak[0] = max(peak[0], now[0])
                together.wait()
                with lock:
                    now[0] -= 1
                return 1.0, {}
            return run

        scorer._function_call = call
        samples = scorer.score([sample("357") for _ in range(9)])
        assert [s.reward_error for s in samples] == [None] * 9 and peak[0] == 3
