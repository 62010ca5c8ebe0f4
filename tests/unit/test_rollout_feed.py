"""The async feed without Ray: what is issued when, staleness, and exactly-once across a checkpoint."""

import collections
import types

import pytest

from actors.buffer import GroupBuffer
from actors.types import Group, Sample
from cluster.config import load_config
from cluster.data import PromptStream
from actors.engine_io import token_versions
from cluster.metrics import version_spans
from cluster.rollout_feed import RolloutFeed, staleness_metrics

pytestmark = pytest.mark.unit


class FakeRollout:
    """Stands in for RolloutPool.generate: groups stamped with the version the 'workers' hold."""

    def __init__(self):
        self.version = 0
        self.calls: list[list[str]] = []

    def generate(self, prompts, n):  # like a worker, stamps the version it holds when the call arrives
        self.calls.append([p["prompt_id"] for p in prompts])
        return iter([Group(p["prompt_id"], [Sample(p["prompt_id"], "q", [1], "a", [2], [-0.1], "stop", self.version,
                                                   reward=float(i % 2)) for i in range(n)]) for p in prompts])


def make_run(**over):
    cfg = load_config(None, [f"{k}={v}" for k, v in {"trainer.prompts_per_step": 4, "rollout.n": 2, **over}.items()])
    prompts = [{"prompt_id": f"p{i}", "prompt": str(i)} for i in range(40)]
    return types.SimpleNamespace(cfg=cfg, stream=PromptStream(prompts, 0, shuffle=False), rollout=FakeRollout())


def feed_of(run, depth):
    return RolloutFeed(run, GroupBuffer(run.cfg.buffer, 8), depth)


def test_depth_zero_issues_only_when_the_step_asks():
    run = make_run()
    feed = feed_of(run, 0)
    feed.start_ahead(1, last_step=10)
    assert run.rollout.calls == []
    groups, stale = feed.take(1, version=0, timing={})
    assert [g.prompt_id for g in groups] == ["p0", "p1", "p2", "p3"] and stale["staleness/max"] == 0
    feed.close()


def test_depth_one_issues_the_next_step_with_the_weights_the_workers_hold():
    run = make_run()
    feed = feed_of(run, 1)
    g1, _ = feed.take(1, version=0, timing={})
    feed.start_ahead(1, last_step=3)  # step 2 goes out now, to version-0 workers
    feed.start_ahead(1, last_step=3)  # idempotent: never more than depth ahead
    assert run.rollout.calls == [["p0", "p1", "p2", "p3"], ["p4", "p5", "p6", "p7"]]
    run.rollout.version = 1  # the weight push after step 1
    g2, m = feed.take(2, version=1, timing={})
    assert [g.prompt_id for g in g2] == ["p4", "p5", "p6", "p7"]
    stale = {k: v for k, v in m.items() if k.startswith("staleness/")}
    assert stale == {"staleness/mean": 1.0, "staleness/max": 1.0, "staleness/samples_lag_1": 8.0,
                     "staleness/partial_samples": 0.0}
    feed.start_ahead(2, last_step=2)  # never past the last step
    assert len(run.rollout.calls) == 2
    feed.close()


def test_a_sample_staler_than_the_bound_is_refused_and_counted():
    run = make_run(**{"buffer.max_staleness": 1, "buffer.max_extra_rounds": 0})
    buffer = GroupBuffer(run.cfg.buffer, 8)
    feed = RolloutFeed(run, buffer, 1)
    feed.start_ahead(0, last_step=5)  # step 1 issued to version-0 workers
    groups, _ = feed.take(1, version=2, timing={})  # the learner is 2 versions ahead: all too stale
    assert groups == []
    assert buffer.counts["dropped_groups/stale"] == 4 and buffer.counts["dropped_samples/stale"] == 8
    feed.close()


def test_checkpoint_keeps_issued_batches_so_every_prompt_trains_once():
    # uninterrupted: steps 1..4 (the fake's versions stay 0: staleness is not what this test is about)
    run = make_run(**{"buffer.max_staleness": 9})
    feed = feed_of(run, 1)
    trained = []
    for step in range(1, 5):
        groups, _ = feed.take(step, version=step - 1, timing={})
        feed.start_ahead(step, last_step=4)
        trained += [g.prompt_id for g in groups]
    # interrupted after step 2's checkpoint (batch 3 was already issued), then resumed in a new feed
    run_a = make_run(**{"buffer.max_staleness": 9})
    feed_a = feed_of(run_a, 1)
    first = []
    for step in (1, 2):
        groups, _ = feed_a.take(step, version=step - 1, timing={})
        feed_a.start_ahead(step, last_step=4)
        first += [g.prompt_id for g in groups]
    blob, position = feed_a.state(), run_a.stream.state()
    feed_a.close()
    run_b = make_run(**{"buffer.max_staleness": 9})
    run_b.stream.load_state(position)
    feed_b = feed_of(run_b, 1)
    feed_b.load_state(blob)
    second = []
    for step in (3, 4):
        groups, _ = feed_b.take(step, version=step - 1, timing={})
        feed_b.start_ahead(step, last_step=4)
        second += [g.prompt_id for g in groups]
    assert first + second == trained == [f"p{i}" for i in range(16)]
    assert run_b.rollout.calls == [["p12", "p13", "p14", "p15"]]  # batch 3 came from the checkpoint
    feed_b.close()


def test_staleness_metrics_counts_trained_samples_only():
    s = lambda v: Sample("a", "q", [1], "a", [2], [-0.1], "stop", v)  # noqa: E731
    g = Group("a", [s(3), s(2), s(1)], kept=[0, 2])
    m = staleness_metrics([g], version=3)
    assert m == {"staleness/mean": 1.0, "staleness/max": 2.0, "staleness/samples_lag_0": 1.0,
                 "staleness/samples_lag_2": 1.0, "staleness/partial_samples": 0.0}


def test_partial_samples_are_as_stale_as_their_oldest_token():
    def s(versions):
        return Sample("a", "q", [1], "a", [2] * len(versions), [-0.1] * len(versions), "stop", min(versions),
                      token_versions=versions)

    g = Group("a", [s([4, 4, 5, 5]), s([5, 5])])  # the first sample saw a weight load mid-generation
    m = staleness_metrics([g], version=5)
    assert m["staleness/max"] == 1.0 and m["staleness/samples_lag_1"] == 1.0 and m["staleness/samples_lag_0"] == 1.0
    assert m["staleness/token_mean"] == pytest.approx(2 / 6)  # tokens: two of lag 1, four of lag 0
    assert m["staleness/partial_samples"] == 1.0


def test_token_versions_from_engine_spans():
    span = collections.namedtuple("span", "version start end")
    assert token_versions([span("3", 0, 2), span("4", 2, 5)], 5, current=9) == [3, 3, 4, 4, 4]
    assert token_versions(None, 3, current=7) == [7, 7, 7]  # no label reported: the worker's version
    assert token_versions([], 0, current=7) == []
    assert version_spans([3, 3, 4, 4, 4]) == [[3, 0, 2], [4, 2, 5]] and version_spans([]) == []


def test_dynamic_sampling_rounds_of_one_step_never_draw_a_prompt_twice():
    """A step's extra rounds are takes of their own; one that crosses into a new epoch must not draw
    a prompt an earlier round of the step already drew (the step would train it twice). Every group
    here has equal rewards, so each step runs all three rounds: 12 of 20 prompts, and the second step's
    third round crosses the epoch boundary."""
    class FlatRollout(FakeRollout):
        def generate(self, prompts, n):
            self.calls.append([p["prompt_id"] for p in prompts])
            return iter([Group(p["prompt_id"], [Sample(p["prompt_id"], "q", [1], "a", [2], [-0.1], "stop", 0,
                                                       reward=1.0) for _ in range(n)]) for p in prompts])

    for seed in range(10):
        run = make_run(**{"buffer.dynamic_sampling": True, "buffer.max_extra_rounds": 2})
        run.stream = PromptStream([{"prompt_id": f"p{i}"} for i in range(20)], seed)
        run.rollout = FlatRollout()
        feed = feed_of(run, 0)
        for step in (1, 2):
            feed.take(step, version=0, timing={})
        feed.close()
        assert len(run.rollout.calls) == 6
        for step_calls in (run.rollout.calls[:3], run.rollout.calls[3:]):
            drawn = [i for call in step_calls for i in call]
            assert len(drawn) == len(set(drawn)) == 12, (seed, step_calls)


def test_refill_count_asks_for_what_the_keep_rate_says_will_fill_the_batch():
    from actors.buffer import refill_count

    assert refill_count(6, kept=10, received=16, batch=16, rule="missing") == 6
    assert refill_count(6, kept=10, received=16, batch=16, rule="expected") == 10  # ceil(6 * 16 / 10)
    assert refill_count(6, kept=8, received=16, batch=16, rule="expected") == 12
    assert refill_count(14, kept=2, received=16, batch=16, rule="expected") == 16  # at most a batch
    assert refill_count(16, kept=0, received=16, batch=16, rule="expected") == 16  # nothing kept yet
    assert refill_count(3, kept=16, received=16, batch=16, rule="expected") == 3  # never fewer than missing


class HalfFlatRollout(FakeRollout):
    """Prompts p0, p2, p4 ... get equal rewards (dropped by dynamic sampling), odd ones mixed rewards."""

    def generate(self, prompts, n):
        self.calls.append([p["prompt_id"] for p in prompts])
        return iter([Group(p["prompt_id"], [Sample(p["prompt_id"], "q", [1], "a", [2], [-0.1], "stop", 0,
                                                   reward=float(i % 2) if int(p["prompt_id"][1:]) % 2 else 1.0)
                                            for i in range(n)]) for p in prompts])


@pytest.mark.parametrize("refill, calls", [
    # missing: 8 prompts give 4 valid groups, then 4 give 2, then 2 give 1: three rounds, one group short
    ("missing", [8, 4, 2]),
    # expected: after half of 8 was kept, 4 missing ask for 8 prompts, which give 4: two rounds, full
    ("expected", [8, 8]),
])
def test_dynamic_sampling_refill_rounds(refill, calls):
    run = make_run(**{"trainer.prompts_per_step": 8, "buffer.dynamic_sampling": True, "buffer.max_extra_rounds": 2,
                      "buffer.refill": refill})
    run.rollout = HalfFlatRollout()
    feed = feed_of(run, 0)
    timing: dict[str, float] = {}
    groups, _ = feed.take(1, version=0, timing=timing)
    feed.close()
    assert [len(c) for c in run.rollout.calls] == calls and timing["rounds"] == len(calls)
    assert len(groups) == 8
    valid = [g for g in groups if len(set(g.rewards)) > 1]
    assert len(valid) == (7 if refill == "missing" else 8)  # missing: one all-equal group fills the batch
    assert feed.buffer.counts["dropped_groups/surplus"] == 0


@pytest.mark.parametrize("completion", ["issue order", "reversed"])
def test_a_refill_that_overshoots_drops_the_surplus_and_counts_it(completion):
    """Prompt p0 mixed, p1..p3 flat, then every prompt mixed: 3 groups missing at a keep rate of 1 in
    4 would ask for 12 prompts, capped at a batch of 4, which give 4 valid groups for 3 places; the
    last issued is dropped, counted, and no later step trains it — whatever order the groups finish in."""
    class Rollout(FakeRollout):
        def generate(self, prompts, n):
            self.calls.append([p["prompt_id"] for p in prompts])
            flat = {"p1", "p2", "p3"}
            groups = [Group(p["prompt_id"], [Sample(p["prompt_id"], "q", [1], "a", [2], [-0.1], "stop", 0,
                                                    reward=1.0 if p["prompt_id"] in flat else float(i % 2))
                                             for i in range(n)]) for p in prompts]
            return iter(groups[::-1] if completion == "reversed" else groups)

    run = make_run(**{"trainer.prompts_per_step": 4, "buffer.dynamic_sampling": True, "buffer.max_extra_rounds": 2,
                      "buffer.refill": "expected"})
    run.rollout = Rollout()
    feed = feed_of(run, 0)
    groups, _ = feed.take(1, version=0, timing={})
    assert [len(c) for c in run.rollout.calls] == [4, 4]  # 3 missing, kept 1 of 4: 12, at most a batch of 4
    assert [g.prompt_id for g in groups] == ["p0", "p4", "p5", "p6"]
    assert feed.buffer.counts["dropped_groups/surplus"] == 1 and feed.buffer.counts["dropped_samples/surplus"] == 2
    groups2, _ = feed.take(2, version=1, timing={})
    assert [g.prompt_id for g in groups2] == ["p8", "p9", "p10", "p11"]  # p7 (surplus) is not trained later
    feed.close()


@pytest.mark.parametrize("completion", ["issue order", "reversed"])
def test_a_shortfall_is_filled_with_set_asides_in_issue_order(completion):
    """Round 0: p0 mixed, p1..p3 flat; the refill round: p4 mixed, p5 p6 flat. Two places are left,
    filled with set-aside groups: the first issued (p1, p2) whatever order the groups finish in, so a
    step's batch is a function of the data position alone (runs with dynamic sampling repeat exactly)."""
    class Rollout(FakeRollout):
        def generate(self, prompts, n):
            self.calls.append([p["prompt_id"] for p in prompts])
            mixed = {"p0", "p4"}
            groups = [Group(p["prompt_id"], [Sample(p["prompt_id"], "q", [1], "a", [2], [-0.1], "stop", 0,
                                                    reward=float(i % 2) if p["prompt_id"] in mixed else 1.0)
                                             for i in range(n)]) for p in prompts]
            return iter(groups[::-1] if completion == "reversed" else groups)

    run = make_run(**{"trainer.prompts_per_step": 4, "buffer.dynamic_sampling": True, "buffer.max_extra_rounds": 1})
    run.rollout = Rollout()
    feed = feed_of(run, 0)
    groups, _ = feed.take(1, version=0, timing={})
    feed.close()
    assert run.rollout.calls == [["p0", "p1", "p2", "p3"], ["p4", "p5", "p6"]]
    assert [g.prompt_id for g in groups] == ["p0", "p1", "p2", "p4"]
    assert feed.buffer.counts["dynamic_sampling_shortfall_groups"] == 2


def test_a_steps_engine_time_and_tokens_cover_every_generation_round():
    """HalfFlatRollout's rounds of 8, 4 and 2 prompts, each group with 2 samples of one token: the
    engines worked for the sum of the rounds' slowest groups (not the slowest round alone) and
    produced the tokens of all 14 groups, the 7 set aside included."""
    class Timed(HalfFlatRollout):
        def generate(self, prompts, n):
            groups = list(super().generate(prompts, n))
            for i, g in enumerate(groups):
                g.generate_seconds = 0.1 * len(prompts) + 0.01 * i  # a round of k prompts: its slowest 0.1k + 0.01(k-1)
            return iter(groups)

    run = make_run(**{"trainer.prompts_per_step": 8, "buffer.dynamic_sampling": True, "buffer.max_extra_rounds": 2})
    run.rollout = Timed()
    feed = feed_of(run, 0)
    groups, m = feed.take(1, version=0, timing={})
    feed.close()
    assert [len(c) for c in run.rollout.calls] == [8, 4, 2]
    assert m["rollout/engine_seconds"] == pytest.approx((0.8 + 0.07) + (0.4 + 0.03) + (0.2 + 0.01))
    assert m["rollout/generated_groups"] == 14 and m["rollout/generated_tokens"] == 14 * 2
    assert sum(s.response_length for g in groups for s in g.samples) == 8 * 2  # what rollout_stats sees
