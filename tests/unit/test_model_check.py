"""Model directory checks (cluster/model_check.py): each defect gets its own clear error, all at once.

The directories are written by hand (JSON files and a safetensors header over zero bytes), so these
tests need neither torch nor transformers; one test runs the checks on the real tiny model.
"""

import json
import re
import struct

import pytest

from cluster.config import ConfigError, RunConfig
from cluster.model_check import ModelDirError, check_model_dir

pytestmark = pytest.mark.unit

VOCAB, HIDDEN, LAYERS = 16, 8, 2


def write_safetensors(path, shapes, truncate=0):
    """A valid safetensors file of float32 zeros with the given name -> shape."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4
        for d in shape:
            size *= d
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset - truncate))


def weights(vocab=VOCAB, hidden=HIDDEN, layers=LAYERS):
    shapes = {"model.embed_tokens.weight": [vocab, hidden], "model.norm.weight": [hidden]}
    for i in range(layers):
        shapes[f"model.layers.{i}.self_attn.q_proj.weight"] = [hidden, hidden]
    return shapes


def make_model_dir(d, **config_over):
    """A minimal good model directory: config, one safetensors file, a WordLevel tokenizer.json."""
    d.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": VOCAB,
              "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "max_position_embeddings": 512,
              "tie_word_embeddings": True, "eos_token_id": 1, "pad_token_id": 0, **config_over}
    (d / "config.json").write_text(json.dumps(config))
    write_safetensors(d / "model.safetensors", weights())
    vocab = {f"t{i}": i for i in range(2, VOCAB - 2)}
    added = [{"id": 0, "content": "<pad>"}, {"id": 1, "content": "<eos>"}]
    (d / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel", "vocab": vocab}, "added_tokens": added}))
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return d


def problems_of(d, cfg=None, **kw):
    with pytest.raises(ModelDirError) as e:
        check_model_dir(d, cfg, **kw)
    return str(e.value)


def test_good_minimal_dir_passes_and_is_described(tmp_path):
    info = check_model_dir(make_model_dir(tmp_path / "m"), RunConfig())
    assert (info.vocab_size, info.tokenizer_size, info.max_positions, info.has_chat_template) == (VOCAB, VOCAB - 2, 512, True)
    assert info.tensors["model.embed_tokens.weight"] == [VOCAB, HIDDEN]


def test_the_real_tiny_model_passes(tiny_model_dir):
    info = check_model_dir(tiny_model_dir, RunConfig())
    assert info.vocab_size == info.tokenizer_size > 0 and info.has_chat_template


def test_config_in_a_subfolder_points_there(tmp_path):
    d = make_model_dir(tmp_path / "m")
    nest(d)
    with pytest.raises(ModelDirError, match=r"^model directory .*/m holds no config.json, but .*/m/snapshots/abc does: "
                                            r"set model.path to that directory$"):
        check_model_dir(d)


def test_model_dir_error_is_a_config_error_the_cli_reports(tmp_path):
    assert issubclass(ModelDirError, ConfigError)  # relayrl train prints it and exits 2, no traceback
    with pytest.raises(ModelDirError, match="does not exist or is not a directory: set model.path"):
        check_model_dir(tmp_path / "nowhere")


def drop(name):
    return lambda d: (d / name).unlink()


def put(name, data):
    return lambda d: (d / name).write_bytes(data) if isinstance(data, bytes) else (d / name).write_text(data)


def edit_config(**over):
    def go(d):
        config = json.loads((d / "config.json").read_text())
        config.update(over)
        for k in [k for k, v in over.items() if v is None]:
            del config[k]
        (d / "config.json").write_text(json.dumps(config))
    return go


def rewrite_weights(**kw):
    return lambda d: write_safetensors(d / "model.safetensors", weights(**kw))


def shard(d):
    """model.safetensors -> two shards and an index; the second shard then goes missing."""
    w = weights()
    names = sorted(w)
    write_safetensors(d / "model-00001-of-00002.safetensors", {k: w[k] for k in names[:2]})
    (d / "model.safetensors").unlink()
    index = {"weight_map": {k: ("model-00001-of-00002.safetensors" if i < 2 else "model-00002-of-00002.safetensors")
                            for i, k in enumerate(names)}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def misplaced_index(d):
    w = weights()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        **{k: "model.safetensors" for k in w}, "model.norm.weight": "other.safetensors"}}))
    write_safetensors(d / "other.safetensors", {"extra.weight": [1]})


def bigger_tokenizer(d):
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["added_tokens"].append({"id": VOCAB + 3, "content": "<|new|>"})
    (d / "tokenizer.json").write_text(json.dumps(tok))


def nest(d):
    (d / "snapshots" / "abc").mkdir(parents=True)
    for f in list(d.iterdir()):
        if f.is_file():
            f.rename(d / "snapshots" / "abc" / f.name)


LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 12345\n"

DEFECTS = {
    "no config.json": (drop("config.json"), r"no config.json: model.path must be the directory that holds config.json"),
    "config not JSON": (put("config.json", "{\"vocab_size\": 1"), r"config.json is not valid JSON .*fetch it again"),
    "config an LFS pointer": (put("config.json", LFS), r"config.json is a Git LFS pointer.*git lfs pull"),
    "config names no architecture": (edit_config(model_type=None, architectures=None), "names no architecture"),
    "no weights": (drop("model.safetensors"), r"no weight files \(\*.safetensors\)"),
    "weights only .bin": (lambda d: ((d / "model.safetensors").rename(d / "pytorch_model.bin")),
                          r"PyTorch .bin files \(pytorch_model.bin\).*weight sync reads \*.safetensors: convert once"),
    "weights an LFS pointer": (put("model.safetensors", LFS), r"model.safetensors is a Git LFS pointer"),
    "weights truncated": (lambda d: write_safetensors(d / "model.safetensors", weights(), truncate=100),
                          r"model.safetensors is truncated: its header describes \d+ bytes, the file has \d+"),
    "weights garbage": (put("model.safetensors", b"\x00" * 4 + b"garbage" * 10),
                        r"model.safetensors is not a safetensors file .*fetch it again"),
    "weights a dangling link": (lambda d: ((d / "model.safetensors").unlink(),
                                           (d / "model.safetensors").symlink_to(d / "blobs" / "gone")),
                                r"model.safetensors cannot be read .*missing behind a link"),
    "index names a missing shard": (shard, r"model.safetensors.index.json names 1 shard file\(s\) that are missing: "
                                           r"model-00002-of-00002.safetensors"),
    "index and shards disagree": (misplaced_index, r"places 1 tensor\(s\) in shards that do not hold them, e.g. model.norm.weight"),
    "two copies of the weights": (lambda d: write_safetensors(d / "model-00001-of-00001.safetensors", weights()),
                                  r"4 tensors \(e.g. model.embed_tokens.weight\) are in two weight files "
                                    r"\(model-00001-of-00001.safetensors and model.safetensors\).*keep one set"),
    "no tokenizer": (drop("tokenizer.json"), r"no tokenizer files \(tokenizer.json, tokenizer.model"),
    "tokenizer not JSON": (put("tokenizer.json", "{"), r"tokenizer.json is not valid JSON"),
    "vocab.json without merges": (lambda d: ((d / "tokenizer.json").rename(d / "vocab.json")),
                                  "vocab.json without merges.txt"),
    "tokenizer larger than vocab_size": (bigger_tokenizer, rf"token ids up to {VOCAB + 3}, but config.json "
                                                           rf"vocab_size={VOCAB}.*resize_token_embeddings"),
    "embedding rows != vocab_size": (rewrite_weights(vocab=VOCAB + 16),
                                     rf"embed_tokens.weight has {VOCAB + 16} rows, but config.json vocab_size={VOCAB}"),
    "embedding width != hidden_size": (edit_config(hidden_size=HIDDEN * 2),
                                       rf"is {HIDDEN} wide, but config.json hidden_size={HIDDEN * 2}"),
    "untied without lm_head": (edit_config(tie_word_embeddings=False), r"no lm_head.weight, so the output layer would start random"),
    "missing layers": (edit_config(num_hidden_layers=4), r"num_hidden_layers=4, but the weights hold no tensors for layer\(s\) 2, 3"),
    "eos id outside vocab": (edit_config(eos_token_id=[1, VOCAB]), rf"eos_token_id=\[1, {VOCAB}\] is outside the vocabulary"),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_each_defect_is_named_with_its_fix(tmp_path, defect):
    breaks, expected = DEFECTS[defect]
    d = make_model_dir(tmp_path / "m")
    breaks(d)
    msg = problems_of(d)
    assert msg.startswith(f"model directory {d} cannot be used:\n  - ")
    assert re.search(expected, msg), msg


def test_all_problems_in_one_report(tmp_path):
    d = make_model_dir(tmp_path / "m")
    (d / "tokenizer.json").unlink()
    edit_config(num_hidden_layers=3, hidden_size=4)(d)
    msg = problems_of(d)
    assert msg.count("\n  - ") == 3  # no tokenizer, width mismatch, missing layer
    assert "no tokenizer files" in msg and "hidden_size=4" in msg and "layer(s) 2" in msg


def test_run_settings_checked_against_the_model(tmp_path):
    d = make_model_dir(tmp_path / "m")
    cfg = RunConfig()
    cfg.rollout.max_model_len = 1024  # the model has 512 positions
    cfg.data.chat_template = True
    (d / "tokenizer_config.json").write_text("{}")
    msg = problems_of(d, cfg)
    assert "rollout.max_model_len=1024 is longer than the model's context (512 positions" in msg
    assert "set rollout.max_model_len <= 512" in msg
    assert "data.chat_template=true but the model has no chat template" in msg
    (d / "chat_template.jinja").write_text("{{ messages }}")  # transformers 5 saves the template here
    cfg.rollout.max_model_len = 512
    check_model_dir(d, cfg)


def test_a_router_balance_loss_needs_an_moe_model(tmp_path):
    """learner.moe_aux_loss_coef or trainer.warm_start.moe_aux_loss_coef > 0 on a dense model would
    otherwise run without it (or stop at the warm start's first step): refused before anything starts."""
    dense = make_model_dir(tmp_path / "dense")
    cfg = RunConfig()
    cfg.learner.moe_aux_loss_coef = 0.01
    msg = problems_of(dense, cfg)
    assert "learner.moe_aux_loss_coef=0.01 asks for a router balance loss, but the model is not a Mixture-of-Experts" in msg
    cfg.learner.moe_aux_loss_coef = 0.0
    cfg.trainer.warm_start.moe_aux_loss_coef = 0.01
    check_model_dir(dense, cfg)  # no warm start: the warm start's coefficient is unused
    cfg.trainer.warm_start.steps = 100
    assert "trainer.warm_start.moe_aux_loss_coef=0.01 asks" in problems_of(dense, cfg)
    moe = make_model_dir(tmp_path / "moe", model_type="qwen3_moe", num_experts=8, router_aux_loss_coef=0.001)
    assert check_model_dir(moe, cfg).balances_router


def test_rope_scaling_leaves_the_context_length_to_the_engine(tmp_path):
    d = make_model_dir(tmp_path / "m", rope_scaling={"rope_type": "yarn", "factor": 4.0})
    cfg = RunConfig()
    cfg.rollout.max_model_len = 2048
    assert check_model_dir(d, cfg).max_positions == 0


def test_reward_model_may_be_bin_and_is_named_by_its_key(tmp_path):
    d = make_model_dir(tmp_path / "rm")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    check_model_dir(d, need_safetensors=False, field="reward.model_path")
    (d / "config.json").unlink()
    assert "reward.model_path must be the directory" in problems_of(d, need_safetensors=False, field="reward.model_path")


def test_multimodal_config_reads_the_text_config(tmp_path):
    d = make_model_dir(tmp_path / "m")
    edit_config(vocab_size=None, hidden_size=None, num_hidden_layers=None,
                text_config={"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS})(d)
    assert check_model_dir(d).vocab_size == VOCAB
    edit_config(text_config={"vocab_size": VOCAB - 4, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS})(d)
    assert f"vocab_size={VOCAB - 4}" in problems_of(d)
