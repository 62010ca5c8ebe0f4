"""Rollout-side group functions: dynamic sampling, overlong penalty, GFPO selection."""

import pytest
import torch

from learner.algorithms import (
    compute_advantages,
    dynamic_sampling_keep,
    gfpo_mask,
    gfpo_select,
    overlong_penalty,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "rewards, keep",
    [([1, 1, 1], False), ([1.0, 0.0, 1.0], True), ([1.0, 1.0 + 1e-12], False), ([0.5], False), ([], False)],
)
def test_dynamic_sampling_keep(rewards, keep):
    assert dynamic_sampling_keep(rewards) is keep


def test_dynamic_sampling_accepts_tensors_and_tolerance():
    assert dynamic_sampling_keep(torch.tensor([0.0, 1.0])) is True
    assert dynamic_sampling_keep([0.0, 0.01], tol=0.1) is False


@pytest.mark.parametrize(
    "length, expected",
    [(10, 0.0), (16, 0.0), (17, -0.25), (18, -0.5), (20, -1.0), (21, -1.0)],
)
def test_overlong_penalty_dapo_ramp(length, expected):
    # L_max 20, L_cache 4: ramp (16 - L) / 4 over (16, 20], -1 beyond
    assert overlong_penalty(length, 20, 4) == pytest.approx(expected)
    assert overlong_penalty(length, 20, 4, factor=0.5) == pytest.approx(expected / 2)


def test_overlong_penalty_without_cache_window_and_bad_args():
    assert overlong_penalty(20, 20, 0) == 0.0 and overlong_penalty(21, 20, 0) == -1.0
    with pytest.raises(ValueError):
        overlong_penalty(5, 10, 11)


def test_gfpo_select():
    rewards, lengths = [1.0, 0.0, 1.0, 1.0], [10, 5, 5, 7]
    assert gfpo_select(rewards, lengths, 2) == [1, 2]  # the two shortest (tie at 5)
    assert gfpo_select(rewards, lengths, 3) == [1, 2, 3]
    # reward / length = [.1, 0, .2, .142857]
    assert gfpo_select(rewards, lengths, 2, metric="reward_per_token") == [2, 3]
    assert gfpo_select([0, 0, 0], [5, 5, 5], 2) == [0, 1]  # ties -> lower index
    assert gfpo_select(rewards, lengths, 10) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="metric"):
        gfpo_select(rewards, lengths, 2, metric="entropy")


def test_gfpo_mask_feeds_compute_advantages():
    rewards, lengths = [1.0, 0.0, 1.0, 1.0], [10, 5, 6, 7]
    kept = gfpo_select(rewards, lengths, 3)  # [1, 2, 3]: rewards 0, 1, 1
    keep = gfpo_mask(4, kept)
    assert keep == [False, True, True, True]
    groups = torch.zeros(4, dtype=torch.long)
    adv = compute_advantages("dr_grpo", torch.tensor(rewards), groups, keep_mask=torch.tensor(keep))
    # mean over the kept subset is 2/3; the dropped sample gets 0
    torch.testing.assert_close(adv, torch.tensor([0.0, -2 / 3, 1 / 3, 1 / 3]))
    with pytest.raises(ValueError):
        gfpo_mask(2, [3])
