"""Cheap checks of a Hugging Face model directory, run before any actor starts.

A model directory with a missing file, a half-finished download or files from two different models
otherwise fails minutes later inside a vLLM or DeepSpeed actor, as a traceback that names neither
the file nor the fix — or, worse, it loads: a missing `lm_head.weight` or a tokenizer id past the
embedding starts training from random rows. The checks read only JSON files and safetensors
headers (the first kilobytes of each file): no torch, transformers or vLLM import, milliseconds even
for a large checkpoint. `check_model_dir` reports every problem at once, each saying what to change.

What is checked:
  config.json      present, valid JSON, names its architecture (model_type / architectures)
  weights          *.safetensors present (weight sync reads their tensor names; .bin-only is an error
                   with the conversion command), not Git LFS pointers, not truncated, no tensor in two
                   files, every shard the index names present and holding the tensors it is said to
  tokenizer        one of tokenizer.json / tokenizer.model / vocab.json+merges.txt / vocab.txt, valid
  consistency      tokenizer ids < vocab_size; embedding rows == vocab_size and width == hidden_size;
                   special-token ids < vocab_size; no missing transformer layers; an untied model
                   has its lm_head
  against the run  rollout.max_model_len within the model's positions; a chat template exists when
                   data.chat_template=true; a router balance loss asked for only of an MoE model
Not checked (would need the heavy libraries): that the architecture is one vLLM supports, and
tensor names beyond the embedding / lm_head / layer indices.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from pathlib import Path
from typing import Any, Optional

from cluster.config import ConfigError, RunConfig

LFS_POINTER = b"version https://git-lfs"
# Where a config keeps its context length; vLLM takes the smallest one present, so do we.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length",
                 "max_seq_length", "seq_len")
LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")  # Llama / Qwen / Mistral / Gemma naming; others are not counted
MAX_LISTED = 5  # names listed per problem before "and N more"


class ModelDirError(ConfigError):
    """The model directory is incomplete or inconsistent; the message lists every problem and its fix."""


@dataclasses.dataclass
class ModelInfo:
    """What the checks read, for callers that size things by the model."""

    vocab_size: int  # config.json's (0: not stated)
    tokenizer_size: int  # highest token id + 1 (0: unknown, e.g. a sentencepiece-only tokenizer)
    max_positions: int  # the model's context length (0: unknown, or stretched by rope scaling)
    has_chat_template: bool
    tensors: dict[str, list[int]]  # name -> shape, from the safetensors headers
    balances_router: bool = False  # a transformers MoE with a router balance loss (config router_aux_loss_coef)


def check_model_dir(path: str | Path, cfg: Optional[RunConfig] = None, need_safetensors: bool = True,
                    field: str = "model.path") -> ModelInfo:
    """Raise ModelDirError listing every problem of the model directory `path`, else describe it.

    cfg: also check the run's settings against the model (context length, chat template).
    need_safetensors: the policy model's weights must be *.safetensors (weight sync reads them);
    a reward model loaded by transformers alone may be .bin.
    field: the config key that names the directory, for the messages.
    """
    d = Path(path).expanduser()
    if not d.is_dir():
        raise ModelDirError(f"model directory {d} does not exist or is not a directory: set {field} to a Hugging Face "
                            f"model directory (config.json, *.safetensors, tokenizer files)")
    if not (d / "config.json").exists():  # the usual slip: a download folder or the hub cache's root
        nested = sorted(p.parent for p in [*d.glob("*/config.json"), *d.glob("snapshots/*/config.json")])
        if nested:
            raise ModelDirError(f"model directory {d} holds no config.json, but {nested[0]} does: set {field} to "
                                f"that directory")
    problems: list[str] = []
    config = _read_config(d, problems, field)
    tensors = _read_weights(d, problems, need_safetensors, field)
    tokenizer_size, has_chat_template = _read_tokenizer(d, problems)
    text = config.get("text_config")
    lm = {**config, **(text if isinstance(text, dict) else {})}  # multimodal configs keep the LM's fields in text_config
    vocab_size = lm.get("vocab_size") if isinstance(lm.get("vocab_size"), int) else 0
    info = ModelInfo(vocab_size, tokenizer_size, _max_positions(lm), has_chat_template, tensors,
                     "router_aux_loss_coef" in lm)
    if config:
        problems += _consistency(lm, info)
    if cfg is not None:
        problems += _fits_run(info, cfg)
    if problems:
        raise ModelDirError(f"model directory {d} cannot be used:\n  - " + "\n  - ".join(problems))
    return info


# ---- the files -----------------------------------------------------------------------------------

def _read_json(f: Path, problems: list[str]) -> Optional[dict[str, Any]]:
    """The JSON object in `f`, or None after appending why it is unusable."""
    try:
        raw = f.read_bytes()
    except OSError as e:
        problems.append(f"{f.name} cannot be read ({e.strerror}): fix its permissions")
        return None
    if raw.startswith(LFS_POINTER):
        problems.append(_lfs(f))
        return None
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{f.name} is not valid JSON ({e}): the file is damaged or half-downloaded; fetch it again")
        return None
    if not isinstance(obj, dict):
        problems.append(f"{f.name} holds a JSON {type(obj).__name__}, not an object: fetch the model's own {f.name}")
        return None
    return obj


def _lfs(f: Path) -> str:
    return (f"{f.name} is a Git LFS pointer, not the file itself (the repository was cloned without git-lfs): "
            f"run `git lfs pull` in the directory, or download with `huggingface-cli download ORG/NAME --local-dir DIR`")


def _read_config(d: Path, problems: list[str], field: str) -> dict[str, Any]:
    f = d / "config.json"
    if not f.exists():
        problems.append(f"no config.json: {field} must be the directory that holds config.json, the weights and the tokenizer")
        return {}
    config = _read_json(f, problems) or {}
    if config and not (config.get("model_type") or config.get("architectures")):
        problems.append("config.json names no architecture (neither 'model_type' nor 'architectures'): "
                        "fetch the model's own config.json")
    return config


def _read_weights(d: Path, problems: list[str], need_safetensors: bool, field: str) -> dict[str, list[int]]:
    files = sorted(d.glob("*.safetensors"))
    if not files:
        bins = sorted(f.name for f in d.glob("*.bin") if f.name != "training_args.bin")
        if bins and need_safetensors:
            problems.append(f"the weights are PyTorch .bin files ({_listed(bins)}), but weight sync reads *.safetensors: "
                            f"convert once with `python -c \"from transformers import AutoModelForCausalLM as M; "
                            f"M.from_pretrained('{d}').save_pretrained('{d}-st')\"` (then copy the tokenizer files) "
                            f"and point {field} there")
        elif not bins:
            problems.append(f"no weight files (*.safetensors): the download is incomplete or {field} points at the "
                            f"wrong directory")
        return {}
    tensors: dict[str, list[int]] = {}
    where: dict[str, str] = {}  # tensor -> the file that holds it
    readable: set[str] = set()
    twice: list[str] = []  # tensors in two files
    pairs: set[str] = set()
    for f in files:
        header = _safetensors_header(f, problems)
        if header is None:
            continue
        readable.add(f.name)
        for name, shape in header.items():
            if name in where:
                twice.append(name)
                pairs.add(f"{where[name]} and {f.name}")
            tensors[name], where[name] = shape, f.name
    if twice:
        problems.append(f"{len(twice)} tensors (e.g. {twice[0]}) are in two weight files ({_listed(sorted(pairs))}): "
                        f"the directory holds two copies of the checkpoint (e.g. model.safetensors beside sharded "
                        f"model-0000x files); keep one set")
    index = d / "model.safetensors.index.json"
    if index.exists() and (idx := _read_json(index, problems)) is not None:
        weight_map = idx.get("weight_map") or {}
        missing_files = sorted({v for v in weight_map.values() if not (d / v).exists()})
        if missing_files:
            problems.append(f"{index.name} names {len(missing_files)} shard file(s) that are missing: "
                            f"{_listed(missing_files)}; the download is incomplete, fetch them")
        # Tensors the index places in a shard that does not hold them (a shard from another revision).
        misplaced = sorted(k for k, v in weight_map.items() if v in readable and where.get(k) != v)
        if misplaced:
            problems.append(f"{index.name} places {len(misplaced)} tensor(s) in shards that do not hold them, e.g. "
                            f"{_listed(misplaced)}: the index and the shards come from different revisions; fetch both again")
    return tensors


def _safetensors_header(f: Path, problems: list[str]) -> Optional[dict[str, list[int]]]:
    """name -> shape from a safetensors file's header (8-byte little-endian length, then JSON), or
    None after appending why the file is unusable."""
    try:
        size = f.stat().st_size  # a dangling symlink (a Hugging Face cache with a blob missing) raises here
        with f.open("rb") as fh:
            if fh.read(len(LFS_POINTER)) == LFS_POINTER:
                problems.append(_lfs(f))
                return None
            fh.seek(0)
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError(f"only {size} bytes")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                raise ValueError(f"its header length {n} does not fit a {size}-byte file")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        entries = {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
        end = max((int(v["data_offsets"][1]) for v in entries.values()), default=0)
    except OSError as e:
        problems.append(f"{f.name} cannot be read ({e.strerror or e}): the file is missing behind a link or its "
                        f"permissions deny reading; fetch it again or fix the permissions")
        return None
    except (ValueError, KeyError, IndexError, TypeError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        problems.append(f"{f.name} is not a safetensors file ({e}): it is damaged or half-downloaded; fetch it again")
        return None
    if 8 + n + end > size:
        problems.append(f"{f.name} is truncated: its header describes {8 + n + end} bytes, the file has {size}; "
                        f"the download stopped early, fetch it again")
    return {k: list(v.get("shape", [])) for k, v in entries.items()}


def _read_tokenizer(d: Path, problems: list[str]) -> tuple[int, bool]:
    """(highest token id + 1 or 0 when unknown, whether a chat template exists)."""
    ids: list[int] = []
    if (d / "tokenizer.json").exists():
        tok = _read_json(d / "tokenizer.json", problems) or {}
        vocab = (tok.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):  # BPE / WordPiece / WordLevel: token -> id
            ids += [v for v in vocab.values() if isinstance(v, int)]
        elif isinstance(vocab, list):  # Unigram: [token, score] in id order
            ids.append(len(vocab) - 1)
        ids += [t["id"] for t in tok.get("added_tokens") or [] if isinstance(t, dict) and isinstance(t.get("id"), int)]
    elif (d / "vocab.json").exists():  # a slow BPE tokenizer
        if not (d / "merges.txt").exists():
            problems.append("vocab.json without merges.txt: copy merges.txt (or tokenizer.json) from the model's repository")
        ids += [v for v in (_read_json(d / "vocab.json", problems) or {}).values() if isinstance(v, int)]
    elif (d / "vocab.txt").exists():  # WordPiece
        with (d / "vocab.txt").open(encoding="utf-8", errors="replace") as fh:
            ids.append(sum(1 for _ in fh) - 1)
    elif not (d / "tokenizer.model").exists():  # sentencepiece: its size needs protobuf, so it is not counted
        problems.append("no tokenizer files (tokenizer.json, tokenizer.model, vocab.json + merges.txt or vocab.txt): "
                        "copy them from the repository the weights came from")
    if (d / "added_tokens.json").exists():
        ids += [v for v in (_read_json(d / "added_tokens.json", problems) or {}).values() if isinstance(v, int)]
    chat = (d / "chat_template.jinja").exists() or (d / "chat_template.json").exists()
    if (d / "tokenizer_config.json").exists():
        tc = _read_json(d / "tokenizer_config.json", problems) or {}
        chat = chat or bool(tc.get("chat_template"))
    return (max(ids) + 1 if ids else 0), chat


# ---- the files against each other, and against the run ---------------------------------------------

def _max_positions(lm: dict[str, Any]) -> int:
    rope = lm.get("rope_scaling") or lm.get("rope_parameters") or {}
    rope = [rope, *rope.values()] if isinstance(rope, dict) else []  # transformers 5 may nest it per layer type
    if any(isinstance(r, dict) and r.get("factor") for r in rope):  # stretched context: vLLM derives it; do not guess
        return 0
    found = [v for k in POSITION_KEYS if isinstance(v := lm.get(k), int) and v > 0]
    return min(found, default=0)


def _consistency(lm: dict[str, Any], info: ModelInfo) -> list[str]:
    problems = []
    v, t = info.vocab_size, info.tokenizer_size
    if v and t > v:
        problems.append(f"the tokenizer has token ids up to {t - 1}, but config.json vocab_size={v}: ids >= {v} have no "
                        f"embedding row. The tokenizer comes from another model (copy the tokenizer files of the model "
                        f"the weights came from), or tokens were added without `model.resize_token_embeddings(len(tokenizer))`")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        ids = lm.get(key) if isinstance(lm.get(key), list) else [lm.get(key)]
        bad = [i for i in ids if isinstance(i, int) and v and not 0 <= i < v]
        if bad:
            problems.append(f"config.json {key}={lm.get(key)} is outside the vocabulary (vocab_size={v}): fix {key} in "
                            f"config.json (and generation_config.json)")
    if not info.tensors:
        return problems
    emb = [k for k in info.tensors if k.endswith("embed_tokens.weight")]
    if len(emb) == 1 and len(shape := info.tensors[emb[0]]) == 2:
        hidden = lm.get("hidden_size")
        if v and shape[0] != v:
            problems.append(f"the weights' {emb[0]} has {shape[0]} rows, but config.json vocab_size={v}: config.json and "
                            f"the weights come from different models; use the config.json saved with these weights")
        if isinstance(hidden, int) and shape[1] != hidden:
            problems.append(f"the weights' {emb[0]} is {shape[1]} wide, but config.json hidden_size={hidden}: config.json "
                            f"and the weights come from different models; use the config.json saved with these weights")
        archs = lm.get("architectures") or []
        # a sequence-classification reward model has a score head, not an lm_head
        generates = not archs or any(a.endswith(("CausalLM", "ConditionalGeneration")) for a in archs)
        if (generates and lm.get("tie_word_embeddings") is False
                and not any(k.endswith("lm_head.weight") for k in info.tensors)):
            problems.append("config.json says tie_word_embeddings=false but the weights hold no lm_head.weight, so the "
                            "output layer would start random: set tie_word_embeddings=true if the model shares it with "
                            "the embedding, or add the missing weight file")
    layers = {int(m.group(1)) for k in info.tensors if (m := LAYER_KEY.match(k))}
    n = lm.get("num_hidden_layers")
    if layers and isinstance(n, int) and len(layers & set(range(n))) < n:
        missing = sorted(set(range(n)) - layers)
        problems.append(f"config.json num_hidden_layers={n}, but the weights hold no tensors for layer(s) "
                        f"{_listed([str(i) for i in missing])}: a shard is missing, or config.json belongs to a larger model")
    return problems


def _fits_run(info: ModelInfo, cfg: RunConfig) -> list[str]:
    problems = []
    if info.max_positions and cfg.rollout.max_model_len > info.max_positions:
        problems.append(f"rollout.max_model_len={cfg.rollout.max_model_len} is longer than the model's context "
                        f"({info.max_positions} positions in config.json) and vLLM refuses to start: set "
                        f"rollout.max_model_len <= {info.max_positions} (with data.max_prompt_tokens + "
                        f"rollout.sampling.max_new_tokens within it)")
    if cfg.data.chat_template and not info.has_chat_template:
        problems.append("data.chat_template=true but the model has no chat template (no 'chat_template' in "
                        "tokenizer_config.json, no chat_template.jinja): set data.chat_template=false and write the "
                        "format into data.prompt_template, or add the template file")
    ws = cfg.trainer.warm_start
    asked = [f"{k}={v}" for k, v in (("learner.moe_aux_loss_coef", cfg.learner.moe_aux_loss_coef),
                                      ("trainer.warm_start.moe_aux_loss_coef", ws.moe_aux_loss_coef if ws.steps > 0 else None))
             if v is not None and v > 0]
    if asked and not info.balances_router:
        problems.append(f"{' and '.join(asked)} asks for a router balance loss, but the model is not a Mixture-of-Experts "
                        "(no router_aux_loss_coef in config.json): set it to 0")
    return problems


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more
