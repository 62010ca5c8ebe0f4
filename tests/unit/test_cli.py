"""The relayrl command: errors are one clear line and exit code 2; validate prints the resolved config."""

import pytest

from cluster.cli import main

pytestmark = pytest.mark.unit


def test_validate_prints_resolved_config(capsys):
    assert main(["validate", "configs/demo_grpo.yaml", "trainer.total_steps=7"]) == 0
    out = capsys.readouterr().out
    assert "total_steps: 7" in out and "surrogate:" in out


def test_unknown_key_exits_2_with_suggestion(capsys):
    assert main(["validate", "configs/demo_grpo.yaml", "rollout.sampling.temprature=0.5"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'rollout.sampling.temprature'" in err and "did you mean 'temperature'" in err


def test_impossible_topology_exits_2(capsys):
    assert main(["train", "configs/demo_grpo.yaml", "learner.num_ranks=3", "learner.zero_stage=3"]) == 2
    assert "[batch_divides_ranks]" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("train", "validate", "plot", "make-tiny-model"))
