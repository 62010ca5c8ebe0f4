"""Atomic checkpoints: latest only ever names a complete checkpoint; keep-last pruning; RNG round trip."""

import random

import numpy as np
import pytest
import torch

from cluster.checkpoint import Checkpointer, rng_state, set_rng_state

pytestmark = pytest.mark.unit


def fake_learner(path):
    import os

    os.makedirs(path)
    open(f"{path}/weights.bin", "w").write("w")


def test_save_prunes_and_points_latest(tmp_path):
    ck = Checkpointer(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        ck.save(step, {"step": step}, fake_learner)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_000002", "step_000003"]
    latest = Checkpointer.latest(tmp_path)
    assert latest.name == "step_000003" and Checkpointer.load_state(latest) == {"step": 3}


def test_crash_mid_write_keeps_previous_latest(tmp_path):
    ck = Checkpointer(tmp_path, keep_last=3)
    ck.save(1, {"step": 1}, fake_learner)

    def crash(path):
        fake_learner(path)
        raise KeyboardInterrupt("killed while writing")

    with pytest.raises(KeyboardInterrupt):
        ck.save(2, {"step": 2}, crash)
    assert Checkpointer.latest(tmp_path).name == "step_000001"
    assert not (tmp_path / "checkpoints" / "step_000002").exists()


def test_rng_state_round_trip():
    import json

    random.seed(1); np.random.seed(1); torch.manual_seed(1)
    saved = json.loads(json.dumps(rng_state(), default=lambda o: o.tolist()))
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9); np.random.seed(9); torch.manual_seed(9)
    set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
