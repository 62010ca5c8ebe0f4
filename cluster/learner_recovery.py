"""A learner rank died: rebuild the learner group from the latest checkpoint and redo the steps since.

The ranks of a DeepSpeed group are bound by collectives: when one dies the others are stuck in (or
will block at) the next all-reduce. So the whole group is killed and built again — fresh actors and
engines, the latest checkpoint loaded (model, optimizer, schedule; the driver's RNG) — the
weight-sync group is re-formed around the new rank 0, and the rollout workers are brought to the
checkpoint's weights (probe-verified when weight_sync.verify_every is set).

Nothing is replayed or skipped: the driver holds the groups of every step since the last checkpoint
(`hold`; let go at each checkpoint, so what is held is bounded by checkpoint.every steps of samples)
and the loop retrains those steps from the same samples before it takes new ones; the data stream
is not touched. metrics.jsonl is rewound to the checkpoint (the first attempt's rows go to
metrics.discarded.jsonl with reason "learner_rebuilt"); a retrained step's row has
`learner/redone` = 1 and every row the number of rebuilds so far, `learner/rebuilds`.

Covered: deaths from the first RL step on (the step-0 checkpoint is written after warm start).
More than learner.max_restarts rebuilds, or no checkpoint to rebuild from, stop the run with a
report of every death.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

from actors.types import Group
from cluster.actor_group import ActorLost
from cluster.checkpoint import Checkpointer, LoopState, restore, warm_started_reference

if TYPE_CHECKING:
    from cluster.metrics import MetricsLogger
    from cluster.run_setup import Run

Held = tuple[list[Group], dict[str, float]]  # a step's groups and their staleness metrics


class LearnerRecovery:
    def __init__(self, run: "Run", logger: "MetricsLogger"):
        self.run, self.logger = run, logger
        self.max_restarts = run.cfg.learner.max_restarts
        # without checkpoints there is nothing to rebuild from, so nothing worth holding (it would grow all run)
        self._holding = self.max_restarts > 0 and run.cfg.checkpoint.every > 0
        self._held: dict[int, Held] = {}
        self.deaths: list[str] = []

    @property
    def rebuilds(self) -> int:
        return len(self.deaths)

    # ---- the samples of the steps since the last checkpoint --------------------------------------------
    def hold(self, step: int, held: Held) -> None:
        if self._holding:
            self._held[step] = held

    def held(self, step: int) -> Optional[Held]:
        """The groups step `step` trained on before the learner was rebuilt (None: a step not yet done)."""
        return self._held.get(step)

    def checkpointed(self) -> None:
        self._held.clear()  # the checkpoint now covers them

    # ---- rebuilding -------------------------------------------------------------------------------------
    def rebuild(self, lost: ActorLost) -> LoopState:
        """Kill the learner group, build a new one at the latest checkpoint, re-join weight sync."""
        from cluster.run_setup import start_learner

        run = self.run
        self.deaths.append(f"{time.strftime('%H:%M:%S')} {lost}")
        path = Checkpointer.latest(run.dir)
        if self.rebuilds > self.max_restarts or path is None:
            why = (f"more than learner.max_restarts={self.max_restarts} learner deaths" if path is not None else
                   "no checkpoint to rebuild the learner from (checkpoint.every=0)")
            raise RuntimeError(f"learner lost, {why}: " + "; ".join(self.deaths)) from lost
        self.logger.print(f"{lost}: rebuilding the learner from {path.name} "
                          f"({self.rebuilds} of at most {self.max_restarts} rebuilds)")
        t0 = time.perf_counter()
        with run.sync.lock:
            run.learner.shutdown(lost=True)
            run.learner = run.sync.learner = start_learner(run.cfg, run.model_path, run.colocation)
            warm = warm_started_reference(run)
            if warm is not None:
                run.learner.reset_reference(str(warm))  # the reference is the warm-started policy, not model.path
            state = restore(run, path)
            run.sync.setup()
            run.sync.push(state.version)
            if run.cfg.weight_sync.verify_every:
                run.sync.verify(*run.probe)
        rewound = self.logger.rewind_to(state.step, "learner_rebuilt")
        self.logger.print(f"learner rebuilt in {time.perf_counter() - t0:.1f}s at step {state.step}: steps "
                          f"{', '.join(map(str, sorted(self._held))) or 'none'} are retrained from the samples held "
                          f"({rewound.dropped} metric rows moved to metrics.discarded.jsonl)")
        return state
