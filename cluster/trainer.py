"""The driver: `relayrl train` builds the topology and runs the synchronous step loop.

    prompts -> grouped rollouts (vLLM) -> rewards -> buffer/filters -> learner update (DeepSpeed)
            -> weight broadcast -> periodic evaluation -> periodic checkpoint

`train()` reads top to bottom; each phase is one call into cluster/ helpers, and the step's time
breakdown (generate, learn, sync, eval, checkpoint) is measured and logged.
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
from actors.types import Group
from cluster.batching import groups_to_batch, sft_batch, sft_examples
from cluster.checkpoint import Checkpointer, rng_state, set_rng_state
from cluster.config import RunConfig
from cluster.evaluation import evaluate, rollout_stats
from cluster.metrics import MetricsLogger
from cluster.plot import plot_run
from cluster.run_setup import Run, start_run


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
    state = LoopState()
    for note in run.notes:
        logger.print(note)
    logger.print(f"started in {run.startup_seconds:.1f}s: {describe(run)}")
    try:
        if cfg.checkpoint.resume:
            state = resume(run, ckpt, logger)
        else:
            seed_everything(cfg.trainer.seed)
            warm_start(run, logger)
            run.sync.push(state.version)
            log_eval(run, logger, state.step, "before RL")
        for step in range(state.step + 1, cfg.trainer.total_steps + 1):
            state.step = step
            timing: dict[str, float] = {}
            t = time.perf_counter()
            groups = collect_groups(run, buffer, state, timing)
            t = mark(timing, "generate", t)
            batch = groups_to_batch(groups, cfg.algorithm)
            t = mark(timing, "batch", t)
            learn = run.learner.train_step(batch)
            t = mark(timing, "learn", t)
            state.version += 1
            sync = run.sync.push(state.version)
            if cfg.weight_sync.verify_every and step % cfg.weight_sync.verify_every == 0:
                sync.update(run.sync.verify(*run.probe))
            t = mark(timing, "sync", t)
            metrics = {**rollout_stats(groups, run.eval_component, run.eval_threshold), **learn, **sync,
                       **buffer.metrics(), "version": state.version}
            if cfg.logging.dump_samples_every and step % cfg.logging.dump_samples_every == 0:
                logger.dump_samples(step, groups)
            if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step < cfg.trainer.total_steps:
                log_eval(run, logger, step, f"step {step}")
            t = mark(timing, "eval", t)
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
                save(run, ckpt, state)
            mark(timing, "checkpoint", t)
            log_step(logger, step, metrics, timing)
        log_eval(run, logger, cfg.trainer.total_steps, "after RL")
        finish(run, ckpt, state, logger)
    finally:
        logger.close()
        run.shutdown()
    return run.dir


def describe(run: Run) -> str:
    cfg = run.cfg
    return (f"{len(run.learner)} learner rank(s) (ZeRO-{cfg.learner.zero_stage}, {cfg.learner.dtype}), "
            f"{len(run.rollout.workers)} rollout worker(s) ({cfg.rollout.dtype}), "
            f"{len(run.rollout.scorers)} reward scorer(s); run directory {run.dir}")


def collect_groups(run: Run, buffer: GroupBuffer, state: LoopState, timing: dict[str, float]) -> list[Group]:
    """B valid groups for this step: generate, score and filter; with DAPO dynamic sampling, ask for
    more prompts (only as many as are missing) for at most buffer.max_extra_rounds extra rounds."""
    cfg = run.cfg
    need = cfg.trainer.prompts_per_step
    issued: dict[str, int] = {}
    for round_ in range(1 + (cfg.buffer.max_extra_rounds if cfg.buffer.dynamic_sampling else 0)):
        missing = need - buffer.ready()
        if missing <= 0:
            break
        prompts = with_seeds(run.stream.take(missing), cfg.rollout.seed, state.step, round_)
        issued.update((p["prompt_id"], len(issued) + i) for i, p in enumerate(prompts))
        for group in run.rollout.generate(prompts, cfg.rollout.n):
            buffer.add(group, state.version)
        timing["rounds"] = round_ + 1
    groups = buffer.take(need)
    if len(groups) < need:
        groups += buffer.take_filtered(need - len(groups))
    buffer.clear_filtered()
    state.data = run.stream.state()
    # Groups arrive in completion order, which varies run to run; training in issue order makes a
    # step's batch (and so its float sums) a function of the data position alone: resumable exactly.
    return sorted(groups, key=lambda g: issued.get(g.prompt_id, len(issued)))


def with_seeds(prompts: list[dict[str, Any]], seed: int, step: int, round_: int) -> list[dict[str, Any]]:
    """Per-request sampling seeds derived from (seed, step, round, position): a resumed run samples
    exactly what the uninterrupted run would have, whichever worker gets the prompt."""
    return [{**p, "seed": (seed * 1_000_003 + step * 1_009 + round_ * 101 + i) % (2**31)} for i, p in enumerate(prompts)]


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
    metrics["throughput/gen_tokens_per_s"] = metrics.get("rollout/response_tokens", 0.0) / max(timing["generate"], 1e-9)
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


def save(run: Run, ckpt: Checkpointer, state: LoopState) -> Path:
    trainer_state = {**dataclasses.asdict(state), "rng": rng_state()}
    return ckpt.save(state.step, trainer_state, run.learner.save_checkpoint)


def resume_point(cfg: RunConfig) -> Path | None:
    """The checkpoint a resumed run continues from (None for a fresh run)."""
    if not cfg.checkpoint.resume:
        return None
    path = Checkpointer.latest(cfg.checkpoint.resume)
    if path is None:
        raise FileNotFoundError(f"checkpoint.resume={cfg.checkpoint.resume}: no checkpoints/latest there")
    return path


def resume(run: Run, ckpt: Checkpointer, logger: MetricsLogger) -> LoopState:
    path = resume_point(run.cfg)
    saved = Checkpointer.load_state(path)
    run.learner.load_checkpoint(str(path / "learner"))
    set_rng_state(saved.pop("rng"))
    state = LoopState(**saved)
    run.stream.load_state(state.data)
    run.sync.push(state.version)
    logger.print(f"resumed from {path} at step {state.step} (policy version {state.version}, data {state.data})")
    if logger.rewind is not None and logger.rewind.dropped:
        logger.print(logger.rewind.summary())
    return state


def finish(run: Run, ckpt: Checkpointer, state: LoopState, logger: MetricsLogger) -> None:
    save(run, ckpt, state)
    if run.cfg.checkpoint.export_hf:
        out = run.dir / "final_model"
        run.learner.export_hf(str(out), run.model_path)
        logger.print(f"final Hugging Face model: {out}")
    logger.print(f"curves: {plot_run(run.dir)}")
