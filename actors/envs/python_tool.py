"""`python`: tool-integrated reasoning — the model's code runs in the code sandbox, its output comes back.

The model calls the tool by ending a turn with `<python>CODE</python>`; the observation is
`<output>STDOUT</output>` and a newline (stderr's last line instead when the program failed; cut
to `max_output_chars`). The program runs in actors/reward/sandbox.py (the same isolation as the
code_exec reward). A turn without a call is the answer: the trajectory ends there and its reward
is 1 when its last number equals the row's reference (`answer_key`; GSM8K's "#### 72" reads 72).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

from actors.envs.base import ENVIRONMENTS, Environment, Step, Turn

CALL = re.compile(r"<python>(.*)</python>\s*$", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class PythonToolParams:
    answer_key: str = "answer"
    wall_s: float = 5.0  # the program's wall clock (keep below rollout.env.timeout_s)
    memory_mb: int = 512
    max_output_chars: int = 256
    allow_unisolated: bool = False  # run without the sandbox's isolation (trusted tests only)

    def __post_init__(self):
        if self.wall_s <= 0 or self.max_output_chars <= 0:
            raise ValueError(f"python tool: wall_s and max_output_chars must be > 0, got {self.wall_s}, "
                             f"{self.max_output_chars}")


@ENVIRONMENTS.register("python", params=PythonToolParams)
class PythonTool(Environment):
    stop = ("</python>",)

    def __init__(self, row: Mapping[str, Any], params: PythonToolParams = PythonToolParams()):
        super().__init__(row, params)
        if params.answer_key not in row:
            raise KeyError(f"python tool: the data row has no '{params.answer_key}' (fields: {sorted(row)})")

    def step(self, turn: Turn) -> Step:
        call = CALL.search(turn.text) if turn.finish_reason == "stop" else None
        if call is None:
            return Step(reward=self._score(turn.text), done=True)
        from actors.reward.sandbox import SandboxLimits, run_python

        p = self.params
        result = run_python(call.group(1), SandboxLimits(wall_s=p.wall_s, cpu_s=max(1, math.ceil(p.wall_s)),
                                                         memory_mb=p.memory_mb),
                            allow_unisolated=p.allow_unisolated)
        if result.ok:
            text = result.stdout.strip()
        else:
            lines = result.stderr.strip().splitlines()
            text = lines[-1] if lines else f"failed ({result.killed_reason or f'exit {result.exit_code}'})"
        return Step(observation=f"<output>{text[: p.max_output_chars]}</output>\n", tool_call=True,
                    tool_error=not result.ok)

    def _score(self, text: str) -> float:
        from actors.reward.registry import GSM8K_MARKER, parse_number

        ref = parse_number(str(self.row[self.params.answer_key]).rsplit(GSM8K_MARKER, 1)[-1])
        got = parse_number(text)
        return float(ref is not None and got is not None and math.isclose(got, ref, abs_tol=1e-6))
