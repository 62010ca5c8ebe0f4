"""The environment interface of multi-turn rollouts, and environments by name.

An environment is started per trajectory from its data row and answers each model turn:

    env = Env(row, params)          # row: the prompt's meta (the data row's fields); cheap
    step = env.step(turn)           # turn: Turn(text, token_ids, index, finish_reason)
    step.observation                # text appended after the turn (tokenised once, masked from the loss)
    step.reward                     # this turn's reward component (summed into the trajectory's "env" reward)
    step.done                       # the trajectory ends here
    step.tool_call / tool_error     # counted: the turn called a tool / the tool failed on the model's input

`Env.stop` lists the strings that end a model turn and hand it to the environment (a tool call's
closing tag); EOS and the sampling's own stop strings end a turn too, and the environment sees
those turns as well. `step` runs in a thread of its own, off the engine's loop, under
`rollout.env.timeout_s`; an environment that raises or hangs ends that trajectory with a counted
error (actors/multi_turn.py) and the run goes on.

Registered by name (`ENVIRONMENTS.register`) like reward functions, each with a params dataclass;
`rollout.env.name: pkg.mod:Class` (or `/path/file.py:Class`) loads a user's own class, which gets
its `Params` dataclass built from `rollout.env.params` when it defines one, the dict otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from learner.algorithms.registry import Registry, build_dataclass


@dataclasses.dataclass(frozen=True)
class Turn:
    text: str  # the turn's decoded text (up to and including a stop string)
    token_ids: list[int]  # exactly what the engine sampled in this turn
    index: int  # 0 for the first model turn
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (the turn's token budget)


@dataclasses.dataclass
class Step:
    observation: str = ""
    reward: float = 0.0
    done: bool = False
    tool_call: bool = False
    tool_error: bool = False


class Environment:
    """Base class (optional: any class with `stop`, `__init__(row, params)` and `step(turn)` works)."""

    stop: tuple[str, ...] = ()

    def __init__(self, row: Mapping[str, Any], params: Any = None):
        self.row, self.params = row, params

    def step(self, turn: Turn) -> Step:
        raise NotImplementedError


ENVIRONMENTS: Registry[type] = Registry("environment")


def is_user_path(name: str) -> bool:
    return ":" in name


def environment_class(name: str) -> type:
    """The registered class `name`, or a user's `pkg.mod:Class`; clear errors for both."""
    if is_user_path(name):
        from actors.reward.registry import load_function

        try:
            cls = load_function(name)
        except ValueError as e:
            raise ValueError(f"rollout.env.name: {e.args[0].replace('python_function path', 'environment')}") from None
        if not isinstance(cls, type) or not callable(getattr(cls, "step", None)):
            raise ValueError(f"rollout.env.name {name!r} is not a class with a step(turn) method")
        return cls
    _load_builtins()
    return ENVIRONMENTS.get(name).fn


def environment_params(name: str, params: Mapping[str, Any]) -> Any:
    """The params object `name`'s class is built with (its dataclass; a user class without one: the dict)."""
    if is_user_path(name):
        cls = environment_class(name)
        pcls = getattr(cls, "Params", None)
        if pcls is not None and dataclasses.is_dataclass(pcls):
            return build_dataclass(pcls, dict(params), where=f"environment {name!r}")
        return dict(params)
    _load_builtins()
    return ENVIRONMENTS.make_params(name, dict(params))


def environment_stop(name: str) -> list[str]:
    return [str(s) for s in getattr(environment_class(name), "stop", ())]


def _load_builtins() -> None:
    import actors.envs.calculator  # noqa: F401 - registers "calculator"
    import actors.envs.python_tool  # noqa: F401 - registers "python"
