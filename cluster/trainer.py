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
from cluster.batching import groups_to_batch, sft_batch, sft_examples
from cluster.checkpoint import Checkpointer, rng_state, set_rng_state
from cluster.config import RunConfig
from cluster.evaluation import evaluate, rollout_stats
from cluster.metrics import MetricsLogger
from cluster.plot import plot_run
from cluster.rollout_feed import RolloutFeed
from cluster.run_setup import Run, start_run


FEED_FILE = "rollout_feed.pkl"  # in a checkpoint: the batches issued but not yet trained (async)


@dataclasses.dataclass
class LoopState:
    step: int = 0  # last completed RL step
    version: int = 0  # policy version the rollout workers hold
    data: dict[str, int] = dataclasses.field(default_factory=dict)


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
    state = LoopState()
    for note in run.notes:
        logger.print(note)
    logger.print(f"started in {run.startup_seconds:.1f}s: {describe(run)}")
    try:
        if cfg.checkpoint.resume:
            state = resume(run, ckpt, logger, feed)
        else:
            seed_everything(cfg.trainer.seed)
            warm_start(run, logger)
            run.sync.push(state.version)
            log_eval(run, logger, state.step, "before RL")
        last = cfg.trainer.total_steps
        for step in range(state.step + 1, last + 1):
            state.step = step
            timing: dict[str, float] = {}
            t = time.perf_counter()
            groups, staleness = feed.take(step, state.version, timing)  # generated now, or issued steps ago
            t = mark(timing, "generate", t)
            feed.start_ahead(step, last)  # async: the next steps' prompts go out to the current weights
            batch = groups_to_batch(groups, cfg.algorithm)
            t = mark(timing, "batch", t)
            with run.sync.lock:  # a rollout worker replaced meanwhile joins at the version it really gets
                learn = run.learner.train_step(batch)
                t = mark(timing, "learn", t)
                state.version += 1
                sync = run.sync.push(state.version)  # a worker mid-generation loads it when that call ends
            if every(cfg.weight_sync.verify_every, step):
                sync.update(run.sync.verify(*run.probe))
            t = mark(timing, "sync", t)
            metrics = {**rollout_stats(groups, run.eval_component, run.eval_threshold), **learn, **sync,
                       **staleness, **buffer.metrics(), "version": state.version,
                       "rollout/worker_restarts": float(run.rollout.restarts),
                       "reward/scorer_restarts": float(run.rollout.scorer_restarts),
                       "prompt_ids": [g.prompt_id for g in groups]}  # the exactly-once ledger, in metrics.jsonl
            if every(cfg.logging.dump_samples_every, step):
                logger.dump_samples(step, groups)
            if every(cfg.trainer.eval_every, step) and step < last:
                log_eval(run, logger, step, f"step {step}")
            t = mark(timing, "eval", t)
            if every(cfg.checkpoint.every, step):
                save(run, ckpt, state, feed)
            mark(timing, "checkpoint", t)
            log_step(logger, step, metrics, timing)
        log_eval(run, logger, cfg.trainer.total_steps, "after RL")
        finish(run, ckpt, state, feed, logger)
    finally:
        feed.close()
        logger.close()
        run.shutdown()
    return run.dir


def every(period: int, step: int) -> bool:
    """Cadence of the loop's periodic work; period 0 = never."""
    return bool(period) and step % period == 0


def describe(run: Run) -> str:
    cfg = run.cfg
    return (f"{len(run.learner)} learner rank(s) (ZeRO-{cfg.learner.zero_stage}, {cfg.learner.dtype}), "
            f"{len(run.rollout.workers)} rollout worker(s) ({cfg.rollout.dtype}), "
            f"{len(run.rollout.scorers)} reward scorer(s); run directory {run.dir}")


def warm_start(run: Run, logger: MetricsLogger) -> None:
    ws = run.cfg.trainer.warm_start
    if ws.steps <= 0:
        return
    rng = random.Random(run.cfg.trainer.seed)
    t0 = time.perf_counter()
    examples = sft_examples(run.train_prompts, run.tokenizer, ws.target_key)  # tokenised once
    report_every = max(1, ws.steps // 5)
    chunk = max(1, min(report_every, 25))  # steps per learner call: few round trips, a live progress line
    for first in range(1, ws.steps + 1, chunk):
        last = min(ws.steps, first + chunk - 1)
        batches = [sft_batch(rng.sample(examples, min(ws.batch_size, len(examples)))) for _ in range(first, last + 1)]
        for i, m in enumerate(run.learner.sft_steps(batches, ws.lr), start=first):
            logger.log(i, m, kind="warm_start")
            if i % report_every == 0 or i == ws.steps:
                logger.print(f"warm start {i}/{ws.steps}: loss {m['sft/loss']:.4f}")
    logger.print(f"warm start: {ws.steps} supervised steps in {time.perf_counter() - t0:.1f}s")


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
    # tokens over the engines' own generation span (in async mode the driver hardly waits for them)
    metrics["throughput/gen_tokens_per_s"] = (metrics.get("rollout/response_tokens", 0.0)
                                              / max(metrics.get("rollout/engine_seconds", 0.0), 1e-9))
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


def save(run: Run, ckpt: Checkpointer, state: LoopState, feed: RolloutFeed) -> Path:
    """Learner, loop state, RNG and data position, plus (async) every issued-but-untrained batch."""
    pending = feed.state()  # waits for batches still generating: their prompts already left the stream
    state.data = run.stream.state()
    trainer_state = {**dataclasses.asdict(state), "rng": rng_state()}
    return ckpt.save(state.step, trainer_state, run.learner.save_checkpoint, extra={FEED_FILE: pending})


def resume_point(cfg: RunConfig) -> Path | None:
    """The checkpoint a resumed run continues from (None for a fresh run)."""
    if not cfg.checkpoint.resume:
        return None
    path = Checkpointer.latest(cfg.checkpoint.resume)
    if path is None:
        raise FileNotFoundError(f"checkpoint.resume={cfg.checkpoint.resume}: no checkpoints/latest there")
    return path


def resume(run: Run, ckpt: Checkpointer, logger: MetricsLogger, feed: RolloutFeed) -> LoopState:
    path = resume_point(run.cfg)
    saved = Checkpointer.load_state(path)
    run.learner.load_checkpoint(str(path / "learner"))
    set_rng_state(saved.pop("rng"))
    state = LoopState(**saved)
    run.stream.load_state(state.data)
    pending = path / FEED_FILE
    feed.load_state(pending.read_bytes() if pending.exists() else None)
    run.sync.push(state.version)
    logger.print(f"resumed from {path} at step {state.step} (policy version {state.version}, data {state.data})")
    if logger.rewind is not None and logger.rewind.dropped:
        logger.print(logger.rewind.summary())
    return state


def finish(run: Run, ckpt: Checkpointer, state: LoopState, feed: RolloutFeed, logger: MetricsLogger) -> None:
    save(run, ckpt, state, feed)
    if run.cfg.checkpoint.export_hf:
        out = run.dir / "final_model"
        run.learner.export_hf(str(out), run.model_path)
        logger.print(f"final Hugging Face model: {out}")
    logger.print(f"curves: {plot_run(run.dir)}")
