"""The one actor-group machinery on a real local Ray: placement, grow and shrink, replacing a dead
actor in its bundle, giving up after too many deaths, and naming the actor that died mid-call."""

import os
import signal

import pytest
import ray

from cluster.actor_group import ActorCallTimeout, ActorGroup, ActorLost, GroupSpec, wait_all
from learner.rank import LearnerRank

pytestmark = pytest.mark.integration

# A placed, unbuilt learner rank is the lightest real actor class: node_info() -> (node ip, pid).


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield
    if started:
        ray.shutdown()


def make(n: int) -> ActorGroup:
    return ActorGroup(GroupSpec("echo", n, cpus_per_actor=0.5), LearnerRank, args_for=lambda i: ((), {}))


def pids(g: ActorGroup) -> list[int]:
    return [pid for _, pid in g.call("node_info", timeout=60)]


def test_grow_and_shrink_place_and_free_actors():
    g = make(1)
    try:
        first = pids(g)
        assert g.grow(2) == [1, 2]
        grown = pids(g)
        assert len(set(grown)) == 3 and grown[0] == first[0]
        assert len(g.pgs) == 2
        g.shrink(2)
        assert pids(g) == first and len(g.pgs) == 1  # the grown actors' placement group is freed
    finally:
        g.shutdown(method=None)


def test_a_dead_actor_is_named_replaced_and_too_many_deaths_stop_with_a_report():
    g = make(2)
    try:
        before = pids(g)
        os.kill(before[1], signal.SIGKILL)
        with pytest.raises(ActorLost) as lost:
            wait_all([g.actors[1].node_info.remote(), g.actors[0].node_info.remote()], ["echo[1]", "echo[0]"],
                     "node_info", 30)
        assert lost.value.name == "echo[1]" and "died during node_info" in str(lost.value)
        g.replace(1, "killed", max_failures=2, knob="echo.max_restarts")
        after = pids(g)
        assert after[0] == before[0] and after[1] not in before  # a new actor in the dead one's place
        g.replace(1, "killed again", max_failures=2, knob="echo.max_restarts")
        with pytest.raises(RuntimeError, match=r"3 actor deaths, more than the 2 allowed \(echo.max_restarts\)") as err:
            g.replace(0, "and again", max_failures=2, knob="echo.max_restarts")
        assert "echo[1]" in str(err.value) and "killed again" in str(err.value)  # the report lists every death
        assert pids(g)[0] == before[0]  # the refused replacement did not touch actor 0
    finally:
        g.shutdown(method=None)


def test_a_stalled_actor_fails_the_call_within_its_timeout_naming_it_and_the_knob():
    g = make(2)
    try:
        stalled = pids(g)[1]
        os.kill(stalled, signal.SIGSTOP)  # alive, silent: what a hung collective looks like from outside
        with pytest.raises(ActorCallTimeout, match=r"broadcast: no answer within 3s from echo\[1\] \(weight_sync.timeout_s\)"):
            g.wait(g.call_async("node_info"), "broadcast", 3, "weight_sync.timeout_s")
        os.kill(stalled, signal.SIGCONT)
    finally:
        g.shutdown(method=None)
