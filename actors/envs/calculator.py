"""`calculator`: a tool for arithmetic, the multi-turn demo's environment.

The model calls it by ending a turn with `[EXPR]` (e.g. `[37*48]`); the observation is `=VALUE`
and a newline (`=1776\n`), or `=error` and a newline when EXPR is not an arithmetic expression of
integers and decimals with + - * / // % and parentheses. A turn without a call is the answer: the
trajectory ends there and its reward is the arithmetic task's exact check of that turn against
the row's answer (`answer_key`).
"""

from __future__ import annotations

import ast
import dataclasses
import operator
import re
from typing import Any, Mapping

from actors.envs.base import ENVIRONMENTS, Environment, Step, Turn

CALL = re.compile(r"\[([^\[\]]*)\]\s*$")  # a call closes the turn
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_EXPR_CHARS = 64
MAX_ABS = 10**18


@dataclasses.dataclass(frozen=True)
class CalculatorParams:
    answer_key: str = "answer"


def evaluate(expr: str) -> str:
    """The value of an arithmetic expression, as text ("1776", "2.5"); ValueError when it is not one."""
    if len(expr) > MAX_EXPR_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an expression: {e.msg}") from None
    value = _eval(tree.body)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return f"{value:.6f}".rstrip("0").rstrip(".")
    return str(value)


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _UNARY[type(node.op)](_eval(node.operand))
    else:
        raise ValueError(f"unsupported element {type(node).__name__}")
    if abs(value) > MAX_ABS:
        raise ValueError("value out of range")
    return value


@ENVIRONMENTS.register("calculator", params=CalculatorParams)
class Calculator(Environment):
    stop = ("]",)

    def __init__(self, row: Mapping[str, Any], params: CalculatorParams = CalculatorParams()):
        super().__init__(row, params)
        if params.answer_key not in row:
            raise KeyError(f"calculator: the data row has no '{params.answer_key}' (fields: {sorted(row)})")

    def step(self, turn: Turn) -> Step:
        call = CALL.search(turn.text) if turn.finish_reason == "stop" else None
        if call is None:  # the answer
            from actors.tasks.arithmetic import check

            return Step(reward=check(turn.text, str(self.row[self.params.answer_key])), done=True)
        try:
            return Step(observation=f"={evaluate(call.group(1))}\n", tool_call=True)
        except ValueError:
            return Step(observation="=error\n", tool_call=True, tool_error=True)
