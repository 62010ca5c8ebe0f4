"""A learner or critic rank died: rebuild its group from the latest checkpoint and redo the steps since.

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

PPO's critic (cluster/ppo.py) is a second DeepSpeed group restored from the same checkpoint. A dead
critic rank rebuilds the critic group the same way; the policy's group is alive, but it may already
hold the step's update, so it reloads the checkpoint too and the rollout workers are pushed its
weights: both models go back to the same step. A dead policy rank reloads the critic (restore).

Offline DPO holds nothing: its pairs come in an order fixed by data.seed, so the steps since the
checkpoint take the same pairs again.

A rank lost while the learner group itself starts (placement, rendezvous, model load, the
weight-sync group forming; in `start_run`, before any of this exists): a new group is built at once
and the weight-sync group formed again around its rank 0 (cluster/run_setup.py).
Before the step-0 checkpoint (written after warm start) there is nothing to rebuild from:
`start_over` builds a new learner from model.path and the trainer does the warm start again. A rank
lost while a resumed run loads its checkpoint: `reload` builds a new learner group and the trainer
loads the checkpoint again (nothing was trained yet, so nothing is redone).
Every one of these counts: more than learner.max_restarts rebuilds in all, or no checkpoint to
rebuild from once RL has started (checkpoint.every=0), stop the run with a report of every death.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

from actors.types import Group
from cluster.actor_group import ActorLost
from cluster.checkpoint import Checkpointer, LoopState, restore, warm_started_policy, warm_started_reference

if TYPE_CHECKING:
    from cluster.metrics import MetricsLogger
    from cluster.run_setup import Run

Held = tuple[list[Group], dict[str, float]]  # a step's groups and their feed metrics (staleness, generation rounds)


REBUILT_GROUPS = ("learner", "critic")  # the groups whose lost rank this rebuilds (ActorLost.name "learner[1]")


def count_death(deaths: list[str], lost: ActorLost, max_restarts: int, cannot: Optional[str] = None) -> None:
    """Note the death in `deaths`; raise (with every death so far) if there are more than
    `max_restarts` or `cannot` says why it cannot be rebuilt."""
    deaths.append(f"{time.strftime('%H:%M:%S')} {lost}")
    if len(deaths) > max_restarts or cannot:
        why = cannot or f"more than learner.max_restarts={max_restarts} learner deaths"
        raise RuntimeError(f"learner lost, {why}: " + "; ".join(deaths)) from lost


class LearnerRecovery:
    def __init__(self, run: "Run", logger: "MetricsLogger"):
        self.run, self.logger = run, logger
        self.max_restarts = run.cfg.learner.max_restarts
        # without checkpoints there is nothing to rebuild from, so nothing worth holding (it would grow all run)
        self._holding = self.max_restarts > 0 and run.cfg.checkpoint.every > 0
        self._held: dict[int, Held] = {}
        self.deaths: list[str] = list(run.learner_deaths)  # those while the group started count too

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
    @staticmethod
    def group_of(lost: ActorLost) -> str:
        return lost.name.split("[")[0]  # "learner[1]" -> "learner"

    @classmethod
    def covers(cls, lost: ActorLost) -> bool:
        return cls.group_of(lost) in REBUILT_GROUPS

    def rebuild(self, lost: ActorLost) -> LoopState:
        """Kill the dead rank's group (policy or critic), build a new one, bring both to the latest
        checkpoint and the rollout workers to its weights."""
        run = self.run
        group = self.group_of(lost)
        path = Checkpointer.latest(run.dir)
        self._count(lost, None if path is not None else "no checkpoint to rebuild the learner from (checkpoint.every=0)")
        self.logger.print(f"{lost}: rebuilding the {group} from {path.name} "
                          f"({self.rebuilds} of at most {self.max_restarts} rebuilds)")
        t0 = time.perf_counter()
        with run.sync.lock:
            if group == "critic":
                self._new_critic()
            else:
                self._new_learner()
            state = restore(run, path)  # the policy and (PPO) the critic
            if group == "learner":
                run.sync.setup()  # the weight-sync group is re-formed around the new rank 0
            run.sync.push(state.version)
            if run.cfg.weight_sync.verify_every:
                run.sync.verify(*run.probe)
        if group == "learner":  # the new group's ranks may have landed elsewhere (a new critic's start said so)
            self.logger.print(run.record_placement())
        rewound = self.logger.rewind_to(state.step, "learner_rebuilt")
        if run.cfg.trainer.mode == "offline":
            redo = "the steps since are taken again on the same pairs (their order is fixed by data.seed)"
        else:
            redo = f"steps {', '.join(map(str, sorted(self._held))) or 'none'} are retrained from the samples held"
        self.logger.print(f"{group} rebuilt in {time.perf_counter() - t0:.1f}s at step {state.step}: {redo} "
                          f"({rewound.dropped} metric rows moved to metrics.discarded.jsonl)")
        return state

    def start_over(self, lost: ActorLost) -> None:
        """A rank lost before the step-0 checkpoint (in the warm start, the critic's start, the first
        push or eval): there is nothing to rebuild from, so the learner starts over from model.path
        (PPO's critic is built again after the warm start) and the caller does all of it again, with
        the same seed; the first attempt's metric rows go to metrics.discarded.jsonl."""
        run = self.run
        self._count(lost, None)
        self.logger.print(f"{lost}: before the first checkpoint; the learner starts over from {run.model_path} "
                          f"and the warm start is done again ({self.rebuilds} of at most {self.max_restarts} rebuilds)")
        t0 = time.perf_counter()
        self._new_groups()  # the warm start's end sets the reference
        rewound = self.logger.rewind_to(-1, "learner_rebuilt", keep_warm_start=False)
        self.logger.print(f"learner restarted in {time.perf_counter() - t0:.1f}s ({rewound.dropped} metric rows moved "
                          f"to metrics.discarded.jsonl); {run.record_placement()}")

    def reload(self, lost: ActorLost) -> None:
        """A rank lost while a resumed run loads its checkpoint (before it trains anything): a new learner
        group (PPO's critic let go: the resume builds it again), and the caller loads the checkpoint again."""
        run = self.run
        self._count(lost, None)
        self.logger.print(f"{lost}: while resuming; a new learner group loads the checkpoint again "
                          f"({self.rebuilds} of at most {self.max_restarts} rebuilds)")
        t0 = time.perf_counter()
        self._new_groups()  # the resume reloads the reference
        self.logger.print(f"learner replaced in {time.perf_counter() - t0:.1f}s; {run.record_placement()}")

    def _new_groups(self) -> None:
        """A new learner group with no reference loaded, PPO's critic let go (its owner builds it again)."""
        run = self.run
        with run.sync.lock:
            if run.critic is not None:
                run.critic.shutdown(lost=True)
                run.critic = None
            self._new_learner(reference=False)
            run.sync.setup()  # the weight-sync group is re-formed around the new rank 0

    def _count(self, lost: ActorLost, cannot: Optional[str]) -> None:
        count_death(self.deaths, lost, self.max_restarts, cannot)

    def _new_learner(self, reference: bool = True) -> None:
        from cluster.run_setup import start_learner

        run = self.run
        run.learner.shutdown(lost=True)
        run.learner = run.sync.learner = start_learner(run.cfg, run.model_path, run.colocation)
        warm = warm_started_reference(run) if reference else None
        if warm is not None:
            run.learner.reset_reference(str(warm))  # the reference is the warm-started policy, not model.path

    def _new_critic(self) -> None:
        from cluster.ppo import start_critic

        run = self.run
        run.critic.shutdown(lost=True)
        run.critic = None
        warm = warm_started_policy(run)
        self.logger.print(start_critic(run, str(warm) if warm is not None else None))  # then restored
