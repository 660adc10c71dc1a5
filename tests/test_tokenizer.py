"""The offline Qwen2-layout tokenizer (deepgen/tokenizer.py) and its agreement with the model configs."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from deepgen import get_preset
from deepgen.config import QWEN_SPECIAL_TOKENS
from deepgen.tokenizer import build_tokenizer
from deepgen.vlm import template_prompt

TEXTS = ["Generate an image: a red circle on the left", "Zebra ü 漢字 🙂, 42 cats!", "make the circle green\n"]

# token name -> DeepGenConfig.vlm field holding its id
CONFIG_IDS = {
    "<|endoftext|>": "bos_token_id",
    "<|im_end|>": "eos_token_id",
    "<|vision_start|>": "vision_start_token_id",
    "<|vision_end|>": "vision_end_token_id",
    "<|vision_pad|>": "vision_token_id",
    "<|image_pad|>": "image_token_id",
    "<|video_pad|>": "video_token_id",
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(vocab_size=get_preset("tiny").tokenizer_vocab_size)


def test_special_tokens_sit_where_the_tiny_config_expects(tokenizer):
    config = get_preset("tiny")
    for token, field in CONFIG_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == config.vlm[field], token
    assert len(tokenizer) == config.vlm["vocab_size"] == config.vlm_text_config["vocab_size"]
    assert [tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS] == \
        list(range(config.tokenizer_vocab_size, config.tokenizer_vocab_size + len(QWEN_SPECIAL_TOKENS)))
    assert (tokenizer.pad_token, tokenizer.eos_token) == ("<|endoftext|>", "<|im_end|>")
    assert tokenizer.bos_token is None  # as Qwen2's: nothing is prepended


def test_special_tokens_are_atomic_in_templates(tokenizer):
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids = tokenizer(template_prompt("make it green", image_tokens=[3, 2]))["input_ids"]
    assert ids.count(image_pad) == 5
    assert ids.count(tokenizer.convert_tokens_to_ids("<|vision_start|>")) == 2
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids


def test_round_trip_and_byte_fallback(tokenizer):
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert all(i < get_preset("tiny").tokenizer_vocab_size for i in ids)  # plain text never hits a special
        assert tokenizer.decode(ids) == text


def test_deterministic(tokenizer):
    again = build_tokenizer(vocab_size=get_preset("tiny").tokenizer_vocab_size)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    for text in TEXTS:
        assert again(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_larger_id_space_is_filled_with_unused_tokens():
    tokenizer = build_tokenizer(vocab_size=2000)
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 2000
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == 2012
    assert len(tokenizer) == 2014
    for text in TEXTS:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_full_size_preset_ids():
    config = get_preset("deepgen-1.0")
    assert config.vlm["image_token_id"] == 151655 and config.vlm["bos_token_id"] == 151643
    tokenizer = build_tokenizer(vocab_size=151643)
    for token, field in CONFIG_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == config.vlm[field], token


def test_too_small_vocab_raises():
    with pytest.raises(ValueError, match="at least 256"):
        build_tokenizer(vocab_size=100)


def test_save_and_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "Qwen2Tokenizer" and loaded.is_fast
    for text in TEXTS + [template_prompt("x", [2])]:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.pad_token_id == tokenizer.pad_token_id
