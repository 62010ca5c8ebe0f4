"""ModelRewardScorer on a tiny random Qwen3ForSequenceClassification saved to disk (no hub access)."""

import string

import pytest

from actors.types import Sample

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForSequenceClassification

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", *string.printable[:95]])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, intermediate_size=64, max_position_embeddings=128,
                         num_labels=1, pad_token_id=0, eos_token_id=1)
    out = tmp_path_factory.mktemp("tiny_rm")
    Qwen3ForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def sample(prompt, response):
    return Sample("q", prompt, [1], response, [1], [0.0], "stop", 0)


def test_scores_are_floats_independent_of_batching_and_padding_side(rm_dir):
    from actors.reward.model_rm import ModelRewardScorer

    samples = [sample("12+345=", "357"), sample("1+1=", "2"), sample("What is 99+1? ", "It is one hundred.")]
    one = ModelRewardScorer(str(rm_dir), batch_size=1).score(samples)
    assert len(one) == 3 and all(isinstance(x, float) for x in one)
    assert len(set(one)) == 3  # different texts, different scores
    batched = ModelRewardScorer(str(rm_dir), batch_size=3)
    assert batched.score(samples) == pytest.approx(one, abs=1e-5)
    batched.tokenizer.padding_side = "left"
    assert batched.score(samples) == pytest.approx(one, abs=1e-5)
    assert batched.score_texts(["12+345=357"]) == pytest.approx(one[:1], abs=1e-5)  # prompt + completion


def test_label_index_is_checked(rm_dir):
    from actors.reward.model_rm import ModelRewardScorer

    with pytest.raises(ValueError, match="label_index 1 out of range"):
        ModelRewardScorer(str(rm_dir), label_index=1)
