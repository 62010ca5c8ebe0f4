"""The driver: `relayrl train` builds the topology and runs the step loop, sync or async.

    prompts -> grouped rollouts (vLLM) -> rewards -> buffer/filters -> learner update (DeepSpeed)
            -> weight broadcast -> periodic evaluation -> periodic checkpoint

One loop for both modes: the only difference is where a step's groups come from (RolloutFeed:
generated when the step asks, or issued up to buffer.max_staleness steps ahead so that generation
overlaps learning). `train()` reads top to bottom; each phase is one call into cluster/ helpers, and
the step's time breakdown (generate, batch, learn, sync, eval, checkpoint) is measured and logged.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actors.buffer import GroupBuffer
from cluster.batching import groups_to_batch, reward_weights
from cluster.actor_group import ActorLost
from cluster.checkpoint import Checkpointer, LoopState, restore, rng_state, warm_started_policy, warm_started_reference
from cluster.config import RunConfig
from cluster.evaluation import evaluate, rollout_stats
from cluster.learner_recovery import LearnerRecovery
from cluster.metrics import MetricsLogger
from cluster.nonfinite import count_nonfinite
from cluster.plot import plot_run
from cluster.ppo import needs_critic, ppo_step, start_critic
from cluster.preference import offline_dpo, online_dpo_step
from cluster.rollout_feed import RolloutFeed
from cluster.scaling import RolloutScaler
from cluster.warm_start import warm_start
from cluster.run_setup import Run, start_run
from learner.train_step import uses_reference


FEED_FILE = "rollout_feed.pkl"  # in a checkpoint: the batches issued but not yet trained (async)


def train(cfg: RunConfig) -> Path:
    run = start_run(cfg)  # run dir + resolved config, model, data, Ray, learner, rollout pool, weight sync
    cfg = run.cfg  # resolved: concrete dtypes and probe tolerance
    ckpt = Checkpointer(run.dir, cfg.checkpoint.keep_last)
    resume_from = resume_point(cfg)
    logger = MetricsLogger(run.dir, cfg.trainer.total_steps, cfg.logging.tensorboard, cfg.logging.wandb_project,
                           cfg.logging.progress, cfg.logging.name,
                           resume_step=None if resume_from is None else Checkpointer.load_state(resume_from)["step"])
    buffer = GroupBuffer(cfg.buffer, cfg.rollout.sampling.max_new_tokens)
    # async: the next steps' generation overlaps this step's learning, never more than max_staleness ahead
    feed = RolloutFeed(run, buffer, depth=cfg.buffer.max_staleness if cfg.trainer.mode == "async" else 0)
    recovery = LearnerRecovery(run, logger)  # a dead learner or critic rank: rebuilt, steps since the checkpoint redone
    scaler = RolloutScaler(run, feed, logger)
    state = LoopState()
    for note in run.notes:
        logger.print(note)
    logger.print(f"started in {run.startup_seconds:.1f}s: {describe(run)}")
    try:
        if cfg.checkpoint.resume:
            state = resume(run, logger, feed, recovery)
        else:
            fresh_start(run, state, ckpt, feed, logger, recovery)  # warm start ... step-0 checkpoint
        if cfg.trainer.mode == "offline":  # DPO on preference pairs from files (cluster/preference.py)
            state = offline(run, state, ckpt, feed, logger, recovery)
        while state.step < cfg.trainer.total_steps:
            scaler.between_steps()  # `relayrl scale` requests and autoscaling: rollout workers added or removed
            try:
                scaler.observe(rl_step(run, state.step + 1, state, feed, buffer, ckpt, logger, recovery))
            except ActorLost as lost:
                if not recovery.covers(lost):
                    raise
                state = recovery.rebuild(lost)  # back at the last checkpoint; the steps since are redone
        log_eval(run, logger, cfg.trainer.total_steps, "after RL")
        finish(run, ckpt, state, feed, recovery, logger)
    finally:
        feed.close()
        logger.close()
        run.shutdown()
    return run.dir


def fresh_start(run: Run, state: LoopState, ckpt: Checkpointer, feed: RolloutFeed, logger: MetricsLogger,
                recovery: LearnerRecovery) -> None:
    """Warm start, the models that start from it, the first push and held-out eval, and the step-0
    checkpoint. A learner or critic rank lost on the way (no checkpoint yet) starts it all over on a
    new learner group, with the same seed."""
    cfg = run.cfg
    while True:
        try:
            seed_everything(cfg.trainer.seed)
            warm_start(run, logger, state.version)
            start_from_warm_start(run, logger, fresh=True)  # the reference (KL, DPO) and PPO's critic
            run.sync.push(state.version)
            log_eval(run, logger, state.step, "before RL")
            if cfg.checkpoint.every and cfg.learner.max_restarts:
                save(run, ckpt, state, feed, recovery)  # step 0: what a learner lost in step 1 is rebuilt from
            return
        except ActorLost as lost:
            if not recovery.covers(lost):
                raise
            recovery.start_over(lost)


def offline(run: Run, state: LoopState, ckpt: Checkpointer, feed: RolloutFeed, logger: MetricsLogger,
            recovery: LearnerRecovery) -> LoopState:
    """Offline DPO to trainer.total_steps. A lost learner rank is rebuilt from the latest checkpoint and
    the steps since are taken again: the pair order is a function of the step, so the same pairs."""
    taken = 0  # the steps a lost learner had taken (its last one perhaps half-done): redone after a rebuild

    def row(step: int) -> dict[str, float]:
        return {"learner/rebuilds": float(recovery.rebuilds), "learner/redone": float(step <= taken)}

    while True:
        try:
            offline_dpo(run, state, logger, log_eval, lambda: save(run, ckpt, state, feed, recovery), row)
            return state
        except ActorLost as lost:
            if not recovery.covers(lost):
                raise
            taken = max(taken, state.step + 1)
            state = recovery.rebuild(lost)


def rl_step(run: Run, step: int, state: LoopState, feed: RolloutFeed, buffer: GroupBuffer, ckpt: Checkpointer,
            logger: MetricsLogger, recovery: LearnerRecovery) -> dict[str, Any]:
    """One RL step: groups -> batch -> update -> weight push -> (eval, checkpoint) -> its log line; its metrics."""
    cfg = run.cfg
    timing: dict[str, float] = {}
    t = time.perf_counter()
    held = recovery.held(step)  # set when the step is redone after the learner was rebuilt
    groups, feed_metrics = held or feed.take(step, state.version, timing)  # generated now, or issued steps ago
    recovery.hold(step, (groups, feed_metrics))
    t = mark(timing, "generate", t)
    feed.start_ahead(step, cfg.trainer.total_steps)  # async: the next steps' prompts go out to the current weights
    dpo = cfg.algorithm.dpo.enabled  # online DPO: pairs from the groups instead of a policy-gradient batch
    batch = None if dpo else groups_to_batch(groups, cfg.algorithm, reward_weights(cfg))
    t = mark(timing, "batch", t)
    with run.sync.lock:  # a rollout worker replaced meanwhile joins at the version it really gets
        run.rollout.sleep()  # colocated: the engines free the device for the learner; the push wakes them
        if dpo:
            batch, learn = online_dpo_step(run, groups)
        elif run.critic is not None:  # PPO: GAE from the critic's values; policy and critic train together
            learn = ppo_step(run, batch)
        else:
            learn = run.learner.train_step(batch)
        t = mark(timing, "learn", t)
        # an update skipped for a non-finite loss/gradient: counted, batch saved; N steps in a row stop the run
        count_nonfinite(state, step, learn, batch, run.dir, cfg.learner.max_nonfinite_steps, logger.print)
        sync = run.sync.push(state.version + 1)  # a worker mid-generation loads it when that call ends
    state.step, state.version = step, state.version + 1
    if every(cfg.weight_sync.verify_every, step):
        sync.update(run.sync.verify(*run.probe))
    t = mark(timing, "sync", t)
    metrics = {**rollout_stats(groups, run.eval_component, run.eval_threshold), **learn, **sync,
               **feed_metrics, **buffer.metrics(), "version": state.version,
               "rollout/workers": float(len(run.rollout.workers)),
               "rollout/worker_restarts": float(run.rollout.restarts),
               "reward/scorer_restarts": float(run.rollout.scorer_restarts),
               "learner/rebuilds": float(recovery.rebuilds), "learner/redone": float(held is not None),
               "prompt_ids": [g.prompt_id for g in groups]}  # the exactly-once ledger, in metrics.jsonl
    if every(cfg.logging.dump_samples_every, step):
        logger.dump_samples(step, groups)
    if every(cfg.trainer.eval_every, step) and step < cfg.trainer.total_steps:
        log_eval(run, logger, step, f"step {step}")
    t = mark(timing, "eval", t)
    if every(cfg.checkpoint.every, step):
        save(run, ckpt, state, feed, recovery)
    mark(timing, "checkpoint", t)
    log_step(logger, step, metrics, timing)
    return metrics


def every(period: int, step: int) -> bool:
    """Cadence of the loop's periodic work; period 0 = never."""
    return bool(period) and step % period == 0


def describe(run: Run) -> str:
    cfg = run.cfg
    return (f"{len(run.learner)} learner rank(s) (ZeRO-{cfg.learner.zero_stage}, {cfg.learner.dtype}), "
            f"{len(run.rollout.workers)} rollout worker(s) ({cfg.rollout.dtype}), "
            f"{len(run.rollout.scorers)} reward scorer(s); run directory {run.dir}")


def start_from_warm_start(run: Run, logger: MetricsLogger, fresh: bool) -> None:
    """The models that start from the warm-started policy: the reference of the KL term and of DPO,
    and PPO's critic (its backbone). A fresh run exports that policy once to RUN_DIR/warm_started when
    one of them needs it; a resumed run reloads the reference from there (the critic: its checkpoint)."""
    cfg = run.cfg
    warm = warm_started_policy(run)
    reference = uses_reference(cfg.algorithm)
    if warm is not None and fresh and (reference or needs_critic(cfg)):
        run.learner.export_hf(str(warm), run.model_path)
    if warm is not None and reference:
        run.learner.reset_reference(None if fresh else str(warm_started_reference(run)))
    if needs_critic(cfg):  # PPO: built now, so that it can start from the warm-started policy
        logger.print(start_critic(run, str(warm) if warm is not None else None))


def log_eval(run: Run, logger: MetricsLogger, step: int, label: str) -> None:
    if not run.eval_prompts:
        return
    t0 = time.perf_counter()
    m = evaluate(run)
    logger.log(step, m, kind="eval")
    logger.print(f"held-out accuracy {label}: {100 * m['eval/accuracy']:.1f}% "
                 f"({m['eval/correct']:.0f}/{m['eval/prompts']:.0f} prompts, pass@{run.cfg.trainer.eval_n}, "
                 f"{time.perf_counter() - t0:.1f}s)")


def log_step(logger: MetricsLogger, step: int, metrics: dict[str, Any], timing: dict[str, float]) -> None:
    total = sum(v for k, v in timing.items() if k != "rounds")
    metrics.update({f"timing/{k}": v for k, v in timing.items()})
    metrics["timing/step"] = total
    # who waited for whom: the share of the step each side was not computing
    metrics["timing/learner_idle_fraction"] = max(0.0, 1.0 - metrics.get("learner/step_seconds", 0.0) / total)
    metrics["timing/rollout_idle_fraction"] = max(0.0, 1.0 - metrics.get("rollout/engine_seconds", 0.0) / total)
    metrics["throughput/samples_per_s"] = metrics.get("rollout/samples", 0.0) / total
    # tokens over the engines' own generation span (in async mode the driver hardly waits for them),
    # every generation round's (dynamic sampling's set-asides included)
    tokens = metrics.get("rollout/generated_tokens", metrics.get("rollout/response_tokens", 0.0))
    metrics["throughput/gen_tokens_per_s"] = tokens / max(metrics.get("rollout/engine_seconds", 0.0), 1e-9)
    logger.log(step, metrics)
    line = (f"step {step:>4} | reward {metrics['reward/mean']:+.3f} | acc {100 * metrics['reward/accuracy']:5.1f}% | "
            f"len {metrics['rollout/response_length_mean']:5.1f} | gen {timing['generate']:.2f}s learn "
            f"{timing['learn']:.2f}s sync {timing['sync']:.2f}s | {metrics['throughput/gen_tokens_per_s']:.0f} tok/s")
    logger.advance(step, f"reward {metrics['reward/mean']:+.3f}")
    logger.print(line)


def mark(timing: dict[str, float], phase: str, since: float) -> float:
    now = time.perf_counter()
    timing[phase] = timing.get(phase, 0.0) + now - since
    return now


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save(run: Run, ckpt: Checkpointer, state: LoopState, feed: RolloutFeed, recovery: LearnerRecovery) -> Path:
    """Learner, loop state, RNG and data position, plus (async) every issued-but-untrained batch."""
    pending = feed.state()  # waits for batches still generating: their prompts already left the stream
    state.data = run.stream.state()
    trainer_state = {**dataclasses.asdict(state), "rng": rng_state()}
    path = ckpt.save(state.step, trainer_state, run.save_models, extra={FEED_FILE: pending})
    recovery.checkpointed()
    return path


def resume_point(cfg: RunConfig) -> Path | None:
    """The checkpoint a resumed run continues from (None for a fresh run)."""
    if not cfg.checkpoint.resume:
        return None
    path = Checkpointer.latest(cfg.checkpoint.resume)
    if path is None:
        raise FileNotFoundError(f"checkpoint.resume={cfg.checkpoint.resume}: no checkpoints/latest there")
    return path


def resume(run: Run, logger: MetricsLogger, feed: RolloutFeed, recovery: LearnerRecovery) -> LoopState:
    """The models, data stream and issued batches as the latest checkpoint left them. A learner or
    critic rank lost on the way: a new learner group loads the checkpoint again."""
    path = resume_point(run.cfg)
    while True:
        try:
            start_from_warm_start(run, logger, fresh=False)  # the reference reloaded; PPO's critic built, then restored
            state = restore(run, path)
            run.sync.push(state.version)
            break
        except ActorLost as lost:
            if not recovery.covers(lost):
                raise
            recovery.reload(lost)
    run.stream.load_state(state.data)
    pending = path / FEED_FILE
    feed.load_state(pending.read_bytes() if pending.exists() else None)
    logger.print(f"resumed from {path} at step {state.step} (policy version {state.version}, data {state.data})")
    if logger.rewind is not None and logger.rewind.dropped:
        logger.print(logger.rewind.summary())
    return state


def finish(run: Run, ckpt: Checkpointer, state: LoopState, feed: RolloutFeed, recovery: LearnerRecovery,
           logger: MetricsLogger) -> None:
    save(run, ckpt, state, feed, recovery)
    if run.cfg.checkpoint.export_hf:
        out = run.dir / "final_model"
        run.learner.export_hf(str(out), run.model_path)
        logger.print(f"final Hugging Face model: {out}")
    logger.print(f"curves: {plot_run(run.dir)}")
