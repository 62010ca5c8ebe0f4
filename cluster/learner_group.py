"""The learner: K `LearnerRank` Ray actors forming one DeepSpeed data-parallel group.

Every method calls ALL ranks at once: forward/backward under ZeRO-3, gradient reduction, the
step's all-reduces, checkpoints, export and the weight broadcast are collectives, and a collective
called on one rank alone deadlocks. Every wait has a timeout (learner.call_timeout_s) whose error
names the ranks that did not answer; a rank that raises surfaces its own error at once instead of
leaving the others to time out.

Start-up is two-phase because the DeepSpeed rendezvous needs facts only known after placement:
the actors are placed first (ActorGroup; `LearnerRank()` does no work), then rank 0's node IP and a
port rank 0 already listens on there (and only there) become MASTER_ADDR/MASTER_PORT, each rank's LOCAL_RANK is its index among the ranks
on its node, and only then does every rank build its engine (`ActorGroup.build`). A rank that dies
surfaces as `ActorLost` naming it (also when a survivor's collective fails first: cluster/actor_group.py
waits DEATH_GRACE_S for the death behind such an error); the trainer then rebuilds the whole group from the latest
checkpoint (cluster/learner_recovery.py): the survivors are stuck in a collective with the dead.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import ray

from cluster.actor_group import ActorGroup, GroupSpec
from learner.batch import LearnerBatch
from learner.config import AlgorithmConfig, LearnerConfig
from learner.critic import CriticRank
from learner.rank import LearnerRank

TIMEOUT_KNOB = "learner.call_timeout_s"


class LearnerGroup:
    NAME, RANK, TIMEOUT_KNOB = "learner", LearnerRank, TIMEOUT_KNOB

    def __init__(self, model_path: str, cfg: LearnerConfig, algo: AlgorithmConfig, total_steps: int,
                 temperature: float = 1.0, device: str = "cpu", colocation: Optional[Any] = None,
                 build_kwargs: Optional[dict[str, Any]] = None):
        self.cfg, self.algo = cfg, algo
        self.timeout_s = cfg.call_timeout_s
        K = cfg.num_ranks
        env = {"TOKENIZERS_PARALLELISM": "false"}
        if cfg.threads_per_rank:
            env["OMP_NUM_THREADS"] = str(cfg.threads_per_rank)
        # colocated (cluster/colocation.py): rank i shares bundle i with rollout worker i
        gpus = colocation.gpus_each if colocation else cfg.gpus_per_rank
        self.group = ActorGroup(GroupSpec(self.NAME, K, cfg.cpus_per_rank, gpus, cfg.placement, env=env),
                                self.RANK, args_for=lambda i: ((), {}), shared=colocation.slots if colocation else ())
        try:
            ips = [ip for ip, _ in self._call("node_info")]
            master_addr, master_port = self._wait([self.group.actors[0].weight_sync_address.remote()], "rendezvous")[0]
            local_rank = [ips[:i].count(ip) for i, ip in enumerate(ips)]
            local_size = [ips.count(ip) for ip in ips]
            if device == "cuda":  # GPU-only: Ray gives each rank its own visible GPU: it is device 0 in every actor
                local_rank, local_size = [0] * K, [1] * K
            self.group.build([
                ((model_path, cfg, algo, i, K, master_addr, master_port, total_steps),
                 {"temperature": temperature, "device": device, "local_rank": local_rank[i], "local_size": local_size[i],
                  **(build_kwargs or {})})
                for i in range(K)], self.timeout_s, self.TIMEOUT_KNOB)
        except BaseException:
            self.group.shutdown(method=None)
            raise

    def __len__(self) -> int:
        return len(self.group)

    # ---- training --------------------------------------------------------------------------------
    def train_step(self, batch: LearnerBatch) -> dict[str, float]:
        """One RL update on the global batch: rank r trains on batch.shard(r, K, mini_batches).
        Returns rank 0's (globally reduced) metrics after checking that the ranks agree."""
        K, M = len(self), self.algo.mini_batches
        results = self._call_each("train_step", [((batch.shard(r, K, M),), {}) for r in range(K)])
        _check_agree(results, ("learner/loss", "learner/grad_norm"), "train_step")
        return results[0]

    def reference_kl(self, batch: LearnerBatch) -> list:
        """Per sequence, the per-token KL(policy || reference) [R_i] (PPO's KL-in-reward)."""
        return self._per_sequence("reference_kl", batch)

    def preference_step(self, batch: LearnerBatch) -> dict[str, float]:
        """One DPO/IPO step on a batch of pairs (sequences 2p, 2p + 1); pairs are dealt round-robin
        to the ranks and stay whole (the loss uses the global pair count)."""
        K, pairs = len(self), len(batch) // 2
        shards = [batch.select([q for p in range(r, pairs, K) for q in (2 * p, 2 * p + 1)]) for r in range(K)]
        results = self._call_each("preference_step", [((shards[r],), {}) for r in range(K)])
        _check_agree(results, ("dpo/loss", "dpo/grad_norm"), "preference_step")
        return results[0]

    def reset_reference(self, model_path: Optional[str] = None) -> None:
        """The reference model becomes a copy of the policy as it is now, or of the HF directory
        `model_path` (every rank)."""
        self._call("reset_reference", model_path)

    def sft_step(self, batch: LearnerBatch, lr: Optional[float] = None,
                 aux_coef: Optional[float] = None) -> dict[str, float]:
        """One supervised step. Sequences are dealt round-robin: uneven shards are fine (the loss
        uses the global token count)."""
        return self.sft_steps([batch], lr, aux_coef)[0]

    def sft_steps(self, batches: Sequence[LearnerBatch], lr: Optional[float] = None,
                  aux_coef: Optional[float] = None) -> list[dict[str, float]]:
        """Consecutive supervised steps in one call per rank; rank 0's metrics of each step. `lr` and
        `aux_coef` (the MoE balance loss's coefficient) override the learner's for these steps."""
        K = len(self)
        shards = [[b.select(list(range(r, len(b), K))) for b in batches] for r in range(K)]
        results = self._call_each("sft_steps", [((shards[r], lr, aux_coef), {}) for r in range(K)])
        for step in zip(*results):
            _check_agree(list(step), ("sft/loss", "sft/grad_norm"), "sft_step")
        return results[0]

    def probe_logprobs(self, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int],
                       temperature: Optional[float] = None) -> list[list[float]]:
        seqs = [list(map(int, s)) for s in sequences]
        return self._call("probe_logprobs", seqs, list(prompt_lengths), temperature)[0]

    # ---- checkpoints and export ----------------------------------------------------------------
    def save_checkpoint(self, directory: str, tag: Optional[str] = None, client_state: Optional[dict] = None) -> None:
        self._call("save_checkpoint", directory, tag, client_state)

    def load_checkpoint(self, directory: str, tag: Optional[str] = None) -> dict[str, Any]:
        return self._call("load_checkpoint", directory, tag)[0]

    def export_hf(self, directory: str, tokenizer_src: Optional[str] = None) -> str:
        self._call("export_hf", directory, tokenizer_src)
        return directory

    def full_state_dict(self) -> dict[str, Any]:
        return self._call("full_state_dict")[0]

    # ---- weight sync (send side) -------------------------------------------------------------------
    def weight_plan(self, bucket_bytes: int) -> tuple[list, list[list[int]]]:
        """(manifest, buckets); every rank keeps the plan, since ZeRO-3 ranks gather by it."""
        return self._call("weight_plan", bucket_bytes)[0]

    def weight_sync_address(self) -> tuple[str, int]:
        return self._wait([self.group.actors[0].weight_sync_address.remote()], "weight_sync_address")[0]

    def init_weight_sync_async(self, host: str, port: int, world_size: int, backend: str = "auto",
                               timeout_s: float = 120.0, bucket_bytes: Optional[int] = None) -> list[ray.ObjectRef]:
        """Refs of every rank's init_weight_sync (rank 0 joins the group as rank 0; it returns only
        once every rollout rank has joined, so the driver waits on both sides together)."""
        return self.group.call_async("init_weight_sync", host, port, world_size, bucket_bytes=bucket_bytes,
                                     timeout_s=timeout_s, backend=backend)

    def broadcast_weights_async(self, version: int) -> list[ray.ObjectRef]:
        """Refs of every rank's broadcast_weights(version): wait on them with the receivers' refs."""
        return self.group.call_async("broadcast_weights", version)

    broadcast_weights = broadcast_weights_async

    # ---- tests / diagnostics ----------------------------------------------------------------------
    def param_checksum(self) -> list[dict[str, float]]:
        return self._call("param_checksum")

    def local_param_checksum(self) -> list[float]:
        return self._call("local_param_checksum")

    def shutdown(self, lost: bool = False) -> None:
        """lost: a rank died, the others may be stuck in a collective with it: kill them, don't ask."""
        self.group.shutdown(method=None if lost else "shutdown")

    # ---- calls ---------------------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return self._wait(self.group.call_async(method, *args, **kwargs), method)

    def _call_each(self, method: str, per_rank: list[tuple[tuple, dict]]) -> list[Any]:
        return self._wait(self.group.call_each_async(method, per_rank), method)

    def _per_sequence(self, method: str, batch: LearnerBatch) -> list[Any]:
        """`method` on sequences dealt round-robin to the ranks (a no-grad pass: any split gives the
        same values); one result per sequence, in the batch's order."""
        K, n = len(self), len(batch)
        results = self._call_each(method, [((batch.select(list(range(r, n, K))),), {}) for r in range(K)])
        return [results[i % K][i // K] for i in range(n)]

    def _wait(self, refs: list[ray.ObjectRef], what: str) -> list[Any]:
        """All results, in rank order: a rank's error (ActorLost if it died) as soon as it arrives, and
        on timeout an error naming the ranks still running."""
        return self.group.wait(refs, f"{self.NAME} {what}", self.timeout_s, self.TIMEOUT_KNOB)


class CriticGroup(LearnerGroup):
    """PPO's value model (learner/critic.py): its own data-parallel DeepSpeed group of `CriticRank`s,
    sized by critic.learner independently of the policy's; the same calls, timeouts and checkpoints."""

    NAME, RANK, TIMEOUT_KNOB = "critic", CriticRank, "critic.learner.call_timeout_s"

    def __init__(self, model_path: str, cfg: LearnerConfig, algo: AlgorithmConfig, total_steps: int,
                 value_clip: Optional[float], device: str = "cpu"):
        super().__init__(model_path, cfg, algo, total_steps, device=device, build_kwargs={"value_clip": value_clip})

    def values(self, batch: LearnerBatch) -> list:
        """Per sequence, the critic's values of its response tokens [R_i]."""
        return self._per_sequence("values", batch)

    def train_step_async(self, batch: LearnerBatch) -> list[ray.ObjectRef]:
        """Start the critic's update (rank r on batch.shard(r, K, mini_batches)); `finish_step` waits.
        It runs while the policy trains: the two groups are independent."""
        K, M = len(self), self.algo.mini_batches
        return self.group.call_each_async("critic_step", [((batch.shard(r, K, M),), {}) for r in range(K)])

    def finish_step(self, refs: list[ray.ObjectRef]) -> dict[str, float]:
        results = self._wait(refs, "critic_step")
        _check_agree(results, ("critic/loss", "critic/grad_norm"), "critic_step")
        return results[0]


def _check_agree(results: list[dict[str, float]], keys: Sequence[str], what: str, rtol: float = 1e-6) -> None:
    """The metrics are all-reduced inside the step, so every rank must report the same values; a
    difference means the ranks did not train on the same global step (a desync, not noise)."""
    for key in keys:
        vals = [r.get(key) for r in results]
        ref = vals[0]
        for rank, v in enumerate(vals[1:], start=1):
            if ref is None or v is None:
                continue
            if abs(v - ref) > rtol * max(1.0, abs(ref)) and not (v != v and ref != ref):
                raise RuntimeError(f"learner {what}: rank {rank} reports {key}={v!r}, rank 0 {ref!r}: ranks diverged")
