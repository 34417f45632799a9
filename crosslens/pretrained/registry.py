"""The pretrained-crosscoder registry: which release holds which crosscoder, where.

SAELens keeps its releases in a packaged ``pretrained_saes.yaml`` that only it reads
(``get_pretrained_saes_directory``); it has no hook for third-party releases. crosslens
keeps its own directory with SAELens's schema where the two agree, plus what a crosscoder
needs on top. A release, in YAML::

    pythia-160m-res6-crosscoders:          # release name (no "/": that would read as a repo id)
      repo_id: ORG/NAME                    # Hugging Face repo        (SAELens)
      model: EleutherAI/pythia-160m        # the model                (SAELens)
      conversion_func: null                # SAELens loader name      (SAELens, default "sae_lens")
      config_overrides: null               # cfg.json overrides       (SAELens; its layout only)
      suite:                               # the snapshots, in training order (crosslens)
        family: pythia
        model_id: EleutherAI/pythia-160m
        revisions: [step0, step1000, step143000]
        steps: [0, 1000, 143000]
      saes:                                # SAELens's key for the entries
        - id: blocks.6.hook_resid_post     # crosscoder id            (SAELens)
          path: blocks.6.hook_resid_post   # folder in the repo       (SAELens)
          hook_name: blocks.6.hook_resid_post
          architecture: jumprelu_crosscoder
          l0: [40.1, 38.2, 35.0]           # per snapshot (SAELens: one number)
          variance_explained: [0.61, 0.83, 0.80]
          ce_loss_score: [1.0, 0.99, 0.95]  # CE recovered spliced into each snapshot (SAELens's name)
          kl_div_with_sae: [0.001, 0.03, 0.13]  # KL from the clean model, per snapshot
          spliced_ablation: zero           # the floor of ce_loss_score: zero or mean ablation
          spliced_positions: trained       # spliced where it trained (BOS, special tokens clean) or at every position
          normalization_folded: true       # weights read raw activations
          wandb_run: https://wandb.ai/...  # optional

A release in another project's format (``format: kissane``, ...) and a suite of distinct models
(``family: models``) take the fields of :mod:`crosslens.pretrained.release_fields`.

Sources, merged by :func:`pretrained_directory`: the packaged
``crosslens/data/pretrained_crosscoders.yaml``, the files named by ``CROSSLENS_PRETRAINED``
(``os.pathsep``-separated, like ``PATH``), and releases added at run time with
:func:`register_release`. A release name defined twice is refused, naming both sources.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from crosslens.causal.defaults import SPLICED_ABLATIONS
from crosslens.core.errors import CrosslensError
from crosslens.core.model_specs import FAMILIES, is_models_suite
from crosslens.pretrained.release_fields import (
    CONVERSION_KEYS,
    SOURCE_KEYS,
    parse_conversion_fields,
    parse_models_suite,
    parse_processing,
    parse_source_fields,
)

PRETRAINED_ENV = "CROSSLENS_PRETRAINED"
PACKAGED_SOURCE = "crosslens/data/pretrained_crosscoders.yaml"
_RUNTIME_SOURCE = "register_release()"

_RELEASE_KEYS = {"repo_id", "model", "conversion_func", "config_overrides", "suite", "saes", *SOURCE_KEYS}
_ENTRY_KEYS = {
    "id",
    "path",
    "hook_name",
    "architecture",
    "l0",
    "variance_explained",
    "ce_loss_score",
    "kl_div_with_sae",
    "spliced_ablation",
    "spliced_positions",
    "normalization_folded",
    "wandb_run",
    "neuronpedia",
    *CONVERSION_KEYS,
}


class PretrainedRegistryError(CrosslensError):
    """A registry file or release is malformed, or two sources define one release."""


class UnknownPretrainedError(CrosslensError, LookupError):
    """No release, or no crosscoder id in a release, has the requested name."""

    def __init__(self, message: str, *, requested: str = "", nearest: tuple[str, ...] = ()):
        super().__init__(message)
        self.requested = requested
        self.nearest = nearest


@dataclass(frozen=True)
class PretrainedCrosscoderEntry:
    """One crosscoder of a release."""

    id: str
    """The id users load it by (SAELens: ``sae_id``)."""
    path: str
    """Folder in the repo holding cfg.json and sae_weights.safetensors."""
    hook_name: str | None = None
    """TransformerLens hook the activations came from."""
    architecture: str | None = None
    """SAELens architecture name, e.g. ``jumprelu_crosscoder``."""
    l0: tuple[float, ...] | None = None
    """Mean active features per token feeding each snapshot's reconstruction."""
    variance_explained: tuple[float, ...] | None = None
    """Explained variance of each snapshot's reconstruction."""
    ce_loss_score: tuple[float, ...] | None = None
    """Share of the ablation's cross-entropy cost each snapshot's spliced reconstruction recovers."""
    kl_div_with_sae: tuple[float, ...] | None = None
    """KL divergence from the clean model with each snapshot's reconstruction spliced in."""
    spliced_ablation: str | None = None
    """The floor of ``ce_loss_score``: ``zero`` or ``mean`` ablation."""
    spliced_positions: str | None = None
    """Where the reconstruction was spliced: ``trained`` (the positions it was trained on; BOS
    and the excluded tokens clean, as SAELens's evaluation does) or ``every`` (every position,
    BOS and the excluded tokens included)."""
    normalization_folded: bool | None = None
    """True when the weights read raw activations (normalisation folded in)."""
    wandb_run: str | None = None
    """Link to the W&B run that trained it."""
    neuronpedia: str | None = None
    """Neuronpedia id (SAELens's field), if any."""
    activation_norm_factors: tuple[float, ...] | None = None
    """Per-snapshot factors the source scaled activations by, where its code publishes them
    outside the checkpoint (see :mod:`crosslens.pretrained.release_fields`)."""
    code_normalization: str | None = None
    """dictionary_learning's code normalisation, where its files do not record it."""


@dataclass(frozen=True)
class PretrainedCrosscoderRelease:
    """One release: a hub repo of crosscoders trained on one suite (SAELens's
    ``PretrainedSAELookup`` plus the suite)."""

    release: str
    repo_id: str
    model: str
    suite: Mapping[str, Any]
    """``family``, ``model_id``, ``revisions`` and ``steps`` (same length, training order)."""
    entries: Mapping[str, PretrainedCrosscoderEntry]
    conversion_func: str | None = None
    config_overrides: Mapping[str, Any] | None = None
    format: str | None = None
    """The format its files are in (None: SAELens's, as ``crosslens push`` uploads)."""
    license: str | None = None
    """The licence its source states for the weights (None: none stated)."""
    license_note: str | None = None
    paper: str | None = None
    code: str | None = None
    confirmed_by: str | None = None
    """The public model page or code that confirms its repository and file layout."""
    source: str = PACKAGED_SOURCE
    """The file (or ``register_release()``) this release was read from."""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def saes_map(self) -> dict[str, str]:
        """id -> path, as SAELens's ``PretrainedSAELookup.saes_map``."""
        return {k: e.path for k, e in self.entries.items()}

    @property
    def expected_var_explained(self) -> dict[str, tuple[float, ...] | None]:
        return {k: e.variance_explained for k, e in self.entries.items()}

    @property
    def expected_l0(self) -> dict[str, tuple[float, ...] | None]:
        return {k: e.l0 for k, e in self.entries.items()}

    @property
    def revisions(self) -> list[str]:
        return list(self.suite.get("revisions") or [])

    @property
    def n_snapshots(self) -> int:
        return len(self.revisions)

    def entry(self, crosscoder_id: str) -> PretrainedCrosscoderEntry:
        if crosscoder_id not in self.entries:
            ids = sorted(self.entries)
            nearest = tuple(difflib.get_close_matches(crosscoder_id, ids, n=3, cutoff=0.3))
            raise UnknownPretrainedError(
                f"release {self.release!r} has no crosscoder {crosscoder_id!r}; "
                + (f"did you mean {', '.join(map(repr, nearest))}? " if nearest else "")
                + f"Its ids: {_short_list(ids)} (crosslens pretrained show {self.release}).",
                requested=crosscoder_id,
                nearest=nearest,
            )
        return self.entries[crosscoder_id]


_RUNTIME_RELEASES: dict[str, PretrainedCrosscoderRelease] = {}


def pretrained_directory() -> dict[str, PretrainedCrosscoderRelease]:
    """Every known release, by name: the analogue of SAELens's ``get_pretrained_saes_directory``.

    Re-read on every call (the files are small), so a changed ``CROSSLENS_PRETRAINED`` or a
    new :func:`register_release` shows at once.
    """
    directory = _file_directory()
    for release in _RUNTIME_RELEASES.values():
        _add(directory, release)
    return directory


def registry_files_from_env() -> list[Path]:
    value = os.environ.get(PRETRAINED_ENV, "")
    return [Path(part).expanduser() for part in value.split(os.pathsep) if part.strip()]


def get_release(release: str) -> PretrainedCrosscoderRelease:
    """The release named ``release``, or an error listing the nearest names."""
    directory = pretrained_directory()
    if release not in directory:
        names = sorted(directory)
        nearest = tuple(difflib.get_close_matches(release, names, n=3, cutoff=0.3))
        hint = f"did you mean {', '.join(map(repr, nearest))}? " if nearest else ""
        raise UnknownPretrainedError(
            f"no pretrained crosscoder release {release!r}; {hint}"
            + (f"known releases: {_short_list(names)}. " if names else "no releases are registered. ")
            + f"Add one with crosslens.register_release(...) or a YAML file in {PRETRAINED_ENV}, "
            "or pass a Hugging Face repo id (ORG/NAME) instead.",
            requested=release,
            nearest=nearest,
        )
    return directory[release]


def register_release(
    release: str,
    spec: Mapping[str, Any] | PretrainedCrosscoderRelease | str | None = None,
    /,
    **fields: Any,
) -> PretrainedCrosscoderRelease:
    """Add a release at run time, in the YAML schema (module docstring), as a mapping or keywords::

        crosslens.register_release("my-crosscoders", repo_id="me/cc", model="EleutherAI/pythia-160m",
                                   suite={...}, saes=[{"id": "blocks.6.hook_resid_post", ...}])

    ``spec`` may also be a release object (:func:`pretrained_directory`'s values), or a registry
    document, ``{name: fields}`` as a mapping or as YAML text (``crosslens push``'s
    ``registry_entry`` and ``registry_yaml``); of a document, the release named ``release`` is
    registered, or else its only one, under the name ``release``.

    Registering the same release again with the same content does nothing; a name that
    another release (packaged, from ``CROSSLENS_PRETRAINED``, or registered) already holds
    is refused.
    """
    if spec is not None and fields:
        raise TypeError("pass the release either as one mapping or as keywords, not both.")
    raw = dict(_release_fields(release, spec) if spec is not None else fields)
    parsed = parse_release(release, raw, source=_RUNTIME_SOURCE)
    existing = {**_file_directory(), **_RUNTIME_RELEASES}.get(release)
    if existing is not None:
        if existing.source == _RUNTIME_SOURCE and _comparable(existing) == _comparable(parsed):
            return existing
        raise PretrainedRegistryError(
            f"release {release!r} is already defined by {existing.source}; pick another name "
            "(or remove the other definition)."
        )
    _RUNTIME_RELEASES[release] = parsed
    return parsed


def _release_fields(release: str, spec: Any) -> Mapping[str, Any]:
    """The fields of ``release`` in what :func:`register_release` was given (see there)."""
    where = f"{_RUNTIME_SOURCE}: release {release!r}"
    if isinstance(spec, PretrainedCrosscoderRelease):
        return spec.raw
    if isinstance(spec, str):
        spec = _load_yaml(spec, source=where)
        if not isinstance(spec, Mapping):
            raise PretrainedRegistryError(
                f"{where}: the text given reads as a YAML {type(spec).__name__}, not a release; pass a release's "
                "YAML (crosslens push's registry_yaml), or read a registry file first: Path(FILE).read_text()."
            )
    if not isinstance(spec, Mapping):
        raise PretrainedRegistryError(
            f"{where}: got a {type(spec).__name__}; pass its fields as a mapping, a release object "
            "(pretrained_directory()[NAME]) or its YAML text (crosslens push's registry_yaml)."
        )
    if not spec or set(spec) & _RELEASE_KEYS or not all(isinstance(value, Mapping) for value in spec.values()):
        return spec  # a release's own fields, which parse_release checks
    if release in spec:  # a registry document: release name -> fields
        return spec[release]
    if len(spec) == 1:
        return next(iter(spec.values()))
    raise PretrainedRegistryError(
        f"{where}: the registry document given holds the releases {_short_list(sorted(map(str, spec)))}, none "
        f"named {release!r}; pass the one to register: register_release({release!r}, document[NAME])."
    )


def unregister_release(release: str) -> None:
    """Forget a release added with :func:`register_release` (file releases stay)."""
    if release not in _RUNTIME_RELEASES:
        raise UnknownPretrainedError(
            f"{release!r} was not added with register_release; registered: {sorted(_RUNTIME_RELEASES) or 'none'}.",
            requested=release,
        )
    del _RUNTIME_RELEASES[release]


# ---------------------------------------------------------------------------- parsing
class _RepeatedKey(Exception):
    def __init__(self, key: Any, first_line: int, second_line: int, top_level: bool):
        super().__init__(key)
        self.key, self.lines, self.top_level = key, (first_line, second_line), top_level


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: plain
    YAML keeps the last, which would let a second definition of a release replace the first
    without a word."""

    def construct_document(self, node: yaml.Node) -> Any:
        self.root = node  # release names are the keys of the root mapping
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
            if first != key_node.start_mark.line + 1:
                raise _RepeatedKey(key, first, key_node.start_mark.line + 1, node is getattr(self, "root", None))
        return super().construct_mapping(node, deep=deep)


def parse_registry(text: str, *, source: str) -> dict[str, PretrainedCrosscoderRelease]:
    """Parse one registry YAML document (release name -> release). A release, or any key of
    a mapping, given twice is refused naming both lines."""
    data = _load_yaml(text, source=source)
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise PretrainedRegistryError(f"{source} must map release names to releases, got a {type(data).__name__}.")
    return {str(name): parse_release(str(name), value, source=source) for name, value in data.items()}


def _load_yaml(text: str, *, source: str) -> Any:
    """YAML ``text`` read with every key of a mapping given once (a second refused naming both lines)."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _RepeatedKey as repeated:
        first, second = repeated.lines
        what = f"release {repeated.key!r} is defined" if repeated.top_level else f"key {repeated.key!r} appears"
        raise PretrainedRegistryError(
            f"{source}: {what} twice, at line {first} and at line {second}; rename or remove one of them."
        ) from None
    except yaml.YAMLError as exc:
        raise PretrainedRegistryError(f"{source} is not valid YAML: {exc}") from None
    return data


def is_release_name(name: str) -> bool:
    """Whether ``name`` can name a release: non-empty and without '/', which would name a hub repo."""
    return bool(name) and "/" not in name


def parse_release(release: str, value: Any, *, source: str) -> PretrainedCrosscoderRelease:
    """Validate one release (schema in the module docstring)."""
    where = f"{source}: release {release!r}"

    def fail(message: str) -> PretrainedRegistryError:
        return PretrainedRegistryError(f"{where}: {message}")

    if not is_release_name(release):
        raise fail("a release name must be non-empty and have no '/' (names with '/' are hub repo ids).")
    if not isinstance(value, Mapping):
        raise fail(f"must be a mapping with {sorted(_RELEASE_KEYS)}, got {type(value).__name__}.")
    unknown = set(value) - _RELEASE_KEYS
    if unknown:
        raise fail(f"unknown keys {sorted(unknown)}; allowed: {sorted(_RELEASE_KEYS)}.")
    for key in ("repo_id", "model"):
        if not isinstance(value.get(key), str) or not value[key]:
            raise fail(f"needs {key!r} (a string).")
    if value["repo_id"].count("/") != 1:
        raise fail(f"repo_id must be ORG/NAME, got {value['repo_id']!r}.")

    suite = value.get("suite")
    if not isinstance(suite, Mapping):
        raise fail("needs 'suite' with family, model_id, revisions and steps.")
    if suite.get("family") not in FAMILIES:
        raise fail(f"suite.family must be one of {', '.join(FAMILIES)}, got {suite.get('family')!r}.")
    if is_models_suite(suite):
        suite = parse_models_suite(suite, fail)
    parse_processing(suite, fail)
    revisions, steps = suite.get("revisions"), suite.get("steps")
    if not isinstance(revisions, Sequence) or isinstance(revisions, str) or not revisions:
        raise fail("suite.revisions must be a non-empty list, in training order.")
    if steps is not None:
        if not isinstance(steps, Sequence) or len(steps) != len(revisions):
            raise fail(f"suite.steps must list one step per revision ({len(revisions)}).")
        if not all(isinstance(step, int) and not isinstance(step, bool) for step in steps):
            raise fail(f"suite.steps must be whole numbers, got {list(steps)}.")
        if any(b < a for a, b in zip(steps, steps[1:])):
            raise fail(f"suite.steps {list(steps)} are not in training order.")

    entries = _parse_entries(value.get("saes"), len(revisions), where, fail)
    overrides = value.get("config_overrides")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise fail("config_overrides must be a mapping.")
    fields = parse_source_fields(value, fail)
    if overrides and fields["format"] not in (None, "sae_lens"):  # a conversion writes its own cfg.json
        raise fail(
            f"config_overrides apply to a release in SAELens's layout; format {fields['format']!r} is converted "
            "without them: drop config_overrides (a converted release is set by its entries' "
            f"{' and '.join(CONVERSION_KEYS)})."
        )
    return PretrainedCrosscoderRelease(
        release=release,
        repo_id=value["repo_id"],
        model=value["model"],
        suite=dict(suite),
        entries=entries,
        conversion_func=value.get("conversion_func"),
        config_overrides=dict(overrides) if overrides else None,
        **fields,
        source=source,
        raw=dict(value),
    )


def _parse_entries(saes: Any, S: int, where: str, fail: Any) -> dict[str, PretrainedCrosscoderEntry]:
    """A release's ``saes``: its crosscoders by id (``S`` per-snapshot numbers each, where given)."""
    if not isinstance(saes, Sequence) or isinstance(saes, str) or not saes:
        raise fail("needs 'saes', a non-empty list of entries with 'id' and 'path'.")
    entries: dict[str, PretrainedCrosscoderEntry] = {}
    for item in saes:
        if not isinstance(item, Mapping) or not item.get("id") or item.get("path") is None:
            raise fail(f"every entry of 'saes' needs 'id' and 'path', got {item!r}.")
        entry_id = str(item["id"])
        unknown = set(item) - _ENTRY_KEYS
        if unknown:
            raise fail(f"entry {entry_id!r}: unknown keys {sorted(unknown)}; allowed: {sorted(_ENTRY_KEYS)}.")
        if entry_id in entries:
            raise fail(f"entry id {entry_id!r} appears twice.")
        entries[entry_id] = PretrainedCrosscoderEntry(
            id=entry_id,
            path=str(item["path"]),
            hook_name=item.get("hook_name"),
            architecture=item.get("architecture"),
            l0=_per_snapshot(item.get("l0"), S, f"{where}: entry {entry_id!r}: l0"),
            variance_explained=_per_snapshot(
                item.get("variance_explained"), S, f"{where}: entry {entry_id!r}: variance_explained"
            ),
            ce_loss_score=_per_snapshot(item.get("ce_loss_score"), S, f"{where}: entry {entry_id!r}: ce_loss_score"),
            kl_div_with_sae=_per_snapshot(
                item.get("kl_div_with_sae"), S, f"{where}: entry {entry_id!r}: kl_div_with_sae"
            ),
            spliced_ablation=_spliced_ablation(item, f"{where}: entry {entry_id!r}"),
            spliced_positions=_spliced_positions(item, f"{where}: entry {entry_id!r}"),
            normalization_folded=item.get("normalization_folded"),
            wandb_run=item.get("wandb_run"),
            neuronpedia=item.get("neuronpedia"),
            **parse_conversion_fields(item, S, lambda message, i=entry_id: fail(f"entry {i!r}: {message}")),
        )
    return entries


def _spliced_ablation(item: Mapping[str, Any], where: str) -> str | None:
    """The floor a ``ce_loss_score`` was measured against; a score without one is refused."""
    floor = item.get("spliced_ablation")
    if floor not in (None, *SPLICED_ABLATIONS):
        raise PretrainedRegistryError(f"{where}: spliced_ablation must be zero or mean, got {floor!r}.")
    if floor is None and item.get("ce_loss_score") is not None:
        raise PretrainedRegistryError(
            f"{where}: ce_loss_score needs spliced_ablation (zero or mean): the floor it is measured against."
        )
    return floor


def _spliced_positions(item: Mapping[str, Any], where: str) -> str | None:
    positions = item.get("spliced_positions")
    if positions not in (None, "trained", "every"):
        raise PretrainedRegistryError(f"{where}: spliced_positions must be trained or every, got {positions!r}.")
    return positions


def _per_snapshot(value: Any, n_snapshots: int, where: str) -> tuple[float, ...] | None:
    """A number (the same at every snapshot) or one number per snapshot."""
    if value is None:
        return None
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731  (YAML's true is no number)
    if number(value):
        return (float(value),) * n_snapshots
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == n_snapshots
        and all(map(number, value))
    ):
        return tuple(float(v) for v in value)
    raise PretrainedRegistryError(
        f"{where} must be a number or {n_snapshots} numbers (one per revision), got {value!r}."
    )


def _packaged_text() -> str:
    return files("crosslens").joinpath("data", "pretrained_crosscoders.yaml").read_text(encoding="utf-8")


def _file_directory() -> dict[str, PretrainedCrosscoderRelease]:
    sources = [(PACKAGED_SOURCE, _packaged_text())]
    for path in registry_files_from_env():
        try:
            sources.append((str(path), Path(path).read_text(encoding="utf-8")))
        except OSError as exc:
            raise PretrainedRegistryError(
                f"{PRETRAINED_ENV} names {path}, which cannot be read ({exc.strerror}); "
                f"fix or remove it from {PRETRAINED_ENV}."
            ) from None
        except UnicodeDecodeError as exc:
            raise PretrainedRegistryError(
                f"{PRETRAINED_ENV} names {path}, which is not a YAML text file (byte {exc.start} is not UTF-8 "
                f"text; a binary file?); point {PRETRAINED_ENV} at registry YAML files, or remove it from there."
            ) from None
    directory: dict[str, PretrainedCrosscoderRelease] = {}
    for source, text in sources:
        try:
            releases = parse_registry(text, source=source)
        except PretrainedRegistryError as error:
            if source == PACKAGED_SOURCE:
                raise
            raise PretrainedRegistryError(
                f"{error} ({PRETRAINED_ENV} names this file: fix it, or remove it from there.)"
            ) from None
        for release in releases.values():
            _add(directory, release)
    return directory


def _add(directory: dict[str, PretrainedCrosscoderRelease], release: PretrainedCrosscoderRelease) -> None:
    other = directory.get(release.release)
    if other is not None:
        raise PretrainedRegistryError(
            f"release {release.release!r} is defined twice: in {other.source} and in {release.source}; "
            "rename one of them."
        )
    directory[release.release] = release


def _comparable(release: PretrainedCrosscoderRelease) -> tuple:
    return (
        release.repo_id,
        release.model,
        dict(release.suite),
        dict(release.entries),
        release.conversion_func,
        release.config_overrides,
        release.format,
    )


def _short_list(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(map(repr, names[:limit]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
