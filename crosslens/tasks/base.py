"""Minimal pairs, task datasets, and their tokenization.

A minimal pair is a prompt plus two continuations: the one a competent model should
prefer (``correct``) and the one it should not (``wrong``). A continuation may be one
token or several (a word a BPE tokenizer splits into pieces). Some tasks also carry a
``corrupted`` prompt: the same prompt with the one cue that decides the answer
changed, so that the model should now prefer ``wrong``. Continuations are stored
exactly as they are appended to the prompt, usually with a leading space
(``clean + correct`` is the grammatical sentence's prefix).

A continuation's tokens are those of ``clean + continuation`` after the prompt's own
tokens (the way the model reads the whole sentence), so the prompt must tokenize as a
prefix of prompt + continuation: a continuation that merges with the prompt's last
token is refused (:class:`TaskTokenizationError` names the example and the fix).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Int

from crosslens.tasks.sequences import TaskSequences, task_sequences


class TaskTokenizationError(ValueError):
    """A task example the tokenizer cannot score (see :meth:`TaskDataset.check_tokenizer`)."""


@dataclass(frozen=True)
class MinimalPair:
    """One task example: a prompt and the two continuations to compare."""

    clean: str
    """The prompt; the model's prediction of the continuation after it is what is measured."""
    correct: str
    """The continuation a competent model prefers, as appended to the prompt (e.g. ``" are"``;
    one token or several)."""
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
    ends and ``mask`` which positions are real. ``clean_tokens`` hold the prompts
    only; each example's two continuations are in ``continuation_tokens`` (index 0
    the correct one, 1 the wrong one), and :meth:`sequences` lays out prompt +
    continuation for teacher-forced scoring.
    """

    clean_tokens: Int[torch.Tensor, "n_examples seq"]
    corrupted_tokens: Int[torch.Tensor, "n_examples seq"] | None
    correct_ids: Int[torch.Tensor, " n_examples"]
    """First token of each correct continuation (the whole continuation when it is one token)."""
    wrong_ids: Int[torch.Tensor, " n_examples"]
    """First token of each wrong continuation."""
    last_pos: Int[torch.Tensor, " n_examples"]
    """Index of each prompt's last token: the logits there predict the continuation."""
    mask: Bool[torch.Tensor, "n_examples seq"]
    """True at real tokens (BOS included), False at padding."""
    has_bos: bool
    """Whether position 0 of every row is a prepended BOS token."""
    continuation_tokens: Int[torch.Tensor, "n_examples 2 n_cont"] | None = None
    """Each example's (correct, wrong) continuation tokens, right-padded with ``pad_id``;
    None means ``correct_ids``/``wrong_ids`` are the whole (one-token) continuations."""
    continuation_lengths: Int[torch.Tensor, "n_examples 2"] | None = None
    """How many tokens each (correct, wrong) continuation has."""
    multi_token: bool | None = None
    """Whether the task has a continuation of several tokens. Decided for the whole task
    when it is tokenized and kept by row selection, so that every batch of a task is
    scored the same way: summed log-probabilities if True, else the last-position logit
    difference (the same number in exact arithmetic; see
    :func:`crosslens.causal.attribution.logit_diff`)."""
    pad_id: int = 0
    """The id padding positions hold (never read: they are masked or after every real token)."""

    def __post_init__(self) -> None:
        if self.continuation_tokens is None:
            self.continuation_tokens = torch.stack([self.correct_ids, self.wrong_ids], dim=-1)[..., None]
            self.continuation_lengths = torch.ones(self.continuation_tokens.shape[:2], dtype=torch.long)
        if self.continuation_lengths is None:
            raise ValueError("TokenizedTask: continuation_tokens needs continuation_lengths")
        if self.multi_token is None:
            self.multi_token = bool((self.continuation_lengths > 1).any())

    def __len__(self) -> int:
        return int(self.clean_tokens.shape[0])

    def __getitem__(self, index: slice | torch.Tensor | Sequence[int]) -> "TokenizedTask":
        """Rows ``index`` of every tensor, trimmed to their longest prompt and continuation."""
        rows = index if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long)
        last_pos = self.last_pos[rows]
        width = int(last_pos.max()) + 1 if last_pos.numel() else 0
        lengths = self.continuation_lengths[rows]  # type: ignore[index]
        n_cont = int(lengths.max()) if lengths.numel() else 0
        return replace(
            self,
            clean_tokens=self.clean_tokens[rows, :width],
            corrupted_tokens=None if self.corrupted_tokens is None else self.corrupted_tokens[rows, :width],
            correct_ids=self.correct_ids[rows],
            wrong_ids=self.wrong_ids[rows],
            last_pos=last_pos,
            mask=self.mask[rows, :width],
            continuation_tokens=self.continuation_tokens[rows, :, :n_cont],  # type: ignore[index]
            continuation_lengths=lengths,
        )

    def feature_mask(self, *, include_bos: bool = False) -> Bool[torch.Tensor, "n_examples seq"]:
        """Positions whose crosscoder features are spliced and attributed: the prompt's.

        The BOS position is left out by default: its activation is an outlier that
        crosscoders are not trained on (harvesting excludes it). Continuation positions
        are never among them (see :meth:`sequences`).
        """
        positions = self.mask.clone()
        if self.has_bos and not include_bos:
            positions[:, 0] = False
        return positions

    def sequences(self) -> TaskSequences:
        """Each example's prompt + correct and prompt + wrong continuation, for teacher forcing."""
        assert self.continuation_tokens is not None and self.continuation_lengths is not None
        return task_sequences(
            self.clean_tokens, self.last_pos, self.continuation_tokens, self.continuation_lengths, self.pad_id
        )

    def to(self, device: torch.device | str) -> "TokenizedTask":
        return replace(
            self,
            clean_tokens=self.clean_tokens.to(device),
            corrupted_tokens=None if self.corrupted_tokens is None else self.corrupted_tokens.to(device),
            correct_ids=self.correct_ids.to(device),
            wrong_ids=self.wrong_ids.to(device),
            last_pos=self.last_pos.to(device),
            mask=self.mask.to(device),
            continuation_tokens=self.continuation_tokens.to(device),  # type: ignore[union-attr]
            continuation_lengths=self.continuation_lengths.to(device),  # type: ignore[union-attr]
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


def continuation_ids(
    tokenizer: Any, prompt: str, continuation: str, *, prompt_ids: list[int] | None = None
) -> list[int]:
    """The tokens of ``continuation`` as the model reads it after ``prompt``.

    They are the tokens of ``prompt + continuation`` after the prompt's own tokens (how
    the whole sentence tokenizes), so the prompt's tokens must be a prefix of that: a
    continuation that merges with the prompt's last token (``"The dog" + "s"``) has no
    tokens of its own, and neither has one whose characters the tokenizer drops. Both
    raise :class:`TaskTokenizationError` saying how to fix the example.
    """
    prompt_ids = encode(tokenizer, prompt) if prompt_ids is None else prompt_ids
    whole = encode(tokenizer, prompt + continuation)
    if whole[: len(prompt_ids)] != prompt_ids:
        raise TaskTokenizationError(
            f"continuation {continuation!r} merges with the end of the prompt (prompt + continuation does not "
            "start with the prompt's tokens); end the prompt at a word boundary and start the continuation "
            "with its leading space (e.g. clean='The keys', correct=' are')"
        )
    ids = whole[len(prompt_ids) :]
    if not ids:
        raise TaskTokenizationError(
            f"continuation {continuation!r} tokenizes to no tokens after the prompt (the tokenizer drops its "
            "characters); pick a continuation the vocabulary can spell"
        )
    return ids


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
    def _example(self, index: int, pair: MinimalPair) -> str:
        """``task 'x', example 3 (clean='...')``, led by the file and line the pair came from."""
        source, line = pair.meta.get("source"), pair.meta.get("line")
        clean = repr(pair.clean) if len(pair.clean) <= 80 else f"{pair.clean[:60]!r}... ({len(pair.clean)} characters)"
        where = f"{source}, line {line}: " if source and line else ""
        return f"{where}task {self.name!r}, example {index} (clean={clean})"

    def _problems(self, pair: MinimalPair, tokenizer: Any, max_tokens: int | None = None) -> list[str]:
        """Why ``pair`` cannot be scored with ``tokenizer`` (empty when it can), by a model
        that reads at most ``max_tokens`` tokens (its context; BOS included)."""
        problems = []
        unk = _special_id(tokenizer, "unk")
        prompt_ids = encode(tokenizer, pair.clean)
        tokens: dict[str, list[int]] = {}
        for role in ("correct", "wrong"):
            text = getattr(pair, role)
            try:
                ids = continuation_ids(tokenizer, pair.clean, text, prompt_ids=prompt_ids)
            except TaskTokenizationError as error:
                problems.append(f"{role} {error}")
                continue
            tokens[role] = ids
            n_unknown = sum(token == unk for token in ids) if unk is not None else 0
            if n_unknown and len(ids) == 1:
                problems.append(f"{role} continuation {text!r} is the unknown token; the vocabulary lacks it")
            elif n_unknown:
                problems.append(
                    f"{role} continuation {text!r} is {len(ids)} tokens, {n_unknown} of them the unknown token; "
                    "the vocabulary lacks it"
                )
        if max_tokens is not None and tokens:
            longest = 1 + len(prompt_ids) + max(len(ids) for ids in tokens.values())
            if longest > max_tokens:
                problems.append(
                    f"BOS + prompt + continuation is {longest} tokens, more than the model's context of "
                    f"{max_tokens}; shorten the sentence or drop the pair"
                )
        if not problems and tokens["correct"] == tokens["wrong"]:
            problems.append(
                f"correct {pair.correct!r} and wrong {pair.wrong!r} tokenize to the same tokens {tokens['correct']}; "
                "the tokenizer cannot tell them apart (pick words it spells differently)"
            )
        if unk is not None:
            for role in ("clean", "corrupted"):
                text = getattr(pair, role)
                if text is not None and unk in encode(tokenizer, text):
                    problems.append(f"{role} prompt {text!r} has words outside the vocabulary (unknown tokens)")
        if pair.corrupted is not None:
            n_clean, n_corrupt = len(prompt_ids), len(encode(tokenizer, pair.corrupted))
            if n_clean != n_corrupt:
                problems.append(
                    f"corrupted prompt {pair.corrupted!r} is {n_corrupt} tokens but the clean prompt is "
                    f"{n_clean}; positions must line up for patching (choose words of equal token length)"
                )
        return problems

    def problems(self, tokenizer: Any, *, max_tokens: int | None = None) -> dict[int, str]:
        """Every example that cannot be scored with ``tokenizer`` (by a model whose context is
        ``max_tokens``): its index and why (the message :meth:`check_tokenizer` raises for it)."""
        tokenizer = resolve_tokenizer(tokenizer)
        found = {}
        for index, pair in enumerate(self.pairs):
            problems = self._problems(pair, tokenizer, max_tokens)
            if problems:
                found[index] = f"{self._example(index, pair)}: " + "; ".join(problems)
        return found

    def check_tokenizer(self, tokenizer: Any, *, max_tokens: int | None = None) -> None:
        """Raise :class:`TaskTokenizationError` naming the first example that cannot be scored.

        Continuations may be any number of tokens, but each must be at least one token
        after the prompt's (see :func:`continuation_ids`), none may hold the unknown
        token, and the correct and wrong ones must tokenize differently. Prompts must not
        contain the unknown token, and a corrupted prompt must have as many tokens as its
        clean prompt. With ``max_tokens`` (the model's context), BOS + prompt + continuation
        must fit in it.
        """
        tokenizer = resolve_tokenizer(tokenizer)
        for index, pair in enumerate(self.pairs):
            problems = self._problems(pair, tokenizer, max_tokens)
            if problems:
                raise TaskTokenizationError(f"{self._example(index, pair)}: " + "; ".join(problems))

    def filter_tokenizable(self, tokenizer: Any, *, max_tokens: int | None = None) -> "TaskDataset":
        """The examples that pass :meth:`check_tokenizer` (raises if none do).

        Multi-token continuations are kept; what is dropped cannot be scored at all
        (:meth:`problems` says why).
        """
        tokenizer = resolve_tokenizer(tokenizer)
        kept = tuple(p for p in self.pairs if not self._problems(p, tokenizer, max_tokens))
        if not kept:
            first = next(iter(self.problems(tokenizer, max_tokens=max_tokens).values()))
            raise TaskTokenizationError(f"no example of task {self.name!r} can be scored with this tokenizer; {first}")
        return replace(self, pairs=kept)

    def tokenize(self, tokenizer: Any, *, prepend_bos: bool = True, max_tokens: int | None = None) -> TokenizedTask:
        """Check (``max_tokens``: the model's context), then tokenize into right-padded tensors
        (see :class:`TokenizedTask`)."""
        tokenizer = resolve_tokenizer(tokenizer)
        self.check_tokenizer(tokenizer, max_tokens=max_tokens)
        prefix = [bos_id(tokenizer)] if prepend_bos else []
        prompt_ids = [encode(tokenizer, p.clean) for p in self.pairs]
        clean = [prefix + ids for ids in prompt_ids]
        for index, ids in enumerate(clean):
            if not ids:
                raise TaskTokenizationError(
                    f"task {self.name!r}, example {index}: the prompt is empty and no BOS is prepended; "
                    "pass prepend_bos=True"
                )
        corrupted = None
        if self.has_corrupted:
            corrupted = [prefix + encode(tokenizer, p.corrupted) for p in self.pairs]  # type: ignore[arg-type]
        continuations = [
            [continuation_ids(tokenizer, p.clean, text, prompt_ids=ids) for text in (p.correct, p.wrong)]
            for p, ids in zip(self.pairs, prompt_ids)
        ]
        width = max(len(ids) for ids in clean)
        pad = _pad_id(tokenizer)

        def padded(rows: list[list[int]], to: int) -> torch.Tensor:
            return torch.tensor([ids + [pad] * (to - len(ids)) for ids in rows], dtype=torch.long)

        n_cont = max(len(ids) for pair in continuations for ids in pair)
        continuation_tokens = torch.stack([padded(pair, n_cont) for pair in continuations])
        lengths = torch.tensor([len(ids) for ids in clean])
        return TokenizedTask(
            clean_tokens=padded(clean, width),
            corrupted_tokens=None if corrupted is None else padded(corrupted, width),
            correct_ids=continuation_tokens[:, 0, 0].clone(),
            wrong_ids=continuation_tokens[:, 1, 0].clone(),
            last_pos=lengths - 1,
            mask=torch.arange(width)[None, :] < lengths[:, None],
            has_bos=prepend_bos,
            continuation_tokens=continuation_tokens,
            continuation_lengths=torch.tensor([[len(ids) for ids in pair] for pair in continuations]),
            pad_id=pad,
        )

    # ------------------------------------------------------------------ files
    def to_jsonl(self, path: str | Path) -> Path:
        """Write one JSON object per example (``clean``, ``correct``, ``wrong``, ``corrupted``, ``meta``)."""
        path = Path(path)
        path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in self.pairs))
        return path
