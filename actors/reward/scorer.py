"""RewardScorer: the weighted sum of named reward functions over samples; never raises on a sample.

A plain class (cluster/ wraps it as a Ray actor). Built from reward specs
[{"name": ..., "weight": ..., "params": {...}}], validated at construction (unknown function or
parameter -> ValueError naming it). For every sample:

    reward            = sum_i weight_i * score_i
    reward_components = {name_i: score_i (unweighted), "name_i/key": diagnostic, ...}
    reward_error      = None

If any function raises or runs past `timeout_s`, the sample's reward is 0 and reward_error says
why ("timeout:math_verify", "error:math_verify:ValueError: ..."); the components of the
functions that did succeed are kept for logging; the reason is counted in metrics().

Multi-turn trajectories (rollout.env; `env_weight` set): the environment's rewards, summed over the
turns, are component "env" with weight `env_weight`; a trajectory whose environment failed
(Episode.error) scores 0 with reward_error "env:<reason>", counted like a function's failure.

Timeouts: calls run on the scorer's own daemon threads (CallPool; started once, not per call:
a thread per call cost ~3 ms per group of 16, more than the arithmetic reward itself), and the
scorer stops waiting `timeout_s` after a call started. Python cannot kill a thread, so a call that
never returns is abandoned: a new thread takes its place, and the old one, counted in
"reward/stuck_threads" while it runs, ends if the call ever returns. A C extension that holds the
GIL cannot be interrupted this way at all. Untrusted code goes through code_exec's subprocess
sandbox, which is killed, not abandoned.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
import time
from typing import Any, Iterable, Optional

from actors.reward.registry import REWARD_FUNCTIONS
from actors.reward.spec import RewardSpec
from actors.types import Group, Sample

MAX_ERROR_CHARS = 200
THREADS = 4  # reward-function calls a scorer runs at once per score() call
CONCURRENCY = 4  # score() calls one scorer actor runs at once (its Ray max_concurrency)


def group_seconds_bound(samples: int, functions: int, timeout_s: float, threads: int = THREADS) -> float:
    """The longest one score() call over `samples` samples can take: its calls run `threads` at a
    time and each is abandoned at `timeout_s`. A scorer silent for longer than this (plus slack) with
    work outstanding is hung, not slow."""
    return math.ceil(samples * max(1, functions) / threads) * timeout_s


class Call:
    """One reward-function call on a CallPool thread: its result or error, when it started, and
    whether its waiter gave up on it."""

    def __init__(self, fn: Any):
        self.fn, self.value, self.error = fn, None, None
        self.started: Optional[float] = None
        self.thread: Optional[threading.Thread] = None
        self.done, self.lock, self.abandoned = threading.Event(), threading.Lock(), False


class CallPool:
    """Daemon threads that run calls first in, first out, started as calls need them, up to `size`
    serving at once: one whose call is abandoned is replaced at once, and leaves the pool when (if
    ever) that call returns. With size = THREADS x CONCURRENCY, calls wait for a thread no longer
    than they would have with THREADS threads per score() call (group_seconds_bound still holds)."""

    def __init__(self, size: int):
        self._size = size
        self._calls: queue.SimpleQueue[Call] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._serving = 0  # threads of the pool (not counting abandoned ones)
        self._outstanding = 0  # calls queued or running on them: more than _serving means one waits

    def _grow(self) -> None:  # under self._lock: a thread for every call that would wait, up to size
        while self._outstanding > self._serving and self._serving < self._size:
            self._serving += 1
            threading.Thread(target=self._serve, name="reward-call", daemon=True).start()

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            call.thread, call.started = threading.current_thread(), time.monotonic()
            value = error = None
            try:
                value = call.fn()
            except BaseException as e:  # noqa: BLE001 - any failure of a reward function is a counted reason
                error = e
            with call.lock:
                call.value, call.error = value, error
                call.done.set()
                if call.abandoned:
                    return  # its waiter already took it and this thread off the counts
            with self._lock:
                self._outstanding -= 1

    def submit(self, fn: Any) -> Call:
        call = Call(fn)
        with self._lock:
            self._outstanding += 1
            self._grow()
        self._calls.put(call)
        return call

    def wait(self, call: Call, timeout_s: float) -> bool:
        """True once `call` returned; False if it ran `timeout_s` without returning (then abandoned:
        a new thread takes its place). Time spent queued does not count."""
        while True:
            started = call.started
            left = 0.05 if started is None else started + timeout_s - time.monotonic()
            if call.done.wait(max(0.0, left)):
                return True
            if call.started is not None and time.monotonic() >= call.started + timeout_s:
                with call.lock:
                    if call.done.is_set():
                        return True
                    call.abandoned = True
                with self._lock:
                    self._serving -= 1
                    self._outstanding -= 1
                    self._grow()
                return False


class RewardScorer:
    def __init__(self, specs: Iterable[Any], timeout_s: float = 10.0, max_workers: int = THREADS,
                 env_weight: Optional[float] = None):
        if timeout_s <= 0 or max_workers < 1:
            raise ValueError(f"need timeout_s > 0 and max_workers >= 1, got {timeout_s}, {max_workers}")
        self.timeout_s, self.max_workers = float(timeout_s), int(max_workers)
        self.env_weight = None if env_weight is None else float(env_weight)
        self.specs = [RewardSpec.coerce(s) for s in specs]
        self._functions = []  # (component name, fn, params, weight)
        for i, spec in enumerate(self.specs):
            try:
                entry = REWARD_FUNCTIONS.get(spec.name)
                params = REWARD_FUNCTIONS.make_params(spec.name, spec.params)
            except (KeyError, ValueError) as e:
                raise ValueError(f"reward function {i} ('{spec.name}'): {e.args[0]}") from None
            deadline = getattr(params, "deadline_s", None)  # functions with limits of their own (code_exec)
            if deadline is not None and deadline >= self.timeout_s:
                raise ValueError(f"reward function '{entry.name}' may run for up to {deadline:g}s, not less than the "
                                 f"scorer's timeout_s={self.timeout_s:g}: raise reward.timeout_s or lower its params.wall_s")
            if any(entry.name == name for name, *_ in self._functions):
                raise ValueError(f"reward function '{entry.name}' is listed twice; its components would collide")
            self._functions.append((entry.name, entry.fn, params, spec.weight))
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._abandoned: list[threading.Thread] = []
        self._pool = CallPool(self.max_workers * CONCURRENCY)

    # ---- scoring ------------------------------------------------------------------------------------
    def score(self, samples: list[Sample]) -> list[Sample]:
        """Set reward, reward_components and reward_error on each sample (in place) and return them."""
        jobs = [(i, j) for i in range(len(samples)) for j in range(len(self._functions))]
        # At most max_workers calls of this score() out at once, each waited for in order and for at most
        # timeout_s once started: the whole call ends within group_seconds_bound.
        results: dict[tuple[int, int], tuple[Optional[tuple[float, dict]], Optional[str]]] = {}
        waiting, out = collections.deque(jobs), collections.deque()
        while waiting or out:
            while waiting and len(out) < self.max_workers:
                i, j = waiting.popleft()
                out.append(((i, j), self._pool.submit(self._function_call(j, samples[i]))))
            (i, j), call = out.popleft()
            results[i, j] = self._outcome(j, call)
        errors: collections.Counter[str] = collections.Counter()
        for i, sample in enumerate(samples):
            total, components, error = 0.0, {}, None
            episode = sample.episode
            if self.env_weight is not None and episode is not None:
                if episode.error:
                    error = f"env:{episode.error}"
                    errors[error.split(": ", 1)[0]] += 1
                components["env"] = episode.env_reward
                total += self.env_weight * episode.env_reward
            for j, (name, _, _, weight) in enumerate(self._functions):
                value, reason = results[i, j]
                if reason is not None:
                    error = error or reason
                    errors[reason.split(": ", 1)[0]] += 1  # the counter key leaves out the message
                    continue
                score, extra = value
                components[name] = score
                components.update({f"{name}/{k}": v for k, v in extra.items()})
                total += weight * score
            sample.reward = 0.0 if error else total
            sample.reward_components = components
            sample.reward_error = error
        with self._lock:
            self._counts["samples"] += len(samples)
            self._counts["calls"] += len(jobs)
            self._counts["failed_samples"] += sum(s.reward_error is not None for s in samples)
            for reason, n in errors.items():
                self._counts[f"errors/{reason}"] += n
        return samples

    def score_group(self, group: Group) -> Group:
        start = time.monotonic()
        self.score(group.samples)
        group.score_seconds += time.monotonic() - start
        return group

    def _function_call(self, j: int, sample: Sample) -> Any:
        _, fn, params, _ = self._functions[j]
        return lambda: _normalise(fn(sample, params))

    def _outcome(self, j: int, call: Call) -> tuple[Optional[tuple[float, dict]], Optional[str]]:
        """((score, diagnostics), None) or (None, reason)."""
        name = self._functions[j][0]
        if not self._pool.wait(call, self.timeout_s):
            with self._lock:
                self._abandoned = [t for t in self._abandoned if t.is_alive()] + [call.thread]
            return None, f"timeout:{name}"
        if call.error is not None:
            e = call.error
            message = " ".join(str(e).split())[:MAX_ERROR_CHARS]
            return None, f"error:{name}:{type(e).__name__}: {message}"
        return call.value, None

    # ---- metrics ------------------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Counters since construction: reward/samples, reward/calls, reward/failed_samples,
        reward/errors/<reason> (e.g. reward/errors/timeout:math_verify,
        reward/errors/error:code_exec:SandboxError) and reward/stuck_threads (abandoned calls
        still running)."""
        with self._lock:
            self._abandoned = [t for t in self._abandoned if t.is_alive()]
            out = {f"reward/{k}": float(v) for k, v in self._counts.items()}
            out["reward/stuck_threads"] = float(len(self._abandoned))
        for key in ("samples", "calls", "failed_samples"):
            out.setdefault(f"reward/{key}", 0.0)
        return out

    def names(self) -> list[str]:
        return [name for name, *_ in self._functions]


def _normalise(value: Any) -> tuple[float, dict[str, float]]:
    """A function's float or {"score": ..., other diagnostics} as (score, diagnostics); rejects
    non-numbers and NaN/inf so a broken function cannot poison the advantages."""
    if isinstance(value, dict):
        if "score" not in value:
            raise ValueError(f"a reward function returning a dict must include 'score', got keys {sorted(value)}")
        extra = {str(k): _finite(v, k) for k, v in value.items() if k != "score"}
        return _finite(value["score"], "score"), extra
    return _finite(value, "score"), {}


def _finite(value: Any, what: Any) -> float:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
        raise TypeError(f"reward {what} must be a number, got {type(value).__name__}")
    x = float(value)  # bool, int, numpy and torch scalars
    if not math.isfinite(x):
        raise ValueError(f"reward {what} is not finite: {x}")
    return x
