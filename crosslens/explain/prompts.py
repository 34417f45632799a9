"""The prompts ``crosslens explain`` sends and how their answers are read: format
:data:`PROMPT_FORMAT`, recorded with every explanation and score it produces.

Explaining (after delphi's default explainer, EleutherAI 2024): the model sees the contexts a
feature responds to most, each a window of text in which the tokens whose activation is at least
:data:`HIGHLIGHT` of that window's largest are enclosed in ``<<`` and ``>>`` (a run of them shares
one pair), and under each window those tokens with their activation on a 1-10 scale (10: the
largest shown). It ends its answer with a line ``Explanation: ...``.

Detection (delphi's detection scorer): the model sees one explanation and numbered passages, some
where the feature responds and some where it does not, with no markers, and answers with a JSON
list of 0s and 1s, one per passage. The score is the balanced accuracy of that list
(:func:`crosslens.explain.scoring.balanced_accuracy`).

Each system prompt carries one short worked example of its own, so that small local models answer
in the format; the wording is crosslens's. A change to anything here that changes a prompt's text
is a new :data:`PROMPT_FORMAT`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

PROMPT_FORMAT = "crosslens-explain/1"
"""The prompt format's name and version (``explanations.prompt``, ``scores.prompt``, ``meta.prompt_format``)."""

HIGHLIGHT = 0.3
"""A token is marked where its activation is at least this share of its window's largest (delphi's threshold)."""

MAX_LISTED = 10
"""Marked tokens listed with their strength under one window, the strongest first."""

MAX_EXPLANATION_CHARS = 400
"""An explanation longer than this is not one phrase: the answer is refused."""

UNPARSED = ("explanation could not be parsed", "no explanation found")
"""What delphi writes in place of an explanation it could not read: never stored as one."""

EXPLAIN_SYSTEM = """You study features of a language model: directions in its activations that respond to some \
property of text, such as a word, a grammatical role, a topic or a place in a pattern.

You will see passages where one feature responds. In each passage the tokens it responds to most \
are enclosed in << and >> (neighbouring ones share a pair). Under each passage those tokens are \
listed with how strongly it responds, from 1 (weakly) to 10 (the strongest in these passages).

Work out what the marked tokens, and the text around them, have in common. Think it through if \
you need to, then end your answer with a single line:
Explanation: <one short phrase naming what the feature responds to>

The phrase has at most 15 words. Do not mention the << >> markers, do not list alternatives, \
and do not quote whole passages.

For example, for
Passage 1: the meeting moved to<< March>> because of
Strengths: " March" 10
Passage 2: born in<< July>> 1990, he
Strengths: " July" 8
you would end with
Explanation: names of months"""

DETECT_SYSTEM = """You check explanations of features of a language model. A feature is a direction in \
the model's activations that responds to some property of text.

You will get one explanation of what a feature responds to, then numbered passages. In some \
passages the feature responds somewhere; in the others it does not respond at all.

For each passage, in order, decide from the explanation alone: 1 if the feature would respond \
somewhere in it, 0 if not. Answer with one JSON list of 0s and 1s, one entry per passage, and \
nothing else.

For example, for
Explanation: names of months
Passage 1: we left in October and
Passage 2: the cat sat on the
Passage 3: until June, when the
you would answer
[1, 0, 1]"""


class AnswerError(ValueError):
    """An answer that does not follow the format asked for (it is asked once more, never stored)."""


@dataclass(frozen=True)
class Window:
    """One context of a feature: its tokens' text and the feature's activation on each."""

    tokens: tuple[str, ...]
    acts: tuple[float, ...]


def token_text(text: str) -> str:
    """A token as it reads in a one-line passage: line breaks and tabs written as escapes."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def passage(tokens: Sequence[str]) -> str:
    """Tokens as one line of plain text."""
    return "".join(token_text(t) for t in tokens)


def marked(window: Window, scale: float) -> tuple[str, str]:
    """(the window with its strongest tokens in << >>, its "Strengths:" line) at ``scale``, the
    largest activation among the windows shown."""
    peak = max(window.acts, default=0.0)
    threshold = HIGHLIGHT * peak
    hot = [peak > 0 and a >= threshold for a in window.acts]
    parts: list[str] = []
    for k, text in enumerate(window.tokens):
        if hot[k] and (k == 0 or not hot[k - 1]):
            parts.append("<<")
        parts.append(token_text(text))
        if hot[k] and (k + 1 == len(hot) or not hot[k + 1]):
            parts.append(">>")
    strongest = sorted((k for k in range(len(hot)) if hot[k]), key=lambda k: (-window.acts[k], k))[:MAX_LISTED]
    listed = ", ".join(
        f"{json.dumps(window.tokens[k], ensure_ascii=False)} {strength(window.acts[k], scale)}"
        for k in sorted(strongest)
    )
    return "".join(parts), "Strengths: " + listed


def strength(activation: float, scale: float) -> int:
    """An activation on the 1-10 scale of the prompt (10: ``scale``)."""
    return max(1, min(10, round(10 * activation / scale))) if scale > 0 else 1


def explain_messages(windows: Sequence[Window]) -> list[dict[str, str]]:
    """The chat messages asking for one explanation of ``windows``."""
    scale = max((max(w.acts, default=0.0) for w in windows), default=0.0)
    lines = []
    for number, window in enumerate(windows, start=1):
        text, strengths = marked(window, scale)
        lines += [f"Passage {number}: {text}", strengths]
    user = "Passages where the feature responds:\n\n" + "\n".join(lines)
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


def detect_messages(explanation: str, passages: Sequence[str]) -> list[dict[str, str]]:
    """The chat messages asking which of ``passages`` the feature responds in, judged from ``explanation``."""
    lines = [f"Passage {number}: {text}" for number, text in enumerate(passages, start=1)]
    user = f"Explanation: {one_line(explanation)}\n\n" + "\n".join(lines)
    return [{"role": "system", "content": DETECT_SYSTEM}, {"role": "user", "content": user}]


def one_line(text: str) -> str:
    return " ".join(str(text).split())


_EXPLANATION_LINE = re.compile(r"^\W*\[?\s*explanation\s*\]?\s*[:\-]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


def parse_explanation(answer: str | None) -> str:
    """The explanation in an answer: its last ``Explanation: ...`` line (delphi's ``[EXPLANATION]:``
    too), quotes and markup trimmed. :class:`AnswerError` where there is none, or it is empty or
    too long to be one phrase."""
    found = _EXPLANATION_LINE.findall(answer or "")
    if not found:
        raise AnswerError(f"no 'Explanation:' line in the answer ({preview(answer)})")
    text = re.sub(r"^[*_`]+|[*_`]+$", "", one_line(found[-1])).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()  # the whole phrase in quotes
    text = text.removesuffix(".").strip()
    if not text or text.lower().strip(".") in UNPARSED:
        raise AnswerError("an empty explanation")
    if len(text) > MAX_EXPLANATION_CHARS:
        raise AnswerError(f"an explanation of {len(text)} characters, not one short phrase")
    return text


_LIST = re.compile(r"\[[^\[\]]*\]")


def parse_judgements(answer: str | None, n: int) -> list[bool]:
    """The answer's list of ``n`` 0/1 judgements (the last JSON list of that length in it; true and
    false count as 1 and 0). :class:`AnswerError` where there is none."""
    for candidate in reversed(_LIST.findall(answer or "")):
        try:
            values = json.loads(candidate.lower())
        except ValueError:
            continue
        if isinstance(values, list) and len(values) == n and all(v in (0, 1) for v in values):
            return [bool(v) for v in values]
    raise AnswerError(f"no list of {n} 0s and 1s in the answer ({preview(answer)})")


def preview(answer: str | None, length: int = 60) -> str:
    """The start of an answer, one line, for an error message."""
    text = one_line(answer or "")
    return repr(text[:length] + ("..." if len(text) > length else "")) if text else "empty"


CHARS_PER_TOKEN = 4
"""Prompt tokens are estimated as characters / 4 where the endpoint has not counted them (a dry run)."""

MESSAGE_TOKENS = 4
"""Tokens a chat template adds around each message (an estimate)."""


def estimate_tokens(messages: Sequence[dict[str, str]]) -> int:
    """About how many prompt tokens ``messages`` are (no tokenizer of the endpoint's model is at hand)."""
    return sum(math.ceil(len(m["content"]) / CHARS_PER_TOKEN) + MESSAGE_TOKENS for m in messages)
