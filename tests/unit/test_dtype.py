"""model.dtype=auto: the CPU's flags decide; explicit bf16 on a CPU without bf16 instructions warns."""

import pytest

from cluster.config import load_config
from cluster.dtype import resolve_dtype, resolve_run_dtypes, simd_summary

pytestmark = pytest.mark.unit

AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})
AVX2_ONLY = frozenset({"avx", "avx2", "fma", "f16c"})


def test_auto_picks_bf16_only_with_native_bf16():
    assert resolve_dtype("auto", "cpu", AVX512_BF16).dtype == "bfloat16"
    plain = resolve_dtype("auto", "cpu", AVX2_ONLY)
    assert plain.dtype == "float32" and plain.warning is None
    assert "no bf16 instructions" in plain.reason and "avx2 (no avx512)" in plain.reason
    # AVX-512 without the bf16 extension is not enough
    assert resolve_dtype("auto", "cpu", frozenset({"avx2", "avx512f"})).dtype == "float32"


def test_explicit_bf16_without_instructions_is_kept_with_a_warning():
    c = resolve_dtype("bfloat16", "cpu", AVX2_ONLY)
    assert c.dtype == "bfloat16" and "3x slower" in c.warning and "model.dtype=auto" in c.warning
    assert resolve_dtype("bfloat16", "cpu", AVX512_BF16).warning is None
    assert resolve_dtype("float32", "cpu", AVX512_BF16).dtype == "float32"


def test_run_config_sides_follow_the_model_and_tolerance_follows_the_sides():
    cfg = load_config(None, ["model.path=/x"])
    assert cfg.model.dtype == "auto" and cfg.learner.dtype == "" and cfg.weight_sync.verify_tolerance is None
    fast, lines = resolve_run_dtypes(cfg, AVX512_BF16)
    assert (fast.model.dtype, fast.rollout.dtype, fast.learner.dtype) == ("bfloat16",) * 3
    assert fast.weight_sync.verify_tolerance == 2e-2 and "bf16 instructions" in lines[0]
    plain, _ = resolve_run_dtypes(cfg, AVX2_ONLY)
    assert (plain.rollout.dtype, plain.learner.dtype, plain.weight_sync.verify_tolerance) == ("float32", "float32", 1e-3)
    assert cfg.model.dtype == "auto"  # the caller's config is not modified
    mixed, lines = resolve_run_dtypes(load_config(None, ["learner.dtype=bfloat16", "model.dtype=float32"]), AVX2_ONLY)
    assert mixed.rollout.dtype == "float32" and mixed.weight_sync.verify_tolerance == 2e-2
    assert any(l.startswith("WARNING: learner.dtype=bfloat16") for l in lines)
    kept, _ = resolve_run_dtypes(load_config(None, ["weight_sync.verify_tolerance=0.5"]), AVX2_ONLY)
    assert kept.weight_sync.verify_tolerance == 0.5


def test_simd_summary_names_what_matters():
    assert simd_summary(AVX512_BF16) == "avx512f avx512_bf16"
    assert simd_summary(AVX2_ONLY) == "avx2 (no avx512)"
