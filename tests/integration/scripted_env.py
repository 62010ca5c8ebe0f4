"""A user-module environment for the multi-turn tests, loaded by name (`tests.integration.scripted_env:Scripted`).

It ignores what the model writes: every turn gets the observation `obs` with the turn's index,
and the trajectory is done after `turns` turns (never, with turns=0). `mode` makes a given turn
(`at`) raise or hang, and `obs_repeat` makes the observation long (for max_obs_tokens).
Every turn it saw is kept in TURNS (by the row's `key`), for the token-exactness checks.
"""

from __future__ import annotations

import threading
import time

from actors.envs.base import Step

TURNS: dict[str, list] = {}
_lock = threading.Lock()


class Scripted:
    stop = ()

    def __init__(self, row, params):
        self.row, self.p = row, dict(params)
        self.key = f"{row.get('key', '')}"

    def step(self, turn):
        with _lock:
            TURNS.setdefault(self.key, []).append(turn)
        mode, at = self.p.get("mode", "ok"), int(self.p.get("at", 0))
        if turn.index == at and mode == "raise":
            raise RuntimeError("scripted failure")
        if turn.index == at and mode == "hang":
            time.sleep(float(self.p.get("hang_s", 30)))
        turns = int(self.p.get("turns", 2))
        done = turns > 0 and turn.index + 1 >= turns
        obs = "" if done else f"<obs {turn.index}>" * int(self.p.get("obs_repeat", 1)) + "\n"
        return Step(observation=obs, reward=float(self.p.get("reward", 0.5)), done=done,
                    tool_call=not done, tool_error=bool(self.p.get("tool_error", False)))
