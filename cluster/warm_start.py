"""The supervised warm start: cross-entropy on prompt -> reference answer through the RL learner,
before RL. With `trainer.warm_start.target_accuracy` it stops as soon as the policy reaches that
accuracy on a fixed set of training prompts (measured as held-out evaluation measures it, on the
rollout engines after a weight push), so RL starts from the same point whatever the seed or the
machine's float path; `steps` is then the most it may take.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from cluster.batching import sft_batch, sft_examples
from cluster.evaluation import evaluate
from cluster.metrics import MetricsLogger

if TYPE_CHECKING:
    from cluster.run_setup import Run

CHECK_SEED = 0  # the training prompts the target is checked on: the same set for every seed


def warm_start(run: "Run", logger: MetricsLogger, version: int) -> None:
    """Run the warm start; `version` is the label the accuracy checks push the weights under (the
    run's first push sends the final warm-started weights under it again)."""
    ws = run.cfg.trainer.warm_start
    if ws.steps <= 0:
        return
    rng = random.Random(run.cfg.trainer.seed)
    t0 = time.perf_counter()
    examples = sft_examples(run.train_prompts, run.tokenizer, ws.target_key)  # tokenised once
    check = check_prompts(run) if ws.target_accuracy > 0 else []
    report_every = max(1, ws.steps // 5)
    chunk = max(1, min(report_every, 25))  # steps per learner call: few round trips, a live progress line
    run.rollout.sleep()  # colocated: the engines free the device; the first push wakes them
    step, reached = 0, None
    while step < ws.steps:
        last = min(ws.steps, step + chunk)
        if check:
            last = min(last, (step // ws.check_every + 1) * ws.check_every)
        batches = [sft_batch(rng.sample(examples, min(ws.batch_size, len(examples)))) for _ in range(step, last)]
        for i, m in enumerate(run.learner.sft_steps(batches, ws.lr, ws.moe_aux_loss_coef), start=step + 1):
            logger.log(i, m, kind="warm_start")
            if i % report_every == 0 or i == ws.steps:
                logger.print(f"warm start {i}/{ws.steps}: loss {m['sft/loss']:.4f}")
        step = last
        if check and (step % ws.check_every == 0 or step == ws.steps):
            accuracy = check_accuracy(run, logger, check, step, version)
            if accuracy >= ws.target_accuracy:
                reached = accuracy
                break
    outcome = ""
    if reached is not None:
        outcome = f" (accuracy on {len(check)} training prompts {100 * reached:.1f}% >= target {100 * ws.target_accuracy:g}%)"
    elif check:
        outcome = f" (target accuracy {100 * ws.target_accuracy:g}% not reached within warm_start.steps={ws.steps})"
    logger.print(f"warm start: {step} supervised steps in {time.perf_counter() - t0:.1f}s{outcome}")


def check_prompts(run: "Run") -> list[dict[str, Any]]:
    """The training prompts the target is checked on: a fixed sample (the model is trained on them too;
    on the demo task its greedy accuracy there tracks the held-out one, README "MoE")."""
    k = min(run.cfg.trainer.warm_start.check_prompts, len(run.train_prompts))
    return random.Random(CHECK_SEED).sample(run.train_prompts, k)


def check_accuracy(run: "Run", logger: MetricsLogger, prompts: list[dict[str, Any]], step: int,
                   version: int) -> float:
    """Push the current weights and evaluate them on `prompts`; logged as warm_start/accuracy."""
    t0 = time.perf_counter()
    run.sync.push(version)
    accuracy = evaluate(run, prompts)["eval/accuracy"]
    run.rollout.sleep()  # colocated: back to the learner
    logger.log(step, {"warm_start/accuracy": accuracy, "warm_start/check_seconds": time.perf_counter() - t0},
               kind="warm_start")
    return accuracy
