"""Tokenizers for the pico suite, saved and loaded like any Hugging Face tokenizer.

Two kinds:

- :func:`word_level_tokenizer`: one token per grammar word (the default suite), so every
  agreement verb and every name is a single token;
- :func:`train_tokenizer`: a byte-level BPE trained on a user's corpus, GPT-NeoX style.

Both use ``<|endoftext|>`` as BOS, EOS and padding (as Pythia does) and add no special
tokens when encoding: callers put BOS/EOS where they want them.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
"""Document separator; doubles as BOS and padding."""
UNKNOWN = "<unk>"
"""Stands for any word outside a word-level vocabulary."""


def _wrap(tokenizer: Tokenizer, *, unk: bool) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=UNKNOWN if unk else None,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )


def word_level_tokenizer(vocabulary: Iterable[str]) -> PreTrainedTokenizerFast:
    """A tokenizer with exactly one token per word of ``vocabulary`` (plus the two specials).

    Text is split on whitespace and punctuation, so "home," is ["home", ","] and the
    leading space of a continuation such as " runs" is dropped. Ids follow the sorted
    vocabulary, so the same words always give the same ids.
    """
    words = sorted(set(vocabulary) - {END_OF_TEXT, UNKNOWN})
    bad = [word for word in words if pre_tokenizers.Whitespace().pre_tokenize_str(word) != [(word, (0, len(word)))]]
    if bad:
        raise ValueError(
            f"word-level vocabulary entries {bad[:5]} would be split by the pre-tokenizer; "
            "use single words made of letters/digits, or single punctuation marks"
        )
    vocab = {END_OF_TEXT: 0, UNKNOWN: 1} | {word: index + 2 for index, word in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNKNOWN))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return _wrap(tokenizer, unk=True)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of ``vocab_size`` tokens trained on ``texts`` (user corpora).

    Byte-level means any text encodes without unknown tokens.
    """
    if vocab_size < 300:
        raise ValueError(f"vocab_size={vocab_size} is below the 256 byte tokens plus merges; use >= 300")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _wrap(tokenizer, unk=False)
