"""Held-out evaluation (pass@k) and the per-step rollout statistics.

A sample counts as correct when its reward component `eval_component` (default: the first reward
function) is at least `eval_threshold`; a prompt passes when any of its k samples is correct.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any, Optional

from actors.types import EPISODE_CUTS, Group

if TYPE_CHECKING:
    from cluster.run_setup import Run


def is_correct(sample: Any, component: str, threshold: float) -> bool:
    return sample.reward_components.get(component, sample.reward) >= threshold


def evaluate(run: "Run", prompts: Optional[list[dict[str, Any]]] = None) -> dict[str, float]:
    """pass@eval_n at eval_temperature over `prompts` (default: the held-out prompts, at most
    trainer.eval_max_prompts of them)."""
    cfg = run.cfg.trainer
    if prompts is None:
        prompts = run.eval_prompts[: cfg.eval_max_prompts or None]
    sampling = {"temperature": cfg.eval_temperature}
    groups = list(run.rollout.generate([{**p, "seed": i} for i, p in enumerate(prompts)], cfg.eval_n, sampling))
    passed = sum(any(is_correct(s, run.eval_component, run.eval_threshold) for s in g.samples) for g in groups)
    lengths = [s.response_length for g in groups for s in g.samples]
    out = {
        "eval/accuracy": passed / max(1, len(groups)),
        "eval/correct": float(passed),
        "eval/prompts": float(len(groups)),
        "eval/reward_mean": statistics.fmean(s.reward for g in groups for s in g.samples),
        "eval/response_length_mean": statistics.fmean(lengths) if lengths else 0.0,
    }
    out.update({k: v for k, v in episode_stats(groups, "eval/env").items() if "seconds" not in k and "share" not in k})
    return out


def episode_stats(groups: list[Group], prefix: str) -> dict[str, float]:
    """Multi-turn trajectories (rollout.env): turns, tool use, the environment's errors, cuts and time.
    `time_share`: per trajectory, the time its environment steps took over its group's generation
    time, averaged (environment steps overlap the engine's work on other trajectories)."""
    pairs = [(s.episode, g.generate_seconds) for g in groups for s in g.samples if s.episode is not None]
    if not pairs:
        return {}
    eps = [e for e, _ in pairs]
    n = len(eps)
    out = {
        f"{prefix}/turns_mean": statistics.fmean(e.turns for e in eps),
        f"{prefix}/tool_call_rate": sum(e.tool_calls > 0 for e in eps) / n,
        f"{prefix}/tool_calls_mean": statistics.fmean(e.tool_calls for e in eps),
        f"{prefix}/tool_errors": float(sum(e.tool_errors for e in eps)),
        f"{prefix}/errors": float(sum(bool(e.error) for e in eps)),
        f"{prefix}/cut_fraction": sum(bool(e.cut) for e in eps) / n,
        f"{prefix}/obs_truncated": float(sum(e.obs_truncated for e in eps)),
        f"{prefix}/seconds": sum(e.env_seconds for e in eps),
        f"{prefix}/time_share": statistics.fmean(e.env_seconds / t if t > 0 else 0.0 for e, t in pairs),
    }
    for reason in EPISODE_CUTS:
        out[f"{prefix}/cut_{reason}"] = float(sum(e.cut == reason for e in eps))
    return out


def rollout_stats(groups: list[Group], component: str, threshold: float) -> dict[str, float]:
    samples = [s for g in groups for s in g.samples]
    rewards = [s.reward for s in samples]
    lengths = [s.response_length for s in samples]
    out = {
        "reward/mean": statistics.fmean(rewards),
        "reward/std": statistics.pstdev(rewards),
        "reward/accuracy": sum(is_correct(s, component, threshold) for s in samples) / len(samples),
        "reward/errors": float(sum(s.reward_error is not None for s in samples)),
        "rollout/groups": float(len(groups)),
        # inside the engines: the slowest group's submit-to-finish time (a training step's feed replaces it by
        # the sum over its generation rounds: cluster/rollout_feed.py), and scoring (summed over groups)
        "rollout/engine_seconds": max(g.generate_seconds for g in groups),
        "rollout/score_seconds": sum(g.score_seconds for g in groups),
        "rollout/samples": float(len(samples)),
        "rollout/response_tokens": float(sum(lengths)),
        "rollout/response_length_mean": statistics.fmean(lengths),
        "rollout/response_length_max": float(max(lengths)),
        "rollout/truncated_fraction": sum(s.finish_reason == "length" for s in samples) / len(samples),
        "rollout/all_equal_groups": float(sum(len(set(g.rewards)) == 1 for g in groups)),
    }
    names = sorted({k for s in samples for k in s.reward_components})
    for name in names:
        out[f"reward/{name}"] = statistics.fmean(s.reward_components.get(name, 0.0) for s in samples)
    out.update(episode_stats(groups, "env"))
    counts = [g.expert_counts for g in groups if g.expert_counts is not None]
    if counts:  # MoE: the experts the engines routed the step's tokens to (prompt and response)
        import numpy as np

        from learner.moe import expert_load_stats

        out.update(expert_load_stats(np.sum(counts, axis=0), "moe/rollout"))
    return out
