"""Multi-turn rollouts: the model's turns alternate with an environment's observations, token in, token out.

A trajectory's token ids are exactly what the engine was given and produced, turn by turn: the
prompt's ids, the first turn's sampled ids, the first observation's ids (tokenised once, here),
the second turn's sampled ids, and so on. Each turn is one engine request whose prompt is the ids
so far; nothing is ever decoded and re-tokenised. `Sample.response_ids` is everything after the
prompt; `Sample.response_mask` marks the model's tokens (1) and the observations' (0), which the
learner masks out of the loss; `Sample.logprobs` is the sampler's at model tokens and 0.0 at
observation tokens.

Environment steps run in threads of their own, off the engine's loop: while one trajectory waits for
its tool, the engine keeps stepping every other trajectory's turn. A step that raises or runs past
`rollout.env.timeout_s` ends its trajectory with `Episode.error` set (the scorer then gives it reward
0 and counts the reason); a hung step's thread is abandoned (Python cannot kill a thread; tools that
run untrusted code use the sandbox, which kills its process). Limits (`rollout.env`): max_turns,
max_total_tokens (response tokens, model + observation), max_obs_tokens (an observation is cut,
counted), and the engine's max_model_len; a trajectory ended by one is marked in `Episode.cut`.

MoE models: each turn's request reports the experts it computed with (actors/routing_capture.py).
A Group's expert counts add up every turn's request. With rollout.record_routed_experts, prefix
caching is off, so each turn's request recomputes the trajectory so far; a position keeps the
routing of the first request that computed it — the routing its own turn sampled after, as in a
single request. `Sample.routed_experts` then covers the trajectory up to its last model token;
observation tokens appended after it (a trajectory cut by a limit) were never fed to the engine,
and the learner routes them by itself (nothing trained depends on them).

Seeds: a prompt with a seed gives trajectory k's turn t the seed mixed from (seed, k, t), so a seeded
run is reproducible; unseeded prompts draw from the engine's generator.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

from actors.engine_io import finish_reason, sampled_logprobs, taken_routing, token_versions
from actors.envs.base import Step, Turn, environment_class, environment_params, environment_stop
from actors.types import Episode, Group, Sample

if TYPE_CHECKING:
    from actors.rollout import RolloutWorker

MAX_ERROR_CHARS = 200


@dataclasses.dataclass
class _Trajectory:
    prompt: dict[str, Any]
    k: int  # index within the prompt's group
    prompt_ids: list[int]
    env: Any = None
    response_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    mask: list[int] = dataclasses.field(default_factory=list)
    versions: list[int] = dataclasses.field(default_factory=list)
    text: list[str] = dataclasses.field(default_factory=list)
    episode: Episode = dataclasses.field(default_factory=Episode)
    finish_reason: str = "stop"
    finished: bool = False
    request: str = ""  # the engine's id of the turn in flight
    params: Any = None  # the turn in flight's SamplingParams (whether the engine detokenizes it)
    expert_counts: Any = None  # MoE: numpy [layers, experts], summed over the turns' requests
    routing: Any = None  # MoE, recorded: numpy [positions computed so far, layers, top_k]


class _EnvCall:
    """One environment step in a daemon thread of its own, abandoned if it outlives its deadline."""

    def __init__(self, env: Any, turn: Turn, timeout_s: float):
        self.box: dict[str, Any] = {}
        self.done = threading.Event()
        self.start = time.monotonic()
        self.deadline = self.start + timeout_s
        self.thread = threading.Thread(target=self._run, args=(env, turn), name="env-step", daemon=True)
        self.thread.start()

    def _run(self, env: Any, turn: Turn) -> None:
        try:
            self.box["step"] = _check_step(env.step(turn))
        except BaseException as e:  # noqa: BLE001 - any failure of an environment is a counted error
            self.box["error"] = e
        finally:
            self.box["seconds"] = time.monotonic() - self.start
            self.done.set()


class MultiTurnRunner:
    """Drives one RolloutWorker's engine through multi-turn trajectories (see the module docstring)."""

    def __init__(self, worker: "RolloutWorker"):
        self.worker, self.cfg = worker, worker.cfg.env
        self.env_cls = environment_class(self.cfg.name)
        self.env_params = environment_params(self.cfg.name, self.cfg.params)
        self.env_stop = environment_stop(self.cfg.name)
        self.abandoned: list[threading.Thread] = []  # hung environment steps still running

    def run(self, prompts: list[dict[str, Any]], n: int, sampling: Optional[dict[str, Any]],
            version_override: Optional[int]) -> Iterator[Group]:
        """Yield each prompt's Group as soon as its n trajectories have ended. The caller holds the
        worker's generation lock; each engine step holds the engine (weight loads go between steps)."""
        w = self.worker
        engine = w.llm.llm_engine
        t0 = time.perf_counter()
        trajs = {p["prompt_id"]: [self._start(p, ids, k) for k in range(n)]
                 for p, ids in ((p, self._prompt_ids(p)) for p in prompts)}
        by_request: dict[str, _Trajectory] = {}
        calls: dict[_EnvCall, _Trajectory] = {}
        done_prompts: set[str] = set()
        try:
            for group in trajs.values():
                for tr in group:
                    if not tr.finished:
                        self._submit(tr, sampling, by_request)
            while len(done_prompts) < len(trajs):
                outs = w._engine_step() or []
                for out in outs:
                    if out.finished:
                        tr = by_request.pop(out.request_id)
                        turn = self._record_turn(tr, out.outputs[0], version_override)
                        if w.moe:
                            self._take_routing(tr)
                        calls[_EnvCall(tr.env, turn, self.cfg.timeout_s)] = tr
                self._collect(calls, sampling, by_request)
                for pid, group in trajs.items():
                    if pid not in done_prompts and all(tr.finished for tr in group):
                        done_prompts.add(pid)
                        yield self._group(group, time.perf_counter() - t0, version_override)
                if not calls and not by_request and len(done_prompts) < len(trajs):
                    raise RuntimeError("multi-turn loop: a trajectory is neither generating, waiting nor ended")
                if calls and not outs and not by_request:  # nothing for the engine: wait for a tool
                    first = min(c.deadline for c in calls)
                    next(iter(calls)).done.wait(max(0.0, min(0.05, first - time.monotonic())))
        finally:
            if by_request:  # the consumer stopped early (or a step failed): free the engine
                with w._engine():
                    engine.abort_request(list(by_request))

    # ---- one trajectory ---------------------------------------------------------------------------
    def _prompt_ids(self, prompt: dict[str, Any]) -> list[int]:
        """The prompt's ids, once per prompt (generate_stream has checked it has ids or text)."""
        if prompt.get("prompt_ids") is not None:
            return [int(t) for t in prompt["prompt_ids"]]
        return list(self.worker.tokenizer(prompt["prompt"])["input_ids"])  # as the engine tokenises a text prompt

    def _start(self, prompt: dict[str, Any], ids: list[int], k: int) -> _Trajectory:
        tr = _Trajectory(prompt=prompt, k=k, prompt_ids=list(ids))
        try:
            tr.env = self.env_cls(dict(prompt.get("meta") or {}), self.env_params)
        except Exception as e:  # noqa: BLE001 - a row the environment cannot start from ends its trajectory
            self._fail(tr, f"error:start:{_describe(e)}")
        return tr

    def _submit(self, tr: _Trajectory, sampling: Optional[dict[str, Any]], by_request: dict) -> None:
        """Queue the trajectory's next turn, or end it when a limit leaves no room for one."""
        w = self.worker
        if tr.episode.turns >= self.cfg.max_turns:
            return self._end(tr, cut="max_turns")
        room = min(self.cfg.max_total_tokens - len(tr.response_ids),
                   w.cfg.max_model_len - len(tr.prompt_ids) - len(tr.response_ids))
        if room <= 0:
            return self._end(tr, cut="max_total_tokens" if self.cfg.max_total_tokens - len(tr.response_ids) <= 0
                             else "max_model_len")
        merged = {**(sampling or {}), **(tr.prompt.get("sampling") or {})}
        knobs = dataclasses.asdict(w.cfg.sampling)
        turn = {**merged,
                "max_new_tokens": min(int(merged.get("max_new_tokens", knobs["max_new_tokens"])), room),
                "stop": list(merged.get("stop", knobs["stop"])) + self.env_stop}
        if tr.prompt.get("seed") is not None:
            turn["seed"] = (int(tr.prompt["seed"]) << 16) + (tr.k << 8) + tr.episode.turns
        params = w._sampling_params(1, turn, {})
        tr.params = params
        with w._engine():
            rid = w.llm.enqueue([{"prompt_token_ids": tr.prompt_ids + tr.response_ids}], [params], use_tqdm=False)[0]
        by_request[rid.split("-", 1)[0]] = tr  # outputs carry the external id
        tr.request = rid

    def _record_turn(self, tr: _Trajectory, c: Any, version_override: Optional[int]) -> Turn:
        ids = list(c.token_ids)
        text = self.worker.completion_texts([c], tr.params)[0]
        versions = ([version_override] * len(ids) if version_override is not None
                    else token_versions(c.weight_versions, len(ids), self.worker.version))
        tr.response_ids += ids
        tr.logprobs += sampled_logprobs(c.logprobs, ids)
        tr.mask += [1] * len(ids)
        tr.versions += versions
        tr.text.append(text)
        tr.finish_reason = finish_reason(c.finish_reason)
        tr.episode.turns += 1
        tr.episode.turn_ends.append(len(tr.response_ids))
        return Turn(text=text, token_ids=ids, index=tr.episode.turns - 1, finish_reason=tr.finish_reason)

    def _take_routing(self, tr: _Trajectory) -> None:
        """MoE: the ended turn's expert counts and, when recorded, the routing of the positions its
        request was the first to compute (see the module docstring)."""
        w = self.worker
        computed = len(tr.prompt_ids) + len(tr.response_ids) - 1  # the last sampled token is never fed
        with w._engine():
            taken = w.llm.collective_rpc("routing_take", args=([tr.request], [computed]))[0][0]
        counts = np.asarray(taken["counts"], dtype=np.int64)
        tr.expert_counts = counts if tr.expert_counts is None else tr.expert_counts + counts
        rows = taken_routing(taken)
        if rows is not None:
            tr.routing = rows if tr.routing is None else np.concatenate([tr.routing, rows[len(tr.routing):]])

    def _collect(self, calls: dict, sampling: Optional[dict[str, Any]], by_request: dict) -> None:
        """Apply finished environment steps (observation, next turn or end); end the expired ones."""
        now = time.monotonic()
        for call in [c for c in calls if c.done.is_set() or now >= c.deadline]:
            tr = calls.pop(call)
            if not call.done.is_set():
                self.abandoned.append(call.thread)
                tr.episode.env_seconds += now - call.start
                self._fail(tr, "timeout")
                continue
            tr.episode.env_seconds += call.box["seconds"]
            if "error" in call.box:
                self._fail(tr, f"error:{_describe(call.box['error'])}")
                continue
            step: Step = call.box["step"]
            tr.episode.turn_rewards.append(step.reward)
            tr.episode.tool_calls += int(step.tool_call)
            tr.episode.tool_errors += int(step.tool_error)
            if step.done:
                self._end(tr)
                continue
            self._observe(tr, step.observation)
            self._submit(tr, sampling, by_request)

    def _observe(self, tr: _Trajectory, observation: str) -> None:
        """Append the observation's tokens (tokenised once, cut to max_obs_tokens, counted, and to the
        trajectory's remaining room, after which _submit ends it), masked from the loss."""
        ids = list(self.worker.tokenizer(observation, add_special_tokens=False)["input_ids"]) if observation else []
        room = min(self.cfg.max_total_tokens - len(tr.response_ids),
                   self.worker.cfg.max_model_len - len(tr.prompt_ids) - len(tr.response_ids))
        if len(ids) > self.cfg.max_obs_tokens:
            ids = ids[: self.cfg.max_obs_tokens]
            tr.episode.obs_truncated += 1
        if len(ids) > max(room, 0):
            ids = ids[: max(room, 0)]
        if len(ids) < len(observation):  # cut: the text logged is that of the tokens kept
            observation = self.worker.tokenizer.decode(ids)
        last = tr.versions[-1] if tr.versions else self.worker.version
        tr.response_ids += ids
        tr.logprobs += [0.0] * len(ids)
        tr.mask += [0] * len(ids)
        tr.versions += [last] * len(ids)
        tr.text.append(observation)

    def _end(self, tr: _Trajectory, cut: str = "") -> None:
        tr.finished = True
        if cut:
            tr.episode.cut = cut
            tr.finish_reason = "length"

    def _fail(self, tr: _Trajectory, reason: str) -> None:
        tr.episode.error = reason[:MAX_ERROR_CHARS]
        tr.finished = True

    def _group(self, group: list[_Trajectory], seconds: float, version_override: Optional[int]) -> Group:
        w = self.worker
        samples = []
        for tr in group:
            p = tr.prompt
            model_versions = [v for v, m in zip(tr.versions, tr.mask) if m]
            fallback = w.version if version_override is None else version_override
            samples.append(Sample(
                prompt_id=p["prompt_id"], prompt=p.get("prompt") or w.tokenizer.decode(tr.prompt_ids),
                prompt_ids=list(tr.prompt_ids), response="".join(tr.text), response_ids=list(tr.response_ids),
                logprobs=list(tr.logprobs), finish_reason=tr.finish_reason,
                policy_version=min(model_versions, default=fallback), token_versions=list(tr.versions),
                meta=dict(p.get("meta") or {}), response_mask=list(tr.mask), episode=tr.episode,
                routed_experts=tr.routing,
            ))
        counts = [tr.expert_counts for tr in group if tr.expert_counts is not None]
        return Group(prompt_id=group[0].prompt["prompt_id"], samples=samples, generate_seconds=seconds,
                     expert_counts=np.sum(counts, axis=0).tolist() if counts else None)

    def stuck_threads(self) -> int:
        self.abandoned = [t for t in self.abandoned if t.is_alive()]
        return len(self.abandoned)


def _check_step(step: Any) -> Step:
    if not isinstance(step, Step):
        raise TypeError(f"environment step() must return actors.envs.base.Step, got {type(step).__name__}")
    if not isinstance(step.observation, str):
        raise TypeError(f"Step.observation must be text, got {type(step.observation).__name__}")
    reward = float(step.reward)
    if reward != reward or reward in (float("inf"), float("-inf")):
        raise ValueError(f"Step.reward is not finite: {reward}")
    return step


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:MAX_ERROR_CHARS]
