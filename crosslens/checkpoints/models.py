"""Suites of distinct models: a base model and its fine-tune (model diffing), or any models that
share an architecture, as one suite whose snapshots are the models.

A diffing crosscoder is the same object as a multi-snapshot one with models in place of
checkpoints, so the suite is an ordinary :class:`~crosslens.checkpoints.suite.CheckpointSuite` of
family ``models``: snapshot ``s`` is model ``s``, its ``revision`` the model's label
(:mod:`crosslens.core.model_specs`; ``gemma-2-2b``, ``gemma-2-2b-it``), its ``step`` its position
(models have no training order, the position keeps the suite's axis fixed), and its weights load
from the model's own repo and revision, or folder. Everything that reads a suite (harvest,
streaming, training, dashboards, exports) therefore reads a diffing suite unchanged, and names its
snapshots by model. Its ``model_id`` is the comma-separated list of its models (what ``--models``
takes), so a record of it names a suite crosslens can build again.

A crosscoder needs one activation shape for all its snapshots, so the models' configs are
compared before anything loads, and models of different architectures are refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from crosslens.checkpoints.identity import cached_snapshot
from crosslens.checkpoints.snapshot import SnapshotRef
from crosslens.core.errors import CrosslensError, SnapshotMismatchError
from crosslens.core.model_specs import ModelSpec, model_labels, models_spec, parse_models

DEFAULT_PROCESSING = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True}
"""The TransformerLens weight processing crosslens applies unless an architecture rules it out
(`crosslens.checkpoints.convert.processing_flags`); a suite's provenance leaves it out."""

RAW_RESIDUAL = {"center_writing_weights": False}
"""TransformerLens processing that leaves the residual stream, and what each sublayer writes to it,
as Hugging Face computes it: centring the writing weights subtracts each token's mean over d_model.
A crosscoder trained on raw residual streams (e.g. read with nnsight) reads those. Folding the layer
norms and centring the unembedding change no activation there."""


CHOSEN_PROCESSING = ("center_writing_weights", "center_unembed")
"""The processing a suite can be built with (the rest follows from its architecture)."""


def chosen_processing(record: Mapping[str, bool] | None) -> dict[str, bool] | None:
    """What of a recorded processing a suite is built with again (None: crosslens's)."""
    return {k: v for k, v in (record or {}).items() if k in CHOSEN_PROCESSING} or None


HOOK_PROCESSING = ("fold_ln", "center_writing_weights")
"""The processing that changes activations at a hook (a folded norm's ``hook_normalized``, the
residual stream and what each sublayer writes to it); centring the unembedding changes only the
logits, which no hook reads."""


def recorded_processing(record: Mapping[str, Any]) -> dict[str, bool]:
    """The weight processing a suite record (a store's or crosscoder's provenance, a release's
    suite) says its models were loaded with: crosslens's default where it records none, as
    provenance leaves the default out; else the flags it records (a release's suite records only
    those it chose, the rest being its architecture's)."""
    processing = record.get("processing")
    return dict(DEFAULT_PROCESSING) if processing is None else dict(processing)


def processing_difference(recorded: Mapping[str, Any], offered: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(recorded's, offered's)`` weight processing, as ``flag=value`` words, where the two suite
    records' models were loaded so that their activations differ: a :data:`HOOK_PROCESSING` flag
    both state, set otherwise. None where they agree."""
    mine, theirs = recorded_processing(recorded), recorded_processing(offered)
    differs = [flag for flag in HOOK_PROCESSING if flag in mine and flag in theirs and mine[flag] != theirs[flag]]
    if not differs:
        return None
    return ", ".join(f"{f}={mine[f]}" for f in differs), ", ".join(f"{f}={theirs[f]}" for f in differs)


def architecture_processing(record: Mapping[str, Any]) -> bool:
    """Whether a suite record's models were loaded with the processing their architecture gives,
    which is all a suite built from a name (``crosslens harvest --suite/--models``) loads with. An
    architecture centres the writing weights exactly where it folds its norms (`processing_flags`),
    and folding is never chosen, so a record whose two flags differ chose its centring; centring the
    unembedding changes no activation a store holds."""
    processing = recorded_processing(record)
    return processing.get("center_writing_weights", True) == processing.get("fold_ln", True)


def models_layout(
    models: str | Iterable[str | ModelSpec | dict],
) -> tuple[str, list[SnapshotRef], dict[str, ModelSpec]]:
    """``(model_id, snapshots, label -> model)`` of a suite of ``models`` (see the module docstring)."""
    specs = parse_models(models)
    if len(specs) < 1:
        raise ValueError("a suite of models needs at least one model; list them as ORG/NAME,ORG/NAME")
    labels = model_labels(specs)
    refs = [SnapshotRef(index=i, revision=label, step=i, tokens_seen=None) for i, label in enumerate(labels)]
    return models_spec(specs), refs, dict(zip(labels, specs))


def is_local(model: ModelSpec) -> bool:
    return model.revision is None and Path(model.model_id).expanduser().is_dir()


def model_source(model: ModelSpec) -> tuple[str, dict[str, str]]:
    """Where ``from_pretrained`` finds ``model``: its folder, or its repo at its revision."""
    if is_local(model):
        return str(Path(model.model_id).expanduser().resolve()), {}
    return model.model_id, ({"revision": model.revision} if model.revision else {})


def model_folder(model: ModelSpec) -> Path | None:
    """The folder holding ``model``'s files on this machine (its own, or its Hugging Face cache snapshot)."""
    if is_local(model):
        return Path(model.model_id).expanduser().resolve()
    cached = cached_snapshot(model.model_id, model.revision or "main")
    return None if cached is None else cached[1]


def models_record(models: Mapping[str, ModelSpec]) -> list[dict[str, Any]]:
    """The suite's models for its provenance: label, model id and revision of each."""
    return [{"label": label, **model.to_dict()} for label, model in models.items()]


def architecture_mismatch(models: Mapping[str, ModelSpec], label: str, first: str, listed: str, differences: dict):
    """The error for a model whose architecture differs from the first one's."""
    return SnapshotMismatchError(
        f"model {models[label]} differs in architecture from {models[first]} ({listed}); a diffing suite reads one "
        "activation shape from every model, so list models that share an architecture (a base model and its "
        "fine-tunes)",
        revision=label,
        differences=differences,
    )


def unreachable_models(suite: Any) -> list[str]:
    """The suite's snapshots whose weights are not on this machine (``model@revision`` each): what
    an offline load would fail on, found before anything loads."""
    from crosslens.checkpoints.identity import fully_cached

    missing = []
    for ref in suite.snapshots:
        if suite.local_folder(ref) is not None:
            continue
        repo, revision = suite.repo_revision(ref)
        if not fully_cached(repo, revision):
            missing.append(f"{repo}@{revision}")
    return missing


def offline_models_error(what: str, missing: list[str]) -> CrosslensError:
    """One line: which models an offline load lacks, and the fix."""
    first = missing[0]
    repo, _, revision = first.partition("@")
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    return CrosslensError(
        f"{what} reads {first}{more}, which the Hugging Face cache does not hold and HF_HUB_OFFLINE=1 forbids "
        f"downloading; fetch it once online (`hf download {repo} --revision {revision}`), or point HF_HOME at a "
        "cache that holds it"
    )
