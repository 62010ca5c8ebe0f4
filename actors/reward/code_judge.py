"""The scorer side of code_exec: which asserts the sandbox reports, and the verdict on what it reported.

The model's program and the tests run in the sandbox under actors/reward/code_harness.py; this module
plans the tests (every assert rewritten into a report call, literal expectations kept here), decodes
the harness's nonce-framed reports and judges them. What the sandbox and the harness guarantee, and
what they do not: docs/sandbox.md.
"""

from __future__ import annotations

import ast
import base64
import collections
import dataclasses
import functools
import hmac
import marshal
import math
import operator
import re
import symtable
from pathlib import Path

from actors.reward import code_harness
from actors.reward.code_harness import CHECK_NAME, TESTS_NAME

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
