"""The registry's fields for releases in other projects' formats, and for suites of distinct models.

A release (see :mod:`crosslens.pretrained.registry` for the rest of the schema) may also say::

    format: kissane                  # sae_lens (default), kissane, dictionary_learning, llamascopium
    license: mit                     # the licence its source states (null: none stated)
    license_note: "..."              # what else a user must know (e.g. the models' own terms)
    paper: https://arxiv.org/...     # the work that trained it
    code: https://github.com/...     # the code that saved it
    confirmed_by: "..."              # the public page or code that confirms repo and file layout
    suite:
      family: models                 # distinct models (model diffing), one snapshot each
      models: [google/gemma-2-2b, google/gemma-2-2b-it]
      processing: {center_writing_weights: false}   # how the source's activations were computed (models only)

and an entry (a crosscoder of it)::

    activation_norm_factors: [1.0066, 1.488]   # per-model input scaling its code applied (published elsewhere)
    code_normalization: SAE                     # dictionary_learning, where the files do not record it

A suite of models lists no revisions or steps: its snapshots are its models, named by their
labels (:func:`crosslens.core.model_specs.model_labels`), at positions 0, 1, ...
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from crosslens.checkpoints.models import CHOSEN_PROCESSING
from crosslens.core.model_specs import is_models_suite, model_labels, models_spec, parse_models

FORMAT_NAMES = ("sae_lens", "kissane", "dictionary_learning", "llamascopium")
"""The formats a release may be in: crosslens.pretrained.formats reads each (its FORMAT_NAMES, which
imports torch, is held to these by a test)."""
SOURCE_KEYS = ("format", "license", "license_note", "paper", "code", "confirmed_by")
CONVERSION_KEYS = ("activation_norm_factors", "code_normalization")

Fail = Callable[[str], Exception]


def parse_source_fields(value: Mapping[str, Any], fail: Fail) -> dict[str, Any]:
    """The release's format and where it came from (all optional strings)."""
    fields = {key: value.get(key) for key in SOURCE_KEYS}
    for key, given in fields.items():
        if given is not None and not isinstance(given, str):
            raise fail(f"{key} must be a string, got {given!r}.")
    if fields["format"] is not None and fields["format"] not in FORMAT_NAMES:
        raise fail(f"format {fields['format']!r} is not one crosslens reads; use one of {', '.join(FORMAT_NAMES)}.")
    return fields


def parse_models_suite(suite: Mapping[str, Any], fail: Fail) -> dict[str, Any]:
    """A ``family: models`` suite with its models' labels as revisions and positions as steps."""
    models = suite.get("models")
    if not isinstance(models, Sequence) or isinstance(models, str) or not models:
        raise fail("a suite of family models needs 'models', a non-empty list of ORG/NAME[@REVISION].")
    if suite.get("revisions") is not None or suite.get("steps") is not None:
        raise fail("a suite of family models lists 'models' only; its revisions are the models' labels.")
    try:
        specs = parse_models(models)
        labels = model_labels(specs)
    except (ValueError, KeyError, TypeError) as error:
        raise fail(f"suite.models: {error}.") from None
    record = dict(suite)
    record.update(
        models=[spec.to_dict() for spec in specs],
        model_id=models_spec(specs),
        revisions=labels,
        steps=list(range(len(specs))),
    )
    return record


def parse_processing(suite: Mapping[str, Any], fail: Fail) -> None:
    """A suite of models' processing; any other suite loads with its architecture's, so one that names
    a processing is refused rather than read otherwise than it says."""
    processing = suite.get("processing")
    if processing is None:
        return
    if not is_models_suite(suite):
        raise fail(
            f"suite.processing is read for family models only; a {suite.get('family')} suite loads with its "
            "architecture's processing: remove suite.processing."
        )
    if not isinstance(processing, Mapping) or not all(isinstance(v, bool) for v in processing.values()):
        raise fail(f"suite.processing must map {', '.join(CHOSEN_PROCESSING)} to true or false, got {processing!r}.")
    unknown = set(processing) - set(CHOSEN_PROCESSING)
    if unknown:
        raise fail(f"suite.processing: {sorted(unknown)} cannot be chosen; choose {', '.join(CHOSEN_PROCESSING)}.")


def parse_conversion_fields(item: Mapping[str, Any], n_snapshots: int, fail: Fail) -> dict[str, Any]:
    """An entry's activation scaling factors (one finite positive number per snapshot) and code normalisation."""
    factors = item.get("activation_norm_factors")
    if factors is not None:
        ok = isinstance(factors, Sequence) and not isinstance(factors, str) and len(factors) == n_snapshots
        if not ok or not all(_positive_number(f) for f in factors):
            raise fail(f"activation_norm_factors must be {n_snapshots} positive numbers, got {factors!r}.")
        factors = tuple(float(f) for f in factors)
    code_normalization = item.get("code_normalization")
    if code_normalization is not None and not isinstance(code_normalization, str):
        raise fail(f"code_normalization must be a string, got {code_normalization!r}.")
    return {"activation_norm_factors": factors, "code_normalization": code_normalization}


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
