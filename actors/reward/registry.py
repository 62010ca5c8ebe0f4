"""Reward functions by name, each with the dataclass of its own knobs.

Contract: a reward function is pure, `fn(sample, params) -> float | dict[str, float]`.
`sample` is the actors.types.Sample being scored; a function reads only
    sample.prompt (str), sample.response (the completion, str), sample.meta (the data row: the
    reference answer, tests, ...), sample.response_length (tokens), sample.finish_reason
and must not modify it. A dict result must hold "score" (what the weighted sum uses); its other
keys are diagnostics, logged as components "<name>/<key>". Raising is fine: the scorer turns an
exception or a timeout into reward 0 with a counted reason (actors/reward/scorer.py).

Reference answers: `reference_answer` reads meta[answer_key]; a GSM8K-style reference
("...reasoning...\\n#### 72") counts only the text after the last "####".

The model reward model is not here: it needs a model loaded once per actor, see model_rm.py.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import math
import re
import secrets
import threading
from typing import Any, Callable, Union

from actors.reward.code_harness import NONCE_CHARS
from learner.algorithms.registry import Registry

RewardFn = Callable[[Any, Any], Union[float, dict]]
REWARD_FUNCTIONS: Registry[RewardFn] = Registry("reward function")

GSM8K_MARKER = "####"


def reference_answer(sample, answer_key: str) -> str:
    """The final answer of meta[answer_key]: the text after the last '####' when there is one, stripped."""
    if answer_key not in sample.meta:
        raise KeyError(f"sample meta has no '{answer_key}' (fields: {', '.join(sorted(sample.meta)) or 'none'}); "
                       f"set the reward's answer_key")
    text = str(sample.meta[answer_key])
    return text.rsplit(GSM8K_MARKER, 1)[-1].strip()


def _compile(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise ValueError(f"{what}: invalid regular expression {pattern!r}: {e}") from None


def _last_match(pattern: re.Pattern, text: str) -> str | None:
    """Group 1 of the last match (the whole match when the pattern has no group), or None."""
    last = None
    for last in pattern.finditer(text):
        pass
    if last is None:
        return None
    return last.group(1) if pattern.groups else last.group(0)


# ---- exact_match ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ExactMatchParams:
    answer_key: str = "answer"
    extract: str = ""  # regex applied to the completion; its last match (group 1 if any) is the answer

    def __post_init__(self):
        if self.extract:
            _compile(self.extract, "exact_match extract")


@REWARD_FUNCTIONS.register("exact_match", params=ExactMatchParams)
def exact_match(sample, p: ExactMatchParams) -> float:
    """1 when the completion (or its extracted part) equals the reference answer after strip()."""
    got = sample.response if not p.extract else _last_match(_compile(p.extract, "extract"), sample.response)
    return float(got is not None and got.strip() == reference_answer(sample, p.answer_key))


# ---- numeric_match -------------------------------------------------------------------------------
NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def parse_number(text: str) -> float | None:
    """The last number in `text` ("1,234.5" -> 1234.5), or None."""
    found = NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


@dataclasses.dataclass(frozen=True)
class NumericMatchParams:
    answer_key: str = "answer"
    abs_tol: float = 1e-6
    rel_tol: float = 0.0

    def __post_init__(self):
        if self.abs_tol < 0 or self.rel_tol < 0:
            raise ValueError(f"numeric_match tolerances must be >= 0, got abs_tol={self.abs_tol}, rel_tol={self.rel_tol}")


@REWARD_FUNCTIONS.register("numeric_match", params=NumericMatchParams)
def numeric_match(sample, p: NumericMatchParams) -> float:
    """1 when the last number of the completion equals the reference's number within tolerance."""
    ref = reference_answer(sample, p.answer_key)
    want = parse_number(ref)
    if want is None:
        raise ValueError(f"reference answer {ref!r} holds no number")
    got = parse_number(sample.response)
    return float(got is not None and math.isclose(got, want, rel_tol=p.rel_tol, abs_tol=p.abs_tol))


# ---- math_verify ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MathVerifyParams:
    answer_key: str = "answer"
    completion_marker: str = GSM8K_MARKER  # if the completion holds it, only the text after the last one counts
    float_rounding: int = 6
    numeric_precision: int = 15
    strict: bool = True
    timeout_s: int = 5  # math-verify's own (signal) timeout, main thread only; the scorer's deadline covers threads


@REWARD_FUNCTIONS.register("math_verify", params=MathVerifyParams)
def math_verify(sample, p: MathVerifyParams) -> float:
    """1 when math-verify finds the completion's answer equivalent to the reference (LaTeX, \\boxed{},
    fractions, plain numbers, "#### 72")."""
    from math_verify import parse, verify

    # math-verify's timeouts use signal.alarm, which only works in the main thread (and raises
    # elsewhere); in worker threads we switch them off and rely on the scorer's own deadline.
    t = p.timeout_s if threading.current_thread() is threading.main_thread() else None
    ref = reference_answer(sample, p.answer_key)
    gold = parse(ref, parsing_timeout=t) or parse(f"${ref}$", parsing_timeout=t)
    if not gold:
        raise ValueError(f"math-verify cannot parse the reference answer {ref!r}")
    text = sample.response
    if p.completion_marker and p.completion_marker in text:
        text = text.rsplit(p.completion_marker, 1)[-1]
    pred = parse(text, parsing_timeout=t)
    if not pred:
        return 0.0
    return float(verify(gold, pred, float_rounding=p.float_rounding, numeric_precision=p.numeric_precision,
                        strict=p.strict, timeout_seconds=t))


# ---- format --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FormatParams:
    pattern: str = r"<answer>.*?</answer>"  # DOTALL: '.' spans lines
    mode: str = "search"  # search: the pattern occurs anywhere; fullmatch: the stripped completion is exactly it

    def __post_init__(self):
        _compile(self.pattern, "format pattern")
        if self.mode not in ("search", "fullmatch"):
            raise ValueError(f"format mode must be 'search' or 'fullmatch', got '{self.mode}'")


@REWARD_FUNCTIONS.register("format", params=FormatParams)
def format_reward(sample, p: FormatParams) -> float:
    pattern = _compile(p.pattern, "format pattern")
    hit = pattern.fullmatch(sample.response.strip()) if p.mode == "fullmatch" else pattern.search(sample.response)
    return float(hit is not None)


# ---- overlong ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OverlongParams:
    max_length: int = 0  # L_max in tokens; required
    cache_length: int = 16  # the ramp: penalties start at max_length - cache_length
    factor: float = 1.0

    def __post_init__(self):
        if self.max_length <= 0:
            raise ValueError(f"overlong needs max_length > 0 (the response token budget), got {self.max_length}")
        if not 0 <= self.cache_length <= self.max_length:
            raise ValueError(f"overlong needs 0 <= cache_length <= max_length, got {self.cache_length}, {self.max_length}")


@REWARD_FUNCTIONS.register("overlong", params=OverlongParams)
def overlong(sample, p: OverlongParams) -> float:
    """DAPO soft overlong punishment on the response length (0 down to -factor); see group_filters.
    Don't also enable buffer.overlong: that applies the same shaping after scoring."""
    from learner.algorithms.group_filters import overlong_penalty

    return overlong_penalty(sample.response_length, p.max_length, p.cache_length, p.factor)


# ---- arithmetic ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ArithmeticParams:
    answer_key: str = "answer"
    partial_credit: bool = False  # fraction of right digits instead of all-or-nothing


@REWARD_FUNCTIONS.register("arithmetic", params=ArithmeticParams)
def arithmetic(sample, p: ArithmeticParams) -> float:
    """The embedded demo task's checker (actors/tasks/arithmetic.py)."""
    from actors.tasks.arithmetic import check

    return check(sample.response, reference_answer(sample, p.answer_key), partial_credit=p.partial_credit)


# ---- python_function -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def load_function(path: str) -> Callable:
    """`pkg.mod:func`, `pkg.mod.func` or `/path/to/file.py:func` -> the function; clear errors."""
    if ":" in path:
        module_name, _, attr = path.rpartition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"python_function path {path!r}: expected 'pkg.module:function' or 'pkg.module.function'")
    try:
        if module_name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(f"relayrl_user_reward_{abs(hash(module_name))}", module_name)
            if spec is None or spec.loader is None:
                raise ImportError(f"not a python file: {module_name}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, OSError) as e:  # ModuleNotFoundError is an ImportError
        raise ValueError(f"python_function path {path!r}: cannot import '{module_name}': {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"python_function path {path!r}: module '{module_name}' has no function '{attr}'")
    return fn


@dataclasses.dataclass(frozen=True)
class PythonFunctionParams:
    path: str = ""  # required: "pkg.mod:func"; called as func(sample, **kwargs) -> float | dict
    kwargs: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.path:
            raise ValueError("python_function needs params.path, e.g. 'my_rewards:score' (a function of the sample)")
        load_function(self.path)  # fail at config time, not on the first sample


@REWARD_FUNCTIONS.register("python_function", params=PythonFunctionParams)
def python_function(sample, p: PythonFunctionParams):
    return load_function(p.path)(sample, **p.kwargs)


# ---- code_exec (planning and judging: actors/reward/code_judge.py) ------------------------------
from actors.reward.code_judge import (  # noqa: E402
    CODE_EXEC_OUTCOMES, RESULT_OUTPUT_BYTES, extract_code, harness_program, judge, plan_tests)


@dataclasses.dataclass(frozen=True)
class CodeExecParams:
    tests_key: str = "tests"  # meta field: a string of test code or a list of statements (asserts)
    wall_s: float = 6.0  # keep wall_s + the sandbox's start-up grace under the scorer's timeout_s
    cpu_s: int = 4
    memory_mb: int = 512
    nproc: int = 32
    allow_unisolated: bool = False  # run without namespaces/uid drop when unavailable: trusted code only

    def limits(self):
        from actors.reward.sandbox import SandboxLimits

        return SandboxLimits(wall_s=self.wall_s, cpu_s=self.cpu_s, memory_mb=self.memory_mb, nproc=self.nproc,
                             max_output_bytes=RESULT_OUTPUT_BYTES)

    def __post_init__(self):
        self.limits()  # positive limits, checked at config time

    @property
    def deadline_s(self) -> float:
        """The longest one call can take; the scorer checks that its own timeout is longer."""
        from actors.reward.sandbox import START_GRACE_S

        return self.wall_s + START_GRACE_S


@REWARD_FUNCTIONS.register("code_exec", params=CodeExecParams)
def code_exec(sample, p: CodeExecParams) -> dict[str, float]:
    """Run the completion's last ```python block, then meta[tests_key], in the sandbox
    (actors/reward/sandbox.py) under the code harness; score 1 only when every assert was reported
    passing and the tests ran to their end. Exactly one of score and the diagnostic components is 1:
    failed (a check failed or the code raised), timeout, killed (cpu/output limit or a signal),
    no_code (no fenced block), early_exit (the program ended before the tests finished, e.g.
    sys.exit), tampered (output on the result channel that is not a frame of this call).

    Tests without any assert are a data error (ValueError): a pass must mean tests ran and passed."""
    from actors.reward.sandbox import run_python

    outcome = dict.fromkeys(("score", *CODE_EXEC_OUTCOMES), 0.0)
    if p.tests_key not in sample.meta:
        raise KeyError(f"sample meta has no '{p.tests_key}' (fields: {', '.join(sorted(sample.meta)) or 'none'})")
    tests = sample.meta[p.tests_key]
    plan = plan_tests("\n".join(tests) if isinstance(tests, (list, tuple)) else str(tests))
    code = extract_code(sample.response)
    if code is None:
        return {**outcome, "no_code": 1.0}
    nonce = secrets.token_hex(NONCE_CHARS // 2)
    result = run_python(harness_program(code, plan), p.limits(), allow_unisolated=p.allow_unisolated,
                        stdin=nonce.encode())
    key = judge(plan, result, nonce)
    return {**outcome, "score" if key == "passed" else key: 1.0}
