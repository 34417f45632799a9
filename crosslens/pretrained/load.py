"""Load a registered crosscoder: ``load_pretrained(release, crosscoder_id)``.

Loading goes through SAELens's own machinery: ``SAE.from_pretrained(repo_id, path,
converter=...)`` with the release's ``conversion_func`` (default SAELens's loader) and its
``config_overrides``. What comes back is checked against the registry entry (architecture,
snapshots, their steps, model, hook, normalisation) and refused on any disagreement.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from crosslens.pretrained.registry import (
    PretrainedCrosscoderEntry,
    PretrainedCrosscoderRelease,
    PretrainedRegistryError,
    get_release,
    pretrained_directory,
)

if TYPE_CHECKING:
    from crosslens.crosscoders.protocol import Crosscoder

SAE_LENS_LOADER = "sae_lens"


def load_pretrained(
    release: str,
    crosscoder_id: str,
    device: str = "cpu",
    dtype: str = "float32",
    force_download: bool = False,
) -> Any:
    """The crosscoder ``crosscoder_id`` of ``release``, as its SAELens ``SAE`` subclass.

    ``release`` is a registered release name (see :func:`crosslens.pretrained_directory`)
    or, as in ``SAE.from_pretrained``, a Hugging Face repo id ``ORG/NAME`` with
    ``crosscoder_id`` the folder inside it. The crosscoder's ``cfg.metadata`` carries its
    suite provenance, hook and normalisation, plus ``pretrained_release``/``pretrained_id``.
    """
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS

    import crosslens.crosscoders  # noqa: F401  (registers the architectures)
    from crosslens.crosscoders import CrosscoderMixin

    lookup, entry = registry_lookup(release, crosscoder_id)
    repo_id, folder = (lookup.repo_id, entry.path) if lookup else (release, crosscoder_id)
    loader_name = (lookup.conversion_func if lookup else None) or SAE_LENS_LOADER
    if loader_name not in NAMED_PRETRAINED_SAE_LOADERS:
        raise PretrainedRegistryError(
            f"release {release!r} names conversion_func {loader_name!r}, which SAELens does not have; "
            f"use one of {sorted(NAMED_PRETRAINED_SAE_LOADERS)} or leave it out."
        )
    loader = NAMED_PRETRAINED_SAE_LOADERS[loader_name]
    overrides = dict(lookup.config_overrides or {}) if lookup else {}

    def converter(
        repo_id: str,
        folder_name: str,
        device: str,
        force_download: bool = False,
        cfg_overrides: dict[str, Any] | None = None,
    ):
        return loader(
            repo_id=repo_id,
            folder_name=folder_name,
            device=device,
            force_download=force_download,
            cfg_overrides={**overrides, **(cfg_overrides or {})},
        )

    refuse_offline_download(force_download, repo_id, folder)
    try:
        crosscoder = SAE.from_pretrained(
            repo_id, folder, device=device, dtype=dtype, force_download=force_download, converter=converter
        )
    except (RuntimeError, ValueError, TypeError, KeyError, OSError, SafetensorError) as error:
        refuse_uncached(error, repo_id, folder)
        if loader_name == SAE_LENS_LOADER:  # name the damaged cached file, when that is what failed
            _check_cached_folder(repo_id, folder, release, crosscoder_id)
        raise
    if not isinstance(crosscoder, CrosscoderMixin):
        raise PretrainedRegistryError(
            f"{repo_id}/{folder} holds a {crosscoder.cfg.architecture()!r} SAE, not a crosscoder; "
            "load it with sae_lens.SAE.from_pretrained."
        )
    if lookup is not None and entry is not None:
        check_against_registry(crosscoder, lookup, entry)
        crosscoder.cfg.metadata.pretrained_release = lookup.release
        crosscoder.cfg.metadata.pretrained_id = entry.id
    return crosscoder


def check_against_registry(
    crosscoder: Crosscoder, lookup: PretrainedCrosscoderRelease, entry: PretrainedCrosscoderEntry
) -> None:
    """Refuse a crosscoder that disagrees with its registry entry; fill what the cfg lacks.

    Compared with what the crosscoder's cfg.json records: the architecture and snapshot count,
    and where its metadata records them, the snapshots' revisions and steps (``suite``), the
    model (SAELens's ``model_name``, else ``suite.model_id``; a name without its organisation
    matches one with it, as SAELens's releases name TransformerLens models), the hook and
    whether the normalisation is folded. A cfg.json without a suite cannot confirm the
    registry's revisions and steps, nor one without a model its ``model``: the crosscoder is
    given the registry's suite, unchecked.
    """
    meta = crosscoder.cfg.metadata
    where = f"{lookup.release}/{entry.id} ({lookup.repo_id}/{entry.path}, registry {lookup.source})"
    problems = []
    if entry.architecture and entry.architecture != crosscoder.cfg.architecture():
        problems.append(f"architecture is {crosscoder.cfg.architecture()!r}, the registry says {entry.architecture!r}")
    if crosscoder.cfg.n_snapshots != lookup.n_snapshots:
        problems.append(
            f"it has {crosscoder.cfg.n_snapshots} snapshots, the registry lists {lookup.n_snapshots} revisions"
        )
    snapshots = (meta.get("suite") or {}).get("snapshots") or []
    recorded = [s.get("revision") for s in snapshots]
    if recorded and recorded != lookup.revisions:
        problems.append(f"its snapshots are {recorded}, the registry lists {lookup.revisions}")
    steps, listed = [s.get("step") for s in snapshots], lookup.suite.get("steps")
    if steps and None not in steps and listed is not None and steps != list(listed):
        problems.append(f"its snapshots' steps are {steps}, the registry's suite.steps are {list(listed)}")
    model = meta.get("model_name") or (meta.get("suite") or {}).get("model_id")
    if model and not _same_model(str(model), lookup.model):
        problems.append(f"its model is {model!r}, the registry's model is {lookup.model!r}")
    if entry.hook_name and meta.get("hook_name") and meta.get("hook_name") != entry.hook_name:
        problems.append(f"hook is {meta.get('hook_name')!r}, the registry says {entry.hook_name!r}")
    folded = bool(meta.get("activation_norm_factors_folded"))
    if entry.normalization_folded is not None and entry.normalization_folded != folded:
        problems.append(f"normalisation folded is {folded}, the registry says {entry.normalization_folded}")
    if problems:
        raise PretrainedRegistryError(
            f"{where} does not match its registry entry: {'; '.join(problems)}; correct the entry in "
            f"{lookup.source} to what the crosscoder records, or point it at the crosscoder it describes."
        )
    if not recorded:  # a cfg.json without provenance: the registry's suite is all we know
        suite = dict(lookup.suite)
        steps = list(suite.get("steps") or [None] * lookup.n_snapshots)
        suite["snapshots"] = [
            {"index": i, "revision": r, "step": st} for i, (r, st) in enumerate(zip(lookup.revisions, steps))
        ]
        meta.suite = suite
    if entry.hook_name and not meta.get("hook_name"):
        meta.hook_name = entry.hook_name


def _same_model(recorded: str, registered: str) -> bool:
    """Whether two model names name one model: equal, or equal but for an organisation only one gives."""
    if recorded == registered:
        return True
    if ("/" in recorded) == ("/" in registered):
        return False
    return recorded.rsplit("/", 1)[-1].lower() == registered.rsplit("/", 1)[-1].lower()


def _check_cached_folder(repo_id: str, folder: str, release: str, crosscoder_id: str) -> None:
    """Refuse the cached copy of ``repo_id/folder`` naming the file, if it is damaged."""
    from huggingface_hub import hf_hub_download

    from crosslens.core.metadata import CFG_NAME
    from crosslens.crosscoders.saved import check_crosscoder_folder

    try:
        cfg = hf_hub_download(repo_id=repo_id, filename=f"{folder}/{CFG_NAME}", local_files_only=True)
    except Exception:  # noqa: BLE001 - nothing cached to check: the original error stands
        return
    check_crosscoder_folder(
        Path(cfg).parent,
        fix=f"download it again (crosslens.load_pretrained({release!r}, {crosscoder_id!r}, force_download=True))",
    )


def refuse_offline_download(force_download: bool, repo_id: str, folder: str) -> None:
    """Refuse ``force_download`` where HF_HUB_OFFLINE=1 forbids any download, naming both fixes
    (huggingface_hub raises a bare ValueError there)."""
    from crosslens.checkpoints.hub import hub_offline

    if force_download and hub_offline():
        raise PretrainedRegistryError(
            f"force_download=True downloads {repo_id}/{folder} again, which HF_HUB_OFFLINE=1 forbids; go online "
            "(unset HF_HUB_OFFLINE), or leave force_download out to read the cached copy"
        )


def refuse_uncached(error: BaseException, repo_id: str, folder: str) -> None:
    """Say, for a download that offline mode refused, which repo is missing from which cache and
    the fix, in place of huggingface_hub's general advice."""
    from huggingface_hub import constants

    from crosslens.checkpoints.hub import hub_offline, not_in_cache

    if hub_offline() and not_in_cache(error):
        raise PretrainedRegistryError(
            f"{repo_id}/{folder} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 "
            "forbids downloading it; go online once (unset HF_HUB_OFFLINE), or point HF_HOME at a cache that holds it"
        ) from None


def registry_lookup(
    release: str, crosscoder_id: str
) -> tuple[PretrainedCrosscoderRelease | None, PretrainedCrosscoderEntry | None]:
    """The registered release and entry of ``release``/``crosscoder_id``; (None, None) for a hub
    repo id that no release registers."""
    if "/" in release and release not in pretrained_directory():
        return None, None  # a hub repo id, as SAE.from_pretrained accepts
    lookup = get_release(release)
    return lookup, lookup.entry(crosscoder_id)
