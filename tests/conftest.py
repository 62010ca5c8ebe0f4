"""Shared fixtures. Keep this file import-light: unit tests collect it too (heavy imports inside fixtures)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A ~0.3M-parameter random Qwen3 (fp32, tied embeddings) with the char-level tokenizer, built once."""
    from cluster.tiny_model import TinyModelSpec, make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_dense"), TinyModelSpec())


@pytest.fixture(scope="session")
def tiny_moe_model_dir(tmp_path_factory):
    """A tiny random Qwen3-MoE (8 experts, top-2, fp32, tied embeddings), built once."""
    from cluster.tiny_model import TinyModelSpec, make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_moe"), TinyModelSpec(moe=True))


@pytest.fixture
def fault_report(request):
    """record(**facts): what a fault-injection test verified, for scripts/reliability.py's table.
    A no-op unless RELAYRL_RELIABILITY_OUT names a JSON-lines file; call it after the assertions."""
    import json
    import os

    def record(**facts) -> None:
        out = os.environ.get("RELAYRL_RELIABILITY_OUT")
        if out:
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps({"test": request.node.nodeid, **facts}) + "\n")

    return record


TIERS = ("unit", "integration", "slow")


def pytest_collection_modifyitems(items):
    """Every test is in a tier, so that `-m unit`, `-m integration` and `-m slow` together run the whole
    suite (two test files without their `pytestmark` line ran in none of them)."""
    untiered = [item.nodeid for item in items if not any(item.get_closest_marker(t) for t in TIERS)]
    if untiered:
        raise pytest.UsageError(f"mark these tests with one of {', '.join(TIERS)} "
                                f"(pytestmark = pytest.mark.<tier> in the file):\n" + "\n".join(untiered[:20]))
