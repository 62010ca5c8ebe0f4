#!/usr/bin/env bash
# relayrl as a Ray job on a running Ray cluster (started with `ray start`, KubeRay or a cloud
# launcher), with this checkout shipped as the job's working directory.
#
#   RAY_ADDRESS=http://HEAD:8265 RELAYRL_RUNS=/shared/runs \
#       bash scripts/launch/ray_job_submit.sh configs/cluster/qwen3_8b_gsm8k_grpo.yaml [key=value ...]
#
# runs, from the repository root:
#
#   ray job submit --address http://HEAD:8265 --working-dir . \
#       -- python -m cluster.cli train CONFIG logging.run_dir=/shared/runs/<config>-<time> [key=value ...]
#
# - The working directory (this checkout without .git, .venv and what .gitignore lists, ~1 MB) is
#   uploaded to the cluster and unpacked on each node that runs a part of the job, so every node runs
#   this code: `python -m cluster.cli` is the `relayrl` command of that copy. The packages themselves
#   (torch, vLLM's CUDA build, DeepSpeed, Ray) must already be installed on every node
#   (RELAYRL_DEVICE=gpu bash scripts/setup.sh, or an image), and the head needs Ray's dashboard, which
#   takes job submissions: pip install "ray[default]==<the pinned Ray>" there.
# - That copy is a per-node temporary directory: the run directory must be an absolute path on a file
#   system every node sees (RELAYRL_RUNS), or the checkpoints go with the job.
# - The driver runs on the head node and joins the cluster through the RAY_ADDRESS Ray gives the job.
# - A cluster with token authentication (Ray's default where ~/.ray/auth_token exists) needs
#   RAY_AUTH_MODE=token and its token here (RAY_AUTH_TOKEN, or ~/.ray/auth_token).
# - The command follows the job's log until the job ends; Ctrl-C stops following, not the job
#   (ray job logs -f ID, ray job stop ID). RELAYRL_JOB_FLAGS adds flags to `ray job submit`
#   (e.g. --no-wait).
# - RELAYRL_COMMAND=validate submits `validate` instead of `train`: the config checked where the driver
#   will run (model and data paths included), printed resolved, nothing started.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: RAY_ADDRESS=http://HEAD:8265 RELAYRL_RUNS=/shared/runs bash scripts/launch/ray_job_submit.sh CONFIG [key=value ...]" >&2
    exit 2
fi
config=$1
shift
cd "$(dirname "${BASH_SOURCE[0]}")/../.."  # the working directory that is shipped
if [[ -z ${RAY_ADDRESS:-} || -z ${RELAYRL_RUNS:-} ]]; then
    echo "ray_job_submit.sh: set RAY_ADDRESS (the head's dashboard, http://HEAD:8265) and RELAYRL_RUNS" \
        "(a directory every node sees)" >&2
    exit 2
fi
if [[ ! -f $config ]]; then
    echo "ray_job_submit.sh: $config not found (a path inside this checkout, e.g. configs/cluster/...)" >&2
    exit 2
fi
run_dir=$RELAYRL_RUNS/$(basename "$config" .yaml)-$(date +%Y%m%d-%H%M%S)

# shellcheck disable=SC2086  # RELAYRL_JOB_FLAGS is a list of flags
ray job submit --address "$RAY_ADDRESS" --working-dir . ${RELAYRL_JOB_FLAGS:-} \
    -- python -m cluster.cli "${RELAYRL_COMMAND:-train}" "$config" "logging.run_dir=$run_dir" "$@"
