"""Preference optimisation (algorithm.dpo) on the actor–learner system: pairs in, DPO/IPO steps out.

Online (trainer.mode sync or async): each rollout group's samples become (chosen, rejected) pairs
by reward (`algorithm.dpo.pairs`): best_worst, or all pairs with a reward gap above `tau`.
Offline (trainer.mode=offline): pairs {prompt, chosen, rejected} from data.preference_files; the
rollout engines only evaluate (the weights are pushed before each evaluation).

A pair batch is a LearnerBatch whose sequence 2p is pair p's chosen and 2p + 1 its rejected
(prompt + completion ids); the learner's preference_step computes the loss (learner/train_step.py).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import torch

from actors.types import Group
from learner.batch import LearnerBatch
from learner.config import DPOConfig

if TYPE_CHECKING:
    from cluster.metrics import MetricsLogger
    from cluster.run_setup import Run

PAIR_FIELDS = ("prompt", "chosen", "rejected")


def group_pairs(groups: list[Group], cfg: DPOConfig) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt ids, chosen response ids, rejected response ids) from each group, by reward."""
    out = []
    for g in groups:
        samples = [s for s in g.trained_samples() if s.reward_error is None]
        if len(samples) < 2:
            continue
        if cfg.pairs == "best_worst":
            best = max(samples, key=lambda s: s.reward)
            worst = min(samples, key=lambda s: s.reward)
            candidates = [(best, worst)] if best.reward - worst.reward > cfg.tau else []
        else:
            candidates = [(a, b) for a in samples for b in samples if a.reward - b.reward > cfg.tau]
        out += [(a.prompt_ids, a.response_ids, b.response_ids) for a, b in candidates]
    return out


def pair_batch(pairs: list[tuple[list[int], list[int], list[int]]]) -> LearnerBatch:
    ids, plens = [], []
    for prompt, chosen, rejected in pairs:
        for response in (chosen, rejected):
            ids.append(torch.tensor(list(prompt) + list(response), dtype=torch.long))
            plens.append(len(prompt))
    n = len(ids)
    return LearnerBatch(
        input_ids=ids, prompt_lengths=plens,
        sampler_logprobs=[torch.zeros(int(x.numel()) - p) for x, p in zip(ids, plens)],
        advantages=torch.zeros(n), rewards=torch.zeros(n), group_index=torch.arange(n) // 2,
        policy_versions=torch.zeros(n, dtype=torch.long), loss_mask=torch.ones(n, dtype=torch.bool),
    )


def load_pairs(files: list[str], tokenizer: Any, template: str = "{prompt}") -> list[tuple[list[int], list[int], list[int]]]:
    """Pairs from jsonl files of {prompt, chosen, rejected} (the prompt through data.prompt_template);
    completions get EOS appended. A row without a field is an error naming file, line and field."""
    out = []
    for f in files:
        for n, line in enumerate(Path(f).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in PAIR_FIELDS if k not in row]
            if missing:
                raise ValueError(f"{f}:{n}: preference row lacks {', '.join(missing)} (needs {', '.join(PAIR_FIELDS)})")
            prompt = tokenizer(template.format(**row), add_special_tokens=False)["input_ids"]
            chosen, rejected = (tokenizer(str(row[k]), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                                for k in ("chosen", "rejected"))
            out.append((prompt, chosen, rejected))
    return out


def pair_order(n: int, seed: int) -> Iterator[int]:
    """The indices of n pairs in the order offline DPO takes them: shuffled epochs without end. A
    function of (n, seed) only, so a resumed run finds its place by skipping the pairs already taken."""
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        yield from reversed(order)


def offline_dpo(run: "Run", state: Any, logger: "MetricsLogger", log_eval, checkpoint: Callable[[], Any],
                row: Callable[[int], dict[str, float]]) -> None:
    """trainer.total_steps DPO steps of trainer.prompts_per_step pairs each, in a shuffled order that
    cycles through the file(s); evaluation every trainer.eval_every steps on the pushed weights;
    `checkpoint()` every checkpoint.every steps; `row(step)`: the trainer's own metrics for the step's
    row. A resumed run (state.step > 0) goes on with the pairs an uninterrupted run would take next."""
    cfg = run.cfg
    pairs = load_pairs(cfg.data.preference_files, run.tokenizer, cfg.data.prompt_template)
    logger.print(f"offline DPO: {len(pairs)} preference pairs from {', '.join(cfg.data.preference_files)}")
    order = pair_order(len(pairs), cfg.data.seed)
    for _ in range(state.step * cfg.trainer.prompts_per_step):  # taken before the checkpoint resumed from
        next(order)
    while state.step < cfg.trainer.total_steps:
        step = state.step + 1
        take = [pairs[next(order)] for _ in range(cfg.trainer.prompts_per_step)]
        t0 = time.perf_counter()
        learn = run.learner.preference_step(pair_batch(take))
        state.step, state.version = step, state.version + 1
        learn["timing/learn"] = time.perf_counter() - t0
        logger.log(step, {**learn, **row(step)})
        logger.advance(step, f"margin {learn['dpo/reward_margin']:+.3f}")
        logger.print(f"step {step:>4} | dpo loss {learn['dpo/loss']:.4f} | margin {learn['dpo/reward_margin']:+.3f} | "
                     f"pref acc {100 * learn['dpo/reward_accuracy']:5.1f}% | learn {learn['timing/learn']:.2f}s")
        if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step < cfg.trainer.total_steps:
            run.sync.push(state.version)
            log_eval(run, logger, step, f"step {step}")
        if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < cfg.trainer.total_steps:
            checkpoint()  # the last step's: the trainer's finish
    run.sync.push(state.version)


def online_dpo_step(run: "Run", groups: list[Group]) -> tuple[Optional[LearnerBatch], dict[str, float]]:
    """The learner update of one online step: DPO on the groups' pairs (none: no update)."""
    pairs = group_pairs(groups, run.cfg.algorithm.dpo)
    if not pairs:
        return None, {"dpo/pairs": 0.0}
    batch = pair_batch(pairs)
    return batch, run.learner.preference_step(batch)
