"""Where each step's groups come from: generated when the step asks (sync), or started ahead (async).

sync   The step takes B prompts, the rollout workers generate and score them, the buffer filters
       them (DAPO dynamic sampling may ask for more, bounded) and the step trains on B groups.
async  Before the learner trains on step k, the driver already issues step k+1's prompts (up to
       `depth` = buffer.max_staleness steps ahead) to the rollout workers, which generate with the
       weights they hold while the learner trains; a background thread scores the groups as they
       finish. New weights reach a worker after its current generation call ends (it finishes its
       requests first), so every sample was produced by exactly one policy version, stamped on it —
       or, with rollout.partial_rollouts, between two engine steps of that call: the requests go on
       with the new weights, each token carries the version that sampled it, and a sample's version
       is its oldest token's.
       A sample is never trained more than `depth` versions behind the learner: the driver never
       issues further ahead, and the buffer refuses (and counts) anything staler.
       depth 0 issues nothing ahead: async then IS sync, sample for sample.

Exactly once: prompts leave the PromptStream when issued; a checkpoint stores the stream position
together with every issued-but-untrained batch (its groups, with tokens, logprobs and versions,
once they are finished), and a resumed run trains those before issuing new prompts.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import pickle
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Optional

from actors.buffer import GroupBuffer, refill_count
from actors.types import Group

if TYPE_CHECKING:
    from cluster.run_setup import Run


@dataclasses.dataclass
class Issued:
    """One step's round-0 prompts, sent to the rollout workers; `future` yields their scored groups."""

    step: int
    prompts: list[dict[str, Any]]
    future: concurrent.futures.Future


def with_seeds(prompts: list[dict[str, Any]], seed: int, step: int, round_: int) -> list[dict[str, Any]]:
    """Per-request sampling seeds derived from (seed, step, round, position): a resumed run samples
    exactly what the uninterrupted run would have, whichever worker gets the prompt."""
    return [{**p, "seed": (seed * 1_000_003 + step * 1_009 + round_ * 101 + i) % (2**31)} for i, p in enumerate(prompts)]


class RolloutFeed:
    def __init__(self, run: "Run", buffer: GroupBuffer, depth: int):
        self.run, self.buffer, self.depth = run, buffer, depth
        self._ahead: collections.deque[Issued] = collections.deque()
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, depth), thread_name_prefix="rollout")

    # ---- issuing -----------------------------------------------------------------------------------
    def _issue(self, step: int, round_: int, count: int, avoid: Collection[str] = ()) -> Issued:
        """avoid: the prompt_ids the step's earlier rounds drew (a round crossing into a new epoch
        must not draw them again, or the step would train a prompt twice)."""
        cfg = self.run.cfg
        prompts = with_seeds(self.run.stream.take(count, avoid), cfg.rollout.seed, step, round_)
        groups = self.run.rollout.generate(prompts, cfg.rollout.n)  # sent to the workers now, in order
        # scored as they finish, in the background while the learner trains
        return Issued(step, prompts, self._threads.submit(list, groups))

    def start_ahead(self, step: int, last_step: int) -> None:
        """Async: issue the prompts of steps step+1 .. step+depth (not past last_step) that are not out yet."""
        nxt = self._ahead[-1].step + 1 if self._ahead else step + 1
        while len(self._ahead) < self.depth and nxt <= last_step:
            self._ahead.append(self._issue(nxt, 0, self.run.cfg.trainer.prompts_per_step))
            nxt += 1

    # ---- taking --------------------------------------------------------------------------------------
    def take(self, step: int, version: int, timing: dict[str, float]) -> tuple[list[Group], dict[str, float]]:
        """This step's B groups (in issue order), and metrics of their staleness and of the step's
        generation rounds. `version` is the policy version the learner will train them with."""
        cfg = self.run.cfg
        need = cfg.trainer.prompts_per_step
        issued: dict[str, int] = {}
        kept = received = 0  # this step's groups so far: how many passed the filters
        engine_s = tokens = 0.0  # over every round, groups set aside included
        rounds = 1 + (cfg.buffer.max_extra_rounds if cfg.buffer.dynamic_sampling else 0)
        for round_ in range(rounds):
            missing = need - self.buffer.ready()
            if missing <= 0:
                break
            if round_ == 0 and self._ahead and self._ahead[0].step == step:
                batch = self._ahead.popleft()  # issued a step (or more) ago
            else:
                count = refill_count(missing, kept, received, need, cfg.buffer.refill) if round_ else missing
                batch = self._issue(step, round_, count, avoid=issued.keys())
            first = len(issued)  # positions continue across rounds: (a generator would read len() as it grows)
            issued.update((p["prompt_id"], first + i) for i, p in enumerate(batch.prompts))
            got = batch.future.result()
            for group in got:
                kept += self.buffer.add(group, version) is None
                received += 1
            timing["rounds"] = round_ + 1
            engine_s += max((g.generate_seconds for g in got), default=0.0)  # the round's slowest group
            tokens += sum(s.response_length for g in got for s in g.samples)
        # Groups arrive in completion order, which varies run to run; choosing and training them in issue
        # order makes a step's batch (which groups, and its float sums) a function of the data position
        # alone: resumable exactly.
        position = lambda g: issued.get(g.prompt_id, len(issued))  # noqa: E731
        ready = sorted(self.buffer.take(self.buffer.ready()), key=position)
        groups = ready[:need]
        self.buffer.drop_surplus(ready[need:])
        if len(groups) < need:
            groups += self.buffer.take_filtered(need - len(groups), order=position)
        self.buffer.clear_filtered()
        groups.sort(key=position)
        # the engines' time and output over all the step's rounds (rollout_stats sees the trained groups only)
        rounds_metrics = {"rollout/engine_seconds": engine_s, "rollout/generated_groups": float(received),
                          "rollout/generated_tokens": tokens}
        return groups, {**staleness_metrics(groups, version), **rounds_metrics}

    # ---- checkpoints ---------------------------------------------------------------------------------
    def drain(self) -> None:
        """Wait until every issued batch is generated and scored (they stay here for their steps):
        afterwards no rollout worker holds a request of this feed."""
        for b in self._ahead:
            b.future.result()

    def state(self) -> bytes:
        """The issued-but-untrained batches (waits for them to finish), pickled for a checkpoint."""
        self.drain()
        return pickle.dumps([(b.step, b.prompts, b.future.result()) for b in self._ahead])

    def load_state(self, blob: Optional[bytes]) -> None:
        for step, prompts, groups in pickle.loads(blob) if blob else []:
            done: concurrent.futures.Future = concurrent.futures.Future()
            done.set_result(groups)
            self._ahead.append(Issued(step, prompts, done))

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def staleness_metrics(groups: list[Group], version: int) -> dict[str, float]:
    """Per trained sample: how many versions the learner is ahead of the weights that sampled it."""
    lags = [version - s.policy_version for g in groups for s in g.trained_samples()]
    out = {"staleness/mean": sum(lags) / max(1, len(lags)), "staleness/max": float(max(lags, default=0))}
    # partial rollouts: tokens sampled after a mid-generation weight load are fresher than their sample
    token_lags = [version - v for g in groups for s in g.trained_samples() for v in s.token_versions]
    if token_lags:
        out["staleness/token_mean"] = sum(token_lags) / len(token_lags)
    out["staleness/partial_samples"] = float(sum(len(set(s.token_versions)) > 1
                                                 for g in groups for s in g.trained_samples()))
    for lag, n in sorted(collections.Counter(lags).items()):
        out[f"staleness/samples_lag_{lag}"] = float(n)
    return out
