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

import ast
import base64
import collections
import dataclasses
import functools
import hmac
import importlib
import importlib.util
import marshal
import math
import operator
import re
import secrets
import symtable
import threading
from pathlib import Path
from typing import Any, Callable, Union

from actors.reward import code_harness
from actors.reward.code_harness import CHECK_NAME, NONCE_CHARS, TESTS_NAME
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


# ---- code_exec -----------------------------------------------------------------------------------
# The sandboxed program only *reports* values (actors/reward/code_harness.py); pass or fail is
# decided here, from frames that carry the call's nonce. So exiting early (sys.exit(0), os._exit(0),
# SystemExit from the function under test), exception or exit hooks, objects that compare equal to
# anything, and printed "all passed" markers cannot turn a failure into a pass. What the harness
# does not guarantee is in docs/sandbox.md.
FENCE = re.compile(r"```[ \t]*(python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
CODE_EXEC_OUTCOMES = ("failed", "timeout", "killed", "no_code", "early_exit", "tampered")
RESULT_OUTPUT_BYTES = 1 << 20  # the frames carry the values the tests compare; 64 KiB can be too little


def extract_code(completion: str) -> str | None:
    """The last ```python (or ```py, or bare ```) fenced block of a completion, or None."""
    blocks = FENCE.findall(completion)
    python_blocks = [code for lang, code in blocks if lang]
    chosen = python_blocks or [code for _, code in blocks]
    return chosen[-1] if chosen else None


class _Reported:
    def __repr__(self) -> str:
        return "<reported>"


REPORTED = _Reported()  # an operand the sandbox evaluates and reports (the others are literals kept here)


@dataclasses.dataclass(frozen=True)
class Check:
    """One assert of the tests, as the scorer judges it."""

    site: int  # its index in AssertPlan.checks, sent back with the reported values
    line: int  # in the tests text
    top_level: bool  # a statement of the tests themselves, so it must report exactly once in a pass
    kind: str  # "compare" | "not" | "isclose" | "truth"
    sides: tuple  # the operands in order: a literal kept here, or REPORTED
    ops: tuple = ()  # compare: the operator between sides[i] and sides[i + 1]
    options: tuple = ()  # isclose: ((keyword, literal), ...)

    @property
    def n_reported(self) -> int:
        return sum(side is REPORTED for side in self.sides)


@dataclasses.dataclass(frozen=True)
class AssertPlan:
    source: str  # the tests as the sandbox runs them: one function, each assert a report call
    checks: tuple  # Check by site


_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
        ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_SINGLETONS = (None, True, False, Ellipsis)  # the only values `is` can compare across processes
_ISCLOSE_OPTIONS = ("rel_tol", "abs_tol")


def _literal(node: ast.expr):
    """The value of a literal expression (anything ast.literal_eval accepts), else REPORTED."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return REPORTED


def _conjuncts(test: ast.expr) -> list[ast.expr]:
    """`A and B` as [A, B]: an assert of a conjunction means each part holds, so each is a check."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return [part for value in test.values for part in _conjuncts(value)]
    return [test]


def _is_number(value) -> bool:
    return type(value) in (int, float)


def _is_isclose(node: ast.expr) -> bool:
    """`math.isclose(a, b[, rel_tol=<number>][, abs_tol=<number>])`: judged here on the reported numbers."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "isclose"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "math"
            and len(node.args) == 2 and not any(isinstance(a, ast.Starred) for a in node.args)
            and all(k.arg in _ISCLOSE_OPTIONS and _is_number(_literal(k.value)) for k in node.keywords))


def _identity_comparable(op: str, left, right) -> bool:
    """`is` survives the trip out of the sandbox only against None/True/False/Ellipsis."""
    return op not in ("is", "is not") or any(
        side is not REPORTED and any(side is s for s in _SINGLETONS) for side in (left, right))


def _check(test: ast.expr, site: int, line: int, top_level: bool) -> tuple[Check, list[ast.expr]]:
    """The Check for one assert expression and the operand expressions the sandbox must report.

    Comparisons (chained too), `not x` and math.isclose are taken apart so that the operator is
    applied here, to plain data: the sandbox only evaluates the non-literal operands. Anything else
    is reported whole and must be truthy."""
    nodes, kind, ops, options = [test], "truth", (), ()
    if isinstance(test, ast.Compare):
        sides = [test.left, *test.comparators]
        compare_ops = tuple(_OPS[type(op)] for op in test.ops)
        held = [_literal(s) for s in sides]
        if all(_identity_comparable(op, held[i], held[i + 1]) for i, op in enumerate(compare_ops)):
            nodes, kind, ops = sides, "compare", compare_ops
    elif isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        nodes, kind = [test.operand], "not"
    elif _is_isclose(test):
        nodes, kind = list(test.args), "isclose"
        options = tuple((k.arg, _literal(k.value)) for k in test.keywords)
    sides = tuple(_literal(node) for node in nodes)
    reported = [node for node, side in zip(nodes, sides) if side is REPORTED]
    return Check(site, line, top_level, kind, sides, ops, options), reported


class _AssertRewriter(ast.NodeTransformer):
    """Turns every assert, at any depth, into `__relayrl_check__(site, <reported operands>)`
    statements and records the matching Checks."""

    def __init__(self):
        self.checks: list[Check] = []

    def visit_Assert(self, node: ast.Assert) -> list[ast.stmt]:
        return self.rewrite(node, top_level=False)

    def rewrite(self, node: ast.Assert, top_level: bool) -> list[ast.stmt]:
        statements = []
        for test in _conjuncts(node.test):
            check, operands = _check(test, len(self.checks), node.lineno, top_level)
            self.checks.append(check)
            call = ast.Call(ast.Name(CHECK_NAME, ast.Load()), [ast.Constant(check.site), *operands], [])
            statements.append(ast.copy_location(ast.Expr(call), node))
        return statements


def _top_level_names(tests: str) -> list[str]:
    """Names the tests bind at module level; declared global in the tests function so that the
    tests keep module semantics (helpers see each other, as at top level)."""
    table = symtable.symtable(tests, "<tests>", "exec")
    return sorted(s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported())


@functools.lru_cache(maxsize=256)
def plan_tests(tests: str) -> AssertPlan:
    """Split test code into the checks judged here and the program the sandbox runs.

    Every `assert` (also inside loops or a HumanEval-style `def check(candidate)`) becomes a report
    of its operands; a literal operand (`assert f(x) == [1, 2]`) stays here and is never sent. The
    other statements (imports, helpers, set-up) run unchanged. Raises ValueError for tests that
    cannot give a meaningful pass."""
    try:
        tree = ast.parse(tests, "<tests>")
        compile(tree, "<tests>", "exec")  # what parse lets through, e.g. 'return' outside a function
    except SyntaxError as e:
        raise ValueError(f"code_exec tests do not compile (line {e.lineno}: {e.msg}); fix the data's tests") from None
    for reserved in (CHECK_NAME, TESTS_NAME):
        if reserved in tests:
            raise ValueError(f"code_exec tests use the name '{reserved}', which the harness reserves; rename it")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names):
            raise ValueError(f"code_exec tests line {node.lineno}: 'from {node.module} import *' cannot run inside "
                             f"the tests function; import the names the tests use")
    rewriter = _AssertRewriter()
    body = []
    for statement in tree.body:
        if isinstance(statement, ast.Assert):
            body.extend(rewriter.rewrite(statement, top_level=True))
        else:
            body.append(rewriter.visit(statement))
    if not rewriter.checks:
        raise ValueError("code_exec tests hold no assert statement, so no pass could mean the tests passed; "
                         "give every sample at least one `assert` (e.g. 'assert f(2) == 4')")
    function = ast.parse(f"def {TESTS_NAME}({CHECK_NAME}):\n    pass").body[0]
    names = _top_level_names(tests)
    function.body = ([ast.Global(names=names)] if names else []) + body
    source = ast.unparse(ast.fix_missing_locations(ast.Module(body=[function], type_ignores=[])))
    return AssertPlan(source, tuple(rewriter.checks))


def same(expected, got) -> bool:
    """Equality of plain data, as Python's == except that bool is never equal to a number
    (True == 1 holds in Python; a solution returning True where 1 is expected fails). int, float
    and complex compare by value (3 == 3.0), as Python does; list vs tuple differ, set vs frozenset
    do not, as in Python."""
    te, tg = type(expected), type(got)
    if te is bool or tg is bool:
        return te is tg and expected == got
    if te in (int, float, complex) and tg in (int, float, complex):
        return expected == got
    if te in (set, frozenset) and tg in (set, frozenset):
        return len(expected) == len(got) and _same_members(expected, got, lambda e, g: True)
    if te is not tg:
        return False
    if te in (list, tuple):
        return len(expected) == len(got) and all(same(e, g) for e, g in zip(expected, got))
    if te is dict:
        return len(expected) == len(got) and _same_members(expected, got, lambda e, g: same(expected[e], got[g]))
    return expected == got


_MISSING = object()


def _same_members(expected, got, values_match) -> bool:
    """Each key (member) of `expected` has one in `got` that is `same`, and values_match(e, g)."""
    members = {g: g for g in got}  # hash lookup finds the candidate, `same` then checks it strictly
    for e in expected:
        g = members.get(e, _MISSING)
        if g is _MISSING or not same(e, g) or not values_match(e, g):
            return False
    return True


def _contains(container, item) -> bool | None:
    """`item in container` with `same` for equality; None when `in` makes no sense for the types."""
    if type(container) in (str, bytes):
        return type(item) is type(container) and item in container
    if type(container) in (list, tuple, set, frozenset, dict):
        return any(same(item, member) for member in container)
    return None


def _compare(op: str, left, right) -> bool:
    if op == "==":
        return same(left, right)
    if op == "!=":
        return not same(left, right)
    if op in ("is", "is not"):
        return (left is right) == (op == "is")
    if op in ("in", "not in"):
        found = _contains(right, left)
        return found is not None and found == (op == "in")
    return bool(_ORDER[op](left, right))


def verdict(check: Check, reported: tuple) -> bool:
    """Whether `check` passes given the values the sandbox reported for its REPORTED operands
    (plain data, in order). Comparisons that Python would refuse (e.g. 1 < "a") fail; never raises."""
    values = iter(reported)
    operands = [next(values) if side is REPORTED else side for side in check.sides]
    try:
        if check.kind == "compare":
            return all(_compare(op, a, b) for op, a, b in zip(check.ops, operands, operands[1:]))
        if check.kind == "not":
            return not operands[0]
        if check.kind == "isclose":
            a, b = operands
            return _is_number(a) and _is_number(b) and math.isclose(a, b, **dict(check.options))
        return bool(operands[0])
    except (TypeError, ValueError, OverflowError, RecursionError, MemoryError):
        return False


def _well_formed(message) -> bool:
    if type(message) is not tuple or not message:
        return False
    kind = message[0]
    if kind == "check":
        return len(message) == 3 and type(message[1]) is int and (message[2] is None or type(message[2]) is tuple)
    if kind == "error":
        return len(message) == 2 and message[1] in ("solution", "tests")
    if kind == "done":
        return len(message) == 2 and type(message[1]) is int
    return False


def decode_frame(line: str, nonce: str):
    """The message of one line of the harness's stdout, or None when the line is not a frame of this
    call: wrong nonce (checked before anything is decoded), bad base64/marshal, unknown shape."""
    head, sep, payload = line.partition(" ")
    if not sep or not hmac.compare_digest(head.encode(), nonce.encode()):
        return None
    try:
        message = marshal.loads(base64.b64decode(payload, validate=True))
    except (ValueError, EOFError, TypeError):  # binascii.Error is a ValueError
        return None
    return message if _well_formed(message) else None


def _tally(plan: AssertPlan, messages: list) -> tuple[bool, str | None] | None:
    """(some check failed or a statement raised, how the frames ended: None | "error" | "done"),
    or None when the frames cannot come from the harness running this plan."""
    seen: collections.Counter[int] = collections.Counter()
    failed, end = False, None
    for message in messages:
        if end is not None:
            return None  # nothing follows "error" or "done"
        kind = message[0]
        if kind == "check":
            site, values = message[1], message[2]
            if not 0 <= site < len(plan.checks):
                return None
            check = plan.checks[site]
            if (check.top_level and seen[site]) or (values is not None and len(values) != check.n_reported):
                return None
            seen[site] += 1
            failed = failed or values is None or not verdict(check, values)
        elif kind == "error":
            failed, end = True, "error"
        else:
            if message[1] != sum(seen.values()) or any(c.top_level and not seen[c.site] for c in plan.checks):
                return None
            end = "done" if seen else "error"  # only nested asserts, none of which ran: nothing was tested
    return failed, end


def judge(plan: AssertPlan, result, nonce: str) -> str:
    """How one run ended: "passed" or one of CODE_EXEC_OUTCOMES but "no_code". Decided by the
    frames, never by the exit code: a pass needs every check to pass and the closing "done"."""
    lines = result.stdout.split("\n")
    tail = lines.pop()  # "" when the output ends with a whole line
    cut = result.timed_out or result.killed_reason is not None  # the last frame may be cut short
    messages = [decode_frame(line, nonce) for line in lines]
    tally = None if any(m is None for m in messages) or (tail and not cut) else _tally(plan, messages)
    if tally is None:
        return "tampered"
    if result.timed_out:
        return "timeout"
    if result.killed_reason is not None:
        return "killed"
    failed, end = tally
    if failed or end == "error":
        return "failed"
    return "passed" if end == "done" else "early_exit"


@functools.lru_cache(maxsize=None)
def _harness_source() -> str:
    return Path(code_harness.__file__).read_text(encoding="utf-8")


def harness_program(solution: str, plan: AssertPlan) -> str:
    """The text run as main.py: the harness, then a call with the solution and the planned tests."""
    return f"{_harness_source()}\n\nmain({solution!r}, {plan.source!r})\n"


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
