"""What a run's actors reserve against what a cluster has (cluster/resources.py), the run
directory's permissions, and the loopback helpers of cluster/network.py — all without Ray."""

import stat

import pytest

from cluster.config import load_config
from cluster.network import loopback_env, loopback_interface
from cluster.resources import Node, demand, placement_line, shortfall, total
from cluster.run_setup import make_run_dir

pytestmark = pytest.mark.unit


def test_demand_mirrors_the_actor_groups():
    cfg = load_config(None, ["learner.num_ranks=2", "rollout.num_workers=3", "rollout.cpus_per_worker=2"])
    by_name = {g.name: (g.actors, g.cpus, g.gpus) for g in demand(cfg)}
    # reward scorers ask for 0 CPUs; an empty bundle is refused by Ray, so they hold 0.01 (ActorGroup)
    assert by_name == {"learner": (2, 1.0, 0.0), "rollout": (3, 2.0, 0.0), "reward": (1, 0.01, 0.0)}
    assert total(demand(cfg), "CPU") == pytest.approx(8.01)


def test_demand_counts_an_autoscaled_pool_at_its_largest_and_the_reward_model():
    cfg = load_config(None, ["rollout.autoscale.enabled=true", "rollout.autoscale.max_workers=4",
                             "reward.model_path=/m"])
    by_name = {g.name: g for g in demand(cfg)}
    assert by_name["rollout"].actors == 4 and by_name["rollout"].knobs[0] == "rollout.autoscale.max_workers"
    assert by_name["reward_model"].actors == 1


def test_cpu_shortfall_names_every_term_and_the_cluster():
    groups = demand(load_config(None, ["learner.num_ranks=2"]))
    [msg] = shortfall(groups, [Node({"CPU": 2.0})], "the Ray cluster")
    assert "need 3.01 CPUs" in msg and "has 2" in msg
    assert "learner 2 x 1 (learner.num_ranks x learner.cpus_per_rank)" in msg
    assert "rollout 1 x 1 (rollout.num_workers x rollout.cpus_per_worker)" in msg
    assert shortfall(groups, [Node({"CPU": 4.0})], "the Ray cluster") == []


def test_gpus_asked_where_there_are_none():
    groups = demand(load_config(None, ["cluster.device=cuda", "learner.gpus_per_rank=1"]))
    [msg] = shortfall(groups, [Node({"CPU": 64.0, "GPU": 0.0})], "the Ray cluster")
    assert "need 2 GPUs" in msg and "learner 1 x 1" in msg and "rollout 1 x 1" in msg
    assert "cluster.device=cpu" in msg


def test_an_actor_larger_than_any_node_is_refused_even_when_the_sum_fits():
    groups = demand(load_config(None, ["learner.cpus_per_rank=8"]))
    [msg] = shortfall(groups, [Node({"CPU": 4.0})] * 4, "the Ray cluster")
    assert "one learner actor asks for 8 CPUs (learner.cpus_per_rank)" in msg and "cannot span nodes" in msg


# a 2 x 8-GPU cluster: one node for the learner, one for rollouts (ray start --labels relayrl/role=...)
TWO_NODES = [Node({"CPU": 32.0, "GPU": 8.0}, {"relayrl/role": "learner"}),
             Node({"CPU": 32.0, "GPU": 8.0}, {"relayrl/role": "rollout"})]
GPU_RUN = ["cluster.device=cuda", "learner.gpus_per_rank=1", "learner.placement.node_labels={relayrl/role: learner}",
           "rollout.placement.node_labels={relayrl/role: rollout}"]


def test_labelled_groups_are_checked_against_their_own_nodes_only():
    fits = demand(load_config(None, GPU_RUN + ["learner.num_ranks=8", "rollout.num_workers=4",
                                               "rollout.tensor_parallel_size=2"]))
    assert shortfall(fits, TWO_NODES, "the Ray cluster") == []
    # 16 GPUs in all would fit the cluster, but the learner's label allows one node of 8
    [msg] = shortfall(demand(load_config(None, GPU_RUN + ["learner.num_ranks=10", "rollout.num_workers=3"])),
                      TWO_NODES, "the Ray cluster")
    assert msg.startswith("learner: 10 actors x 1 GPUs (learner.num_ranks x learner.gpus_per_rank) do not fit")
    assert "the 1 node(s) of the Ray cluster labelled {'relayrl/role': 'learner'}, which have 8 GPUs" in msg


def test_a_label_no_node_carries_names_the_labels_there_are():
    groups = demand(load_config(None, ["rollout.placement.node_labels={relayrl/role: inference}"]))
    [msg] = shortfall(groups, TWO_NODES, "the Ray cluster")
    assert "rollout: no node of the Ray cluster carries the labels {'relayrl/role': 'inference'}" in msg
    assert "rollout.placement.node_labels" in msg and "relayrl/role=learner, relayrl/role=rollout" in msg
    # a local cluster has one unlabelled node: refused from the config alone
    [msg] = shortfall(groups, [Node({"CPU": 8.0})], "the local cluster")
    assert "its nodes' labels: none" in msg


def test_strict_strategies_need_one_node_per_actor_or_one_node_for_all():
    nodes = [Node({"CPU": 4.0})] * 3
    spread = demand(load_config(None, ["rollout.num_workers=4", "rollout.placement.strategy=strict_spread",
                                       "learner.cpus_per_rank=0.5"]))
    [msg] = shortfall(spread, nodes, "the Ray cluster")
    assert "strict_spread puts each of the 4 actors on its own node, but only 3 node(s)" in msg
    assert shortfall(demand(load_config(None, ["rollout.num_workers=4", "rollout.placement.strategy=spread"])),
                     nodes, "the Ray cluster") == []
    pack = demand(load_config(None, ["learner.num_ranks=5", "learner.placement.strategy=strict_pack"]))
    [msg] = shortfall(pack, nodes, "the Ray cluster")
    assert "strict_pack puts all 5 actors on one node (5 CPUs), but the largest node of the Ray cluster has 4" in msg


def test_new_run_directory_is_owner_only_and_a_users_own_keeps_its_mode(tmp_path):
    run_dir = make_run_dir(load_config(None, [f"logging.run_dir={tmp_path}/runs/a"]))
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    mine.chmod(0o755)
    assert stat.S_IMODE(make_run_dir(load_config(None, [f"logging.run_dir={mine}"])).stat().st_mode) == 0o755


def test_loopback_interface_is_the_one_holding_127_0_0_1():
    iface = loopback_interface()
    assert loopback_env()["GLOO_SOCKET_IFNAME"] == iface
    psutil = pytest.importorskip("psutil")
    assert any(a.address == "127.0.0.1" for a in psutil.net_if_addrs()[iface])


def test_placement_line_groups_actors_by_node_with_their_labels():
    node = lambda nid, ip, **labels: {"node_id": nid, "ip": ip, "labels": labels}  # noqa: E731
    a, b = node("aaaa1111bbbb", "10.0.0.5", **{"relayrl/role": "learner"}), node("cccc2222dddd", "10.0.0.6")
    where = {"learner": [a, a], "rollout": [b], "reward": [a]}
    assert placement_line(where) == ("placement: learner[0] learner[1] reward[0] on 10.0.0.5 aaaa1111 "
                                     "(relayrl/role=learner); rollout[0] on 10.0.0.6 cccc2222")
    assert placement_line({"learner": [b], "rollout": [b]}) == "placement: every actor on one Ray node, 10.0.0.6 cccc2222"
