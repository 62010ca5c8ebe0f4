"""Live scaling's pure parts: the control channel and the autoscaling decision."""

import json
from types import SimpleNamespace

import pytest

from actors.config import AutoscaleConfig
from cluster.config import ConfigError, load_config
from cluster.scaling import CONTROL_DIR, DONE, REQUEST, RolloutScaler, autoscale_decision, request_scale, take_request
from cluster.validate import validate

pytestmark = pytest.mark.unit

CFG = AutoscaleConfig(enabled=True, min_workers=1, max_workers=3, add_above=0.3, remove_below=0.05, patience=2)


def test_adds_a_worker_only_after_patience_steps_of_waiting():
    assert autoscale_decision([0.6], [0.1], 1, CFG) == (0, "")  # one step is not a trend
    delta, why = autoscale_decision([0.6, 0.4], [0.1, 0.1], 1, CFG)
    assert delta == 1 and "40-60%" in why
    assert autoscale_decision([0.6, 0.2], [0.1, 0.1], 1, CFG)[0] == 0  # not every step above the share
    assert autoscale_decision([0.6, 0.4], [0.1, 0.1], 3, CFG)[0] == 0  # at max_workers


def test_removes_a_worker_when_groups_pile_up_unused():
    delta, why = autoscale_decision([0.01, 0.02], [0.7, 0.8], 2, CFG)
    assert delta == -1 and "idle 70%" in why
    assert autoscale_decision([0.01, 0.02], [0.7, 0.3], 2, CFG)[0] == 0  # workers were busy: keep them
    assert autoscale_decision([0.01, 0.02], [0.7, 0.8], 1, CFG)[0] == 0  # at min_workers


def test_request_round_trip_and_refusals(tmp_path):
    (tmp_path / "config.yaml").write_text("{}")
    assert take_request(tmp_path) is None
    request_scale(tmp_path, 3)
    assert take_request(tmp_path)["rollout"] == 3
    assert take_request(tmp_path) is None  # taken once
    with pytest.raises(ValueError, match="at least 1"):
        request_scale(tmp_path, 0)
    with pytest.raises(FileNotFoundError, match="not a relayrl run directory"):
        request_scale(tmp_path / "nope", 2)
    (tmp_path / CONTROL_DIR / REQUEST).write_text("{not json")
    assert "unreadable" in take_request(tmp_path)["error"]


def test_autoscale_bounds_are_validated():
    base = ["rollout.autoscale.enabled=true", "rollout.num_workers=2"]
    ok = validate(load_config("configs/demo_grpo.yaml", [*base, "rollout.autoscale.max_workers=3"]))
    assert ok.rollout.autoscale.max_workers == 3
    with pytest.raises(ConfigError, match="min_workers <= rollout.num_workers <= max_workers"):
        validate(load_config("configs/demo_grpo.yaml", [*base, "rollout.autoscale.max_workers=1"]))
    with pytest.raises(ConfigError, match="remove_below < add_above"):
        validate(load_config("configs/demo_grpo.yaml", [*base, "rollout.autoscale.max_workers=3",
                                                        "rollout.autoscale.remove_below=0.5"]))


def test_the_scale_command_writes_the_request(tmp_path, capsys):
    from cluster.cli import main

    (tmp_path / "config.yaml").write_text("{}")
    assert main(["scale", str(tmp_path), "--rollout", "2"]) == 0
    assert take_request(tmp_path)["rollout"] == 2
    assert main(["scale", str(tmp_path / "missing"), "--rollout", "2"]) == 2
    assert "not a relayrl run directory" in capsys.readouterr().err


def test_a_colocated_run_refuses_to_scale_and_says_why(tmp_path):
    """Colocated workers are paired with learner ranks: a request is answered, and nothing is touched."""
    (tmp_path / "config.yaml").write_text("{}")
    cfg = load_config(None, ["cluster.colocate=true"])
    run = SimpleNamespace(cfg=cfg, dir=tmp_path, rollout=SimpleNamespace(workers=[object()]))
    scaler = RolloutScaler(run, feed=None, logger=None)  # a refusal must not reach the feed or the pool
    request_scale(tmp_path, 2)
    scaler.between_steps()
    done = json.loads((tmp_path / CONTROL_DIR / DONE).read_text())
    assert done["workers"] == 1 and "refused: cluster.colocate=true pairs each rollout worker" in done["result"]
