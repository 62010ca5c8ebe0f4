"""Learner rank 0 without a learner: a weight sender in its own process, plus the learner's reference logprobs.

For code that drives a rollout worker's weight sync without running the whole learner (the rollout
integration tests and scripts/bench_rollout.py):

- `WeightSender`: a stand-in for learner rank 0 in a spawned process. It joins the weight-sync group
  as rank 0 and broadcasts (perturbed) checkpoints following the protocol in learner/weight_protocol.py —
  either straight from a checkpoint's state dict (`prepare`/`start_broadcast`; manifest from
  `manifest_of`, buckets from the protocol's own `plan_buckets`), or with the learner's real sender
  (`learner.weight_sync.WeightSender`) on a transformers model (`learner_*`). Not to be confused with
  that class: this one is a process handle, that one is the in-process send side of a learner rank.
- `hf_logprobs`: the learner's logprobs, log_softmax(logits / T) from a transformers fp32 forward.

The sender runs in its own spawned process, because the group is collective: rank 0 and the rollout
worker (in the calling process) must be inside the group's init and `broadcast` at the same time.
Commands are asynchronous: `start_*` returns at once (`start_init` and `start_learner_connect` once
the sender listens, as rank 0 does before a receiver is asked to join), `wait()` returns the
command's result (or re-raises its error).

Import-light: torch only at module level (safetensors, transformers and vLLM are imported when used).
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import shutil
import socket
import traceback
from pathlib import Path
from typing import Any

import torch

from learner.weight_protocol import ManifestEntry, dtype_name, flatten, plan_buckets
from learner.weight_sync import init_group, listen_socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_checkpoint(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """Checkpoint-named tensors of a model directory, plus `lm_head.weight` when embeddings are tied."""
    import json

    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        sd.update(load_file(str(f)))
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    if cfg.get("tie_word_embeddings") and "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    return sd


def perturbed(sd: dict[str, torch.Tensor], seed: int, scale: float) -> dict[str, torch.Tensor]:
    """Every tensor plus scale * N(0, 1) noise (deterministic in seed); tied lm_head follows the embedding."""
    g = torch.Generator().manual_seed(seed)
    out = {k: v + scale * torch.randn(v.shape, generator=g, dtype=torch.float32).to(v.dtype)
           for k, v in sd.items() if k != "lm_head.weight"}
    if "lm_head.weight" in sd:
        out["lm_head.weight"] = out["model.embed_tokens.weight"].clone()
    return out


def manifest_of(sd: dict[str, torch.Tensor]) -> list[ManifestEntry]:
    """The protocol's manifest of a checkpoint-named state dict, in its order."""
    return [(k, dtype_name(v.dtype), [int(d) for d in v.shape]) for k, v in sd.items()]


def plan(sd: dict[str, torch.Tensor], bucket_bytes: int) -> tuple[list[ManifestEntry], list[list[int]]]:
    """(manifest, buckets) of a state dict: the learner's own bucket plan (`plan_buckets`) on `manifest_of(sd)`."""
    manifest = manifest_of(sd)
    return manifest, plan_buckets(manifest, bucket_bytes)


def write_model_dir(src_dir: str | Path, sd: dict[str, torch.Tensor], out_dir: str | Path) -> Path:
    """A copy of src_dir (config, tokenizer) whose weights are `sd` — for the transformers reference."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(src_dir).iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    keep = {k: v.contiguous().clone() for k, v in sd.items() if k != "lm_head.weight"}
    save_file(keep, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


# ---- the learner's logprobs ----------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def hf_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@torch.no_grad()
def hf_logprobs(model_dir: str | Path, sequences: list[list[int]], prompt_lengths: list[int],
                temperature: float = 1.0) -> list[list[float]]:
    """log_softmax(logits / T) of sequences[i][k:] given their prefixes, with transformers in fp32."""
    model = hf_model(str(model_dir))
    out = []
    for seq, k in zip(sequences, prompt_lengths):
        logits = model(torch.tensor([seq])).logits[0, k - 1:-1].float() / temperature
        lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(seq[k:])[:, None])[:, 0]
        out.append(lp.tolist())
    return out


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(x) for x in a] == [len(y) for y in b]
    return max((abs(x - y) for xs, ys in zip(a, b) for x, y in zip(xs, ys)), default=0.0)


def sampler_vs_hf(model_dir: str | Path, groups, temperature: float) -> float:
    """Largest |sampler logprob - transformers logprob| over every response token of `groups`."""
    samples = [s for g in groups for s in g.samples]
    ref = hf_logprobs(model_dir, [s.prompt_ids + s.response_ids for s in samples],
                      [len(s.prompt_ids) for s in samples], temperature)
    return max_abs_diff([s.logprobs for s in samples], ref)


# ---- the sender process --------------------------------------------------------------------------

def _listening(conn, kw: dict) -> socket.socket:
    """Listen on host:port and say so before joining, as learner rank 0 does before any receiver is
    asked to join (learner/weight_protocol.py: a receiver takes a refused port for a dead host)."""
    sock = listen_socket(kw["host"], kw["port"])
    conn.send(("ok", "listening"))
    return sock


def _serve(conn) -> None:
    pg, flats, learner = None, [], None
    while True:
        cmd, kw = conn.recv()
        try:
            if cmd == "stop":
                conn.send(("ok", None))
                return
            if cmd == "init":
                with _listening(conn, kw) as listen:  # closed if the group never takes it over
                    pg = init_group(kw["host"], kw["port"], 0, kw["world_size"], "gloo", kw["timeout_s"], listen)
                conn.send(("ok", None))
            elif cmd == "prepare":
                sd = load_checkpoint(kw["model_dir"])
                if kw.get("seed") is not None:
                    sd = perturbed(sd, kw["seed"], kw["scale"])
                manifest, buckets = plan(sd, kw["bucket_bytes"])
                flats = [flatten([sd[manifest[i][0]] for i in bucket]) for bucket in buckets]
                conn.send(("ok", {"buckets": len(buckets)}))
            elif cmd == "broadcast":
                for flat in flats:
                    pg.broadcast(flat, 0).wait()
                conn.send(("ok", {"buckets": len(flats)}))
            elif cmd == "learner_plan":
                # The learner's real send side (learner/weight_sync.py) on a transformers model.
                from transformers import AutoModelForCausalLM

                from learner.weight_sync import WeightLayout
                from learner.weight_sync import WeightSender as LearnerSender

                model = AutoModelForCausalLM.from_pretrained(kw["model_dir"], dtype=torch.float32)
                learner = LearnerSender(WeightLayout(model), rank=0, bucket_bytes=kw["bucket_bytes"])
                conn.send(("ok", (learner.layout.manifest, learner.buckets)))
            elif cmd == "learner_connect":
                with _listening(conn, kw) as listen:
                    learner.connect(kw["host"], kw["port"], kw["world_size"], "gloo", kw["timeout_s"], listen)
                conn.send(("ok", None))
            elif cmd == "learner_broadcast":
                conn.send(("ok", learner.broadcast()))
        except BaseException:  # noqa: BLE001 — report everything to the calling process
            conn.send(("error", traceback.format_exc()))


class WeightSender:
    """Handle on a spawned stand-in for learner rank 0 (see the module docstring)."""

    def __init__(self):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self._proc.start()

    def start_init(self, host: str, port: int, world_size: int, timeout_s: float = 60.0) -> None:
        """Host the group on host:port: returns once listening; `wait()` for the group to form."""
        self._conn.send(("init", dict(host=host, port=port, world_size=world_size, timeout_s=timeout_s)))
        self.wait()

    def prepare(self, model_dir: str | Path, seed: int | None, scale: float = 0.0, bucket_bytes: int = 1 << 16) -> None:
        """Build the buckets of model_dir's checkpoint, perturbed with (seed, scale) unless seed is None."""
        self._conn.send(("prepare", dict(model_dir=str(model_dir), seed=seed, scale=scale, bucket_bytes=bucket_bytes)))
        self.wait()

    def start_broadcast(self) -> None:
        """Broadcast the prepared buckets (the receivers must call receive_weights)."""
        self._conn.send(("broadcast", {}))

    def start_send(self, model_dir: str | Path, seed: int | None, scale: float = 0.0, bucket_bytes: int = 1 << 16) -> None:
        """prepare + start_broadcast."""
        self.prepare(model_dir, seed, scale, bucket_bytes)
        self.start_broadcast()

    # The learner's own sender (learner.weight_sync) on a transformers model loaded from model_dir.
    def learner_plan(self, model_dir: str | Path, bucket_bytes: int) -> tuple[list, list]:
        self._conn.send(("learner_plan", dict(model_dir=str(model_dir), bucket_bytes=bucket_bytes)))
        return self.wait()

    def start_learner_connect(self, host: str, port: int, world_size: int, timeout_s: float = 60.0) -> None:
        """As start_init, with the learner's own sender."""
        self._conn.send(("learner_connect", dict(host=host, port=port, world_size=world_size, timeout_s=timeout_s)))
        self.wait()

    def start_learner_broadcast(self) -> None:
        self._conn.send(("learner_broadcast", {}))

    def wait(self, timeout_s: float = 120.0) -> Any:
        if not self._conn.poll(timeout_s):
            raise TimeoutError(f"weight sender: no answer within {timeout_s}s")
        status, value = self._conn.recv()
        if status == "error":
            raise RuntimeError(f"weight sender failed:\n{value}")
        return value

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(("stop", None))
            self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
