"""``from_pretrained``: a published crosscoder, in whatever format its project saved it, as a
crosslens crosscoder with the suite of models or checkpoints it reads.

    crosscoder, suite = crosslens.from_pretrained("gemma-2-2b-crosscoder-l13-minder", "blocks.13.hook_resid_post")

A registered release (``crosslens pretrained list``) says where its files are, their format, the
models and hook it reads, and what its source's code applied outside its files. Its files are
downloaded (or found in the Hugging Face cache), converted once into crosslens's cache
(:mod:`crosslens.pretrained.convert`, which records each source file's sha256), checked against
the release and against its models (their configs must have the hook, at the crosscoder's width),
and returned with the suite, ready for harvest, streaming, dashboards and the rest. A hub repo id
or a local folder in any format crosslens reads works too, with the suite given by the caller.

Before anything is downloaded or written, an offline machine is checked to hold the release's
models: a release whose models cannot be loaded is refused in one line naming the fix.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, NamedTuple

from crosslens.core.errors import CrosslensError
from crosslens.core.hooks import hook_problem, hook_width, recorded_hook
from crosslens.core.paths import looks_like_path
from crosslens.pretrained.card import converted_card
from crosslens.pretrained.convert import convert_once, overridden_folder
from crosslens.pretrained.formats import SAE_LENS, SourceFiles, layouts, local_files, recognised
from crosslens.pretrained.load import (
    SAE_LENS_LOADER,
    check_against_registry,
    load_pretrained,
    refuse_offline_download,
    refuse_uncached,
    registry_lookup,
)
from crosslens.pretrained.registry import (
    PretrainedCrosscoderEntry,
    PretrainedCrosscoderRelease,
    PretrainedRegistryError,
    UnknownPretrainedError,
    get_release,
    pretrained_directory,
)
from crosslens.pretrained.tensors import ConvertOptions, UnknownFormatError


class Pretrained(NamedTuple):
    """What :func:`from_pretrained` returns (unpacks as ``crosscoder, suite``)."""

    crosscoder: Any
    """The crosscoder, as its crosslens architecture's SAELens ``SAE`` subclass."""
    suite: Any
    """The :class:`~crosslens.checkpoints.CheckpointSuite` it reads (None where none is known)."""


def from_pretrained(
    release: str | os.PathLike,
    crosscoder_id: str | None = None,
    *,
    suite: Any = None,
    hook_name: str | None = None,
    norm_factors: list[float] | None = None,
    format: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    force_download: bool = False,
    check_models: bool = True,
) -> Pretrained:
    """A published crosscoder and the suite it reads (see the module docstring).

    ``release``: a registered release name, a hub repo id (``ORG/NAME``, with ``crosscoder_id`` the
    folder inside it, "" for its root), or a local folder. ``crosscoder_id``: the release's entry
    (default: its only one). ``suite``, ``hook_name``: what an unregistered source reads. ``norm_factors``:
    the per-model activation scaling a source applied without saving it. ``check_models``: check
    that the models are on this machine (offline) and have the hook at the crosscoder's width.
    """
    name = str(release)
    registered = name in pretrained_directory()
    if not registered and Path(name).expanduser().is_dir():
        files = local_files(Path(name).expanduser(), format)
        source = {"path": str(Path(name).expanduser().resolve())}
        return _unregistered(files, source, suite, hook_name, norm_factors, device, dtype, check_models)
    if not registered and looks_like_path(name):  # read as a hub id, the hub would refuse its form
        what = "is a file, not a folder" if Path(name).expanduser().exists() else "does not exist"
        raise CrosslensError(
            f"{name} {what}; pass the folder holding a crosscoder's config and weights, a release name "
            "(`crosslens pretrained list`) or a hub repo ORG/NAME"
        )
    if "/" in name and not registered:
        files = hub_files(name, crosscoder_id or "", format, force_download=force_download)
        source = {"repo_id": name, "path": crosscoder_id or ""}
        return _unregistered(files, source, suite, hook_name, norm_factors, device, dtype, check_models)
    lookup = get_release(name)
    entry = lookup.entry(crosscoder_id) if crosscoder_id is not None else only_entry(lookup)
    pretrained, _ = checked_release(
        lookup, entry, device=device, dtype=dtype, force_download=force_download, check_models=check_models
    )
    return pretrained


def checked_release(
    lookup: PretrainedCrosscoderRelease,
    entry: PretrainedCrosscoderEntry,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    force_download: bool = False,
    check_models: bool = True,
    as_folder: bool = False,
) -> tuple[Pretrained, Path | None]:
    """A registered crosscoder and its suite, checked against its release and (``check_models``)
    against the models it reads; and the folder it was read from: a release in another format's
    converted folder, a release in SAELens's layout its downloaded folder where ``as_folder`` asks
    (else None), or where the release has ``config_overrides`` that folder with them applied."""
    release_suite = _release_suite(lookup)
    check_models = check_models and release_suite is not None
    what = f"release {lookup.release}"
    if (lookup.format or SAE_LENS) == SAE_LENS:
        if check_models:
            _check_models(release_suite, entry.hook_name, what)
        folder = hub_folder(lookup.repo_id, entry.path, force_download=force_download) if as_folder else None
        crosscoder = load_pretrained(  # the folder, where asked for, was downloaded afresh just now
            lookup.release,
            entry.id,
            device=device,
            dtype=dtype or "float32",
            force_download=force_download and not as_folder,
        )
        if folder is not None and lookup.config_overrides:  # the folder reads as load_pretrained did
            folder = overridden_folder(folder, lookup.config_overrides)
    else:
        folder = release_folder(lookup, entry, force_download=force_download, check_models=check_models)
        crosscoder = _load_folder(folder, device, dtype)
        check_against_registry(crosscoder, lookup, entry)
    if check_models:
        check_fits(crosscoder, release_suite, what)
    return Pretrained(crosscoder, release_suite), folder


def release_folder(
    lookup: PretrainedCrosscoderRelease,
    entry: PretrainedCrosscoderEntry,
    *,
    force_download: bool = False,
    check_models: bool = True,
) -> Path:
    """The converted folder of a release's entry, after checking (``check_models``) that this
    machine holds the models it reads and that they have its hook: their file identities are
    recorded with it, so stores harvested from them pair with it."""
    identities, suite = None, _release_suite(lookup)
    if check_models and suite is not None:
        identities = _check_models(suite, entry.hook_name, f"release {lookup.release}")
    return converted_release_folder(lookup, entry, identities, force_download=force_download)


def converted_release_folder(
    lookup: PretrainedCrosscoderRelease,
    entry: PretrainedCrosscoderEntry,
    identities: list[dict | None] | None = None,
    *,
    force_download: bool = False,
) -> Path:
    """The converted folder of a release's entry in another project's format (downloaded and
    converted on first use)."""
    files = hub_files(lookup.repo_id, entry.path, lookup.format, force_download=force_download)
    options = ConvertOptions(
        n_snapshots=lookup.n_snapshots,
        hook_name=entry.hook_name,
        norm_factors=entry.activation_norm_factors,
        code_normalization=entry.code_normalization,
    )
    provenance = _release_provenance(lookup, entry, files, identities)
    return convert_once(files, options, provenance=provenance, card=converted_card)


def _release_provenance(
    lookup: PretrainedCrosscoderRelease, entry: PretrainedCrosscoderEntry, files: SourceFiles, identities: Any
) -> dict[str, Any]:
    suite = suite_record(lookup, identities)
    credit = {key: getattr(lookup, key) for key in ("license", "license_note", "paper", "code", "confirmed_by")}
    return {
        "source": {"repo_id": lookup.repo_id, "path": entry.path, "revision": _commit(files.weights)},
        "metadata": {
            "suite": suite,
            "hook_name": entry.hook_name,
            "model_name": lookup.model,
            "pretrained_release": lookup.release,
            "pretrained_id": entry.id,
            "license": lookup.license,
        },
        "release": lookup.release,
        "crosscoder_id": entry.id,
        "hook_name": entry.hook_name,
        "suite": suite,
        **credit,
    }


def suite_record(lookup: PretrainedCrosscoderRelease, identities: list[dict | None] | None = None) -> dict[str, Any]:
    """The release's suite as a crosscoder's metadata records one (family, model id, snapshots, and
    for a suite of models its models), with each snapshot's file identity where the models were found."""
    spec = dict(lookup.suite)
    steps = list(spec.get("steps") or [None] * lookup.n_snapshots)
    snapshots = [{"index": i, "revision": r, "step": s} for i, (r, s) in enumerate(zip(lookup.revisions, steps))]
    for entry, identity in zip(snapshots, identities or []):
        if identity is not None:
            entry["source"] = identity
    record = {"family": spec.get("family"), "model_id": spec.get("model_id"), "snapshots": snapshots}
    record.update({key: spec[key] for key in ("models", "processing") if spec.get(key)})
    return record


def _release_suite(lookup: PretrainedCrosscoderRelease) -> Any:
    """The release's suite; None for a suite of local folders a registry entry cannot point at."""
    from crosslens.checkpoints.records import suite_from_record

    if lookup.suite.get("family") == "local":
        return None
    return suite_from_record(suite_record(lookup), check=False)


def _check_models(suite: Any, hook: str | None, what: str) -> list[dict | None]:
    """Refuse, before anything is downloaded, models an offline machine does not hold; then
    their file identities (recorded with the crosscoder, so stores harvested from them pair with it)."""
    from crosslens.checkpoints.hub import hub_offline
    from crosslens.checkpoints.identity import snapshot_identity
    from crosslens.checkpoints.models import offline_models_error, unreachable_models

    if hub_offline():
        missing = unreachable_models(suite)
        if missing:
            raise offline_models_error(what, missing)
    signature = suite.check_architectures()
    if hook:
        problem = hook_problem(hook, signature["n_layers"])
        if problem:
            raise PretrainedRegistryError(
                f"{what} reads a hook its models lack: {problem}; fix the release's hook_name"
            )
    return [snapshot_identity(suite, ref) for ref in suite.snapshots]


def check_fits(crosscoder: Any, suite: Any, what: str) -> None:
    """Refuse a crosscoder whose width or snapshot count is not what its suite's models give at its hook."""
    signature = suite.check_architectures()
    hook = crosscoder.cfg.metadata.get("hook_name")
    if hook:
        problem = hook_problem(hook, signature["n_layers"])
        if problem:
            raise CrosslensError(f"{what} reads a hook its models lack: {problem}")
        width = hook_width(hook, signature["d_model"], signature.get("d_mlp") or 0)
        if width != crosscoder.cfg.d_in:
            raise CrosslensError(
                f"{what}: the crosscoder reads {crosscoder.cfg.d_in}-wide activations but {hook} of "
                f"{suite.model_id} is {width} wide; it was trained on other models: fix the release's suite"
            )
    if crosscoder.cfg.n_snapshots != len(suite):
        raise CrosslensError(
            f"{what}: the crosscoder reads {crosscoder.cfg.n_snapshots} snapshots, its suite has {len(suite)}"
        )


def _unregistered(
    files: SourceFiles,
    source: dict,
    suite: Any,
    hook: str | None,
    norm_factors: Any,
    device: str,
    dtype: Any,
    check: bool,
) -> Pretrained:
    what = f"the crosscoder at {source.get('repo_id') or source['path']}"
    if files.format == SAE_LENS:
        crosscoder = _load_folder(files.config.parent, device, dtype)
        _check_saved(crosscoder, suite, hook, what, check)
        return Pretrained(crosscoder, suite)
    if suite is not None and check:
        _check_models(suite, hook, what)
    options = ConvertOptions(
        n_snapshots=len(suite) if suite is not None else None,
        hook_name=hook,
        norm_factors=tuple(float(f) for f in norm_factors) if norm_factors is not None else None,
    )
    metadata = {"hook_name": hook}
    if suite is not None:
        metadata["suite"] = suite.provenance() if check else {"model_id": suite.model_id, "family": suite.family}
    provenance = {"source": {**source, "revision": _commit(files.weights)}, "metadata": metadata, "hook_name": hook}
    folder = convert_once(files, options, provenance=provenance, card=converted_card)
    crosscoder = _load_folder(folder, device, dtype)
    if suite is not None and check:
        check_fits(crosscoder, suite, what)
    return Pretrained(crosscoder, suite)


def _check_saved(crosscoder: Any, suite: Any, hook: str | None, what: str, check: bool) -> None:
    """Check a crosscoder saved in SAELens's layout as a converted one is checked: a ``hook`` other
    than the one it records is refused, one it lacks is recorded, and (``check``) the ``suite``'s
    models must hold that hook at its width; a suite it records must be the one given."""
    recorded = recorded_hook(crosscoder)
    if hook is not None and recorded is not None and hook != recorded:
        raise CrosslensError(f"{what} reads {recorded}, not hook_name={hook!r}; pass hook_name={recorded!r} or None")
    if hook is not None and recorded is None:
        crosscoder.cfg.metadata.hook_name = hook
    if suite is None or not check:
        return
    snapshots = (crosscoder.cfg.metadata.get("suite") or {}).get("snapshots")
    if snapshots and [str(s.get("revision")) for s in snapshots] != list(suite.revisions):
        raise CrosslensError(
            f"{what} records the snapshots {[s.get('revision') for s in snapshots]}, the suite given holds "
            f"{list(suite.revisions)}; pass the suite it was trained on"
        )
    _check_models(suite, hook or recorded, what)
    check_fits(crosscoder, suite, what)
    if not snapshots:
        crosscoder.cfg.metadata.suite = suite.provenance()


def _load_folder(folder: Path, device: str, dtype: str | None) -> Any:
    from crosslens.crosscoders.saved import load_crosscoder_folder

    return load_crosscoder_folder(folder, device=device, dtype=dtype)


def only_entry(lookup: PretrainedCrosscoderRelease) -> PretrainedCrosscoderEntry:
    """A release's one crosscoder (one naming its ids where it holds several)."""
    if len(lookup.entries) != 1:
        raise PretrainedRegistryError(
            f"release {lookup.release!r} holds {len(lookup.entries)} crosscoders; name one: {', '.join(sorted(lookup.entries))}"
        )
    return next(iter(lookup.entries.values()))


def _commit(path: Path) -> str | None:
    """The hub commit a downloaded file came from (its Hugging Face cache snapshot folder), else None."""
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def hub_files(repo_id: str, folder: str, format_name: str | None, *, force_download: bool = False) -> SourceFiles:
    """Download (or find in the Hugging Face cache) a crosscoder's two files from ``repo_id``'s
    ``folder``, in ``format_name`` or else whichever format the repo holds."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    refuse_offline_download(force_download, repo_id, folder)

    from crosslens.pretrained.formats import FORMATS

    names = [format_name] if format_name and format_name != SAE_LENS else [*FORMATS, SAE_LENS]
    offline_misses = 0
    for name in names:
        for config, weights in layouts(name):
            try:
                config_path = Path(hf_hub_download(repo_id, _join(folder, config), force_download=force_download))
            except LocalEntryNotFoundError:
                offline_misses += 1
                continue
            except EntryNotFoundError:
                continue
            except RepositoryNotFoundError:
                raise CrosslensError(f"the hub has no repo {repo_id!r} (or it is private); check the name") from None
            if not recognised(name, config_path):
                continue
            weights_path = Path(hf_hub_download(repo_id, _join(folder, weights), force_download=force_download))
            return SourceFiles(name, config_path, weights_path)
    where = f"{repo_id}/{folder}" if folder else repo_id
    present = _refuse_offline(repo_id, folder, offline_misses)
    raise UnknownFormatError(
        f"{where} holds no crosscoder in "
        + (f"the {format_name} format" if format_name else "any format crosslens reads")
        + (f" (it holds {', '.join(present)})" if present else "")
        + "; the formats and their files: "
        + "; ".join(f"{n} ({' or '.join(' + '.join(p) for p in layouts(n))})" for n in names)
    )


def _refuse_offline(repo_id: str, folder: str, misses: int) -> list[str]:
    """Offline, a file the cache lacks may still be in the repo: refuse a repo the cache does not
    hold at all, naming the fix; else the files its cached copy holds in ``folder``."""
    from crosslens.checkpoints.hub import hub_offline
    from crosslens.checkpoints.identity import cached_snapshot

    cached = cached_snapshot(repo_id, "main")
    if misses and hub_offline() and cached is None:
        where = f"{repo_id}/{folder}" if folder else repo_id
        raise PretrainedRegistryError(
            f"{where} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it; go online once "
            "(unset HF_HUB_OFFLINE), or point HF_HOME at a cache that holds it"
        )
    inside = cached[1] / folder if cached is not None else None
    return sorted(p.name for p in inside.iterdir())[:12] if inside is not None and inside.is_dir() else []


def _join(folder: str, name: str) -> str:
    return f"{folder.strip('/')}/{name}" if folder.strip("/") else name


def pretrained_folder(release: str, crosscoder_id: str, force_download: bool = False) -> Path:
    """Download (or find in the cache) a registered crosscoder's folder, in SAELens's
    layout (``cfg.json`` + ``sae_weights.safetensors``), checked as :func:`from_pretrained` checks
    it, and return its local path. A release in another project's format is converted once into
    crosslens's cache, and that folder returned; a hub repo id no release names is downloaded as it is."""
    lookup, entry = registry_lookup(release, crosscoder_id)
    if lookup is None or entry is None:
        return hub_folder(release, crosscoder_id, force_download=force_download)
    return checked_folder(lookup, entry, force_download=force_download)[1]


def checked_folder(
    lookup: PretrainedCrosscoderRelease, entry: PretrainedCrosscoderEntry, *, force_download: bool = False
) -> tuple[Any, Path]:
    """A registered crosscoder's folder in SAELens's layout, and the crosscoder read from it, checked
    as :func:`from_pretrained` checks it (its models on this machine, with its hook at its width)."""
    if lookup.format in (None, SAE_LENS) and (lookup.conversion_func or SAE_LENS_LOADER) != SAE_LENS_LOADER:
        raise PretrainedRegistryError(
            f"release {lookup.release!r} is stored in another layout (conversion_func {lookup.conversion_func!r}); "
            "load it with crosslens.load_pretrained instead of as a folder."
        )
    pretrained, folder = checked_release(lookup, entry, force_download=force_download, as_folder=True)
    assert folder is not None
    return pretrained.crosscoder, folder


def hub_folder(repo_id: str, folder: str, *, force_download: bool = False) -> Path:
    """Download (or find in the cache) ``repo_id``'s ``folder`` in SAELens's layout; its local path."""
    from huggingface_hub import hf_hub_download

    from crosslens.core.metadata import CFG_NAME, WEIGHTS_NAME

    refuse_offline_download(force_download, repo_id, folder)
    try:
        paths = [
            hf_hub_download(repo_id=repo_id, filename=f"{folder}/{name}", force_download=force_download)
            for name in (CFG_NAME, WEIGHTS_NAME)
        ]
    except OSError as error:
        refuse_uncached(error, repo_id, folder)
        raise
    return Path(paths[0]).parent


def resolve_crosscoder_path(value: str) -> str:
    """A crosscoder folder given as a local path or as ``RELEASE/ID`` (downloaded to the cache)."""
    if Path(value).exists():
        return value
    release, _, crosscoder_id = value.partition("/")
    directory = pretrained_directory()
    if crosscoder_id and release in directory:
        return str(pretrained_folder(release, crosscoder_id))
    nearest = tuple(difflib.get_close_matches(release, sorted(directory), n=3, cutoff=0.3))
    raise UnknownPretrainedError(
        f"{value!r} is neither a folder nor RELEASE/ID of a registered release"
        + (f" (nearest releases: {', '.join(nearest)})" if nearest else "")
        + "; see `crosslens pretrained list`.",
        requested=value,
        nearest=nearest,
    )
