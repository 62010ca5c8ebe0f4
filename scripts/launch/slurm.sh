#!/usr/bin/env bash
# relayrl on a Slurm allocation: a Ray head on the node that runs this script, a Ray worker on every
# other node (one srun task per node), a wait until all of them have joined with their GPUs, then
# `relayrl train` on the head node against that cluster.
#
#   sbatch scripts/launch/slurm.sh CONFIG [key=value ...]     # from the repository root
#   sbatch scripts/launch/slurm.sh configs/cluster/qwen3_8b_gsm8k_grpo.yaml trainer.total_steps=100
#
# The #SBATCH lines fit configs/cluster/*.yaml (2 nodes x 8 GPUs); sbatch's own flags override them
# (sbatch --nodes=4 ...). Submit from a checkout on a file system every node sees: the nodes run this
# checkout's code, and the run directory ($RELAYRL_RUNS/<config>-<job id>) holds the checkpoints every
# learner rank writes. Settings (environment): RELAYRL_VENV (default <repo>/.venv when it exists,
# else the ray/relayrl on PATH), RELAYRL_RUNS (default <repo>/runs), RAY_PORT (default 6379),
# RELAYRL_RAY_WAIT_S (default 600), RAY_AUTH_MODE / RAY_AUTH_TOKEN (default: token mode, the token
# of ~/.ray/auth_token, created if missing).
#
# Single-node smoke check: without a Slurm allocation (SLURM_JOB_ID unset), or with --local first,
#   bash scripts/launch/slurm.sh [--local] CONFIG [key=value ...]
# starts a local Ray head (2 CPUs, no dashboard, 127.0.0.1, its own port and temp dir), waits for it
# the same way, runs `relayrl validate` on the same arguments `relayrl train` would get (no training),
# and stops that head (SIGTERM to the `ray start --block` it started: `ray stop` would also stop every
# other Ray cluster of this user on the machine).
#
#SBATCH --job-name=relayrl
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --cpus-per-task=96
# GPU-only: the GPUs of each node, all handed to that node's Ray daemon.
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

usage() {
    echo "usage: sbatch scripts/launch/slurm.sh CONFIG [key=value ...]" >&2
    echo "       bash scripts/launch/slurm.sh [--local] CONFIG [key=value ...]   (single-node smoke check)" >&2
}

mode=slurm
if [[ "${1:-}" == "--local" ]]; then
    mode=local
    shift
elif [[ -z "${SLURM_JOB_ID:-}" ]]; then
    mode=local
    echo "slurm.sh: no Slurm allocation (SLURM_JOB_ID unset): single-node smoke check (relayrl validate, no training)"
fi
if [[ $# -lt 1 || "$1" == -* ]]; then
    usage
    exit 2
fi
config=$1
shift

# sbatch runs a copy of this file from its spool directory: in a job, the repository is where it was submitted.
if [[ $mode == slurm ]]; then
    repo=${SLURM_SUBMIT_DIR:?}
else
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fi
if [[ ! -f $repo/cluster/cli.py ]]; then
    echo "slurm.sh: $repo is not a relayrl checkout: submit from the repository root" >&2
    exit 2
fi
cd "$repo"
venv=${RELAYRL_VENV:-$repo/.venv}
if [[ -x $venv/bin/ray ]]; then
    export PATH=$venv/bin:$PATH  # srun passes the environment on: every node uses this venv
fi
wait_s=${RELAYRL_RAY_WAIT_S:-600}

# Ray (2.60 here) turns token authentication on for a head started where ~/.ray/auth_token exists,
# and a worker or driver given an explicit address then fails with InvalidAuthToken unless it uses
# token mode too. So: token mode for the whole job, one token, handed to every node (srun) and to
# the driver through the environment. RAY_AUTH_MODE=disabled turns it off.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [[ $RAY_AUTH_MODE == token && -z ${RAY_AUTH_TOKEN:-} ]]; then
    RAY_AUTH_TOKEN=$(ray get-auth-token --generate)  # ~/.ray/auth_token, created if missing
    export RAY_AUTH_TOKEN
fi

daemons=()  # the PIDs of the `ray start --block` (or srun) processes this script started
stop_daemons() {
    local pid
    for pid in ${daemons[@]+"${daemons[@]}"}; do
        kill -TERM "$pid" 2>/dev/null || true  # ray start --block stops the Ray processes it started
    done
    for pid in ${daemons[@]+"${daemons[@]}"}; do
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_daemons EXIT

if [[ $mode == local ]]; then
    port=${RAY_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
    address=127.0.0.1:$port
    temp=$(mktemp -d /tmp/relayrl-ray-XXXXXX)  # short: Ray's socket paths live under it
    ray start --head --num-cpus=2 --include-dashboard=false --node-ip-address 127.0.0.1 --port "$port" \
        --temp-dir "$temp" --block >"$temp/ray-start.log" 2>&1 &
    daemons+=("$!")
    if ! python scripts/launch/wait_for_ray.py --address "$address" --nodes 1 --timeout "$wait_s"; then
        tail -n 20 "$temp/ray-start.log" >&2
        exit 1
    fi
    # the arguments `relayrl train` gets below, with validate in its place (prints the resolved config)
    relayrl validate "$config" "cluster.address=$address" \
        "logging.run_dir=${RELAYRL_RUNS:-$repo/runs}/$(basename "$config" .yaml)-local" "$@"
    stop_daemons
    daemons=()
    rm -rf "$temp"
    echo "slurm.sh: single-node smoke check passed (Ray head at $address up, config valid, head stopped)"
    exit 0
fi

# ---- multi-node: head here, workers on the other nodes of the allocation ----------------------------
port=${RAY_PORT:-6379}
head=${SLURMD_NODENAME:-$(hostname -s)}  # the batch script runs on the allocation's first node
head_ip=${RELAYRL_HEAD_IP:-}
if [[ -z $head_ip ]]; then
    for ip in $(hostname --ip-address); do  # may list IPv6 addresses too: take the first IPv4 one
        if [[ $ip =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
            head_ip=$ip
            break
        fi
    done
fi
if [[ -z $head_ip ]]; then
    echo "slurm.sh: no IPv4 address found for $head: set RELAYRL_HEAD_IP" >&2
    exit 1
fi
address=$head_ip:$port
nodes=${SLURM_JOB_NUM_NODES:?}
cpus=${SLURM_CPUS_PER_TASK:-$(nproc)}
gpus=${SLURM_GPUS_ON_NODE:-0}  # GPU-only: 0 on a CPU partition
echo "slurm.sh: job $SLURM_JOB_ID, $nodes node(s) x ($cpus CPUs, $gpus GPUs); Ray head $head at $address"

srun --nodes=1 --ntasks=1 --nodelist="$head" \
    ray start --head --node-ip-address="$head_ip" --port="$port" --num-cpus="$cpus" --num-gpus="$gpus" --block &
daemons+=("$!")
python scripts/launch/wait_for_ray.py --address "$address" --nodes 1 --timeout "$wait_s"
if ((nodes > 1)); then
    srun --nodes=$((nodes - 1)) --ntasks=$((nodes - 1)) --ntasks-per-node=1 --exclude="$head" \
        ray start --address="$address" --num-cpus="$cpus" --num-gpus="$gpus" --block &
    daemons+=("$!")
fi
python scripts/launch/wait_for_ray.py --address "$address" --nodes "$nodes" --gpus $((nodes * gpus)) --timeout "$wait_s"

relayrl train "$config" "cluster.address=$address" \
    "logging.run_dir=${RELAYRL_RUNS:-$repo/runs}/$(basename "$config" .yaml)-$SLURM_JOB_ID" "$@"
