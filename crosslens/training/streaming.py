"""Train a crosscoder on activations streamed from resident snapshot models: no store on disk.

:class:`StreamingTrainingRunner` is :class:`~crosslens.training.runner.CrosscoderTrainingRunner`
with a :class:`~crosslens.activations.streaming.ResidentSnapshotProvider` in place of the
store. The run folder, checkpoints, sealed records and resume are the runner's; what
differs is where batches come from and what identifies the data:

- the data position is the step: the provider's batch order is a pure function of the
  seed, the token table and the batch index (sequence order per epoch, chunk shuffles),
  so resuming at step k serves batch k without harvesting what came before it;
- run.json and every checkpoint record carry a ``stream`` entry (suite, snapshots, hook,
  token source, budget, model dtype) instead of a store path, and the checkpoint's data
  identity hashes the token tables, so a resume on other tokens is refused;
- the finished run seals a 16-byte digest of each training row (``trained_rows.safetensors``),
  so that ``evaluate`` can say which rows of a store the crosscoder trained on;
- under torchrun each rank keeps only its snapshot block's models resident; ranks on the
  data axis harvest the same chunks and take their rows of each batch, so any mesh trains
  the crosscoder one process trains.

:class:`HeldoutActivations` holds the held-out tokens' activations (harvested from the same
resident models after training) behind the part of the store interface the quality table reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int

from crosslens.activations.budget import chunk_seqs_for
from crosslens.activations.config import recorded_dataset_path
from crosslens.activations.forward import harvest_rows
from crosslens.activations.partners import RowDigests
from crosslens.activations.streaming import ResidentSnapshotProvider
from crosslens.activations.tokens import bos_prepended, kept_tokens, position_record, tokens_sha256
from crosslens.checkpoints.models import architecture_processing
from crosslens.core.devices import dtype_name
from crosslens.core.errors import StoreChangedError
from crosslens.core.hashing import json_sha256
from crosslens.core.launch import launched_by_torchrun
from crosslens.core.metadata import CFG_NAME
from crosslens.core.paths import TRAINED_ROWS_NAME
from crosslens.crosscoders.base import set_crosscoder_metadata
from crosslens.distributed import init_mesh
from crosslens.training.config import RUN_STREAM, CrosscoderRunnerConfig
from crosslens.training.metrics import EVAL_TOKENS
from crosslens.training.precision import resolve_precision
from crosslens.training.records import read_record
from crosslens.training.runfolder import OTHER_OUT
from crosslens.training.runner import CrosscoderTrainingRunner, new_training_crosscoder


class HeldoutActivations:
    """In-memory ``[n_tokens, n_snapshots, d_in]`` activations read like an activation store."""

    def __init__(
        self,
        acts_NSD: Float[torch.Tensor, "n n_snapshots d_in"],
        norm_factors_S: Float[torch.Tensor, " n_snapshots"],
        hook: str,
        snapshots: list[dict[str, Any]],
    ) -> None:
        self.acts_NSD, self.norm_factors_S, self.hook = acts_NSD, norm_factors_S.float(), hook
        self.n_tokens, self.n_snapshots = int(acts_NSD.shape[0]), int(acts_NSD.shape[1])
        self.snapshots = snapshots
        """One record per snapshot, ``revision`` and ``step``, as a store's manifest lists them
        (:func:`~crosslens.activations.store.snapshot_label` names the table's rows from it)."""

    def resolve_hook(self, hook: str | None) -> str:
        if hook not in (None, self.hook):
            raise ValueError(f"the held-out activations are of {self.hook}, not {hook}")
        return self.hook

    def read(
        self, hook: str | None, idx: torch.Tensor, normalize: bool = True
    ) -> Float[torch.Tensor, "n n_snapshots d_in"]:
        """Rows ``idx``, scaled by the training run's factors when ``normalize``."""
        self.resolve_hook(hook)
        acts_NSD = self.acts_NSD[torch.as_tensor(idx)]
        return acts_NSD * self.norm_factors_S[None, :, None] if normalize else acts_NSD


def suite_record(suite: Any) -> dict[str, Any]:
    """Which snapshots a streamed run reads, as its run.json and its resume identity name them:
    the suite's model id, family, folder (a local suite) and each snapshot's step and revision, and
    the weight processing its models load with where it was chosen over their architecture's (a
    suite of models read raw), which changes their activations."""
    record = {
        "model_id": suite.model_id,
        "family": suite.family,
        "root": None if suite.root is None else str(suite.root),
        "steps": [int(s) for s in suite.steps],
        "revisions": [r.revision for r in suite.snapshots],
    }
    processing = {"processing": suite.processing()}
    return record if architecture_processing(processing) else {**record, **processing}


class StreamingTrainingRunner(CrosscoderTrainingRunner):
    """Trains one crosscoder from resident snapshot models; ``run(resume=True)`` continues a run.

    Args:
        config: the runner config (``store_path`` unused; ``hook_name`` required).
        suite: the snapshots, in crosscoder order.
        train_NL, heldout_NL: the training token rows and the held-out rows (may be empty).
        stream: what run.json records about the stream (suite, hook, token source, budget).
        model_dtype: dtype the resident models run in.
        identities: each snapshot's file identity where the caller has read them already
            (:func:`~crosslens.activations.snapshots.suite_identities`), else read as the models load.
    """

    def __init__(
        self,
        config: CrosscoderRunnerConfig,
        suite: Any,
        train_NL: Int[torch.Tensor, "n seq"],
        heldout_NL: Int[torch.Tensor, "m seq"],
        stream: dict[str, Any],
        *,
        model_dtype: torch.dtype = torch.float32,
        identities: Sequence[dict | None] | None = None,
    ) -> None:
        if not config.hook_name:
            raise ValueError("streaming needs config.hook_name: there is no store to take the only hook from")
        for name, table in (("train_NL", train_NL), ("heldout_NL", heldout_NL)):
            if table.ndim != 2:
                raise ValueError(f"{name} must be token rows [n, seq_len], got shape {tuple(table.shape)}.")
        self.asked, self.shape = config, (len(suite), None)
        self.config, self.store, self.suite = resolve_precision(config, *self.shape), None, suite
        self.hook, self.stream = config.hook_name, dict(stream)
        self.train_NL, self.heldout_NL = train_NL, heldout_NL
        self.model_dtype, self.identities = model_dtype, identities
        self.out_dir, self.device, self.mesh = Path(config.out_dir), config.device, None
        self.provider: ResidentSnapshotProvider | None = None
        self._norm_factors_S: torch.Tensor | None = None
        self.finished_before = False

    @property
    def n_snapshots(self) -> int:
        return len(self.suite)

    def join_mesh(self) -> None:
        """Join the torchrun mesh (if launched so) and build this rank's provider; no model loads yet."""
        if self.provider is not None:
            return
        cfg = self.config
        snapshots = range(self.n_snapshots)
        if launched_by_torchrun():
            layout, collectives, device = init_mesh(
                self.n_snapshots, snapshot_parallel=cfg.snapshot_parallel, device=cfg.device
            )
            layout.batch_rows(cfg.train_batch_size_tokens)  # refuses a batch that does not split evenly
            self.mesh, self.device, snapshots = (layout, collectives), str(device), layout.snapshots
        elif cfg.snapshot_parallel > 1:
            raise ValueError(
                f"snapshot_parallel={cfg.snapshot_parallel} needs several processes: launch with "
                "torchrun --nproc_per_node=N -m crosslens train --stream ... --snapshot-parallel P."
            )
        self.provider = ResidentSnapshotProvider(
            self.suite,
            self.hook,
            self.train_NL,
            cfg.train_batch_size_tokens,
            snapshots=list(snapshots),
            seed=cfg.seed,
            drop_last=True,
            device=self.device,
            model_device=self.device,
            model_dtype=self.model_dtype,
            chunk_seqs=chunk_seqs_for(self.train_NL.shape[1]),
            identities=self.identities,
        )

    def _batches(self, start_step: int) -> Iterator[torch.Tensor]:
        # no chunk harvested past the run's last step
        batches = self.provider.batches(start_step, stop=self.config.n_steps)
        if self.mesh is None or self.mesh[0].data_size == 1:
            return batches
        rows = self.mesh[0].batch_rows(self.config.train_batch_size_tokens)
        return (batch_BSD[rows] for batch_BSD in batches)

    # ------------------------------------------------------------ the whole suite's facts
    def _from_every_snapshot(self, local: dict[int, Any]) -> dict[int, Any]:
        """``{snapshot index: value}`` merged over the snapshot blocks of every rank."""
        if self.mesh is None:
            return local
        import torch.distributed as dist

        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        return {k: v for part in parts for k, v in part.items()}

    def norm_factors(self) -> Float[torch.Tensor, " n_snapshots"]:
        """Every snapshot's normalisation factor (each rank measures its own block's)."""
        if self._norm_factors_S is None:
            mine = dict(zip(self.provider.snapshot_indices, self.provider.norm_factors.tolist()))
            every = self._from_every_snapshot(mine)
            self._norm_factors_S = torch.tensor([every[s] for s in range(self.n_snapshots)], dtype=torch.float32)
        return self._norm_factors_S

    def provenance(self) -> dict[str, Any]:
        """The suite's provenance, with each snapshot's record from the rank that loaded it."""
        self.provider.models()
        every = self._from_every_snapshot(dict(zip(self.provider.snapshot_indices, self.provider.provenance)))
        return {**self.suite.provenance(), "snapshots": [every[s] for s in range(self.n_snapshots)]}

    def _new_crosscoder(self):
        d_in, norm_factors_S, provenance = self.provider.d_in, self.norm_factors(), self.provenance()
        crosscoder = new_training_crosscoder(self.config, d_in=d_in, n_snapshots=self.n_snapshots, device=self.device)
        set_crosscoder_metadata(
            crosscoder.cfg, provenance=provenance, hook_name=self.hook, activation_norm_factors=norm_factors_S
        )
        for key, value in self._data_metadata().items():
            crosscoder.cfg.metadata[key] = value
        return crosscoder

    def _data_metadata(self) -> dict[str, Any]:
        """SAELens's training-data fields, as ``training_data_metadata`` reads them from a store."""
        excluded, _ = kept_tokens(self.suite.tokenizer(), self.train_NL, True, None)
        return {
            "model_name": self.suite.model_id,
            "model_class_name": "HookedTransformer",
            "context_size": int(self.train_NL.shape[1]),
            "prepend_bos": bos_prepended(self.train_NL, excluded),
            **position_record(exclude_bos=True, exclude_token_ids=excluded),
            "dataset_path": self.config.dataset_path or recorded_dataset_path(self.stream.get("tokens")),
        }

    # ------------------------------------------------------------ identity and records
    def run_record(self) -> dict[str, Any]:
        """The runner config and its launch and, in place of a store, what the run streamed."""
        return {**self.config_record(), **self.launch_record(), RUN_STREAM: self.stream}

    def store_identity(self) -> dict[str, Any]:
        """What this run trains on: the snapshots and the dtype their models run in, the
        stream's description, and its token tables' hash. The snapshots are named by the suite
        the runner holds, not by the description a caller passed, so that a resume on another
        suite is refused whoever describes it."""
        spec = {
            "snapshots": suite_record(self.suite),
            "model_dtype": dtype_name(self.model_dtype),
            "stream": self.stream,
        }
        return {
            "fingerprint": json_sha256(spec),
            "content_sha256": json_sha256([tokens_sha256(self.train_NL), tokens_sha256(self.heldout_NL)]),
            "hook": self.hook,
            "path": "(streamed: no store)",
            "spec": spec,
        }

    def _trainer(self, checkpoint: Path | None):
        trainer = super()._trainer(checkpoint)
        if checkpoint is not None:
            self._check_same_weights(trainer.sae.cfg.metadata.get("suite") or {}, checkpoint)
        return trainer

    def _check_same_weights(self, recorded: dict[str, Any], checkpoint: Path) -> None:
        """Refuse to continue on snapshot models whose weights differ from those the checkpoint
        trained on (a suite folder rebuilt under the same revision names): the identity names
        the snapshots before any model loads, their weights are known once they have."""
        then = [entry.get("weights_sha256") for entry in recorded.get("snapshots") or []]
        now = [entry.get("weights_sha256") for entry in self.provenance()["snapshots"]]
        changed = [self.suite.snapshots[s].revision for s, (a, b) in enumerate(zip(then, now)) if a and b and a != b]
        if changed:
            raise StoreChangedError(
                f"the snapshot models' weights differ from those {self.out_dir} trained on up to {checkpoint.name} "
                f"({', '.join(changed)}: another model under the same names); resume with the same models, or start "
                f"a new run in {OTHER_OUT}."
            )

    def _write_data_record(self) -> None:
        """The training rows' digests (no store keeps the rows), so that ``evaluate`` can count
        the rows of a store that the crosscoder trained on."""
        RowDigests.of(self.train_NL).save(self.out_dir / TRAINED_ROWS_NAME)

    def _check_resumable(self, checkpoint, run_file) -> None:
        try:
            super()._check_resumable(checkpoint, run_file)
        except StoreChangedError:
            started_on, now = read_record(checkpoint).get("store", {}), self.store_identity()
            old, new = started_on.get("spec") or {}, now["spec"]
            if old.get("snapshots") != new["snapshots"]:
                what = (
                    f"the snapshots differ from those {self.out_dir} trained on up to {checkpoint.name} "
                    f"({_snapshots(old)} then, {_snapshots(new)} now)"
                )
            elif old.get("model_dtype") != new["model_dtype"]:
                what = (
                    f"the snapshot models ran in {old.get('model_dtype')} up to {checkpoint.name} of {self.out_dir}, "
                    f"now in {new['model_dtype']}"
                )
            else:
                what = (
                    f"the streamed tokens differ from those {self.out_dir} trained on up to {checkpoint.name} "
                    "(the text, dataset or tokenizer changed)"
                )
            raise StoreChangedError(
                f"{what}; resume with the same inputs, or start a new run in {OTHER_OUT}."
            ) from None

    # ------------------------------------------------------------ held-out activations
    def heldout_activations(self) -> HeldoutActivations | None:
        """The held-out rows' activations from the resident models (every rank calls this under
        torchrun; rank 0 gets them all, the others None). None when no rows are held out."""
        if not len(self.heldout_NL):
            return None
        if self.finished_before:  # a finished run's table measured again: on the models it trained on
            cfg = json.loads((self.final_path / CFG_NAME).read_text())
            self._check_same_weights((cfg.get("metadata") or {}).get("suite") or {}, self.final_path)
        _, keep_NL = kept_tokens(self.suite.tokenizer(), self.heldout_NL, True, None)
        n_rows = int(torch.searchsorted(keep_NL.sum(1).cumsum(0), EVAL_TOKENS).item()) + 1
        tokens_NL, keep_NL = self.heldout_NL[:n_rows], keep_NL[:n_rows]
        norm_factors_S = self.norm_factors()  # on every rank: measured by all of them on a resumed run
        mine: dict[int, torch.Tensor] = {}
        if self.mesh is None or self.mesh[0].data_rank == 0:
            for s, model in zip(self.provider.snapshot_indices, self.provider.models()):
                mine[s] = harvest_rows(
                    model, tokens_NL, keep_NL, [self.hook], batch_size=self.provider.harvest_batch_size
                )[self.hook]
        every = self._from_every_snapshot(mine)
        if not self.is_main:
            return None
        acts_NSD = torch.stack([every[s].float().cpu() for s in range(self.n_snapshots)], dim=1)
        records = [{"revision": ref.revision, "step": int(ref.step)} for ref in self.suite.snapshots]
        return HeldoutActivations(acts_NSD, norm_factors_S, self.hook, records)

    def close(self) -> None:
        """Free the resident models."""
        if self.provider is not None:
            self.provider.close()


def _snapshots(spec: dict[str, Any]) -> str:
    """The snapshots a streamed run's identity names, for a message: the suite's folder or model
    id, and its revisions."""
    snapshots = spec.get("snapshots") or {}
    return f"{snapshots.get('root') or snapshots.get('model_id')} at {', '.join(snapshots.get('revisions') or ['?'])}"
