"""The weight-sync group: learner rank 0 broadcasts full parameters to every rollout worker.

Set-up agrees names, shapes and the bucket plan once: the learner computes the manifest, the
rollout workers check it both ways against what their engines expect, then all sides join one
process group (gloo on CPU, NCCL on GPU). Every update carries a version number. Every wait has a
timeout whose error names the side that did not answer, so a lost worker fails the step loudly
instead of hanging the job.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ray

from cluster.actor_group import ActorLost, wait_all
from cluster.config import WeightSyncConfig
from learner.weight_protocol import manifest_bytes


class WeightSync:
    def __init__(self, learner: Any, rollout: Any, cfg: WeightSyncConfig, device: str):
        self.learner, self.rollout, self.cfg = learner, rollout, cfg
        self.backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device == "cuda" else "gloo")
        self.bytes = 0
        self.version = 0  # the last version pushed: what a replaced worker is brought to
        self.probe: tuple[list[list[int]], list[int]] | None = None  # fixed sequences for verification
        # The learner's weights change, and the group is re-formed, only under this lock: a rollout worker
        # replaced from a background thread (async mode) joins at the version it really receives.
        self.lock = threading.RLock()
        self._sending: list = []  # the learner's calls of the update in progress
        self.worker_files: list[str] = []  # colocated: the weight file each rollout worker reads
        rollout.on_replaced = self.rejoin

    def setup(self) -> None:
        bucket_bytes = int(self.cfg.bucket_mb * (1 << 20))
        manifest, buckets = self.learner.weight_plan(bucket_bytes)
        self.bytes = manifest_bytes(manifest)
        if self.rollout.colocation is not None:
            return self._setup_files(manifest, buckets)
        host, port = self.learner.weight_sync_address()
        world = self.rollout.world_size()
        timeout = self.cfg.timeout_s
        learner_refs = self.learner.init_weight_sync_async(host, port, world, self.backend, timeout)
        worker_refs = self.rollout.workers.call_each_async(
            "init_weight_sync",
            [((host, port, off, world, manifest, buckets, self.backend, timeout), {}) for off in self.rollout.rank_offsets()],
        )
        self._wait(learner_refs, worker_refs, "weight-sync set-up")

    def _setup_files(self, manifest: list, buckets: list) -> None:
        """Colocated (cluster/colocation.py): no group; each node's lowest learner rank writes the update
        to the node's shared-memory file, the rollout workers on that node read it."""
        rank_files, writers, self.worker_files = self.rollout.colocation.files(
            self.learner.group.nodes(), self.rollout.workers.nodes())
        learner_refs = self.learner.group.call_each_async("init_weight_file", [((f, w), {}) for f, w in zip(rank_files, writers)])
        worker_refs = self.rollout.workers.call_async("init_weight_file", manifest, buckets)
        self._wait(learner_refs, worker_refs, "weight-file set-up")

    def _send(self, version: int) -> None:
        """Move the weights (the learner's calls stay in self._sending, for the wait after a lost worker)."""
        if self.rollout.colocation is None:
            self._sending = self.learner.broadcast_weights_async(version)
            self._wait(self._sending, self.rollout.workers.call_async("receive_weights", version),
                       f"weight broadcast v{version}")
            return
        # colocated: weights awake first, then the file is written, then loaded, then the KV cache wakes
        self.rollout.wake_up(["weights"])
        self._sending = self.learner.group.call_async("write_weights_file", version)
        self._wait(self._sending, [], f"weight write v{version}")
        self._wait([], self.rollout.workers.call_each_async(
            "receive_weights_file", [((f, version), {}) for f in self.worker_files]), f"weight load v{version}")
        self.rollout.wake_up(["kv_cache"])

    def push(self, version: int) -> dict[str, float]:
        """Send the learner's current weights as `version`; every worker loads them in place."""
        with self.lock:
            t0 = time.perf_counter()
            self._sending = []
            try:
                self._send(version)
            except ActorLost as lost:
                dead = self.rollout.dead_after(lost)
                if not dead:
                    raise  # the learner died: the trainer rebuilds it (cluster/learner_recovery.py)
                # a worker died while idle: let the sender give up on the broken group, replace the
                # dead, re-form the group, and send this version again
                ray.wait(self._sending, num_returns=len(self._sending), timeout=self.cfg.timeout_s)
                self.rollout.replace_dead(dead, f"died before the weight push of v{version}")
                self.setup()
                out = self.push(version)
                if self.probe is not None:
                    out.update(self.verify(*self.probe, workers=dead))  # newcomers are proven before they sample
                return out
            self.version = version
            dt = time.perf_counter() - t0
            return {"sync/seconds": dt, "sync/bytes": float(self.bytes), "sync/MBps": self.bytes / dt / 1e6}

    def rejoin(self, replaced: list[int]) -> None:
        """Replaced rollout workers join: re-form the group for the new membership, push the last
        version to everyone (the others already hold it) and prove the newcomers hold it."""
        with self.lock:
            self.setup()
            self.push(self.version)
            if self.probe is not None:
                self.verify(*self.probe, workers=replaced)

    def verify(self, sequences: list[list[int]], prompt_lengths: list[int],
               workers: list[int] | None = None) -> dict[str, float]:
        """Prove the rollout engines (all, or `workers`) now compute the learner's distribution on a fixed probe."""
        # Temperature 1 on both sides: equal weights give equal raw distributions, and vLLM scores
        # prompt tokens at T=1 in one request (other temperatures need one request per token).
        with self.lock:
            mine = self.learner.probe_logprobs(sequences, prompt_lengths, 1.0)
        which = list(range(len(self.rollout.workers))) if workers is None else list(workers)
        theirs = wait_all([self.rollout.workers.actors[w].score_logprobs.remote(sequences, prompt_lengths, 1.0)
                           for w in which], [f"rollout[{w}]" for w in which], "probe", self.cfg.timeout_s)
        worst = 0.0
        for w, lps in zip(which, theirs):
            diff = max((abs(a - b) for seq_a, seq_b in zip(mine, lps) for a, b in zip(seq_a, seq_b)), default=0.0)
            if diff > self.cfg.verify_tolerance:
                raise RuntimeError(
                    f"weight sync verification failed: rollout[{w}] logprobs differ from the learner's by {diff:.3g} "
                    f"(> weight_sync.verify_tolerance={self.cfg.verify_tolerance}); the rollout engine is not "
                    f"sampling from the weights being trained")
            worst = max(worst, diff)
        return {"sync/probe_max_abs_diff": worst}

    def _wait(self, learner_refs: list, worker_refs: list, what: str) -> None:
        names = [f"learner[{i}]" for i in range(len(learner_refs))] + [f"rollout[{i}]" for i in range(len(worker_refs))]
        wait_all([*learner_refs, *worker_refs], names, what, self.cfg.timeout_s, "weight_sync.timeout_s")
