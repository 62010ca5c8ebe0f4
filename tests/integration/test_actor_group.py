"""The one actor-group machinery on a real local Ray: placement, grow and shrink, replacing a dead
actor in its bundle, giving up after too many deaths, and naming the actor that died mid-call."""

import os
import signal
import threading
import time

import pytest
import ray

from cluster.actor_group import ActorCallTimeout, ActorGroup, ActorLost, GroupSpec, wait_all
from learner.rank import LearnerRank

pytestmark = [pytest.mark.integration,
              pytest.mark.usefixtures("ray_cluster")]  # the module's local Ray (tests/integration/conftest.py)

# A placed, unbuilt learner rank is the lightest real actor class: node_info() -> (node ip, pid).


RAY_NUM_CPUS = 4


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
        assert not lost.value.in_constructor  # killed: a new actor would live
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


class BrokenAtStart:
    """An actor whose constructor raises, as a rollout worker whose engine cannot start."""

    def __init__(self):
        raise ValueError("kv cache does not fit")

    def node_info(self):
        return None


def test_an_actor_whose_constructor_raised_is_lost_in_its_constructor():
    g = ActorGroup(GroupSpec("broken", 1, cpus_per_actor=0.5), BrokenAtStart, args_for=lambda i: ((), {}))
    try:
        with pytest.raises(ActorLost) as lost:
            g.call("node_info", timeout=60)
        assert lost.value.name == "broken[0]" and lost.value.in_constructor  # start-up does not retry it
        assert "raised in its creation task" in str(lost.value.error)
    finally:
        g.shutdown(method=None)


def test_an_error_that_is_the_symptom_of_another_actors_death_surfaces_as_that_death():
    # A collective whose peer was killed fails at once on the survivor, often before Ray reports the
    # death: the death is what the caller must see (it rebuilds the group), not the survivor's error.
    g = make(2)
    try:
        victim = pids(g)[1]
        os.kill(victim, signal.SIGSTOP)  # its call stays pending until it is killed
        refs = [g.actors[0].param_checksum.remote(), g.actors[1].node_info.remote()]  # actor 0: unbuilt, raises
        ray.wait(refs[:1], timeout=30)
        threading.Timer(1.0, os.kill, (victim, signal.SIGKILL)).start()  # the death comes after the error
        with pytest.raises(ActorLost) as lost:
            wait_all(refs, ["echo[0]", "echo[1]"], "step", 60)
        assert lost.value.name == "echo[1]"
        assert "NoneType" in str(lost.value.__cause__)  # the survivor's error is kept as the context
    finally:
        g.shutdown(method=None)


def test_an_error_with_every_other_actor_alive_is_raised_as_itself_after_the_grace():
    g = make(2)
    try:
        stalled = pids(g)[1]
        os.kill(stalled, signal.SIGSTOP)  # alive, busy: no death to wait for
        refs = [g.actors[0].param_checksum.remote(), g.actors[1].node_info.remote()]
        t0 = time.monotonic()
        with pytest.raises(ray.exceptions.RayTaskError, match="NoneType"):
            wait_all(refs, ["echo[0]", "echo[1]"], "step", 60, death_grace_s=2.0)
        assert 2.0 <= time.monotonic() - t0 < 30  # waited the grace, not the call's timeout
        os.kill(stalled, signal.SIGCONT)
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
