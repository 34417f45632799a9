"""Harvest activations at hooks for one token set across every snapshot of a suite.

Harvesting is snapshot-major: a snapshot is loaded, runs over all tokens with
``run_with_cache(names_filter=hooks, stop_at_layer=...)`` (nothing computed past the
deepest hooked block, nothing cached but the hooks), writes its shards, and is freed
before the next one loads. Memory therefore holds one model and one shard, whatever
the number of snapshots.

Everything a store is built from is gathered and checked first (:class:`HarvestInputs`: the
snapshots' identities read from their files, no model loaded); :func:`harvest_store` then works
through it, one snapshot at a time, with the store's :class:`HarvestManifest` (resumed or new,
recording each shard once it is on disk) and, under ``torchrun``, its :class:`HarvestTeam`. One
process at a time writes a store (a lock in the folder).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int

from crosslens.activations.budget import HARVEST_BATCH_SEQS, SHARD_TOKENS
from crosslens.activations.forward import harvest_rows
from crosslens.activations.harvest_inputs import HarvestInputs
from crosslens.activations.manifest import HarvestManifest
from crosslens.activations.snapshots import check_tokens_fit, largest_token_id, load_snapshot
from crosslens.activations.store import (
    LOCK_NAME,
    ActivationStore,
    from_storage,
    shard_relpath,
    to_storage,
    write_npy_atomic,
)
from crosslens.activations.team import HarvestTeam, Unit
from crosslens.core.devices import release_model
from crosslens.core.errors import StoreLockedError, storage_errors
from crosslens.core.launch import local_rank_device
from crosslens.core.locks import exclusive_lock
from crosslens.core.progress import progress_bar

if TYPE_CHECKING:
    from crosslens.checkpoints import CheckpointSuite


RETRY_SHORTER = " A retry with the shorter rows replaces what this run wrote."
"""Said after the fix when a snapshot cannot read the token table's rows."""

NORM_SLICE_ROWS = 4096
"""Rows per float64 slice when a shard's norms are summed (`stored_norm_sum`)."""


def harvest_activations(
    suite: CheckpointSuite,
    hooks: str | Sequence[str],
    token_ids_NL: Int[torch.Tensor, "n_seqs seq_len"],
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    exclude_bos: bool = True,
    exclude_token_ids: Sequence[int] | None = None,
    batch_size: int = HARVEST_BATCH_SEQS,
    shard_tokens: int = SHARD_TOKENS,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    verify_hashes: bool = True,
    progress: bool = True,
    model_dtype: str | torch.dtype = "float32",
    distributed: bool | None = None,
    token_source: dict | None = None,
) -> ActivationStore:
    """Harvest ``hooks`` for ``token_ids_NL`` at every snapshot of ``suite`` into ``out_dir``.

    Args:
        suite: the snapshots; loaded one at a time with ``suite.load``.
        hooks: hook name(s), e.g. ``"blocks.1.hook_resid_post"``.
        token_ids_NL: the token table every snapshot runs on (see ``crosslens.activations.tokens``).
        out_dir: store folder. Re-running with the same inputs resumes: finished shards are
            kept (checked by size and, with ``verify_hashes``, sha256), damaged ones rebuilt.
        dtype: storage dtype, "float32", "bfloat16" or "float16".
        exclude_bos: drop position 0 of every row from the training tokens.
        exclude_token_ids: token ids dropped wherever they occur; None means the tokenizer's
            pad, BOS and EOS ids; ``()`` keeps everything.
        batch_size: sequences per forward pass.
        shard_tokens: about how many tokens (before exclusions) one shard file holds.
        device: where the models run.
        model_dtype: what the models run in ("float32", "bfloat16", "float16"); a store
            harvested in another dtype than float32 records it, so resuming it in another refuses.
        overwrite: discard whatever store ``out_dir`` holds and harvest from scratch.
        verify_hashes: on resume, re-hash finished shards (else sizes only).
        progress: show a tqdm bar over snapshots x tokens.
        distributed: split the snapshots (and, with more ranks than snapshots, their shards)
            over the processes of a ``torchrun`` job, which write one store with one
            manifest (see :class:`HarvestTeam`); None does so whenever run under torchrun.
        token_source: where the token table's text came from, as
            :meth:`~crosslens.activations.config.TokenSource.record` gives it, recorded in the
            store (:attr:`ActivationStore.token_source`, a crosscoder's ``dataset_path``); None
            records the table itself: ``{"kind": "token_table", "token_ids_sha256": ...}``.
    """
    inputs = HarvestInputs.build(
        suite,
        hooks,
        token_ids_NL,
        dtype=dtype,
        exclude_bos=exclude_bos,
        exclude_token_ids=exclude_token_ids,
        batch_size=batch_size,
        shard_tokens=shard_tokens,
        model_dtype=model_dtype,
        token_source=token_source,
    )
    return harvest_store(
        inputs,
        out_dir,
        device=device,
        overwrite=overwrite,
        verify_hashes=verify_hashes,
        progress=progress,
        distributed=distributed,
    )


def harvest_store(
    inputs: HarvestInputs,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    verify_hashes: bool = True,
    progress: bool = True,
    distributed: bool | None = None,
) -> ActivationStore:
    """Harvest ``inputs`` (built and checked by :meth:`HarvestInputs.build`) into the store at
    ``out_dir``; the other arguments are :func:`harvest_activations`'s."""
    root = Path(out_dir)
    team = _join_team(distributed, device)
    device = local_rank_device(device) if team.world_size > 1 else device  # each worker its own GPU
    # a full disk or an unwritable folder is one line naming the folder; what was finished is kept
    with storage_errors(root, "the activation store", fix="harvest into another folder (out_dir, `--out`)"):
        if team.is_main:
            root.mkdir(parents=True, exist_ok=True)
        team.barrier()
        # rank 0 holds the folder's lock for the whole team; the others write only their own shards
        lock = (
            exclusive_lock(root / LOCK_NAME, on_busy=_refuse_concurrent_harvest(root))
            if team.is_main
            else nullcontext()
        )
        with lock:
            _harvest_locked(
                inputs, root, team, device, overwrite=overwrite, verify_hashes=verify_hashes, progress=progress
            )
    team.barrier()  # the store is complete and unlocked for every rank
    return ActivationStore.open(root, verify="none")


def _join_team(distributed: bool | None, device: str | torch.device) -> HarvestTeam:
    """The torchrun job to harvest with (``None``: whenever run under torchrun), or one process."""
    team = HarvestTeam.from_torchrun(device) if distributed in (None, True) else HarvestTeam()
    if distributed and team.world_size == 1:
        raise ValueError("distributed=True needs a torchrun job: torchrun --nproc_per_node=N -m crosslens harvest ...")
    return team


def _refuse_concurrent_harvest(root: Path):
    def refuse(holder: str) -> None:
        raise StoreLockedError(
            f"another harvest ({holder}) is writing the store {root}; wait for it to finish "
            "(a second run then reuses what it wrote), or harvest into another folder."
        )

    return refuse


def _harvest_locked(
    inputs: HarvestInputs,
    root: Path,
    team: HarvestTeam,
    device: str | torch.device,
    *,
    overwrite: bool,
    verify_hashes: bool,
    progress: bool,
) -> None:
    """Open the store's manifest (rank 0, which shares it with the team), then work through this
    rank's units of ``inputs`` in rounds, recording into it."""
    opened = None
    if team.is_main:
        kind = torch.device(device).type
        opened = HarvestManifest.open(root, inputs, overwrite=overwrite, verify_hashes=verify_hashes, device_kind=kind)
    manifest: HarvestManifest = team.share(opened)
    units = team.units(manifest.n_snapshots, manifest.n_shards)
    # Shards already on disk (a resumed or repeated harvest) start the bar, so that its rate
    # counts only the tokens this run computes.
    total, on_disk = manifest.progress(units)
    bar = progress_bar(
        total=total,
        initial=on_disk,
        unit="tok",
        unit_scale=True,
        desc=f"harvest {manifest.describe()}" + team.describe(),
        show=progress and team.is_main,
    )
    writer = ShardWriter(manifest.root, manifest.dtype)
    save = team.world_size == 1  # on a team, rank 0 saves the merged manifest after each round
    largest_id = largest_token_id(inputs.token_ids_NL)  # once for every snapshot that checks it
    try:
        for round_ in range(team.n_rounds(manifest.n_snapshots, manifest.n_shards)):
            unit = units[round_] if round_ < len(units) else None
            if unit is not None:
                _harvest_unit(inputs, unit, manifest, writer, bar, save=save, device=device, largest_id=largest_id)
            if not save:  # the round's files, once written, are merged across the team
                manifest.record(writer.written(), save=False)
                manifest.merge(team.gather(manifest.part(unit)))
                if team.is_main:
                    manifest.save()
    finally:
        bar.close()
        writer.close()
        manifest.record(writer.written(only_successful=True), save=save)  # keep what an interrupted run finished
    if team.is_main:
        manifest.finish()


def _harvest_unit(
    inputs: HarvestInputs,
    unit: Unit,
    manifest: HarvestManifest,
    writer: ShardWriter,
    bar: Any,
    *,
    save: bool,
    device: str | torch.device,
    largest_id: int,
) -> None:
    """Load ``unit``'s snapshot once and write the missing ones among its shards."""
    todo = manifest.to_write(unit)
    if todo is None:
        return  # finished from these very files (checked on opening): not even loaded
    # (with no file identity, loading it checks its weights hash against the recorded one)
    s = unit[0]
    ref = inputs.suite.snapshots[s]
    bar.set_postfix_str(f"snapshot {ref.revision}")
    record, model = load_snapshot(
        inputs.suite,
        ref,
        device=device,
        reference_tokenizer=inputs.reference_tokenizer,
        model_dtype=inputs.model_dtype,
        first_n_layers=inputs.first_n_layers,
        identity=inputs.identities[s],
    )
    try:
        check_tokens_fit(model, record["revision"], largest_id, inputs.token_ids_NL.shape[1], retry=RETRY_SHORTER)
        manifest.check_snapshot(s, record)
        for k in todo:
            a, b = manifest.shard_rows(k)
            rows = harvest_rows(
                model,
                inputs.token_ids_NL[a:b],
                inputs.keep_NL[a:b],
                inputs.hooks,
                batch_size=inputs.batch_size,
                device=device,
                on_batch=bar.update,
            )
            manifest.record(writer.written(), save=save)
            for hook, acts_ND in rows.items():
                manifest.check_width(hook, acts_ND.shape[1], ref.revision)
            # a file already recorded is intact (only a sibling hook's file was damaged)
            writer.submit({rel: acts for rel, acts in _shard_files(rows, s, k).items() if rel not in manifest.files})
    finally:
        release_model(model)


def _shard_files(rows: Mapping[str, torch.Tensor], s: int, k: int) -> dict[str, torch.Tensor]:
    """Shard ``k`` of snapshot ``s``'s files (path in the store -> activations), one per hook."""
    return {shard_relpath(hook, s, k): acts_ND for hook, acts_ND in rows.items()}


class ShardWriter:
    """Writes a store's shard files in one background thread, so that shard k is written while
    shard k + 1 is computed (the next snapshot's loading included). A file enters the manifest
    (:meth:`written`) only once it is on disk with a known size and hash."""

    def __init__(self, root: Path, dtype: str) -> None:
        self.root, self.dtype = root, dtype
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: list[tuple[str, Future, dict]] = []

    def submit(self, files: Mapping[str, torch.Tensor]) -> None:
        """Queue ``files`` (path in the store -> activations ``[rows, d_in]``) for writing."""
        for rel, acts_ND in files.items():
            record = {"rows": int(acts_ND.shape[0])}
            self._pending.append((rel, self._pool.submit(_write_shard, self.root / rel, acts_ND, self.dtype), record))

    def written(self, *, only_successful: bool = False) -> dict[str, dict]:
        """The queued files' manifest records, each once its file is written (a failed write
        re-raises); ``only_successful``: those written, the others dropped (after :meth:`close`)."""
        written = {}
        for rel, future, record in self._pending:
            if only_successful and (not future.done() or future.cancelled() or future.exception() is not None):
                continue
            written[rel] = {**record, **future.result()}
        self._pending.clear()
        return written

    def close(self) -> None:
        """Wait for the queued writes and stop the thread."""
        self._pool.shutdown(wait=True)


def _write_shard(path: Path, acts_ND: torch.Tensor, dtype: str) -> dict[str, Any]:
    """Convert, measure and write one shard (in the writer thread, while the next computes)."""
    stored = to_storage(acts_ND, dtype)
    # Norms of the values as stored, so normalised reads hit sqrt(d_in) exactly.
    norm_sum = stored_norm_sum(stored, dtype)
    n_bytes, sha = write_npy_atomic(path, stored)
    return {"norm_sum": norm_sum, "bytes": n_bytes, "sha256": sha}


def stored_norm_sum(stored: Any, dtype: str, rows_per_slice: int = NORM_SLICE_ROWS) -> float:
    """The sum over rows of each stored row's float64 L2 norm.

    Slices of rows are cast to float64 one at a time into one vector of row norms, summed
    once at the end: each row's norm and the final sum are those of a whole-shard cast, bit
    for bit, without the whole-shard float64 copy (twice a float32 shard's size, made and
    dropped for every shard; blocks that size fragment the heap across snapshots).
    """
    norms_N = torch.empty(len(stored), dtype=torch.float64)
    for start in range(0, len(stored), rows_per_slice):
        rows_SD = from_storage(stored[start : start + rows_per_slice], dtype)
        torch.linalg.vector_norm(rows_SD, dim=1, dtype=torch.float64, out=norms_N[start : start + rows_per_slice])
    return float(norms_N.sum())
