"""An offline Qwen2-layout tokenizer for small DeepGen models.

The real model uses Qwen2.5-VL's tokenizer from the Hub. Small models (the ``tiny`` preset, DeepGen-nano) need
one that can be built here without a download: a byte-level BPE trained on a given corpus, with Qwen's
pre-tokenizer, normalizer and the 14 Qwen special tokens appended after the BPE ids, wrapped in transformers'
``Qwen2Tokenizer`` so the rest of the code cannot tell it from the real one.
"""

from __future__ import annotations

import json
from typing import Iterable, Optional

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer

from .config import QWEN_SPECIAL_TOKENS

# Qwen2's pre-tokenization regex (from the official tokenizer.json).
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

DEFAULT_CORPUS = (
    "Generate an image: a photo of a red circle on the left and a blue square on the right.",
    "make the circle green, remove the triangle, add a small yellow star at the top, change the background",
    "a large purple triangle at the bottom; two orange squares; three white circles in the center",
    "the colour of grass, the colour of the sky, a shape with three corners, a round shape",
    "A cat sitting on a wooden table, watercolor painting, cinematic lighting, 4k, highly detailed.",
    "0 1 2 3 4 5 6 7 8 9 A B C D E F G H I J K L M N O P Q R S T U V W X Y Z",
    "Write the digit 7 in black. The letter A in blue.",
)


def build_tokenizer(corpus: Optional[Iterable[str]] = None, vocab_size: int = 480) -> Qwen2Tokenizer:
    """Train a deterministic byte-level BPE with ``vocab_size`` ids on ``corpus`` and add Qwen's specials.

    Special tokens get ids ``vocab_size .. vocab_size + 13`` in Qwen's order, so ``<|image_pad|>`` is
    ``vocab_size + 12``, matching :func:`deepgen.config._qwen_token_ids`.
    """
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(byte_alphabet):
        raise ValueError(f"vocab_size must be at least {len(byte_alphabet)} (the byte alphabet), got {vocab_size}.")
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=byte_alphabet, show_progress=False,
                                  special_tokens=[])
    bpe.train_from_iterator(list(corpus or DEFAULT_CORPUS), trainer=trainer)
    if bpe.get_vocab_size() < vocab_size:
        # A small corpus runs out of merges (and the full-size preset wants Qwen's 151643 ids): fill the rest of
        # the id space with never-produced tokens so that the special ids land where the model config expects.
        vocab = bpe.get_vocab()
        vocab.update({f"<|unused_{i}|>": i for i in range(len(vocab), vocab_size)})
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                  for m in json.loads(bpe.to_str())["model"]["merges"]]
        bpe.model = models.BPE(vocab=vocab, merges=merges)
    bpe.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    tokenizer = Qwen2Tokenizer(tokenizer_object=bpe, errors="replace", add_prefix_space=False,
                                   unk_token=None, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", clean_up_tokenization_spaces=False)
    tokenizer.add_special_tokens({"extra_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])},
                                 replace_extra_special_tokens=False)
    return tokenizer
