"""Fixtures the integration modules share (heavy imports inside them)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_cluster(request):
    """A local Ray cluster for the module: the module's RAY_NUM_CPUS logical CPUs (default 2) and its
    RAY_INIT extras (e.g. a runtime_env). A cluster already running is used as it is and left running."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=getattr(request.module, "RAY_NUM_CPUS", 2), include_dashboard=False,
                 logging_level="ERROR", **getattr(request.module, "RAY_INIT", {}))
    yield
    if started:
        ray.shutdown()
