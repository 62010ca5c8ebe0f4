"""Where DeepSpeed's JIT-built CPU ops live (cpu_adam, the shared-memory all-reduce), and their build.

torch builds such ops into TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions, one directory
for every Python environment of the user) and rebuilds an op whenever the build command changes —
which it does between two virtual environments (their include paths differ). Two checkouts of
relayrl on one machine would then rebuild the ops (~45 s) at every switch. Each virtual environment
gets its own directory instead: <sys.prefix>/torch_extensions, unless TORCH_EXTENSIONS_DIR is set.
Import-light: no torch, no deepspeed at import.
"""

from __future__ import annotations

import os
import sys

ENV = "TORCH_EXTENSIONS_DIR"


def use_extensions_dir() -> str:
    """Set TORCH_EXTENSIONS_DIR for this process (and the processes it starts), unless set already;
    return it. Call before DeepSpeed builds or loads an op."""
    path = os.environ.get(ENV) or os.path.join(sys.prefix, "torch_extensions")
    os.environ[ENV] = path
    return path


def precompile_cpu_ops() -> str:
    """Build (or find built) the CPU ops a learner rank loads, so that the first run does not pay
    for it; returns the directory. Used by scripts/setup.sh."""
    path = use_extensions_dir()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.ops.op_builder.cpu import CPUAdamBuilder, ShareMemCommBuilder

    ShareMemCommBuilder().load(verbose=False)
    CPUAdamBuilder().load(verbose=False)
    return path


if __name__ == "__main__":
    print(precompile_cpu_ops())
