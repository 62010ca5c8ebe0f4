"""Each registered reward function on hand-made samples: positive and negative cases."""

import base64
import collections
import enum
import json
import marshal
import threading
from pathlib import Path

import pytest

from actors.reward.code_harness import CHECK_NAME, TESTS_NAME, Unconvertible, plain
from actors.reward.code_judge import REPORTED, decode_frame, extract_code, judge, plan_tests, same, verdict
from actors.reward.registry import REWARD_FUNCTIONS, parse_number, reference_answer
from actors.reward.sandbox import SandboxResult
from actors.types import Sample

pytestmark = pytest.mark.unit

GSM8K_SAMPLE = Path(__file__).resolve().parents[2] / "configs/data/gsm8k/sample.jsonl"


def sample(response, meta=None, n_tokens=3, prompt="p"):
    return Sample("id", prompt, [1], response, [7] * n_tokens, [-0.1] * n_tokens, "stop", 0, meta=meta or {})


def run(name, response, meta=None, n_tokens=3, **params):
    entry = REWARD_FUNCTIONS.get(name)
    return entry.fn(sample(response, meta, n_tokens), REWARD_FUNCTIONS.make_params(name, params))


def test_all_builtins_registered():
    assert set(REWARD_FUNCTIONS.names()) >= {"exact_match", "numeric_match", "math_verify", "format", "overlong",
                                              "arithmetic", "python_function", "code_exec"}


def test_unknown_param_is_an_error_with_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'answer_key'"):
        REWARD_FUNCTIONS.make_params("exact_match", {"answer_kye": "x"})
    with pytest.raises(KeyError, match="did you mean 'exact_match'"):
        REWARD_FUNCTIONS.get("exact_mach")


def test_reference_answer_takes_text_after_gsm8k_marker_and_names_missing_key():
    assert reference_answer(sample("", {"answer": "so 3+4=7\n#### 7 "}), "answer") == "7"
    assert reference_answer(sample("", {"answer": " 42 "}), "answer") == "42"
    with pytest.raises(KeyError, match="no 'solution'.*fields: answer"):
        reference_answer(sample("", {"answer": "1"}), "solution")


def test_exact_match():
    assert run("exact_match", " 357\n", {"answer": "357"}) == 1.0
    assert run("exact_match", "3570", {"answer": "357"}) == 0.0
    assert run("exact_match", "The answer is <a>12</a> or <a>13</a>", {"answer": "13"}, extract=r"<a>(.*?)</a>") == 1.0
    assert run("exact_match", "no tags", {"answer": "13"}, extract=r"<a>(.*?)</a>") == 0.0
    assert run("exact_match", "B", {"label": "B"}, answer_key="label") == 1.0
    with pytest.raises(ValueError, match="invalid regular expression"):
        REWARD_FUNCTIONS.make_params("exact_match", {"extract": "(unclosed"})


def test_numeric_match():
    assert parse_number("costs $1,234.50 in total") == 1234.5
    assert run("numeric_match", "16 - 3 - 4 = 9, times 2 is 18", {"answer": "...\n#### 18"}) == 1.0
    assert run("numeric_match", "total: 1,000", {"answer": "1000"}) == 1.0
    assert run("numeric_match", "-2.5", {"answer": "-2.5000001"}) == 1.0
    assert run("numeric_match", "it is 17", {"answer": "18"}) == 0.0
    assert run("numeric_match", "no number", {"answer": "18"}) == 0.0
    assert run("numeric_match", "10.5", {"answer": "10"}, abs_tol=0.5) == 1.0
    with pytest.raises(ValueError, match="holds no number"):
        run("numeric_match", "1", {"answer": "many"})


def test_math_verify_gsm8k_answers():
    meta = {"answer": "She sold 48/2 = <<48/2=24>>24 clips in May.\n48+24 = <<48+24=72>>72\n#### 72"}
    assert run("math_verify", "In May 24, total 48+24=72.\n#### 72", meta) == 1.0
    assert run("math_verify", "The total is 72.", meta) == 1.0
    assert run("math_verify", "#### 71", meta) == 0.0
    # only the text after the last '####' counts, so an earlier right number does not
    assert run("math_verify", "maybe 72?\n#### 70", meta) == 0.0
    assert run("math_verify", "I don't know", meta) == 0.0


def test_math_verify_latex_boxed_answers():
    assert run("math_verify", r"so the answer is $\boxed{\frac{1}{2}}$", {"answer": r"\frac{1}{2}"}) == 1.0
    assert run("math_verify", r"\boxed{0.5}", {"answer": r"$\frac{1}{2}$"}) == 1.0
    assert run("math_verify", r"\boxed{\frac{1}{3}}", {"answer": r"\frac{1}{2}"}) == 0.0
    assert run("math_verify", r"$\boxed{2\sqrt{2}}$", {"answer": r"\sqrt{8}"}) == 1.0


def test_math_verify_works_off_the_main_thread():
    """math-verify's signal timeouts raise outside the main thread; ours switches them off there."""
    out = {}
    t = threading.Thread(target=lambda: out.update(r=run("math_verify", r"\boxed{3}", {"answer": "#### 3"})))
    t.start()
    t.join(30)
    assert out["r"] == 1.0


def test_math_verify_scores_gsm8k_reference_solutions_as_correct():
    rows = [json.loads(line) for line in GSM8K_SAMPLE.read_text().splitlines()]
    assert len(rows) == 8 and all(set(r) == {"question", "answer"} for r in rows)
    assert [run("math_verify", r["answer"], r) for r in rows] == [1.0] * 8


def test_format():
    assert run("format", "<think>hm</think><answer>\n4\n</answer>") == 1.0
    assert run("format", "the answer is 4") == 0.0
    strict = dict(pattern=r"<think>.*?</think>\s*<answer>.*?</answer>", mode="fullmatch")
    assert run("format", " <think>a\nb</think>\n<answer>4</answer>\n", **strict) == 1.0
    assert run("format", "<think>a</think><answer>4</answer> trailing", **strict) == 0.0
    with pytest.raises(ValueError, match="mode"):
        REWARD_FUNCTIONS.make_params("format", {"mode": "contains"})


def test_overlong_uses_response_length():
    p = dict(max_length=20, cache_length=4, factor=1.0)
    assert run("overlong", "x", n_tokens=16, **p) == 0.0
    assert run("overlong", "x", n_tokens=18, **p) == pytest.approx(-0.5)
    assert run("overlong", "x", n_tokens=20, **p) == pytest.approx(-1.0)
    assert run("overlong", "x", n_tokens=25, **p) == -1.0
    with pytest.raises(ValueError, match="max_length > 0"):
        REWARD_FUNCTIONS.make_params("overlong", {})
    with pytest.raises(ValueError, match="cache_length <= max_length"):
        REWARD_FUNCTIONS.make_params("overlong", {"max_length": 4, "cache_length": 8})


def test_arithmetic():
    assert run("arithmetic", "357<|endoftext|>", {"answer": "357"}) == 1.0
    assert run("arithmetic", "357 and more", {"answer": "357"}) == 1.0
    assert run("arithmetic", "358", {"answer": "357"}) == 0.0
    assert run("arithmetic", "347", {"answer": "357"}, partial_credit=True) == pytest.approx(2 / 3)


def test_python_function_by_dotted_path_and_file(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(
        "def length_bonus(sample, scale=1.0):\n    return {'score': scale * len(sample.response), 'chars': len(sample.response)}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert run("python_function", "abcd", path="my_rewards_mod:length_bonus") == {"score": 4.0, "chars": 4}
    assert run("python_function", "ab", path="my_rewards_mod.length_bonus", kwargs={"scale": 0.5})["score"] == 1.0
    assert run("python_function", "abc", path=f"{tmp_path}/my_rewards_mod.py:length_bonus")["chars"] == 3


def test_python_function_bad_paths_fail_at_config_time():
    with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz'"):
        REWARD_FUNCTIONS.make_params("python_function", {"path": "no_such_module_xyz:f"})
    with pytest.raises(ValueError, match="has no function 'nope'"):
        REWARD_FUNCTIONS.make_params("python_function", {"path": "json:nope"})
    with pytest.raises(ValueError, match="needs params.path"):
        REWARD_FUNCTIONS.make_params("python_function", {})


def test_extract_code_prefers_the_last_python_block():
    text = "plan\n```python\nx = 1\n```\nthen\n```py\nx = 2\n```\n```\nnot code\n```"
    assert extract_code(text) == "x = 2\n"
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert extract_code("no code at all") is None


def test_code_exec_without_a_code_block_scores_zero_without_running():
    out = run("code_exec", "I would write a function.", {"tests": ["assert f() == 1"]})
    assert out["score"] == 0.0 and out["no_code"] == 1.0


def test_code_exec_tests_without_an_assert_are_a_data_error():
    for tests in (["print(1)"], [], "import math\nx = 1"):
        with pytest.raises(ValueError, match="no assert statement"):
            run("code_exec", "```python\nx = 1\n```", {"tests": tests})


# ---- code_exec harness: the parts decided in the scorer, without a sandbox ------------------------
def checks(tests):
    return plan_tests(tests).checks


def test_plan_keeps_literal_expectations_in_the_scorer():
    plan = plan_tests('assert f(1) == [1, 2], "expected [1, 2]"\nassert {"a": -1} == g(x)')
    first, second = plan.checks
    assert (first.kind, first.sides, first.ops, first.top_level) == ("compare", (REPORTED, [1, 2]), ("==",), True)
    assert second.sides == ({"a": -1}, REPORTED)
    assert f"{CHECK_NAME}(0, f(1))" in plan.source and f"{CHECK_NAME}(1, g(x))" in plan.source
    assert "[1, 2]" not in plan.source and "-1" not in plan.source  # neither the literals nor the message
    assert plan.source.startswith(f"def {TESTS_NAME}({CHECK_NAME}):")


def test_plan_takes_comparisons_not_isclose_and_conjunctions_apart():
    plan = plan_tests("import math\nassert 0 < f(1) <= 9\nassert not f(2)\nassert f(3) == g(3) and f(4) is None\n"
                      "assert math.isclose(f(5), 0.3, rel_tol=1e-6)\nassert f(6) is g(6)\nassert ok(7)")
    kinds = [(c.kind, c.sides, c.ops) for c in plan.checks]
    assert kinds == [
        ("compare", (0, REPORTED, 9), ("<", "<=")),
        ("not", (REPORTED,), ()),
        ("compare", (REPORTED, REPORTED), ("==",)),
        ("compare", (REPORTED, None), ("is",)),
        ("isclose", (REPORTED, 0.3), ()),
        ("truth", (REPORTED,), ()),  # `is` between two computed objects cannot leave the sandbox
        ("truth", (REPORTED,), ()),
    ]
    assert plan.checks[4].options == (("rel_tol", 1e-6),)
    assert f"{CHECK_NAME}(5, f(6) is g(6))" in plan.source


def test_plan_rewrites_nested_asserts_and_keeps_module_semantics():
    tests = ("LIMIT = 3\ndef helper(n):\n    return n < LIMIT\n"
             "def check(candidate):\n    for n in range(LIMIT):\n        assert helper(n) and candidate(n) == n\n"
             "check(ident)\nassert ident(LIMIT) == 3")
    plan = plan_tests(tests)
    assert [c.top_level for c in plan.checks] == [False, False, True]
    reports = []
    namespace = {"ident": lambda n: n}
    exec(compile(plan.source, "<tests>", "exec"), namespace)
    namespace[TESTS_NAME](lambda site, *values: reports.append((site, values)))
    assert namespace["LIMIT"] == 3 and "helper" in namespace  # top-level names stay module globals
    assert reports == [(0, (True,)), (1, (0, 0)), (0, (True,)), (1, (1, 1)), (0, (True,)), (1, (2, 2)), (2, (3,))]


def test_plan_rejects_tests_it_cannot_run_with_a_message_saying_what_to_change():
    with pytest.raises(ValueError, match="do not compile .*line 1"):
        plan_tests("assert f(1) ==")
    with pytest.raises(ValueError, match="do not compile"):
        plan_tests("return 1\nassert True")
    with pytest.raises(ValueError, match="import \\*.*import the names"):
        plan_tests("from math import *\nassert sqrt(4) == 2")
    with pytest.raises(ValueError, match="reserves"):
        plan_tests(f"{CHECK_NAME} = 1\nassert True")


def test_same_is_python_equality_but_strict_about_bool():
    assert same(3, 3.0) and same(1 + 0j, 1) and same([1, (2, "a")], [1, (2, "a")])
    assert not same(3, True) and not same(True, 1) and not same(0, False) and same(True, True)
    assert not same([1, 2], (1, 2)) and same({1, 2}, frozenset({2, 1}))
    assert not same([1, 1], [1, True]) and not same({1: "a"}, {True: "a"}) and not same({1}, {True})
    assert same({"a": [1.0]}, {"a": [1]}) and not same({"a": 1}, {"a": 1, "b": 2})
    assert not same(float("nan"), float("nan")) and not same(None, 0) and not same("1", 1) and not same(b"a", "a")


def test_verdict_applies_the_operator_to_reported_plain_data():
    eq, chain, contains, negated, isclose, truth = checks(
        "import math\nassert f() == 3\nassert 0 < f() < 9\nassert f() in [1, 2]\nassert not f()\n"
        "assert math.isclose(f(), 0.3, rel_tol=1e-3)\nassert f()")
    assert verdict(eq, (3,)) and verdict(eq, (3.0,)) and not verdict(eq, (True,)) and not verdict(eq, (4,))
    assert verdict(chain, (5,)) and not verdict(chain, (9,)) and not verdict(chain, ("a",))  # "a" > 0 raises
    assert verdict(contains, (2,)) and not verdict(contains, (True,)) and not verdict(contains, (3,))
    assert verdict(negated, ([],)) and verdict(negated, (0,)) and not verdict(negated, ("x",))
    assert verdict(isclose, (0.3001,)) and not verdict(isclose, (0.31,)) and not verdict(isclose, ("0.3",))
    assert verdict(truth, ([0],)) and not verdict(truth, ("",))
    (substring,) = checks("assert 'ell' in f()")
    assert verdict(substring, ("hello",)) and not verdict(substring, (b"hello",)) and not verdict(substring, (5,))


def frame(nonce: str, message) -> str:
    return f"{nonce} {base64.b64encode(marshal.dumps(message)).decode()}"


NONCE = "ab" * 16


def test_decode_frame_refuses_a_wrong_nonce_and_malformed_lines():
    assert decode_frame(frame(NONCE, ("check", 0, (5,))), NONCE) == ("check", 0, (5,))
    assert decode_frame(frame(NONCE, ("done", 2)), NONCE) == ("done", 2)
    assert decode_frame(frame("cd" * 16, ("done", 2)), NONCE) is None
    assert decode_frame(frame(NONCE[:-1], ("done", 2)), NONCE) is None
    assert decode_frame("all tests passed", NONCE) is None
    assert decode_frame(f"{NONCE} not*base64", NONCE) is None
    assert decode_frame(f"{NONCE} {base64.b64encode(b'garbage').decode()}", NONCE) is None
    for message in [("done",), ("check", "0", (5,)), ("check", 0, [5]), ("error", "x"), ["done", 1], ("ok", 1)]:
        assert decode_frame(frame(NONCE, message), NONCE) is None, message


def result(*messages, raw="", timed_out=False, killed=None):
    lines = [frame(NONCE, m) for m in messages] + ([raw] if raw else [])
    stdout = "".join(f"{line}\n" for line in lines) if not raw.endswith("!") else "\n".join(lines)
    return SandboxResult(0, None, stdout, "", timed_out, "timeout" if timed_out else killed, 0.1, 0.1, "full")


def test_judge_needs_every_check_passing_and_the_closing_frame():
    plan = plan_tests("assert f(1) == 2\nassert f(2) == 4")
    ok = [("check", 0, (2,)), ("check", 1, (4,))]
    assert judge(plan, result(*ok, ("done", 2)), NONCE) == "passed"
    assert judge(plan, result(*ok), NONCE) == "early_exit"  # exited 0 before "done"
    assert judge(plan, result(), NONCE) == "early_exit"
    assert judge(plan, result(("check", 0, (2,)), ("check", 1, (5,)), ("done", 2)), NONCE) == "failed"
    assert judge(plan, result(("check", 0, (2,)), ("check", 1, None), ("done", 2)), NONCE) == "failed"  # not plain data
    assert judge(plan, result(("check", 0, (2,)), ("error", "tests")), NONCE) == "failed"
    assert judge(plan, result(*ok, timed_out=True), NONCE) == "timeout"
    assert judge(plan, result(*ok, killed="cpu_limit"), NONCE) == "killed"


def test_judge_counts_frames_that_the_harness_cannot_have_written_as_tampering():
    plan = plan_tests("assert f(1) == 2\nassert f(2) == 4")
    ok = [("check", 0, (2,)), ("check", 1, (4,))]
    assert judge(plan, result(*ok, ("done", 2), raw="ALL TESTS PASSED"), NONCE) == "tampered"
    assert judge(plan, result(*ok, ("done", 2), raw=frame("cd" * 16, ("done", 2))), NONCE) == "tampered"
    assert judge(plan, result(*ok, ("done", 2), ("check", 0, (2,))), NONCE) == "tampered"  # after "done"
    assert judge(plan, result(*ok, ("check", 0, (2,)), ("done", 3)), NONCE) == "tampered"  # top-level twice
    assert judge(plan, result(("check", 0, (2,)), ("done", 1)), NONCE) == "tampered"  # a statement skipped
    assert judge(plan, result(*ok, ("done", 7)), NONCE) == "tampered"
    assert judge(plan, result(("check", 0, (2, 3)), ("check", 1, (4,)), ("done", 2)), NONCE) == "tampered"
    assert judge(plan, result(("check", 5, (2,)), *ok, ("done", 3)), NONCE) == "tampered"
    assert judge(plan, result(*ok, ("done", 2), raw="partial!"), NONCE) == "tampered"  # no final newline
    assert judge(plan, result(*ok, raw="partial!", killed="output_limit"), NONCE) == "killed"  # cut by the limit


def test_judge_nested_asserts_may_run_any_number_of_times_but_some_check_must_run():
    plan = plan_tests("def check(c):\n    for n in range(N):\n        assert c(n) == 0\ncheck(f)")
    assert judge(plan, result(("check", 0, (0,)), ("check", 0, (0,)), ("done", 2)), NONCE) == "passed"
    assert judge(plan, result(("check", 0, (0,)), ("check", 0, (1,)), ("done", 2)), NONCE) == "failed"
    assert judge(plan, result(("done", 0)), NONCE) == "failed"  # nothing was tested


def test_plain_copies_builtin_subclasses_and_refuses_other_objects():
    class AlwaysEqual:
        def __eq__(self, other):
            return True

    class EqualInt(int):
        def __eq__(self, other):
            return True

    class Colour(enum.IntEnum):
        RED = 3

    point = collections.namedtuple("Point", "x y")(1, Colour.RED)
    counts, lists = collections.Counter("aab"), collections.defaultdict(list, a=[EqualInt(7)])
    converted = plain({"p": point, "c": counts, "d": lists})
    assert converted == {"p": (1, 3), "c": {"a": 2, "b": 1}, "d": {"a": [7]}}
    assert type(converted["p"]) is tuple and type(converted["c"]) is dict and type(converted["d"]["a"][0]) is int
    assert type(plain(Colour.RED)) is int and plain(True) is True and plain(bytearray(b"x")) == b"x"
    assert type(plain(EqualInt(0))) is int and not same(5, plain(EqualInt(0)))
    for value in (AlwaysEqual(), [1, AlwaysEqual()], {1: AlwaysEqual()}, iter([1]), range(3), object):
        with pytest.raises(Unconvertible):
            plain(value)
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(Unconvertible):
        plain(cyclic)
