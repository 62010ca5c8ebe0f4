"""What a run's actors reserve against what a cluster has (cluster/resources.py), the run
directory's permissions, and the loopback helpers of cluster/network.py — all without Ray."""

import stat

import pytest

from cluster.config import load_config
from cluster.network import loopback_env, loopback_interface
from cluster.resources import demand, shortfall, total
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
    [msg] = shortfall(groups, {"CPU": 2.0, "GPU": 0.0}, "the Ray cluster")
    assert "need 3.01 CPUs" in msg and "has 2" in msg
    assert "learner 2 x 1 (learner.num_ranks x learner.cpus_per_rank)" in msg
    assert "rollout 1 x 1 (rollout.num_workers x rollout.cpus_per_worker)" in msg
    assert shortfall(groups, {"CPU": 4.0, "GPU": 0.0}, "the Ray cluster") == []


def test_gpus_asked_where_there_are_none():
    groups = demand(load_config(None, ["cluster.device=cuda", "learner.gpus_per_rank=1"]))
    [msg] = shortfall(groups, {"CPU": 64.0, "GPU": 0.0}, "the Ray cluster")
    assert "need 2 GPUs" in msg and "learner 1 x 1" in msg and "rollout 1 x 1" in msg
    assert "cluster.device=cpu" in msg


def test_an_actor_larger_than_any_node_is_refused_even_when_the_sum_fits():
    groups = demand(load_config(None, ["learner.cpus_per_rank=8"]))
    [msg] = shortfall(groups, {"CPU": 16.0, "GPU": 0.0}, "the Ray cluster", largest_node={"CPU": 4.0, "GPU": 0.0})
    assert "one learner actor asks for 8 CPUs (learner.cpus_per_rank)" in msg and "cannot span nodes" in msg


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
