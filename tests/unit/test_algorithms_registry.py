"""Registries: loud lookups, strict params, aliases, no duplicates, light imports."""

import ast
import dataclasses
import pathlib
import subprocess
import sys

import pytest

import learner.algorithms as alg
from learner.algorithms import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    KL_ESTIMATORS,
    OFF_POLICY,
    SURROGATES,
    NoParams,
    Registry,
)

pytestmark = pytest.mark.unit

REGISTRIES = [ADVANTAGE_ESTIMATORS, SURROGATES, AGGREGATIONS, KL_ESTIMATORS, OFF_POLICY]
REPO = pathlib.Path(__file__).resolve().parents[2]


def test_expected_names():
    assert set(ADVANTAGE_ESTIMATORS.names()) == {"grpo", "dr_grpo", "rloo", "reinforce_pp", "gae"}
    assert set(SURROGATES.names()) == {"ppo_clip", "gspo", "gspo_token", "cispo"}
    assert set(KL_ESTIMATORS.names()) == {"k1", "abs", "k2", "k3", "k3+"}


def test_unknown_name_lists_valid_names_and_suggests():
    with pytest.raises(KeyError) as err:
        SURROGATES.get("gspo_tokn")
    msg = str(err.value)
    assert "did you mean 'gspo_token'" in msg
    assert all(name in msg for name in SURROGATES.names())
    with pytest.raises(KeyError, match="valid names"):
        ADVANTAGE_ESTIMATORS.get("zzz")


def test_unknown_param_suggests():
    with pytest.raises(ValueError, match="did you mean 'eps'"):
        ADVANTAGE_ESTIMATORS.make_params("grpo", {"epss": 1e-3})
    with pytest.raises(ValueError, match="no parameter"):
        ADVANTAGE_ESTIMATORS.make_params("dr_grpo", {"eps": 1e-3})  # dr_grpo has no knobs


def test_duplicate_registration_raises():
    r = Registry("thing")
    r.register("a", aliases=("b",))(lambda: None)
    for name in ("a", "b"):
        with pytest.raises(ValueError, match="already registered"):
            r.register(name)(lambda: None)
    with pytest.raises(ValueError, match="already registered"):
        r.register("c", aliases=("a",))(lambda: None)
    with pytest.raises(ValueError, match="already registered"):
        SURROGATES.register("ppo_clip")(lambda: None)
    assert SURROGATES.get("ppo_clip").fn is not None and "c" not in r


def test_aliases_resolve():
    assert SURROGATES.canonical("ppo") == "ppo_clip"
    assert ADVANTAGE_ESTIMATORS.canonical("reinforce++") == "reinforce_pp"
    assert KL_ESTIMATORS.get("low_var_kl").name == "k3"


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.kind)
def test_every_entry_has_frozen_params_with_defaults(registry):
    for name in registry.names():
        overrides = {"norm_length": 1024} if name == "seq-mean-token-sum-norm" else {}
        params = registry.make_params(name, overrides)
        assert dataclasses.is_dataclass(params)
        if dataclasses.fields(params):
            field = dataclasses.fields(params)[0].name
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(params, field, None)
        else:
            assert isinstance(params, NoParams)


def test_library_imports_only_torch_stdlib_and_itself():
    allowed = set(sys.stdlib_module_names) | {"torch"}
    for path in (REPO / "learner" / "algorithms").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert set(roots) <= allowed, f"{path.name} imports {roots}"


def test_import_is_light():
    code = (
        "import sys, learner.algorithms as alg; [getattr(alg, n) for n in alg.__all__];"  # every module loaded
        "heavy = [m for m in ('ray', 'vllm', 'deepspeed', 'transformers') if m in sys.modules];"
        "ours = [m for m in sys.modules if m.split('.')[0] in ('learner', 'actors', 'cluster')"
        " and not m.startswith('learner.algorithms') and m != 'learner'];"
        "print(heavy + ours)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_registry_and_the_config_schema_import_without_torch():
    """The package's names load lazily: config validation's schema and the registry module (which the
    reward scorers and environments use) do not import torch; a name of the package does."""
    code = ("import sys, learner.algorithms.registry, cluster.config; before = 'torch' in sys.modules;"
            "import learner.algorithms as alg; alg.SURROGATES; print(before, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_public_api_is_exported():
    for name in alg.__all__:
        assert hasattr(alg, name), name
