"""Minimal pairs, task datasets, and their tokenization.

A minimal pair is a prompt plus two one-token continuations: the one a competent
model should prefer (``correct``) and the one it should not (``wrong``). Some tasks
also carry a ``corrupted`` prompt: the same prompt with the one cue that decides the
answer changed, so that the model should now prefer ``wrong``. Continuations are
stored exactly as they are appended to the prompt, usually with a leading space
(``clean + correct`` is the grammatical sentence's prefix).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Int


class TaskTokenizationError(ValueError):
    """A task example does not tokenize the way attribution needs."""


@dataclass(frozen=True)
class MinimalPair:
    """One task example: a prompt and the two continuations to compare."""

    clean: str
    """The prompt; the model's next-token prediction after it is what is measured."""
    correct: str
    """The continuation a competent model prefers, as appended to the prompt (e.g. ``" are"``)."""
    wrong: str
    """The continuation it should not prefer (e.g. ``" is"``)."""
    corrupted: str | None = None
    """The prompt with the deciding cue changed (same number of tokens as ``clean``), or None."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    """Free-form provenance: template, condition, source file and line, ..."""

    def __post_init__(self) -> None:
        for name in ("clean", "correct", "wrong"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"MinimalPair.{name} must be a string, got {getattr(self, name)!r}")
        if not self.correct.strip() or not self.wrong.strip():
            raise ValueError(
                f"MinimalPair {self.clean!r}: correct={self.correct!r} and wrong={self.wrong!r} "
                "must both be non-blank continuations"
            )
        if self.correct == self.wrong:
            raise ValueError(
                f"MinimalPair {self.clean!r}: correct and wrong are both {self.correct!r}; a minimal "
                "pair needs two different continuations"
            )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"clean": self.clean, "correct": self.correct, "wrong": self.wrong}
        if self.corrupted is not None:
            out["corrupted"] = self.corrupted
        if self.meta:
            out["meta"] = self.meta
        return out


@dataclass
class TokenizedTask:
    """A task as right-padded token tensors, ready for a HookedTransformer.

    Right padding leaves every real position's logits unchanged under causal
    attention, so no attention mask is needed; ``last_pos`` says where each prompt
    ends and ``mask`` which positions are real.
    """

    clean_tokens: Int[torch.Tensor, "n_examples seq"]
    corrupted_tokens: Int[torch.Tensor, "n_examples seq"] | None
    correct_ids: Int[torch.Tensor, " n_examples"]
    wrong_ids: Int[torch.Tensor, " n_examples"]
    last_pos: Int[torch.Tensor, " n_examples"]
    """Index of each prompt's last token: the logits there predict the continuation."""
    mask: Bool[torch.Tensor, "n_examples seq"]
    """True at real tokens (BOS included), False at padding."""
    has_bos: bool
    """Whether position 0 of every row is a prepended BOS token."""

    def __len__(self) -> int:
        return int(self.clean_tokens.shape[0])

    def __getitem__(self, index: slice | torch.Tensor | Sequence[int]) -> "TokenizedTask":
        """Rows ``index`` of every tensor, trimmed to their longest prompt."""
        rows = index if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long)
        last_pos = self.last_pos[rows]
        width = int(last_pos.max()) + 1 if last_pos.numel() else 0
        return TokenizedTask(
            clean_tokens=self.clean_tokens[rows, :width],
            corrupted_tokens=None if self.corrupted_tokens is None else self.corrupted_tokens[rows, :width],
            correct_ids=self.correct_ids[rows],
            wrong_ids=self.wrong_ids[rows],
            last_pos=last_pos,
            mask=self.mask[rows, :width],
            has_bos=self.has_bos,
        )

    def feature_mask(self, *, include_bos: bool = False) -> Bool[torch.Tensor, "n_examples seq"]:
        """Positions whose crosscoder features are spliced and attributed.

        The BOS position is left out by default: its activation is an outlier that
        crosscoders are not trained on (harvesting excludes it).
        """
        positions = self.mask.clone()
        if self.has_bos and not include_bos:
            positions[:, 0] = False
        return positions

    def to(self, device: torch.device | str) -> "TokenizedTask":
        return replace(
            self,
            clean_tokens=self.clean_tokens.to(device),
            corrupted_tokens=None if self.corrupted_tokens is None else self.corrupted_tokens.to(device),
            correct_ids=self.correct_ids.to(device),
            wrong_ids=self.wrong_ids.to(device),
            last_pos=self.last_pos.to(device),
            mask=self.mask.to(device),
        )


def resolve_tokenizer(tokenizer_or_model: Any) -> Any:
    """A HookedTransformer's tokenizer, or the tokenizer itself."""
    inner = getattr(tokenizer_or_model, "tokenizer", None)
    if inner is not None and hasattr(tokenizer_or_model, "cfg"):
        return inner
    if tokenizer_or_model is None:
        raise ValueError("no tokenizer: pass a Hugging Face tokenizer, or a HookedTransformer that has one")
    return tokenizer_or_model


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (HF tokenizers and raw ``tokenizers.Tokenizer``)."""
    tokenizer = resolve_tokenizer(tokenizer)
    if hasattr(tokenizer, "encode") and not callable(getattr(tokenizer, "convert_tokens_to_ids", None)):
        return list(tokenizer.encode(text, add_special_tokens=False).ids)  # tokenizers.Tokenizer
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _special_id(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, f"{name}_token_id", None)
    return int(value) if value is not None else None


def bos_id(tokenizer: Any) -> int:
    """The id TransformerLens prepends as BOS for ``tokenizer``."""
    bos = _special_id(tokenizer, "bos")
    if bos is None:
        # TransformerLens uses EOS as BOS when a tokenizer has none (e.g. GPT-NeoX-style).
        bos = _special_id(tokenizer, "eos")
    if bos is None:
        raise TaskTokenizationError(
            "the tokenizer has neither a BOS nor an EOS token to prepend; pass prepend_bos=False"
        )
    return bos


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad", "eos", "bos"):
        value = _special_id(tokenizer, name)
        if value is not None:
            return value
    return 0


@dataclass(frozen=True)
class TaskDataset:
    """A named, ordered collection of minimal pairs."""

    name: str
    """Short identifier used in tables and plots (e.g. ``"agreement_pp"``)."""
    pairs: tuple[MinimalPair, ...]
    """The examples."""
    description: str = ""
    """One line on what the task tests."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple(self.pairs))
        if not self.pairs:
            raise ValueError(f"task {self.name!r} has no examples; generate or load at least one")
        with_corrupted = sum(p.corrupted is not None for p in self.pairs)
        if 0 < with_corrupted < len(self.pairs):
            raise ValueError(
                f"task {self.name!r}: {with_corrupted} of {len(self.pairs)} examples have a corrupted "
                "prompt; either all or none must have one (split the task in two)"
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[MinimalPair]:
        return iter(self.pairs)

    def __getitem__(self, index: int | slice) -> "MinimalPair | TaskDataset":
        if isinstance(index, slice):
            return replace(self, pairs=self.pairs[index])
        return self.pairs[index]

    @property
    def has_corrupted(self) -> bool:
        return self.pairs[0].corrupted is not None

    def take(self, n: int) -> "TaskDataset":
        """The first ``n`` examples."""
        return replace(self, pairs=self.pairs[:n])

    # ------------------------------------------------------------------ tokenization
    def _problems(self, index: int, pair: MinimalPair, tokenizer: Any) -> list[str]:
        problems = []
        unk = _special_id(tokenizer, "unk")
        for role in ("correct", "wrong"):
            text = getattr(pair, role)
            ids = encode(tokenizer, text)
            if len(ids) != 1:
                problems.append(
                    f"{role} continuation {text!r} is {len(ids)} tokens, not 1 "
                    "(pick a one-token word, or drop the example with filter_tokenizable)"
                )
            elif unk is not None and ids[0] == unk:
                problems.append(f"{role} continuation {text!r} is the unknown token; the vocabulary lacks it")
        if unk is not None:
            for role in ("clean", "corrupted"):
                text = getattr(pair, role)
                if text is not None and unk in encode(tokenizer, text):
                    problems.append(f"{role} prompt {text!r} has words outside the vocabulary (unknown tokens)")
        if pair.corrupted is not None:
            n_clean, n_corrupt = len(encode(tokenizer, pair.clean)), len(encode(tokenizer, pair.corrupted))
            if n_clean != n_corrupt:
                problems.append(
                    f"corrupted prompt {pair.corrupted!r} is {n_corrupt} tokens but the clean prompt is "
                    f"{n_clean}; positions must line up for patching (choose words of equal token length)"
                )
        return problems

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise :class:`TaskTokenizationError` naming the first example that does not tokenize cleanly.

        Every ``correct``/``wrong`` continuation must be exactly one known token, prompts
        must not contain the unknown token, and a corrupted prompt must have as many
        tokens as its clean prompt.
        """
        tokenizer = resolve_tokenizer(tokenizer)
        for index, pair in enumerate(self.pairs):
            problems = self._problems(index, pair, tokenizer)
            if problems:
                raise TaskTokenizationError(
                    f"task {self.name!r}, example {index} (clean={pair.clean!r}): " + "; ".join(problems)
                )

    def filter_tokenizable(self, tokenizer: Any) -> "TaskDataset":
        """The examples that pass :meth:`check_tokenizer` (raises if none do)."""
        tokenizer = resolve_tokenizer(tokenizer)
        kept = tuple(p for i, p in enumerate(self.pairs) if not self._problems(i, p, tokenizer))
        if not kept:
            raise TaskTokenizationError(
                f"task {self.name!r}: no example tokenizes cleanly with this tokenizer "
                "(run check_tokenizer to see why the first one fails)"
            )
        return replace(self, pairs=kept)

    def tokenize(self, tokenizer: Any, *, prepend_bos: bool = True) -> TokenizedTask:
        """Check, then tokenize into right-padded tensors (see :class:`TokenizedTask`)."""
        tokenizer = resolve_tokenizer(tokenizer)
        self.check_tokenizer(tokenizer)
        prefix = [bos_id(tokenizer)] if prepend_bos else []
        clean = [prefix + encode(tokenizer, p.clean) for p in self.pairs]
        for index, ids in enumerate(clean):
            if not ids:
                raise TaskTokenizationError(
                    f"task {self.name!r}, example {index}: the prompt is empty and no BOS is prepended; "
                    "pass prepend_bos=True"
                )
        corrupted = None
        if self.has_corrupted:
            corrupted = [prefix + encode(tokenizer, p.corrupted) for p in self.pairs]  # type: ignore[arg-type]
        width = max(len(ids) for ids in clean)
        pad = _pad_id(tokenizer)

        def padded(rows: list[list[int]]) -> torch.Tensor:
            return torch.tensor([ids + [pad] * (width - len(ids)) for ids in rows], dtype=torch.long)

        lengths = torch.tensor([len(ids) for ids in clean])
        return TokenizedTask(
            clean_tokens=padded(clean),
            corrupted_tokens=None if corrupted is None else padded(corrupted),
            correct_ids=torch.tensor([encode(tokenizer, p.correct)[0] for p in self.pairs]),
            wrong_ids=torch.tensor([encode(tokenizer, p.wrong)[0] for p in self.pairs]),
            last_pos=lengths - 1,
            mask=torch.arange(width)[None, :] < lengths[:, None],
            has_bos=prepend_bos,
        )

    # ------------------------------------------------------------------ files
    def to_jsonl(self, path: str | Path) -> Path:
        """Write one JSON object per example (``clean``, ``correct``, ``wrong``, ``corrupted``, ``meta``)."""
        path = Path(path)
        path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in self.pairs))
        return path

