"""PPO's value model: one scalar value per response token, trained by its own DeepSpeed group.

The critic is the policy's architecture with the LM head replaced by a scalar head (transformers'
`*ForTokenClassification` with one label: the backbone plus `score`, Linear(hidden, 1)), loaded from
the policy's checkpoint (the backbone; a new head) or from `critic.model_path`. Its value for
response token k is read at the position whose logits predict that token (P + k - 1: the state
before the token is generated), the position of the policy's logprob of it, so values, logprobs
and GAE's per-token rewards line up token by token.

`CriticRank` is a `LearnerRank` (the same distributed set-up, DeepSpeed engine, optimizer, LR
schedule, checkpoints, timeouts) whose model is the value model. `critic_on_batch` follows the
policy update's data-parallel contract (learner/train_step.py): the same shard layout
(epochs x mini-batches, one optimizer step each), the loss over the GLOBAL token count, each
micro-batch's share backpropagated times K, so K ranks compute what one rank would.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from learner import train_step as steps
from learner.batch import LearnerBatch
from learner.config import AlgorithmConfig, LearnerConfig
from learner.logprobs import MicroBatch, _device_of, collate, pad_values, unpad
from learner.rank import LearnerRank


def load_value_model(model_path: str, cfg: LearnerConfig):
    """The value model in fp32: the causal LM's backbone with a one-output `score` head (new if
    `model_path` is a causal LM's checkpoint; its own if it is a saved value model). No dropout."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(model_path, num_labels=1)
    config.classifier_dropout = 0.0
    model = AutoModelForTokenClassification.from_pretrained(model_path, config=config, dtype=torch.float32)
    model.config.use_cache = False
    return model


def token_values(model, mb: MicroBatch) -> torch.Tensor:
    """Values [b, T] fp32 of the response tokens of `mb` (gradient flows when grad is enabled)."""
    device = _device_of(model)
    out = model(input_ids=mb.input_ids.to(device), use_cache=False)
    return out.logits[..., 0].gather(1, mb.positions.to(device)).float()


def values_of(eng, batch: LearnerBatch, idx: list[int]) -> dict[int, torch.Tensor]:
    """No-grad values {sequence index: [R_i]} of sequences `idx` (collective under ZeRO-3)."""
    plan, _ = steps.plan_micro_batches(eng, batch, idx)
    out: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for mb_idx in plan:
            mb = collate(batch.input_ids, batch.prompt_lengths, mb_idx, token_masks=batch.token_masks)
            out.update(zip(mb.index, unpad(eng.value_forward(mb, grad=False), mb)))
    return out


def critic_on_batch(eng, batch: LearnerBatch, algo: AlgorithmConfig, value_clip: Optional[float]) -> dict[str, float]:
    """epochs x mini_batches optimizer steps of the clipped value loss (token-mean over the global
    loss tokens) towards `batch.returns`, clipped around `batch.values`; global metrics."""
    if batch.values is None or batch.returns is None:
        raise ValueError("a critic step needs batch.values and batch.returns (cluster/ppo.py fills them)")
    t0 = time.perf_counter()
    M = algo.mini_batches
    _, mini = steps.mini_batch_split(batch, M)
    m_ = steps.Metrics()
    updates = [_update(eng, batch, mini[m], value_clip, algo.epochs * M, m_) for _ in range(algo.epochs)
               for m in range(M)]
    m_.max("critic/step_seconds", time.perf_counter() - t0)
    out = m_.reduce(eng)
    applied = [u for u in updates if u[2]]
    out["critic/grad_norm"] = sum(u[0] for u in applied) / len(applied) if applied else float("nan")
    out["critic/lr"] = updates[-1][1]
    out["critic/nonfinite_skipped"] = float(len(updates) - len(applied))
    return out


def _update(eng, batch: LearnerBatch, idx: list[int], value_clip: Optional[float], n_updates: int,
            m_: steps.Metrics) -> tuple[float, float, bool]:
    from learner.algorithms import aggregate_loss, value_loss

    R = batch.loss_token_counts()
    g_tokens = float(eng.all_reduce(torch.tensor([sum(R[i] for i in idx)], dtype=torch.float64), "sum")[0])
    plan, _ = steps.plan_micro_batches(eng, batch, idx)
    for mb_idx in plan:
        mb = collate(batch.input_ids, batch.prompt_lengths, mb_idx, token_masks=batch.token_masks)
        v = eng.value_forward(mb, grad=True)
        dev, mask = v.device, mb.train_mask.to(v.device)
        old, ret = pad_values(batch.values, mb).to(dev), pad_values(batch.returns, mb).to(dev)
        per_token = value_loss(v, old, ret, mask, clip_range=value_clip)
        loss = aggregate_loss(per_token, mask, "token-mean", global_tokens=g_tokens)
        eng.backward(steps.poison_nonfinite(loss) * eng.world_size)
        tokens = float(mask.sum())
        m_.add("critic/loss", loss.item() / n_updates)
        with torch.no_grad():
            clipped = ((v - old).abs() > value_clip) & mask if value_clip is not None else torch.zeros_like(mask)
            m_.mean("critic/clipfrac", float(clipped.sum()) / max(tokens, 1.0), tokens)
    return eng.optimizer_step()  # (grad norm, lr, applied)


class CriticRank(LearnerRank):
    """One data-parallel rank of the critic group: a LearnerRank whose model is the value model
    (no reference model, no weight broadcast). Public calls: values, critic_step, checkpoints."""

    def build(self, *args, value_clip: Optional[float], **kwargs):
        self.value_clip = value_clip
        super().build(*args, **kwargs)

    def load_model(self, model_path: str, cfg: LearnerConfig):
        return load_value_model(model_path, cfg)

    def uses_reference(self, algo: AlgorithmConfig) -> bool:
        return False

    def value_forward(self, mb: MicroBatch, *, grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            return token_values(self.engine, mb)

    def values(self, batch: LearnerBatch) -> list[torch.Tensor]:
        """*Collective.* Per sequence of this rank's part, the values of its response tokens [R_i]."""
        self.engine.eval()
        out = values_of(self, batch, list(range(len(batch))))
        return [out[i] for i in range(len(batch))]

    def critic_step(self, batch: LearnerBatch) -> dict[str, float]:
        """*Collective.* The critic's update on this rank's shard (laid out by LearnerBatch.shard)."""
        self.engine.train()
        return critic_on_batch(self, batch, self.algo, self.value_clip)
