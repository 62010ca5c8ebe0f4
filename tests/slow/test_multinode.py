"""Placement on a simulated multi-node cluster: Ray's `ray.cluster_utils.Cluster` runs several raylets
on this machine, each a node with its own logical CPUs and Ray labels. Learner ranks and rollout
workers land on the nodes their `placement.node_labels` name, the weight-sync group spans nodes
(probe-verified every step), and when the rollout worker's node is removed mid-run the worker is
replaced on the other rollout node and every prompt is still trained exactly once. Colocated pairs
(cluster.colocate) share a node and get their weights through its shared memory, in the engine order
sleep -> learn -> wake weights -> load -> wake KV cache. A topology no node can take is refused before
any actor starts, naming the labels the nodes do have."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fault_runs import OVERRIDES, STEPS, assert_every_prompt_trained_once, facts, wait_for_step

from cluster.metrics import read_metrics

pytestmark = pytest.mark.slow

RELAYRL = str(Path(sys.executable).with_name("relayrl"))
ROLE = "relayrl/role"


@pytest.fixture(scope="module")
def cluster():
    """head (the reward scorer), one learner node (2 CPUs: both ranks), two rollout nodes (1 CPU each:
    one worker, and room for its replacement)."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "labels": {ROLE: "head"}})
    nodes = {"learner": c.add_node(num_cpus=2, labels={ROLE: "learner"}),
             "rollout_a": c.add_node(num_cpus=1, labels={ROLE: "rollout"}),
             "rollout_b": c.add_node(num_cpus=1, labels={ROLE: "rollout"})}
    c.wait_for_nodes()
    yield c, nodes
    c.shutdown()


def placed_run(tmp_path: Path, address: str) -> list[str]:
    return [f"model.path={tmp_path}/model", f"logging.run_dir={tmp_path}/run", *OVERRIDES,
            f"cluster.address={address}", "learner.num_ranks=2", "learner.threads_per_rank=1",
            f"learner.placement.node_labels={{{ROLE}: learner}}", "learner.placement.strategy=strict_pack",
            f"rollout.placement.node_labels={{{ROLE}: rollout}}", "rollout.threads_per_worker=1",
            f"reward.placement.node_labels={{{ROLE}: head}}",
            "rollout.sampling.max_new_tokens=32", "rollout.sampling.min_new_tokens=32"]


def test_a_label_no_node_carries_is_refused_before_any_actor_starts(tmp_path, cluster):
    c, _ = cluster
    over = [*placed_run(tmp_path, c.address), f"rollout.placement.node_labels={{{ROLE}: inference}}"]
    done = subprocess.run([RELAYRL, "train", "configs/demo_grpo.yaml", *over], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    err = done.stdout + done.stderr
    assert "rollout: no node of the Ray cluster carries the labels {'relayrl/role': 'inference'}" in err
    assert f"{ROLE}=head, {ROLE}=learner, {ROLE}=rollout" in err
    assert not (tmp_path / "run" / "placement.json").exists()  # refused before placement


def test_colocated_pairs_share_a_node_and_load_in_engine_order(tmp_path, cluster):
    """Two (learner rank, rollout worker) pairs, one per rollout node (strict_spread): each node's rank
    writes the weights to that node's shared memory and its worker loads them; probe every step."""
    c, nodes = cluster
    run_dir, steps = tmp_path / "run", 3
    over = [f"model.path={tmp_path}/model", f"logging.run_dir={run_dir}", *OVERRIDES, f"cluster.address={c.address}",
            "cluster.colocate=true", "learner.num_ranks=2", "rollout.num_workers=2", "learner.cpus_per_rank=0.5",
            "rollout.cpus_per_worker=0.5", "learner.threads_per_rank=1", "rollout.threads_per_worker=1",
            f"learner.placement.node_labels={{{ROLE}: rollout}}", "learner.placement.strategy=strict_spread",
            f"reward.placement.node_labels={{{ROLE}: head}}", f"trainer.total_steps={steps}"]
    done = subprocess.run([RELAYRL, "train", "configs/demo_grpo.yaml", *over], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    where = json.loads((run_dir / "placement.json").read_text())
    pairs = [(a["node_id"], b["node_id"]) for a, b in zip(where["learner"], where["rollout"])]
    assert all(a == b for a, b in pairs) and len({a for a, _ in pairs}) == 2  # a pair per node, two nodes
    assert {a for a, _ in pairs} == {nodes["rollout_a"].node_id, nodes["rollout_b"].node_id}
    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert all(r["sync/probe_max_abs_diff"] <= 1e-4 for r in rows)  # both nodes' engines hold the learner's weights

    # warm start (asleep), the first load, then per step: generate, sleep, learn, wake, load, wake, probe
    expected = ["sleep", "wake weights", "load v0", "wake kv_cache", "generate"]
    for v in range(1, steps + 1):
        expected += ["sleep", "wake weights", f"load v{v}", "wake kv_cache", "probe", "generate"]
    for events in json.loads((run_dir / "colocation_events.json").read_text()):
        collapsed = [e for i, e in enumerate(events) if not (e == "generate" and i and events[i - 1] == "generate")]
        assert collapsed in (expected, expected[:-1])  # the last generate: the final evaluation, if it had prompts
    assert not list(Path("/dev/shm").glob("relayrl-*.weights"))  # the weight files go with the run


# Last in this module: it removes a node from the module's cluster (a node added back from here does not
# join: the new raylet fails the cluster's token authentication).
def test_actors_land_where_the_labels_say_and_survive_losing_a_rollout_node(tmp_path, cluster, fault_report):
    c, nodes = cluster
    run_dir = tmp_path / "run"
    over = placed_run(tmp_path, c.address)
    proc = subprocess.Popen([RELAYRL, "train", "configs/demo_grpo.yaml", *over],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_step(run_dir, 2, proc)
        where = json.loads((run_dir / "placement.json").read_text())
        assert [a["node_id"] for a in where["learner"]] == [nodes["learner"].node_id] * 2  # strict_pack, its node
        assert [a["labels"] for a in where["reward"]] == [{ROLE: "head"}]
        [first] = [a["node_id"] for a in where["rollout"]]
        lost, spare = ((nodes["rollout_a"], nodes["rollout_b"]) if first == nodes["rollout_a"].node_id
                       else (nodes["rollout_b"], nodes["rollout_a"]))
        assert first == lost.node_id
        c.remove_node(lost)  # its raylet and every process on it end: the rollout worker dies with it
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    assert proc.returncode == 0, out[-3000:]
    assert f"rollout[0] replaced: the new worker runs on node {spare.node_ip_address} {spare.node_id[:8]} {ROLE}=rollout" in out
    assert "placement: learner[0] learner[1] on" in out

    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[-1]["rollout/worker_restarts"] == 1
    # every step's probe compared the learner node's weights with the rollout node's, after the loss too
    assert all(r["sync/probe_max_abs_diff"] <= 1e-4 for r in rows)
    assert_every_prompt_trained_once(rows, over, tmp_path)
    fault_report(**facts(rows), replaced=1)
