"""`CheckpointSuite`: a model family's training snapshots, loaded one at a time."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase

from crosslens.checkpoints import weights_cache
from crosslens.checkpoints.convert import (
    architecture_signature,
    hf_to_hooked,
    hooked_config_from_hf,
    processing_flags,
    quiet_loading,
)
from crosslens.checkpoints.hub import list_revisions, placing_revisions, pythia_steps_for
from crosslens.checkpoints.identity import cached_snapshot, snapshot_identity, weight_file_errors
from crosslens.checkpoints.local import scan_local_suite
from crosslens.checkpoints.models import (
    DEFAULT_PROCESSING,
    architecture_mismatch,
    is_local,
    model_folder,
    model_source,
    models_layout,
    models_record,
)
from crosslens.checkpoints.revisions import (
    check_revisions,
    check_whole_numbers,
    checked_steps,
    of_ingredient,
    pythia_model_id,
    refs_at_steps,
    unknown_revision_error,
    with_revision_errors,
)
from crosslens.checkpoints.schedules import Spacing, spaced_steps
from crosslens.checkpoints.shape import ModelShape
from crosslens.checkpoints.snapshot import (
    SnapshotInfo,
    SnapshotRef,
    bloom_revision,
    pythia_revision,
    pythia_tokens_seen,
    ref_from_revision,
)
from crosslens.checkpoints.suite_tokenizer import SuiteTokenizer
from crosslens.checkpoints.trajectory import (
    StageStart,
    check_one_ingredient,
    is_staged,
    parse_stage,
    place_on_trajectory,
)
from crosslens.core.devices import as_dtype, release_model, resolve_device
from crosslens.core.errors import DuplicateSnapshotError, SnapshotMismatchError, UnknownRevisionError
from crosslens.core.hashing import weights_sha256
from crosslens.core.model_specs import FAMILIES, MODELS_FAMILY, ModelSpec
from crosslens.core.progress import progress_bar

logger = logging.getLogger(__name__)


class CheckpointSuite(SuiteTokenizer):
    """A model family and an ordered list of its training snapshots.

    Models are loaded one at a time as HookedTransformers (`load`, `iter_models`), each
    carrying its provenance in ``model.crosslens_snapshot`` (a `SnapshotInfo`). Build one
    with `pythia`, `olmo`, `bloom` or `local`, or of distinct models with `models` (model
    diffing), then narrow it with `select`:

    >>> suite = CheckpointSuite.pythia("EleutherAI/pythia-160m").select(n=32)  # doctest: +SKIP
    >>> for info, model in suite.iter_models():                                # doctest: +SKIP
    ...     print(info.step, info.weights_sha256[:8])
    """

    def __init__(
        self,
        family: str,
        model_id: str,
        snapshots: Sequence[SnapshotRef],
        *,
        folders: dict[str, Path] | None = None,
        root: Path | None = None,
        stage_starts: dict[int, StageStart] | None = None,
        models: dict[str, ModelSpec] | None = None,
        processing: dict[str, bool] | None = None,
    ):
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        if not snapshots:
            raise ValueError(f"a checkpoint suite needs at least one snapshot; {model_id} has none selected")
        revisions = [ref.revision for ref in snapshots]
        if len(set(revisions)) != len(revisions):
            repeated = sorted({r for r in revisions if revisions.count(r) > 1})
            raise ValueError(f"revisions {repeated} appear more than once in the suite; list each once")
        check_one_ingredient(revisions, model_id)
        for earlier, later in zip(snapshots, snapshots[1:]):
            if later.step <= earlier.step:
                staged = " along the training trajectory (stage, then step; see crosslens.checkpoints.trajectory)"
                raise ValueError(
                    f"snapshots must be in increasing step order, but {later.revision!r} (step {later.step}) "
                    f"follows {earlier.revision!r} (step {earlier.step}); sort them by step"
                    + (staged if is_staged(revisions) else "")
                )
        if family == "local":
            missing = [r for r in revisions if folders is None or r not in folders]
            if missing:
                raise ValueError(
                    f"local suite has no folder for revisions {missing}; build it with CheckpointSuite.local"
                )
        self.family = family
        self.model_id = model_id
        self.snapshots: tuple[SnapshotRef, ...] = tuple(
            SnapshotRef(index=i, revision=r.revision, step=r.step, tokens_seen=r.tokens_seen)
            for i, r in enumerate(snapshots)
        )
        self.root = root
        present = {parse_stage(r) for r in revisions}
        self.stage_starts: dict[int, StageStart] = {k: v for k, v in (stage_starts or {}).items() if k in present}
        """Where each later training stage starts (see `crosslens.checkpoints.trajectory`)."""
        self._folders = dict(folders or {})
        self._hashes: dict[str, str] = {}
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._tokenizer_source: tuple[str, dict[str, str]] = ("", {})
        self._bos_tokenizer: PreTrainedTokenizerBase | None = None
        self._models = {ref.revision: models[ref.revision] for ref in self.snapshots} if models else {}
        if family == MODELS_FAMILY and set(self._models) != set(revisions):
            raise ValueError("a suite of models needs a model for each snapshot; build it with CheckpointSuite.models")
        self._processing: dict[str, bool] | None = None
        self._shape: tuple[ModelShape | None] | None = None  # (shape,) once read: None is an answer too
        self._processing_given = dict(processing) if processing is not None else None
        """Processing a suite was built with, over its architecture's (a release's models load as
        its source read them)."""

    # ------------------------------------------------------------------ constructors
    @classmethod
    def pythia(cls, name: str, steps: Sequence[int] | None = None) -> CheckpointSuite:
        """Pythia (``EleutherAI/pythia-*``) at `steps` (default: all 154 published steps).

        Loads go through TransformerLens's checkpoint support; ``tokens_seen`` is
        ``step * 2,097,152`` (1024 sequences of 2048 tokens per step).
        """
        model_id = pythia_model_id(name)
        available = pythia_steps_for(model_id)
        chosen = available if steps is None else checked_steps(steps, available, model_id, pythia_revision)
        refs = [
            SnapshotRef(index=i, revision=pythia_revision(s), step=s, tokens_seen=pythia_tokens_seen(s))
            for i, s in enumerate(chosen)
        ]
        return cls("pythia", model_id, refs)

    @classmethod
    def olmo(
        cls,
        name: str,
        revisions: Sequence[str] | None = None,
        *,
        steps: Sequence[int] | None = None,
        ingredient: int | None = None,
    ) -> CheckpointSuite:
        """OLMo at `revisions`, or at `steps`: OLMo-1 (``allenai/OLMo-1B-hf``, revisions like
        ``step1000-tokens4B``), OLMo-2 and OLMo-3 (``allenai/OLMo-2-0425-1B``, revisions
        ``stage1-step1000-tokens3B`` and ``stage2-ingredient1-step1000-tokens3B``).

        Without `revisions`, takes every revision the hub (or, offline, the HF cache) lists,
        or those at `steps`. Staged revisions are placed on one training trajectory (see
        `crosslens.checkpoints.trajectory`; offline, only once the repo was listed online):
        ``step`` and ``tokens_seen`` count on across stages, and `steps` are such trajectory
        steps. `ingredient` keeps the stage-1 revisions and one stage-2 ingredient's; a suite
        mixing ingredients is refused. ``tokens_seen`` is read from the revision names
        (``tokens4B`` -> 4 * 10**9).
        """
        if revisions is not None and steps is not None:
            raise ValueError("pass revisions or steps, not both")
        try:
            listed = list_revisions(name)
        except Exception:  # the repo's list only places stages; the revisions are checked at load
            if revisions is None:
                raise
            listed = []
        if revisions is None:
            revisions = of_ingredient(listed, ingredient)
        else:
            if listed:
                check_revisions(revisions, name, listed)
            revisions = of_ingredient(revisions, ingredient)
        known = placing_revisions(name, listed)
        refs, starts = place_on_trajectory(
            revisions, family="olmo", known=None if known is None else of_ingredient(known, ingredient), model_id=name
        )
        if steps is not None:
            refs = refs_at_steps(steps, refs, name)
        return cls("olmo", name, refs, stage_starts=starts)

    @classmethod
    def bloom(cls, name: str, steps: Sequence[int] | None = None) -> CheckpointSuite:
        """BLOOM intermediate checkpoints (``bigscience/bloom-*-intermediate``, revisions
        ``global_step{N}``) at `steps` (default: every revision listed). Tokens seen are
        not published per revision, so ``tokens_seen`` is None."""
        if steps is None:
            revisions = [r for r in list_revisions(name) if r.startswith("global_step")]
            if not revisions:
                raise UnknownRevisionError(
                    f"{name} lists no global_step{{N}} revisions; is it a bigscience/bloom-*-intermediate repo?"
                )
        else:
            check_whole_numbers(steps, "steps", "whole training steps, e.g. steps=[1000, 10000]")
            revisions = [bloom_revision(int(s)) for s in sorted(steps)]
            check_revisions(revisions, name)
        refs = sorted((ref_from_revision(0, r, family="bloom") for r in revisions), key=lambda r: r.step)
        return cls("bloom", name, refs)

    @classmethod
    def local(cls, path: str | os.PathLike) -> CheckpointSuite:
        """A folder of Hugging Face checkpoints, one per snapshot (layouts: see
        `crosslens.checkpoints.local`)."""
        layout = scan_local_suite(path)
        return cls(
            "local",
            layout.model_id,
            layout.snapshots,
            folders=layout.folders,
            root=Path(path).resolve(),
            stage_starts=layout.stage_starts,
        )

    @classmethod
    def models(
        cls, models: str | Sequence[str | ModelSpec | dict], *, processing: dict[str, bool] | None = None
    ) -> CheckpointSuite:
        """A suite of distinct models sharing an architecture (model diffing: a base model and its
        fine-tune), one snapshot per model, named by model (see `crosslens.checkpoints.models`).
        ``models``: ``"ORG/A,ORG/B"`` or a list of ``ORG/NAME[@REVISION]`` or local folders.
        ``processing``: TransformerLens's weight processing to load them with (default: crosslens's).
        The models' configs are compared first: models of different architectures are refused."""
        model_id, refs, by_label = models_layout(models)
        suite = cls(MODELS_FAMILY, model_id, refs, models=by_label, processing=processing)
        suite.check_architectures()
        return suite

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.snapshots)

    def __repr__(self) -> str:
        first, last = self.snapshots[0].revision, self.snapshots[-1].revision
        span = first if len(self) == 1 else f"{first} .. {last}"
        return f"CheckpointSuite({self.family}, {self.model_id!r}, {len(self)} snapshots: {span})"

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(ref.step for ref in self.snapshots)

    @property
    def revisions(self) -> tuple[str, ...]:
        return tuple(ref.revision for ref in self.snapshots)

    def select(
        self,
        *,
        steps: Sequence[int] | None = None,
        indices: Sequence[int] | None = None,
        n: int | None = None,
        spacing: Spacing = "log",
    ) -> CheckpointSuite:
        """A suite of some of these snapshots: by training `steps`, by `indices` into this
        suite, or `n` spread out by `spaced_steps` (``"log"``: dense early, sparse late;
        first and last always kept). Snapshots are re-indexed from 0. An `n` larger than
        the suite is refused: the crosscoder would read fewer snapshots than asked for."""
        if sum(x is not None for x in (steps, indices, n)) != 1:
            raise ValueError("select takes exactly one of steps=, indices= or n=")
        if n is not None and n > len(self):
            raise ValueError(
                f"{n} snapshots asked for (n=, --n-snapshots), but this suite of {self.model_id} holds "
                f"{len(self)}; ask for {len(self)} or fewer"
            )
        if n is not None:
            steps = spaced_steps(self.steps, n, spacing)
        if steps is not None:
            chosen_steps = checked_steps(steps, self.steps, self.model_id, self._revision_at_step, in_suite=True)
            by_step = {ref.step: ref for ref in self.snapshots}
            chosen = [by_step[s] for s in chosen_steps]
        else:
            assert indices is not None
            check_whole_numbers(indices, "indices", "snapshot positions, e.g. indices=[0, -1]")
            positions = set()
            for i in indices:
                if not -len(self) <= i < len(self):
                    raise IndexError(f"snapshot index {i} is out of range for a suite of {len(self)} snapshots")
                positions.add(i % len(self))
            chosen = [self.snapshots[i] for i in sorted(positions)]
        suite = CheckpointSuite(
            self.family,
            self.model_id,
            chosen,
            folders=self._folders,
            root=self.root,
            stage_starts=self.stage_starts,
            models=self._models or None,
            processing=self._processing_given,
        )
        suite._hashes = {r.revision: self._hashes[r.revision] for r in chosen if r.revision in self._hashes}
        suite._tokenizer, suite._tokenizer_source = self._tokenizer, self._tokenizer_source
        suite._bos_tokenizer = self._bos_tokenizer
        if self._shape is not None and self._shape[0] is not None:  # the snapshots share one shape
            suite._shape = self._shape
        return suite

    def provenance(self) -> dict[str, Any]:
        """JSON-able description: family, model_id, and each snapshot's revision, step,
        tokens seen and (once loaded) weights sha256. A local suite also records its root;
        a staged suite where its later stages start (``"stage_starts"``); a post-norm model
        (OLMo-2, OLMo-3) the weight processing it loads with (``"processing"``); a BLOOM
        intermediate repo the tokenizer it uses (``"tokenizer"``)."""
        snapshots = []
        for ref in self.snapshots:
            entry = ref.to_dict()
            if ref.revision in self._hashes:
                entry["weights_sha256"] = self._hashes[ref.revision]
            snapshots.append(entry)
        record: dict[str, Any] = {"family": self.family, "model_id": self.model_id, "snapshots": snapshots}
        if self.root is not None:
            record["root"] = str(self.root)
        if self._models:
            record["models"] = models_record(self._models)
        if self.stage_starts:
            record["stage_starts"] = {str(k): v.to_dict() for k, v in sorted(self.stage_starts.items())}
        processing = self.processing()
        if processing != DEFAULT_PROCESSING:
            record["processing"] = processing
        if self.family == "bloom":
            self.tokenizer()
            source, location = self._tokenizer_source
            record["tokenizer"] = {"model_id": source, "revision": location.get("revision", "main")}
        return record

    def processing(self) -> dict[str, bool]:
        """The TransformerLens weight processing the snapshots load with: ``fold_ln``,
        ``center_writing_weights`` and ``center_unembed``, all on except where the
        architecture rules them out (off for post-norm OLMo-2/OLMo-3; see
        `crosslens.checkpoints.convert`), then what the suite was built with. Read from the first
        snapshot's config."""
        if self._processing is None:
            if self.family == "pythia":
                self._processing = dict(DEFAULT_PROCESSING)
            else:
                source, location = self._hf_source(self.snapshots[0])
                hf_config = with_revision_errors(
                    self, self.snapshots[0], AutoConfig.from_pretrained, source, **location
                )
                name = self.model_name(self.snapshots[0])
                self._processing = processing_flags(hooked_config_from_hf(hf_config, model_id=name))
            self._processing.update(self._processing_given or {})
        return dict(self._processing)

    def shape(self) -> ModelShape | None:
        """The model's widths, depth, vocabulary, context and parameter count (:class:`ModelShape`),
        read from the first snapshot's config.json on this machine once and kept (a suite
        :meth:`select` makes keeps it too). None when no config is at hand (a hub model not yet
        downloaded) or it does not give the sizes: the checks that need them are then skipped."""
        if self._shape is None:
            self._shape = (self._read_shape(),)
        return self._shape[0]

    def _read_shape(self) -> ModelShape | None:
        try:
            folder = self.snapshot_folder(self.snapshots[0])
        except Exception:  # noqa: BLE001 - no local copy: no shape
            return None
        return ModelShape.in_folder(folder, self.model_id)

    # ------------------------------------------------------------------ loading
    def load(
        self,
        snapshot: int | SnapshotRef,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
        first_n_layers: int | None = None,
        identity: dict[str, Any] | None = None,
    ) -> HookedTransformer:
        """Load one snapshot as a HookedTransformer (``fold_ln``, ``center_writing_weights``,
        ``center_unembed``), with ``model.crosslens_snapshot`` set to its `SnapshotInfo`.

        ``first_n_layers``: the caller uses only the first blocks (e.g. runs with
        ``stop_at_layer``), so only they are loaded when the full model's
        ``weights_sha256`` is known from an earlier load of the same files (see
        `crosslens.checkpoints.weights_cache`); otherwise the whole model loads, and its
        hash is recorded for next time. Either way ``weights_sha256`` is the full
        checkpoint's. ``identity``: the snapshot's `snapshot_identity`, when the caller has
        it (else it is read from the files).
        """
        ref = self._ref(snapshot)
        dtype = as_dtype(dtype)
        device = resolve_device(device)  # "gpu" failed inside TransformerLens, after the weights had loaded
        if first_n_layers is None:
            return self._with_info(ref, self._load_hooked(ref, device, dtype))
        if first_n_layers < 1:
            raise ValueError(f"first_n_layers={first_n_layers} must be >= 1 (or None for every block)")
        identity = identity if identity is not None else snapshot_identity(self, ref)
        fields = None
        if identity is not None:
            fields = weights_cache.cache_fields(
                identity, family=self.family, model_id=self.model_id, dtype=dtype, processing=self.processing()
            )
        known = weights_cache.lookup(fields) if fields is not None else None
        if known is not None and first_n_layers in known.prefix_sha256 and first_n_layers < known.n_layers:
            model = self._load_hooked(ref, device, dtype, first_n_layers=first_n_layers)
            if weights_sha256(model) == known.prefix_sha256[first_n_layers]:
                return self._with_info(ref, model, known.weights_sha256)
            release_model(model)
            logger.warning(
                "the recorded weights hash of %s@%s does not match its first %d blocks as loaded now; "
                "loading it whole and recording it again",
                self.model_id,
                ref.revision,
                first_n_layers,
            )
        model = self._load_hooked(ref, device, dtype)
        full_sha = weights_sha256(model)
        if fields is not None and first_n_layers < model.cfg.n_layers:
            prefix = {first_n_layers: weights_sha256(model, first_n_layers=first_n_layers)}
            weights_cache.record(fields, weights_cache.KnownWeights(model.cfg.n_layers, full_sha, prefix))
        return self._with_info(ref, model, full_sha)

    def _load_hooked(
        self, ref: SnapshotRef, device: str | torch.device, dtype: torch.dtype, *, first_n_layers: int | None = None
    ) -> HookedTransformer:
        with quiet_loading(), weight_file_errors(self, ref):
            if self.family == "pythia":
                # TransformerLens reads the architecture from the repo's ``main`` config and the
                # weights from the ``step{N}`` branch: both must be online or in the HF cache.
                tokenizer = self._tokenizer_for_models("GPTNeoXForCausalLM")
                model = with_revision_errors(
                    self,
                    ref,
                    HookedTransformer.from_pretrained,
                    self.model_id,
                    checkpoint_value=ref.step,
                    tokenizer=tokenizer,
                    device=device,
                    dtype=dtype,
                    first_n_layers=first_n_layers,
                    **self.processing(),
                )
                return model.eval()
            source, location = self._hf_source(ref)
            hf_model = with_revision_errors(
                self, ref, AutoModelForCausalLM.from_pretrained, source, dtype=dtype, **location
            )
            tokenizer = self._tokenizer_for_models((hf_model.config.architectures or [""])[0])
            return hf_to_hooked(
                hf_model,
                model_id=self.model_name(ref),
                tokenizer=tokenizer,
                device=device,
                dtype=dtype,
                first_n_layers=first_n_layers,
                processing=self._processing_given,
            )

    def _with_info(self, ref: SnapshotRef, model: HookedTransformer, sha: str | None = None) -> HookedTransformer:
        """``model`` with its `SnapshotInfo` (``sha``: its full weights hash, else hashed here)."""
        info = SnapshotInfo.from_ref(ref, model_id=self.model_id, weights_sha256=sha or weights_sha256(model))
        self._hashes[ref.revision] = info.weights_sha256
        model.crosslens_snapshot = info
        return model

    def iter_models(
        self,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
        progress: bool = True,
    ) -> Iterator[tuple[SnapshotInfo, HookedTransformer]]:
        """Yield ``(info, model)`` for each snapshot in order, with one model resident.

        When the iterator moves on, the model it last yielded is emptied (its tensors move
        to the ``meta`` device) before the next one loads, so keep only what you computed
        from it; use `load` to hold on to a particular snapshot. Before loading anything,
        every snapshot's config is checked against the first
        (`SnapshotMismatchError` names the odd one); as snapshots load, two with identical
        weights are refused (`DuplicateSnapshotError`).
        """
        self.check_architectures()
        first_revision_with: dict[str, str] = {}
        bar = progress_bar(self.snapshots, desc=f"loading {self.model_id}", unit="snapshot", show=progress)
        for ref in bar:
            bar.set_postfix_str(ref.revision)
            model = self.load(ref, device=device, dtype=dtype)
            info: SnapshotInfo = model.crosslens_snapshot
            earlier = first_revision_with.get(info.weights_sha256)
            if earlier is not None:
                release_model(model)
                raise DuplicateSnapshotError(
                    f"snapshots {earlier!r} and {ref.revision!r} of {self.model_id} have identical weights "
                    f"(sha256 {info.weights_sha256[:16]}...), so a crosscoder would see no change between "
                    f"them; drop one, e.g. suite.select(steps=[...]) without step {ref.step}",
                    revisions=(earlier, ref.revision),
                    sha256=info.weights_sha256,
                )
            first_revision_with[info.weights_sha256] = ref.revision
            yield info, model
            release_model(model)
            del model, info

    def check_architectures(self) -> dict[str, Any]:
        """Check from the snapshots' configs alone (no weights) that all share the first
        one's architecture; raise `SnapshotMismatchError` naming the odd snapshot and the
        differing fields. Returns the shared signature (``d_model``, ``n_layers``, ...)."""
        reference: dict[str, Any] | None = None
        for ref in self.snapshots:
            source, location = self._hf_source(ref)
            hf_config = with_revision_errors(self, ref, AutoConfig.from_pretrained, source, **location)
            signature = architecture_signature(hooked_config_from_hf(hf_config, model_id=self.model_name(ref)))
            if reference is None:
                reference = signature
                continue
            differences = {k: (reference[k], signature[k]) for k in reference if reference[k] != signature[k]}
            if differences:
                listed = ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in differences.items())
                if self._models:
                    first = self.snapshots[0].revision
                    raise architecture_mismatch(self._models, ref.revision, first, listed, differences)
                raise SnapshotMismatchError(
                    f"snapshot {ref.revision!r} of {self.model_id} differs in architecture from the first "
                    f"snapshot {self.snapshots[0].revision!r} ({listed}); a crosscoder needs one shape for "
                    "all snapshots, so drop it with suite.select(...)",
                    revision=ref.revision,
                    differences=differences,
                )
        assert reference is not None
        return reference

    # ------------------------------------------------------------------ internals
    def _ref(self, snapshot: int | SnapshotRef) -> SnapshotRef:
        if isinstance(snapshot, SnapshotRef):
            for ref in self.snapshots:
                if ref.revision == snapshot.revision:
                    return ref
            raise unknown_revision_error(self.model_id, snapshot.revision, snapshot.step, self.revisions, in_suite=True)
        if isinstance(snapshot, bool) or not isinstance(snapshot, int):
            raise TypeError(f"snapshot must be an index or a SnapshotRef, got {type(snapshot).__name__}")
        if not -len(self) <= snapshot < len(self):
            raise IndexError(f"snapshot index {snapshot} is out of range for a suite of {len(self)} snapshots")
        return self.snapshots[snapshot]

    def _revision_at_step(self, step: int) -> str:
        for ref in self.snapshots:
            if ref.step == step:
                return ref.revision
        return f"step{step}"

    def _hf_source(self, ref: SnapshotRef | None) -> tuple[str, dict[str, str]]:
        """Where `from_pretrained` finds `ref` (None: the repo's main branch; a suite of models: its first model)."""
        if self._models:
            return model_source(self._models[(ref or self.snapshots[0]).revision])
        if self.family == "local":
            assert ref is not None
            return str(self._folders[ref.revision]), {}
        return self.model_id, ({} if ref is None else {"revision": ref.revision})

    def snapshot_folder(self, ref: SnapshotRef) -> Path | None:
        """The folder holding ``ref``'s files on this machine, if any (a hub snapshot's
        folder in the local Hugging Face cache)."""
        if self._models:
            return model_folder(self._models[ref.revision])
        if self.family == "local":
            return self._folders[ref.revision]
        cached = cached_snapshot(self.model_id, ref.revision)
        return None if cached is None else cached[1]

    def model_name(self, ref: SnapshotRef) -> str:
        """The model ``ref`` is a snapshot of: the suite's ``model_id``, or in a suite of models, that model's id."""
        return self._models[ref.revision].model_id if self._models else self.model_id

    def repo_revision(self, ref: SnapshotRef) -> tuple[str, str]:
        """The hub repo and revision holding ``ref``'s weights."""
        if self._models:
            model = self._models[ref.revision]
            return model.model_id, model.revision or "main"
        return self.model_id, ref.revision

    def local_folder(self, ref: SnapshotRef) -> Path | None:
        """The folder of a snapshot that lives in no hub repo (a local suite's, or a model given as a folder)."""
        if self.family == "local":
            return self._folders[ref.revision]
        if self._models and is_local(self._models[ref.revision]):
            return model_folder(self._models[ref.revision])
        return None
