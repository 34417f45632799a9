"""What a run keeps that it would not have asked for itself, said once in one line naming
``--overwrite``: explanations another model wrote, and scores judged on other held-out passages.

The file holds one explanation per feature, reading and source, and one score per explanation and
reading judged, so a run keeps what it finds and asks only for what is missing. Another model's
explanations stand for their readings; a score judged on other passages (another ``--seed`` or
``--n-examples``, or another rule of choosing them: :func:`~crosslens.explain.contexts.score_prompt`)
stands for its pair, and drift never sets it against this run's scores. ``explain_run`` says so
once its endpoint took the run (a refused one says only why); ``dry_run`` says it too.
"""

from __future__ import annotations

import sqlite3
import warnings
from collections import Counter
from pathlib import Path

from crosslens.explain.config import ExplainConfig
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


def warn_of_other_models(path: Path, selected: list, config: ExplainConfig) -> None:
    """Warn, in one line naming them and ``--overwrite``, where explanations of the selected features
    that another model wrote are stored: a run asking ``config.model`` keeps them and asks nothing
    for their readings, since the file holds one explanation per feature, reading and source."""
    if config.overwrite or not config.model or not path.is_file():
        return
    rows = read_rows(path, "SELECT feature, model FROM explanations WHERE source = ?", (SOURCE,)) or []
    features = {feature for feature, _, _ in selected}
    others = Counter(str(model or "an unnamed model") for feature, model in rows if feature in features)
    others.pop(config.model, None)
    if others:
        who = ", ".join(f"{model} ({count})" for model, count in sorted(others.items()))
        warnings.warn(
            f"{path} holds {others.total()} explanations of these features written by {who}, not {config.model}; "
            f"they are kept and their readings not asked again: pass --overwrite to ask {config.model} for every one",
            stacklevel=3,
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
