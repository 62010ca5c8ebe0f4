"""Wait until a Ray cluster has the nodes and GPUs a launch expects (used by scripts/launch/slurm.sh).

    python scripts/launch/wait_for_ray.py --address HOST:PORT --nodes N [--gpus G] [--timeout S]

Exits 0 once N nodes are alive with at least G GPUs between them, printing what the cluster has;
exits 1 at the timeout, naming what is missing. `relayrl train` would otherwise start on a
half-formed cluster and fail to place its actors (or wait on them until its own timeout).
"""

from __future__ import annotations

import argparse
import sys
import time


def summary(nodes: list[dict], resources: dict) -> str:
    return (f"{len(nodes)} node(s) alive, {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs "
            f"({', '.join(sorted(n['NodeManagerAddress'] for n in nodes))})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", required=True, help="the head's GCS address, HOST:PORT")
    p.add_argument("--nodes", type=int, required=True, help="nodes the cluster must have")
    p.add_argument("--gpus", type=float, default=0, help="GPUs the cluster must have in total")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait before giving up")
    args = p.parse_args(argv)

    import logging

    import ray

    deadline = time.monotonic() + args.timeout
    while True:  # the head's GCS may not be listening yet
        try:
            ray.init(address=args.address, logging_level=logging.ERROR, log_to_driver=False)
            break
        except (ConnectionError, RuntimeError) as e:
            if time.monotonic() > deadline:
                print(f"wait_for_ray: no Ray head answered at {args.address} within {args.timeout:.0f}s: {e} "
                      f"(a head with token authentication refuses a client without RAY_AUTH_MODE=token and its "
                      f"token, logged as InvalidAuthToken)", file=sys.stderr)
                return 1
            time.sleep(2)
    try:
        while True:
            nodes = [n for n in ray.nodes() if n["Alive"]]
            resources = ray.cluster_resources()
            if len(nodes) >= args.nodes and resources.get("GPU", 0) >= args.gpus:
                print(f"ray cluster up at {args.address}: {summary(nodes, resources)}")
                return 0
            if time.monotonic() > deadline:
                print(f"wait_for_ray: after {args.timeout:.0f}s the cluster has {summary(nodes, resources)}; "
                      f"expected {args.nodes} node(s) and {args.gpus:g} GPUs", file=sys.stderr)
                return 1
            time.sleep(2)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
