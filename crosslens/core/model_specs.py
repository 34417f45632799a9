"""A diffing suite's models as flags, registry files and records write them, and the label each
goes by (torch-free: the command line and the registry read them before anything loads).

A model is ``ORG/NAME`` (a hub repo), ``ORG/NAME@REVISION``, or a local folder holding a Hugging
Face checkpoint. Its label names it wherever a snapshot's name appears (store records, pages,
reports, export folders): the repo's or folder's last name, ``@REVISION`` added when one is
given, so ``google/gemma-2-2b,google/gemma-2-2b-it`` reads as ``gemma-2-2b`` and ``gemma-2-2b-it``.
Labels that would collide fall back to the full id with ``/`` written ``--``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from crosslens.core.errors import CrosslensError

MODELS_FAMILY = "models"
"""The ``family`` of a suite of distinct models (model diffing), in its records and provenance."""

FAMILIES = ("pythia", "olmo", "bloom", "local", MODELS_FAMILY)
"""Every suite ``family`` a :class:`~crosslens.checkpoints.CheckpointSuite` (and a registry release) names."""

SEPARATOR = ","
"""Between models in a suite spec (``--models A,B``, ``--suite A,B``)."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of a diffing suite."""

    model_id: str
    """Hub repo id, or a local folder."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); None for the repo's main."""

    def __str__(self) -> str:
        return self.model_id + (f"@{self.revision}" if self.revision else "")

    def to_dict(self) -> dict[str, str | None]:
        return {"model_id": self.model_id, "revision": self.revision}


def parse_model(text: str) -> ModelSpec:
    """``ORG/NAME``, ``ORG/NAME@REVISION`` or a folder, as a :class:`ModelSpec`."""
    text = text.strip()
    if not text:
        raise ValueError("an empty model name; list models as ORG/NAME[@REVISION], separated by commas")
    model_id, at, revision = text.rpartition("@") if "@" in text else (text, "", "")
    if at and (not model_id or not revision):
        raise ValueError(f"{text!r}: write a model as ORG/NAME or ORG/NAME@REVISION")
    return ModelSpec(model_id, revision or None)


def parse_models(spec: str | Iterable[str | ModelSpec | dict]) -> list[ModelSpec]:
    """A comma-separated spec, or a list of names, specs or ``{model_id, revision}`` records."""
    items = spec.split(SEPARATOR) if isinstance(spec, str) else list(spec)
    models = []
    for item in items:
        if isinstance(item, ModelSpec):
            models.append(item)
        elif isinstance(item, dict):
            models.append(ModelSpec(str(item["model_id"]), item.get("revision")))
        else:
            models.append(parse_model(str(item)))
    return models


def is_models_spec(spec: str) -> bool:
    """Whether a ``--suite`` value lists several models (``A,B``) rather than naming one suite."""
    return SEPARATOR in spec


def is_models_suite(suite: Mapping[str, Any] | None) -> bool:
    """Whether a suite record (a crosscoder's or store's provenance, a feature database's ``suite``)
    is of distinct models, as its ``family`` says: however many snapshots a suite of one model's
    checkpoints holds, they are in training order, and distinct models are in none."""
    return isinstance(suite, Mapping) and suite.get("family") == MODELS_FAMILY


def check_model_pair(
    suite: Mapping[str, Any] | None, n_snapshots: int, where: str, error: type[CrosslensError] = CrosslensError
) -> None:
    """Refuse (``error``) a crosscoder whose suite record is of other than two distinct models: its
    analysis reads the snapshots either as a training order, which distinct models do not have, or
    as model diffing, which compares two. ``where`` begins the message: the crosscoder's folder, or
    the function that refuses it."""
    if not is_models_suite(suite) or n_snapshots == 2:
        return
    assert suite is not None
    labels = [str(s.get("revision")) for s in suite.get("snapshots") or []] or [str(suite.get("model_id"))]
    raise error(
        f"{where}: the crosscoder reads {n_snapshots} distinct models ({', '.join(labels)}), which have no "
        "training order to read, and model diffing compares two; train a crosscoder on a store of two of them "
        "(`crosslens harvest --models A,B`, or CheckpointSuite.models([A, B]) in Python) and analyse that"
    )


def model_labels(models: Iterable[ModelSpec]) -> list[str]:
    """Each model's label (see the module docstring), unique within the suite."""
    models = list(models)
    short = [_label(m, PurePath(m.model_id.rstrip("/")).name) for m in models]
    if len(set(short)) == len(short):
        return short
    full = [_label(m, m.model_id.strip("/").replace("/", "--")) for m in models]
    if len(set(full)) != len(full):
        repeated = sorted({str(m) for m, label in zip(models, full) if full.count(label) > 1})
        raise ValueError(f"models {repeated} are listed more than once; list each model once")
    return full


def _label(model: ModelSpec, name: str) -> str:
    return name + (f"@{model.revision}" if model.revision else "")


def models_spec(models: Iterable[ModelSpec]) -> str:
    """The comma-separated spec of ``models`` (what ``--models`` takes, and a diffing suite's model_id)."""
    return SEPARATOR.join(str(m) for m in models)


def drop_model_fix(models_id: str, label: str, in_python: str) -> str:
    """How to leave the model ``label`` out of the suite of models ``models_id`` (its comma-separated
    list): on the command line, remove it from ``--models`` as the list writes it; ``in_python``, the
    same for a suite built in Python."""
    models = parse_models(models_id)
    listed = dict(zip(model_labels(models), models)).get(label, label)
    return f"remove {listed} from --models (in Python: {in_python})"


def snapshot_model(suite: dict, index: int) -> str | None:
    """The model snapshot ``index`` of a suite record is: in a diffing suite (one with ``models``)
    that snapshot's own model, else the suite's ``model_id`` (None where the record has neither)."""
    models = suite.get("models") or []
    if models and 0 <= index < len(models):
        return str(models[index]["model_id"])
    model_id = suite.get("model_id")
    return None if model_id is None else str(model_id)
