"""Each registered reward function on hand-made samples: positive and negative cases."""

import json
import threading
from pathlib import Path

import pytest

from actors.reward.registry import REWARD_FUNCTIONS, extract_code, parse_number, reference_answer
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
