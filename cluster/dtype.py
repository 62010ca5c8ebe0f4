"""The CPU (or GPU) decides the dtype: `model.dtype: auto` resolves here, once, before anything starts.

Measured on our CPU machines (STACK-NOTES.md): on CPUs with bf16 instructions (AVX512-BF16 or AMX)
vLLM generates ~1.4x faster in bf16 than in fp32 and a training pass is ~1.6-2.7x faster; on CPUs
without them (AVX2-only) bf16 is emulated and vLLM's bf16 generation ran 3x SLOWER than fp32. So
`auto` picks bf16 only where the hardware computes it natively, and an explicit bf16 on a CPU
without those instructions is honoured with a warning that names the cost.

Import-light (no torch): reads /proc/cpuinfo; the GPU branch asks torch only when device is cuda.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Optional

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 arithmetic on x86


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The first CPU's flags from /proc/cpuinfo (empty where it does not exist)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def simd_summary(flags: Optional[frozenset[str]] = None) -> str:
    """e.g. 'avx512f avx512_bf16 amx_bf16' or 'avx2 (no avx512)': what decides our kernels' speed."""
    flags = cpu_flags() if flags is None else flags
    wide = sorted(f for f in flags if f.startswith(("avx512", "amx")))
    if wide:
        keep = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16") if f in wide]
        return " ".join(keep or wide)
    return "avx2 (no avx512)" if "avx2" in flags else "no avx2"


@dataclasses.dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # float32 | bfloat16
    reason: str  # one line for the run's first lines
    warning: Optional[str] = None  # an explicit choice that will be slow here


def native_bf16(device: str, flags: Optional[frozenset[str]] = None) -> tuple[bool, str]:
    if device == "cuda":  # GPU-only: Ampere and newer compute bf16 natively
        import torch

        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "the GPU supports bf16" if ok else "the GPU has no native bf16"
    flags = cpu_flags() if flags is None else flags
    have = [f for f in BF16_CPU_FLAGS if f in flags]
    if have:
        return True, f"the CPU has bf16 instructions ({', '.join(have)})"
    return False, f"the CPU has no bf16 instructions ({simd_summary(flags)}): bf16 would be emulated"


def resolve_dtype(requested: str, device: str, flags: Optional[frozenset[str]] = None) -> DtypeChoice:
    """`auto` -> bfloat16 where the hardware computes it natively, else float32; explicit values kept."""
    native, why = native_bf16(device, flags)
    if requested == "auto":
        return DtypeChoice("bfloat16" if native else "float32", f"model.dtype=auto: {why}")
    if requested == "bfloat16" and not native:
        return DtypeChoice("bfloat16", "model.dtype=bfloat16 (explicit)",
                           warning=f"bfloat16 requested but {why}; on such CPUs vLLM's bf16 generation measured "
                                   f"~3x slower than float32 (set model.dtype=auto or float32)")
    return DtypeChoice(requested, f"model.dtype={requested} (explicit)")


def resolve_run_dtypes(cfg, flags: Optional[frozenset[str]] = None):
    """(a copy of the RunConfig with concrete dtypes and probe tolerance, lines for the run's log).

    model.dtype `auto` becomes float32 or bfloat16; rollout.dtype and learner.dtype left empty follow
    it; weight_sync.verify_tolerance left None follows the two sides' dtypes."""
    import copy

    cfg = copy.deepcopy(cfg)
    choice = resolve_dtype(cfg.model.dtype, cfg.cluster.device, flags)
    cfg.model.dtype = choice.dtype
    cfg.rollout.dtype = cfg.rollout.dtype or choice.dtype
    cfg.learner.dtype = cfg.learner.dtype or choice.dtype
    cfg.critic.learner.dtype = cfg.critic.learner.dtype or cfg.learner.dtype  # PPO's value model: as the policy
    lines = [f"dtype: rollout {cfg.rollout.dtype}, learner {cfg.learner.dtype} ({choice.reason})"]
    if choice.warning:
        lines.append(f"WARNING: {choice.warning}")
    for side, value in (("rollout", cfg.rollout.dtype), ("learner", cfg.learner.dtype),
                        ("critic.learner", cfg.critic.learner.dtype)):
        if value == "bfloat16" and choice.dtype != "bfloat16" and choice.warning is None:
            native, why = native_bf16(cfg.cluster.device, flags)
            if not native:
                lines.append(f"WARNING: {side}.dtype=bfloat16 but {why} (expect it to be slower than float32)")
    if cfg.weight_sync.verify_tolerance is None:
        both_fp32 = cfg.rollout.dtype == cfg.learner.dtype == "float32"
        cfg.weight_sync.verify_tolerance = 1e-3 if both_fp32 else 2e-2
    return cfg, lines
