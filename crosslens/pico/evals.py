"""What the pico build measures at every checkpoint, and the table it prints.

Minimal-pair accuracy compares the logits of the correct and the wrong next token at
the prompt's last position (chance is 50%); continuations of several tokens compare
their summed log-probabilities. Works on a Hugging Face causal LM or a
TransformerLens ``HookedTransformer`` alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from crosslens.tasks.base import MinimalPair, TaskDataset, TaskTokenizationError, TokenizedTask
from crosslens.tasks.grammar import AGREEMENT_KINDS, PicoGrammar
from crosslens.tasks.sequences import at_targets, logprob_diff

TASK_COLUMNS = ("simple", "pp", "rc", "ioi")
"""Minimal-pair tasks in an eval row: agreement (simple, across a PP, across a relative clause), IOI."""
TARGET_ACCURACY = 0.95
"""What "learned" means in the build's target summary."""


def _logits(model: Any, tokens_BL: Int[torch.Tensor, "batch seq"]) -> Float[torch.Tensor, "batch seq vocab"]:
    output = model(tokens_BL)
    return output.logits if hasattr(output, "logits") else output  # HF output object, or a plain tensor


@torch.no_grad()
def pair_logit_diffs(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[MinimalPair] | TokenizedTask,
    *,
    batch_size: int = 256,
) -> Float[torch.Tensor, " n_pairs"]:
    """``logit[correct] - logit[wrong]`` at each prompt's last position (BOS prepended).

    ``pairs`` may be pre-tokenized (:meth:`TaskDataset.tokenize`) to skip tokenizing again.
    Every continuation must be one token; :func:`continuation_logprob_diffs` scores longer ones.
    """
    task = pairs if isinstance(pairs, TokenizedTask) else TaskDataset("pairs", tuple(pairs)).tokenize(tokenizer)
    if task.multi_token:
        raise TaskTokenizationError(
            "pair_logit_diffs compares one next token, but some continuations are several tokens; "
            "score them with continuation_logprob_diffs"
        )
    device = next(model.parameters()).device
    diffs = []
    for start in range(0, len(task), batch_size):
        chunk = task[start : start + batch_size].to(device)
        rows = torch.arange(len(chunk), device=device)
        last_BV = _logits(model, chunk.clean_tokens)[rows, chunk.last_pos]
        diffs.append((last_BV[rows, chunk.correct_ids] - last_BV[rows, chunk.wrong_ids]).float().cpu())
    return torch.cat(diffs)


@torch.no_grad()
def continuation_logprob_diffs(
    model: Any, tokenizer: Any, pairs: Sequence[MinimalPair] | TokenizedTask, *, batch_size: int = 64
) -> Float[torch.Tensor, " n_pairs"]:
    """``log p(correct | prompt) - log p(wrong | prompt)`` per pair, each continuation's
    log-probability summed over its tokens (BOS prepended to the prompt).

    Unlike :func:`pair_logit_diffs` this scores continuations of any length, so pairs whose
    words a BPE tokenizer splits into several pieces are measured instead of skipped. It is
    the causal stage's metric with the opposite sign (:mod:`crosslens.tasks.sequences`, the
    same tokenization and sums). ``batch_size`` counts rows: two per pair.
    """
    if not isinstance(pairs, TokenizedTask):
        pairs = TaskDataset("pairs", tuple(_without_corrupted(pairs))).tokenize(tokenizer)
    task = pairs
    device = next(model.parameters()).device
    pairs_per_batch = max(1, batch_size // 2)
    diffs = []
    for start in range(0, len(task), pairs_per_batch):
        sequences = task[start : start + pairs_per_batch].sequences().to(device)
        n_pairs, _, width = sequences.tokens.shape
        logits_N2WV = _logits(model, sequences.flat_tokens()).reshape(n_pairs, 2, width, -1)
        diffs.append(-logprob_diff(at_targets(logits_N2WV, sequences), sequences).cpu())
    return torch.cat(diffs)


def evaluate_pairs(
    model: Any, tokenizer: Any, pairs: Sequence[MinimalPair] | TokenizedTask, *, batch_size: int = 256
) -> float:
    """Fraction of pairs whose correct continuation gets the higher logit (ties count as wrong)."""
    return float((pair_logit_diffs(model, tokenizer, pairs, batch_size=batch_size) > 0).float().mean())


@torch.no_grad()
def heldout_loss(model: Any, tokens_NL: Int[torch.Tensor, "n_rows seq"], *, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over held-out rows."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(tokens_NL), batch_size):
        ids_BL = tokens_NL[start : start + batch_size].to(device)
        logits_BLV = _logits(model, ids_BL)[:, :-1]
        total += float(F.cross_entropy(logits_BLV.flatten(0, 1).float(), ids_BL[:, 1:].flatten(), reduction="sum"))
        count += ids_BL[:, 1:].numel()
    return total / count


def heldout_pairs(n_pairs: int, seed: int, grammar: PicoGrammar | None = None) -> dict[str, list[MinimalPair]]:
    """The build's probe sets for a config seed: agreement (simple, pp, rc) and IOI.

    Their generators are seeded apart from every training batch and from the held-out
    text, so no probe is drawn from the training stream.
    """
    grammar = grammar or PicoGrammar()
    eval_seed = 7_919 + 1_000 * seed
    pairs: dict[str, list[MinimalPair]] = {
        kind: grammar.agreement_pairs(kind, n_pairs, eval_seed) for kind in AGREEMENT_KINDS
    }
    pairs["ioi"] = grammar.ioi_pairs(n_pairs, eval_seed)
    return pairs


class PicoEvaluator:
    """Tokenizes the held-out pairs once; each call evaluates one checkpoint into a table row.

    Pairs come from seeds no training text uses. A task whose continuations are not single
    tokens of ``tokenizer`` (a user corpus's BPE) is scored by summed continuation
    log-probability instead (:func:`continuation_logprob_diffs`); one with words outside
    the vocabulary is skipped, with the reason in ``notes``. ``extra_tasks`` (the user's own
    pairs) are always scored that way and reported under ``row["extra"]``; pairs among them
    the tokenizer cannot score (:meth:`TaskDataset.problems`), or that do not fit the model's
    context (``max_tokens``), are left out, with a note.
    """

    def __init__(
        self,
        tokenizer: Any,
        heldout_tokens: Int[torch.Tensor, "n_rows seq"],
        *,
        n_pairs: int,
        seed: int,
        grammar: PicoGrammar | None = None,
        extra_tasks: dict[str, TaskDataset] | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self.heldout_tokens = heldout_tokens
        self.max_tokens = max_tokens  # the model's context: longer pairs are left out with a note
        self.tokenizer = tokenizer
        self.notes: list[str] = []
        kept: dict[str, list[MinimalPair]] = {}
        # Tasks whose continuations are not single tokens (a user corpus's BPE), and the
        # user's own pairs: scored by summed log-probability of each continuation.
        self.multi_token: dict[str, list[MinimalPair]] = {}
        for name, pairs in heldout_pairs(n_pairs, seed, grammar).items():
            pairs = _without_corrupted(pairs)
            if _has_unknown_words(tokenizer, pairs):
                self.notes.append(f"{name}: skipped, some words are outside the vocabulary")
                continue
            try:
                tokenized = TaskDataset(name, tuple(pairs)).tokenize(tokenizer)
            except TaskTokenizationError as error:
                self.notes.append(f"{name}: skipped, {error}")
                continue
            if tokenized.multi_token:
                self.multi_token[name] = pairs
            else:
                kept[name] = pairs
        self.extra_columns: list[str] = []
        for name, task in (extra_tasks or {}).items():
            self.extra_columns.append(name)
            scorable = self._scorable(name, replace(task, pairs=tuple(_without_corrupted(task.pairs))), tokenizer)
            if scorable:
                self.multi_token[name] = scorable
        # All tasks in one padded table: a few large forward passes instead of one per task.
        all_pairs = tuple(pair for pairs in kept.values() for pair in pairs)
        self.pairs = TaskDataset("pico", all_pairs).tokenize(tokenizer) if all_pairs else None
        self.task_rows: dict[str, slice] = {}
        start = 0
        for name, pairs in kept.items():
            self.task_rows[name] = slice(start, start + len(pairs))
            start += len(pairs)

    def __call__(self, model: Any, step: int, tokens_seen: int) -> dict[str, Any]:
        row: dict[str, Any] = {"step": step, "tokens_seen": tokens_seen}
        row["loss"] = heldout_loss(model, self.heldout_tokens)
        all_diffs = pair_logit_diffs(model, None, self.pairs) if self.pairs is not None else None
        diffs = {name: all_diffs[rows] for name, rows in self.task_rows.items()}  # type: ignore[index]
        for name, pairs in self.multi_token.items():
            diffs[name] = continuation_logprob_diffs(model, self.tokenizer, pairs)
        if self.extra_columns:
            row["extra"] = {
                name: float((diffs[name] > 0).float().mean()) if name in diffs else None for name in self.extra_columns
            }
        for name in TASK_COLUMNS:
            row[name] = float((diffs[name] > 0).float().mean()) if name in diffs else None
        attractor = [diffs[name] for name in ("pp", "rc") if name in diffs]
        # Every attractor has the subject's other number: preferring the wrong form = agreeing with it.
        row["nearest_noun"] = float((torch.cat(attractor) < 0).float().mean()) if attractor else None
        return row

    def _scorable(self, name: str, task: TaskDataset, tokenizer: Any) -> list[MinimalPair]:
        """The user's pairs the tokenizer can score; why others cannot goes to ``notes``."""
        problems = task.problems(tokenizer, max_tokens=self.max_tokens)
        if problems:
            first = next(iter(problems.values()))
            self.notes.append(
                f"{name}: {len(problems)} of {len(task)} pairs cannot be scored and are left out ({first})"
            )
        return [pair for index, pair in enumerate(task.pairs) if index not in problems]


def _without_corrupted(pairs: Sequence[MinimalPair]) -> list[MinimalPair]:
    """The pairs without their corrupted prompts: scoring never reads them, so their token
    counts (which patching needs aligned) must not keep a pair out of the table."""
    return [dataclasses.replace(pair, corrupted=None) for pair in pairs]


def _has_unknown_words(tokenizer: Any, pairs: Sequence[MinimalPair]) -> bool:
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return False
    from crosslens.tasks.base import encode

    return any(unk in encode(tokenizer, text) for p in pairs for text in (p.clean, p.correct, p.wrong))


def in_nearest_noun_phase(row: dict[str, Any]) -> bool:
    """The model knows agreement (simple >= 80%) but across attractors mostly agrees with the wrong noun."""
    near, simple = row.get("nearest_noun"), row.get("simple")
    return near is not None and simple is not None and near > 0.5 and simple >= 0.8


def _percent(value: float | None) -> str:
    return "   -" if value is None else f"{100 * value:4.0f}"


def format_eval_table(
    rows: Sequence[dict[str, Any]], extra_columns: Sequence[str] | None = None, *, grammar: bool = True
) -> str:
    """The build's per-checkpoint table: held-out loss and minimal-pair accuracies in percent.

    ``near`` is how often the model agrees with the attractor (the nearest noun) instead
    of the subject; rows of that phase (:func:`in_nearest_noun_phase`) are flagged. Columns
    after ``ioi`` are the accuracies of the user's own pairs (``PicoConfig.eval_pairs``).
    The grammar's task columns (simple to ioi) are shown only with ``grammar`` (a suite built
    on the pico grammar): on other text they test sentences the model never read.
    """
    extra = list(extra_columns or dict.fromkeys(name for row in rows for name in row.get("extra", {})))
    header = f"{'step':>6} {'tokens':>9} {'loss':>6}"
    header += f" {'simple':>6} {'pp':>4} {'rc':>4} {'near':>4} {'ioi':>4}" if grammar else ""
    header += "".join(f" {name:>{max(4, len(name))}}" for name in extra)
    lines = [header, "-" * len(header)]
    for row in rows:
        line = f"{row['step']:>6} {_tokens(row['tokens_seen']):>9} {row['loss']:6.3f}"
        if grammar:
            line += (
                f" {_percent(row['simple']):>6} {_percent(row['pp']):>4} {_percent(row['rc']):>4} "
                f"{_percent(row['nearest_noun']):>4} {_percent(row['ioi']):>4}"
            )
        line += "".join(f" {_percent(row.get('extra', {}).get(name)):>{max(4, len(name))}}" for name in extra)
        if grammar and in_nearest_noun_phase(row):
            line += "  <- agrees with the nearest noun"
        lines.append(line)
    return "\n".join(lines)


def _tokens(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k" if n >= 1_000 else str(n)


def first_step_reaching(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], threshold: float = TARGET_ACCURACY
) -> int | None:
    """The first checkpoint step at which every one of ``columns`` is >= ``threshold``."""
    for row in rows:
        if all(row.get(column) is not None and row[column] >= threshold for column in columns):
            return row["step"]
    return None


def check_targets(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The suite's learning targets, measured on its eval rows.

    Targets: every task near chance (35-65%) at step 0; simple agreement reaches 95% at
    an earlier checkpoint than attractor agreement (pp and rc both) does; simple, pp and
    rc all >= 95% at the last checkpoint.
    """
    first, last = rows[0], rows[-1]
    chance = all(0.35 <= first[name] <= 0.65 for name in TASK_COLUMNS if first.get(name) is not None)
    simple_at = first_step_reaching(rows, ("simple",))
    attractor_at = first_step_reaching(rows, ("pp", "rc"))
    ordered = simple_at is not None and (attractor_at is None or simple_at < attractor_at)
    final = all((last.get(name) or 0) >= TARGET_ACCURACY for name in ("simple", "pp", "rc"))
    return {
        "chance_at_step0": chance,
        "simple_learned_at": simple_at,
        "attractor_learned_at": attractor_at,
        "simple_before_attractor": ordered,
        "final_agreement_learned": final,
        "nearest_noun_phase_steps": [row["step"] for row in rows if in_nearest_noun_phase(row)],
        "met": chance and ordered and final,
    }


def format_targets(targets: dict[str, Any]) -> str:
    """One line per target, for the build's printout."""

    def mark(ok: bool) -> str:
        return "ok  " if ok else "MISS"

    def reached(step: int | None) -> str:
        return "at no checkpoint" if step is None else f"at step {step}"

    phase = targets["nearest_noun_phase_steps"]
    return "\n".join(
        [
            f"[{mark(targets['chance_at_step0'])}] step 0: every task near chance (35-65%)",
            f"[{mark(targets['simple_before_attractor'])}] simple agreement reaches 95% "
            f"{reached(targets['simple_learned_at'])}, attractor agreement (pp and rc) "
            f"{reached(targets['attractor_learned_at'])}",
            f"[{mark(targets['final_agreement_learned'])}] last checkpoint: simple, pp and rc >= 95%",
            "      nearest-noun phase (simple >= 80% but attractor wins > 50%) at steps: "
            + (", ".join(map(str, phase)) or "none"),
        ]
    )
