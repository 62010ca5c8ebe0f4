"""Where a run listens.

A local run (no cluster.address, no RAY_ADDRESS: relayrl starts its own Ray) is one machine, so
every port it opens is on loopback:
- Ray: the node IP is 127.0.0.1, and Ray binds its servers (GCS, raylet, object manager, every
  worker's gRPC server, its agents) to that address; the dashboard is off (`local_ray`).
- torch.distributed: the TCP stores of the learner's DeepSpeed group and of the weight-sync group
  are served by learner rank 0 from a socket bound to the node IP Ray reports (learner/rank.py
  `listen_socket`; torch's own store would listen on every interface). gloo's pair sockets, NCCL's
  bootstrap and vLLM's own sockets bind where `loopback_env` points them.
A multi-node run binds where the user configured the cluster: the same stores listen on the node IP
of the Ray node they run on (`ray start --node-ip-address`), gloo/NCCL on GLOO_SOCKET_IFNAME /
NCCL_SOCKET_IFNAME when set (else the address the host name resolves to), nothing on all interfaces.

tests/integration/test_network_exposure.py starts a local run and lists every listening socket of
its processes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

LOOPBACK = "127.0.0.1"


def loopback_interface() -> str:
    """The name of the loopback network interface ("lo" on Linux), from its IFF_LOOPBACK flag."""
    with contextlib.suppress(OSError, ValueError):
        for dev in sorted(Path("/sys/class/net").iterdir()):
            if int((dev / "flags").read_text(), 16) & 0x8:  # IFF_LOOPBACK
                return dev.name
    return "lo"


def loopback_env() -> dict[str, str]:
    """Environment of every actor of a local run: gloo (the learner's group, the weight-sync group,
    vLLM's own) and NCCL's bootstrap bind the loopback interface rather than the address the host
    name resolves to; vLLM's get_ip() (used by its multi-process executor on GPUs) answers loopback.
    The NCCL and vLLM multi-process paths are GPU-only and not exercised on CPU CI."""
    iface = loopback_interface()
    return {"GLOO_SOCKET_IFNAME": iface, "NCCL_SOCKET_IFNAME": iface, "VLLM_HOST_IP": LOOPBACK}


@contextlib.contextmanager
def local_ray() -> Iterator[dict]:
    """Around `ray.init(**kwargs)` of a local cluster: yields the kwargs that keep it on loopback.

    ray.init turns a loopback `_node_ip_address` into the machine's outward IP unless Ray's
    "clusters" switch is off: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, read once at import into
    `ray._private.ray_constants.ENABLE_RAY_CLUSTER` and looked up there at call time (Ray 2.60,
    `services.resolve_ip_for_localhost` / `get_node_ip_address`). It is turned off for this
    ray.init only, so a later ray.init that joins a real cluster resolves addresses as usual. A Ray
    upgrade that changes this fails tests/integration/test_network_exposure.py."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield {"_node_ip_address": LOOPBACK, "include_dashboard": False}
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
