"""Build the project's own tiny tokenizer and random-init Qwen3 models, locally, with no hub access.

Used by the embedded demo, the tests and the benchmarks. The tokenizer is character level over
printable ASCII (plus chat special tokens), so any text round-trips and the arithmetic demo has a
vocabulary of ~100. The models are real `Qwen3ForCausalLM` / `Qwen3MoeForCausalLM` saved with
`save_pretrained`, so every loader path (transformers, vLLM, DeepSpeed) is the one a user's
Hugging Face model directory takes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import string
from pathlib import Path

PAD, EOS, BOS = "<|pad|>", "<|endoftext|>", "<|bos|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, EOS, BOS, IM_START, IM_END]

# Qwen-style chat template: the real-data path uses `apply_chat_template` on it.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclasses.dataclass
class TinyModelSpec:
    """Shape of a tiny model. Defaults: ~0.3M parameters (hidden 128, 2 layers)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    moe: bool = False
    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 64
    seed: int = 0


def build_tokenizer():
    """A character-level `PreTrainedTokenizerFast`: one token per printable ASCII character."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + ["<|unk|>"] + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=BOS,
        unk_token="<|unk|>",
        additional_special_tokens=[IM_START, IM_END],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(spec: TinyModelSpec, vocab_size: int, pad_id: int, eos_id: int, bos_id: int):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    common = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=bos_id,
        dtype="float32",
    )
    torch.manual_seed(spec.seed)
    if spec.moe:
        cfg = Qwen3MoeConfig(
            **common,
            num_experts=spec.num_experts,
            num_experts_per_tok=spec.num_experts_per_tok,
            moe_intermediate_size=spec.moe_intermediate_size,
            decoder_sparse_step=1,
            norm_topk_prob=True,
        )
        return Qwen3MoeForCausalLM(cfg)
    return Qwen3ForCausalLM(Qwen3Config(**common))


def make_tiny_model(out_dir: str | os.PathLike, spec: TinyModelSpec | None = None, overwrite: bool = False) -> Path:
    """Write tokenizer + random-init model to `out_dir` (a HF model directory) and return it.

    Cached: an existing directory built from the same spec is reused unless `overwrite`.
    """
    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    stamp = out / "relayrl_tiny_spec.json"
    want = json.dumps(dataclasses.asdict(spec), sort_keys=True)
    if not overwrite and stamp.exists() and stamp.read_text() == want:
        return out
    tok = build_tokenizer()
    model = build_model(spec, len(tok), tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    stamp.write_text(want)
    return out


def num_parameters(model_dir: str | os.PathLike) -> int:
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                total += _prod(st.get_slice(k).get_shape())
    return total


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
