"""Put on PYTHONPATH by scripts/bench_isa.py (with RELAYRL_EMULATE_AVX2=1): every Python process of the
run then believes the CPU has no AVX-512, so vLLM's CPU platform loads its AVX2 kernel library
(vllm/platforms/cpu.py import_kernels asks torch.cpu). torch's and oneDNN's kernel choice is held to
AVX2 by the script's environment (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA). A benchmark aid only."""

import os

if os.environ.get("RELAYRL_EMULATE_AVX2") == "1":
    import torch.cpu

    torch.cpu._is_avx512_supported = lambda: False
    torch.cpu._is_avx512_bf16_supported = lambda: False
