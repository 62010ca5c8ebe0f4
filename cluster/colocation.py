"""Colocated mode (`cluster.colocate=true`): rollout worker i lives in learner rank i's placement bundle.

Placement. One placement group of K bundles (K = learner.num_ranks = rollout.num_workers), placed by
learner.placement; bundle i holds learner rank i and rollout worker i, so a pair always shares a node
(and, on GPU, a device: each asks for half of the bundle's learner.gpus_per_rank).

One step, in this order (sync mode only; the driver's loop does not change):

    generate (engines awake) -> sleep -> learner computes -> wake weights -> load -> wake KV cache

`RolloutPool.sleep` is called before the learner computes; `WeightSync.push` wakes the weights, moves
them and then wakes the KV cache, so a load's buffers and the KV cache are never on a device at once.
GPU-only: vLLM's sleep mode (level 1: weights to host RAM, KV cache freed) is what frees the device.
vLLM's CPU build has no sleep mode: here the calls keep their order and their checks (a sleeping
engine refuses to generate, probe or load; `RolloutWorker.events` records the order) and free nothing.

Weights move without the network: the lowest learner rank on each node writes the update, in the
protocol's bucket layout (learner/weight_protocol.py, `file_layout`), to a file in the node's shared
memory (/dev/shm); every rollout worker on that node maps the file and loads from it. Every learner
rank takes part in writing (ZeRO-3 gathers are collective). On GPU the file is staged through host
memory; CUDA IPC handles (no host copy) are not built.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from cluster.resources import MIN_BUNDLE_CPU

SHM_DIR = Path("/dev/shm")


class Colocation:
    """The shared placement group, and where each node's weight file lives."""

    def __init__(self, cfg: Any):
        from cluster.actor_group import place

        le, ro = cfg.learner, cfg.rollout
        bundle = {"CPU": max(le.cpus_per_rank + ro.cpus_per_worker, MIN_BUNDLE_CPU)}
        if le.gpus_per_rank:  # GPU-only: the pair shares the rank's GPUs
            bundle["GPU"] = le.gpus_per_rank
        self.pg = place("colocated", bundle, le.num_ranks, le.placement)
        self.slots = [(self.pg, i) for i in range(le.num_ranks)]
        self.gpus_each = le.gpus_per_rank / 2  # GPU-only: rank and engine each ask for half the bundle's GPUs
        self.tag = uuid.uuid4().hex[:12]  # weight files of this run only

    def weight_file(self, node_id: str) -> str:
        """The shared-memory file the learner writes on node `node_id` and its rollout workers read."""
        return str(SHM_DIR / f"relayrl-{self.tag}-{node_id[:16]}.weights")

    def files(self, learner_nodes: list[str], worker_nodes: list[str]) -> tuple[list[str], list[bool], list[str]]:
        """(each rank's file, whether it writes it: the lowest rank on its node, each worker's file)."""
        rank_files = [self.weight_file(n) for n in learner_nodes]
        writers = [learner_nodes.index(n) == r for r, n in enumerate(learner_nodes)]
        missing = sorted(set(worker_nodes) - set(learner_nodes))
        if missing:  # a bundle keeps its pair together; this would be a placement bug
            raise RuntimeError(f"colocated rollout workers on nodes without a learner rank: {missing}")
        return rank_files, writers, [self.weight_file(n) for n in worker_nodes]

    def record_events(self, run_dir: Path, workers: Any) -> None:
        """Each engine's last calls, in order (sleep, wake, load, generate, probe), to
        RUN_DIR/colocation_events.json: what a colocated run's engines did, for a hang's post-mortem."""
        import json

        try:
            events = workers.call("events", timeout=30)
        except Exception as e:  # a dead worker: say so in the record instead
            events = [f"unavailable: {e}"]
        (Path(run_dir) / "colocation_events.json").write_text(json.dumps(events, indent=1))

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        try:
            remove_placement_group(self.pg)
        except Exception:  # the cluster is going away anyway
            pass
        for f in SHM_DIR.glob(f"relayrl-{self.tag}-*.weights"):  # a file whose writer died with its node
            try:
                os.unlink(f)
            except OSError:
                pass
