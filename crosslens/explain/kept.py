"""What a run finds stored that it would not have asked for itself: explanations another model
wrote, refused in one line naming both models and ``--overwrite``; scores judged on other held-out
passages, kept and said once in one line naming ``--overwrite``.

The file holds one explanation per feature, reading and source, and one score per explanation and
reading judged, so a run keeps what it finds and asks only for what is missing. Another model's
explanations would stand for their readings, and the run's model would judge them: a run asking
``--model B`` of a file that model A explained would ask B for no explanation, so it is refused
before anything is sent (``explain_run`` and ``dry_run`` alike). A score judged on other passages
(another ``--seed`` or ``--n-examples``, or another rule of choosing them:
:func:`~crosslens.explain.contexts.score_prompt`) stands for its pair, and drift never sets it
against this run's scores; ``explain_run`` says so once its endpoint took the run, ``dry_run`` too.
"""

from __future__ import annotations

import sqlite3
import warnings
from collections import Counter
from pathlib import Path

from crosslens.explain.config import ExplainConfig, ExplainError
from crosslens.explain.prompts import PROMPT_FORMAT

SOURCE = "crosslens"


def read_rows(path: Path, sql: str, args: tuple = ()) -> list[tuple] | None:
    """The rows of ``sql`` in the explanations file at ``path``, read-only; None where it cannot be
    read (the run refuses the file, naming why)."""
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return connection.execute(sql, args).fetchall()
    except sqlite3.DatabaseError:
        return None
    finally:
        connection.close()


def refuse_other_models(path: Path, selected: list, config: ExplainConfig) -> None:
    """Refuse, in one line naming them, ``config.model`` and ``--overwrite``, a run of ``config.model``
    where explanations of the selected features that another model wrote are stored: the file holds
    one explanation per feature, reading and source, so the run would keep them, ask its model for
    none of their readings, and judge another model's words."""
    if config.overwrite or not config.model or not path.is_file():
        return
    rows = read_rows(path, "SELECT feature, model FROM explanations WHERE source = ?", (SOURCE,)) or []
    features = {feature for feature, _, _ in selected}
    others = Counter(str(model or "an unnamed model") for feature, model in rows if feature in features)
    others.pop(config.model, None)
    if others:
        who = ", ".join(f"{model} ({count})" for model, count in sorted(others.items()))
        raise ExplainError(
            f"{path} holds {others.total()} explanations of these features written by {who}, not {config.model}, "
            f"and keeps one per feature and reading, so {config.model} would be asked for none of them: pass "
            f"--overwrite to ask {config.model} for every one, or move the file aside to keep them"
        )


def warn_of_other_passages(path: Path, selected: list, config: ExplainConfig, prompt: str) -> None:
    """Warn, in one line naming their settings and ``--overwrite``, where scores of the selected
    features that crosslens judged on other held-out passages than ``prompt`` names are stored:
    they are kept and not asked again, and drift sets none of them against a score of ``prompt``."""
    if config.overwrite or not path.is_file():
        return
    rows = read_rows(path, "SELECT feature, prompt FROM scores") or []
    features = {feature for feature, _, _ in selected}
    others = Counter(
        judged.removeprefix(PROMPT_FORMAT).strip() or "settings not recorded"
        for feature, judged in rows
        if feature in features and judged.startswith(PROMPT_FORMAT) and judged != prompt
    )
    if others:
        which = ", ".join(f"{count} with {settings}" for settings, count in sorted(others.items()))
        warnings.warn(
            f"{path} holds {others.total()} scores of these features judged on other held-out passages ({which}), "
            f"not with {prompt.removeprefix(PROMPT_FORMAT).strip()}; they are kept, not asked again and never set "
            "against this run's scores in drift: pass --overwrite to judge every one on these passages",
            stacklevel=3,
        )
