"""The benchmark workloads: one dataclass each side reads, so relayrl, TRL and the bare loops run the
same work (model, prompts per step, group size, completion length, dtype, optimizer, aggregation)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cluster.tiny_model import TinyModelSpec

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "configs/data/arithmetic/train.jsonl"
CACHE = Path.home() / ".cache/relayrl/bench"


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    spec: TinyModelSpec
    prompts: int  # P per step
    group: int  # G completions per prompt
    new_tokens: int  # completion length
    fixed_length: bool  # EOS suppressed until new_tokens (min = max)
    dtype: str  # "auto" resolves to the CPU's fast dtype (cluster.dtype), the same on every side
    steps: int  # measured steps per run (after `warmup` steps)
    warmup: int
    lr: float = 3e-4
    sides: tuple[str, ...] = ("relayrl", "trl", "bare")
    split_cores: bool = False  # rollout worker on core 0, learner rank on core 1 (CPU stand-in for separate GPUs)

    @property
    def model_dir(self) -> Path:
        return CACHE / f"model-{self.name if self.name != 'scaling' else 'gen_heavy'}"


TINY = Workload("tiny", TinyModelSpec(), prompts=8, group=8, new_tokens=8, fixed_length=False,
                dtype="float32", steps=30, warmup=5)
# ~25M parameters (hidden 512, 8 layers), the generation-heavy shape: 8 x 8 x 256 forced tokens
GEN_HEAVY = Workload("gen_heavy", TinyModelSpec(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4,
                                                intermediate_size=1536, max_position_embeddings=512),
                     prompts=8, group=8, new_tokens=256, fixed_length=True, dtype="auto", steps=3, warmup=2)
# sync vs async with one core per role: generation and learning each a real share of the step
ASYNC_SPLIT = Workload("async_split", TinyModelSpec(hidden_size=384, num_layers=6, num_heads=6, num_kv_heads=2,
                                                   intermediate_size=1024, max_position_embeddings=512),
                       prompts=8, group=8, new_tokens=128, fixed_length=True, dtype="auto", steps=4, warmup=2,
                       sides=("relayrl", "relayrl_async", "relayrl_async_partial"), split_cores=True)
# the generation-heavy run with 1 and 2 rollout workers x 1 and 2 learner ranks (each takes a core when 2)
SCALING = dataclasses.replace(GEN_HEAVY, name="scaling", steps=2, warmup=2,
                              sides=("relayrl", "relayrl_w2", "relayrl_k2", "relayrl_w2k2"))
WORKLOADS = {w.name: w for w in (TINY, GEN_HEAVY, ASYNC_SPLIT, SCALING)}


def resolved_dtype(w: Workload) -> str:
    from cluster.dtype import resolve_dtype

    return resolve_dtype(w.dtype, "cpu").dtype


def prompts(n: int, offset: int = 0) -> list[dict]:
    import json

    rows = [json.loads(line) for line in TRAIN.read_text().splitlines()[offset:offset + n]]
    return rows
