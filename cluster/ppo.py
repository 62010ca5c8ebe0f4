"""PPO with a critic, driver side (algorithm.advantage.name=gae): one step's batch -> the critic's
values (and, with algorithm.kl_in_reward, the policy's per-token KL to the reference) -> per-token
rewards -> GAE advantages and returns on the whole global batch -> the policy's update (the
advantages per token, the ppo_clip surrogate or any other) and the critic's update (clipped value
loss towards the returns), the two learner groups training at the same time.

    r_t = -kl_coef * KL_t  (kl_in_reward)  +  [t = last token] * reward
    delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lam A_{t+1},  R_t = A_t + V_t

GAE runs here, not on a learner rank, for the same reason the group advantages do (cluster/batching.py):
whitening must see the whole batch whatever the number of ranks.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from learner.algorithms import explained_variance, gae, token_rewards
from learner.batch import LearnerBatch


def needs_critic(cfg: Any) -> bool:
    from learner.algorithms.advantages import NEEDS_CRITIC

    return cfg.algorithm.advantage.name in NEEDS_CRITIC


def start_critic(run: Any, warm_started: str | None) -> str:
    """Build PPO's critic group (run.critic); the line for the log. Its value model starts from
    critic.model_path, else from the warm-started policy's export (`warm_started`), else from the
    policy's model directory. A resumed run loads the critic's checkpoint over it."""
    from cluster.learner_group import CriticGroup
    from cluster.run_setup import optimizer_steps

    cfg = run.cfg
    source, t0 = cfg.critic.model_path or warm_started or run.model_path, time.perf_counter()
    run.critic = CriticGroup(source, cfg.critic.learner, cfg.algorithm, optimizer_steps(cfg), cfg.critic.value_clip,
                             device=cfg.cluster.device)
    built = time.perf_counter() - t0
    return (f"critic: {len(run.critic)} rank(s) (ZeRO-{cfg.critic.learner.zero_stage}, {cfg.critic.learner.dtype}), "
            f"value model from {source}, built in {built:.1f}s; {run.record_placement()}")


def ppo_step(run: Any, batch: LearnerBatch) -> dict[str, float]:
    """Advantages from the critic, then the policy and critic updates; the step's metrics."""
    metrics = attach_gae(run, batch)
    critic = run.critic.train_step_async(batch)  # the critic trains while the policy does
    learn = run.learner.train_step(batch)
    return {**learn, **run.critic.finish_step(critic), **metrics}


def attach_gae(run: Any, batch: LearnerBatch) -> dict[str, float]:
    """Fill batch.values, batch.returns and batch.token_advantages (GAE); their metrics."""
    algo = run.cfg.algorithm
    values = run.critic.values(batch)  # the values GAE uses are also the clipping centre of the value loss
    kl = run.learner.reference_kl(batch) if algo.kl_in_reward else None
    return gae_targets(batch, values, kl, algo.kl_coef, algo.advantage.params)


def gae_targets(batch: LearnerBatch, values: list[torch.Tensor], kl: list[torch.Tensor] | None, kl_coef: float,
                params: dict[str, Any]) -> dict[str, float]:
    """GAE on the padded batch (tokens that take no loss, a multi-turn trajectory's observations,
    are skipped); the per-sequence results go into `batch`. Pure given its inputs."""
    R = batch.response_lengths()
    B, T = len(batch), max(R, default=1) or 1
    mask = torch.zeros(B, T, dtype=torch.bool)
    V, K = torch.zeros(B, T), torch.zeros(B, T)
    for i, n in enumerate(R):
        mask[i, :n] = True if batch.token_masks is None else batch.token_masks[i]
        V[i, :n] = values[i]
        if kl is not None:
            K[i, :n] = kl[i]
    mask &= batch.loss_mask[:, None]
    rewards = token_rewards(batch.rewards, mask, K if kl is not None else None, kl_coef)
    adv, ret = gae(V, rewards, mask, **params)
    batch.values = [V[i, :n].clone() for i, n in enumerate(R)]
    batch.returns = [ret[i, :n].clone() for i, n in enumerate(R)]
    batch.token_advantages = [adv[i, :n].clone() for i, n in enumerate(R)]
    n = mask.sum().clamp(min=1)
    out = {"critic/values_mean": float(V[mask].sum() / n), "critic/returns_mean": float(ret[mask].sum() / n),
           "critic/returns_std": float(ret[mask].std()) if int(mask.sum()) > 1 else 0.0,
           "critic/advantages_mean": float(adv[mask].sum() / n),
           "critic/advantages_std": float(adv[mask].std()) if int(mask.sum()) > 1 else 0.0,
           "critic/explained_variance": explained_variance(V, ret, mask)}
    if kl is not None:
        out["critic/kl_in_reward"] = float(K[mask].sum() / n)  # mean per-token KL penalised in the reward
    return out
