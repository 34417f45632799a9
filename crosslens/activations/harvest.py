"""Harvest activations at hooks for one token set across every snapshot of a suite.

Harvesting is snapshot-major: a snapshot is loaded, runs over all tokens with
``run_with_cache(names_filter=hooks, stop_at_layer=...)`` (nothing computed past the
deepest hooked block, nothing cached but the hooks), writes its shards, and is freed
before the next one loads. Memory therefore holds one model and one shard, whatever
the number of snapshots.

Before anything is written, every snapshot's identity is read from its files (no model
loads): duplicates are refused, damaged weight files and revisions missing from an
offline cache are reported, and a store being resumed is checked against the snapshots
it was built from. One process at a time writes a store (a lock in the folder).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from safetensors.torch import save_file

from crosslens.activations.forward import ForwardToHooks, stop_layer_for
from crosslens.activations.resume import (
    check_identities,
    check_known_weights,
    check_snapshot,
    check_width,
    largest_token_id,
    new_manifest,
    snapshot_identities,
    start_or_resume,
    store_spec,
)
from crosslens.activations.store import (
    LOCK_NAME,
    TOKENS_NAME,
    ActivationStore,
    check_storage_dtype,
    file_sha256,
    from_storage,
    norm_factors_from_manifest,
    shard_relpath,
    to_storage,
    write_manifest,
    write_npy_atomic,
)
from crosslens.activations.team import HarvestTeam
from crosslens.activations.tokens import check_same_tokenizer, kept_tokens
from crosslens.core.devices import release_model
from crosslens.core.errors import StoreLockedError, storage_errors
from crosslens.core.launch import local_rank_device
from crosslens.core.locks import exclusive_lock
from crosslens.core.progress import progress_bar

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from crosslens.checkpoints import CheckpointSuite


NORM_SLICE_ROWS = 4096
"""Rows per float64 slice when a shard's norms are summed (`stored_norm_sum`)."""


def as_hook_list(hooks: str | Sequence[str]) -> list[str]:
    """One hook name or several -> a duplicate-free list in the given order."""
    names = [hooks] if isinstance(hooks, str) else list(hooks)
    if not names:
        raise ValueError("no hooks given; pass a hook name such as 'blocks.1.hook_resid_post'.")
    return list(dict.fromkeys(names))


KeptIndex = tuple[torch.Tensor, list[int], int]
"""The kept rows' flat indices (on the forward's device), where each batch's rows end among
them, and their count: :func:`kept_index`."""


def kept_index(keep_NL: Bool[torch.Tensor, "n_seqs seq_len"], batch_size: int, device: str | torch.device) -> KeptIndex:
    """Where the kept rows of ``keep_NL`` are, for :func:`harvest_rows` in batches of
    ``batch_size`` sequences: from the host's mask (no device sync to find them), copied to
    ``device`` once (a copy from host memory waits for the device's queued work)."""
    n_kept = int(keep_NL.sum())
    kept_A = keep_NL.flatten().nonzero().squeeze(1)
    batch_ends = torch.cumsum(keep_NL.sum(dim=1), 0)[batch_size - 1 :: batch_size].tolist()
    batch_ends.append(n_kept)
    return kept_A.to(device), batch_ends, n_kept


@torch.inference_mode()
def harvest_rows(
    model: HookedTransformer,
    token_ids_NL: Int[torch.Tensor, "n_seqs seq_len"],
    keep_NL: Bool[torch.Tensor, "n_seqs seq_len"],
    hooks: Sequence[str],
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    on_batch: Callable[[int], Any] | None = None,
    out_device: str | torch.device = "cpu",
    out_dtype: torch.dtype = torch.float32,
    compile: bool | None = False,
    kept: KeptIndex | None = None,
) -> dict[str, Float[torch.Tensor, "n_kept d_in"]]:
    """Run ``model`` on the sequences and return each hook's activations at kept tokens.

    Rows come in (sequence, position) order, on ``out_device`` in ``out_dtype``; trailing
    dims of a hook (e.g. heads) are flattened into ``d_in``. ``on_batch(n_kept)`` is called
    after each forward pass. ``compile`` as :class:`ForwardToHooks`. ``kept``: :func:`kept_index`
    of ``keep_NL`` at ``batch_size`` on the forward's device, where a caller runs several models
    on the same rows.
    """
    hooks = list(hooks)
    if device is None:
        device = model.cfg.device
    # rows go straight into one output per hook (no concatenation afterwards)
    out: dict[str, torch.Tensor] = {}
    row = 0
    # The hooks go on once for all batches (run_with_cache would add them and then reset
    # every hook point of the model on each batch). The tokens and the kept rows' indices go to
    # the device once, not per batch (``kept``, given: once for several models' calls).
    seq_len = token_ids_NL.shape[1]
    kept_A, batch_ends, n_kept = kept if kept is not None else kept_index(keep_NL, batch_size, device)
    token_ids_NL = token_ids_NL.to(device)
    with ForwardToHooks(model, hooks, compile=compile) as forward:
        for number, start in enumerate(range(0, token_ids_NL.shape[0], batch_size)):
            tokens_BL = token_ids_NL[start : start + batch_size]
            kept_K = kept_A[row : batch_ends[number]] - start * seq_len  # flat indices within the batch
            acts = forward(tokens_BL)
            for hook in hooks:
                if tuple(acts[hook].shape[:2]) != tuple(tokens_BL.shape):
                    raise ValueError(
                        f"hook {hook!r} gives shape {tuple(acts[hook].shape)}, not one vector per token "
                        "[batch, pos, ...]; harvest a per-token hook such as hook_resid_post, hook_mlp_out or attn.hook_z."
                    )
                acts_KD = acts[hook].reshape(tokens_BL.numel(), -1).index_select(0, kept_K.to(acts[hook].device))
                if hook not in out:
                    out[hook] = torch.empty(n_kept, acts_KD.shape[-1], dtype=out_dtype, device=out_device)
                out[hook][row : row + kept_K.numel()] = acts_KD
            row += kept_K.numel()
            if on_batch is not None:
                on_batch(int(kept_K.numel()))
    return {hook: out.get(hook, torch.empty(0, 0)) for hook in hooks}


def check_suite(suite: CheckpointSuite) -> bool:
    """Run the suite's own config-level checks (architectures, tokenizers) before any model
    loads. Returns True when the suite has no tokenizer check, so each loaded model's
    tokenizer must be compared instead."""
    if hasattr(suite, "check_architectures"):
        suite.check_architectures()
    if hasattr(suite, "check_same_tokenizer"):
        suite.check_same_tokenizer()
        return False
    return True


def load_snapshot(
    suite: CheckpointSuite,
    ref: Any,
    *,
    device: str | torch.device = "cpu",
    reference_tokenizer: Any = None,
    model_dtype: str | torch.dtype = torch.float32,
    first_n_layers: int | None = None,
    identity: dict | None = None,
) -> tuple[dict, HookedTransformer]:
    """Load one snapshot (in ``model_dtype``, default float32) and return (its provenance dict, the model).

    Refuses a snapshot whose tokenizer differs from ``reference_tokenizer``. Given its file
    ``identity`` (`snapshot_identities`), a snapshot whose full weights hash is already
    known loads only its first ``first_n_layers`` blocks (see ``CheckpointSuite.load``).
    """
    if identity is None or first_n_layers is None:  # a suite from elsewhere may not take the arguments
        model = suite.load(ref, device=device, dtype=model_dtype)
    else:
        model = suite.load(ref, device=device, dtype=model_dtype, first_n_layers=first_n_layers, identity=identity)
    info = getattr(model, "crosslens_snapshot", None)
    record = info.to_dict() if info is not None else ref.to_dict()
    record.setdefault("weights_sha256", None)
    if reference_tokenizer is not None:
        check_same_tokenizer(reference_tokenizer, getattr(model, "tokenizer", None), revision=ref.revision)
    return record, model


def _write_tokens(root: Path, tables: dict[str, torch.Tensor]) -> dict:
    tmp = root / (TOKENS_NAME + ".tmp")
    save_file({name: t.contiguous() for name, t in tables.items()}, str(tmp))
    os.replace(tmp, root / TOKENS_NAME)
    path = root / TOKENS_NAME
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def harvest_activations(
    suite: CheckpointSuite,
    hooks: str | Sequence[str],
    token_ids_NL: Int[torch.Tensor, "n_seqs seq_len"],
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    exclude_bos: bool = True,
    exclude_token_ids: Sequence[int] | None = None,
    batch_size: int = 32,
    shard_tokens: int = 1 << 16,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    verify_hashes: bool = True,
    progress: bool = True,
    model_dtype: str | torch.dtype = "float32",
    distributed: bool | None = None,
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
    """
    check_storage_dtype(dtype)
    hooks = as_hook_list(hooks)
    token_ids_NL = _checked_token_table(token_ids_NL, batch_size=batch_size, shard_tokens=shard_tokens)
    tokenizer = suite.tokenizer()
    exclude_token_ids, keep_NL = kept_tokens(tokenizer, token_ids_NL, exclude_bos, exclude_token_ids)
    provenance = suite.provenance()
    model_dtype = str(model_dtype).removeprefix("torch.")
    spec = store_spec(
        provenance,
        hooks,
        token_ids_NL,
        dtype=dtype,
        exclude_bos=exclude_bos,
        exclude_token_ids=exclude_token_ids,
        shard_tokens=shard_tokens,
        model_dtype=model_dtype,
    )
    per_model_tokenizer = check_suite(suite)
    identities = snapshot_identities(suite)  # before writing: refuses damaged, uncached and duplicate snapshots

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
                suite,
                hooks,
                token_ids_NL,
                keep_NL,
                root,
                spec,
                provenance,
                identities,
                tokenizer=tokenizer if per_model_tokenizer else None,
                batch_size=batch_size,
                device=device,
                model_dtype=model_dtype,
                overwrite=overwrite,
                verify_hashes=verify_hashes,
                progress=progress,
                team=team,
            )
    team.barrier()  # the store is complete and unlocked for every rank
    return ActivationStore.open(root, verify="none")


def _checked_token_table(token_ids_NL: torch.Tensor, *, batch_size: int, shard_tokens: int) -> torch.Tensor:
    """The token table as a contiguous CPU int64 ``[n_seqs, seq_len]``; refuses bad sizes."""
    if token_ids_NL.ndim != 2:
        raise ValueError(
            f"token_ids_NL must be [n_seqs, seq_len], got shape {tuple(token_ids_NL.shape)}; "
            "build it with crosslens.activations.tokenize_texts()."
        )
    if batch_size < 1 or shard_tokens < 1:
        raise ValueError(f"batch_size={batch_size} and shard_tokens={shard_tokens} must both be >= 1.")
    return token_ids_NL.detach().cpu().long().contiguous()


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
    suite: CheckpointSuite,
    hooks: list[str],
    token_ids_NL: torch.Tensor,
    keep_NL: torch.Tensor,
    root: Path,
    spec: dict,
    provenance: dict,
    identities: list[dict | None],
    *,
    tokenizer: Any,
    batch_size: int,
    device: str | torch.device,
    model_dtype: str,
    overwrite: bool,
    verify_hashes: bool,
    progress: bool,
    team: HarvestTeam | None = None,
) -> None:
    team = team or HarvestTeam()
    manifest = None
    if team.is_main:
        manifest = _opened_manifest(
            suite, token_ids_NL, keep_NL, root, spec, provenance, identities, overwrite, verify_hashes
        )
    manifest = team.share(manifest)

    shards, n_tokens, n_snapshots = manifest["shards"], manifest["n_tokens"], manifest["n_snapshots"]
    units = team.units(n_snapshots, len(shards))
    # Shards already on disk (a resumed or repeated harvest) start the bar, so that its rate
    # counts only the tokens this run computes.
    bar = progress_bar(
        total=sum(_shard_tokens(shards, k) for _, ks in units for k in ks),
        initial=sum(_shard_tokens(shards, k) for s, ks in units for k in ks if not _missing(manifest, hooks, s, k)),
        unit="tok",
        unit_scale=True,
        desc=f"harvest {n_snapshots} snapshots x {n_tokens} tokens" + team.describe(),
        show=progress and team.is_main,
    )
    # Shard k is written in the background while shard k + 1 is computed (the next
    # snapshot's loading included); a shard enters the manifest only once its file is on
    # disk with a known size and hash.
    writer = ThreadPoolExecutor(max_workers=1)
    pending: list[tuple[str, Future, dict]] = []
    save = team.world_size == 1  # on a team, rank 0 saves the merged manifest after each round
    largest_id = largest_token_id(token_ids_NL)  # once for every snapshot that checks it
    try:
        for round_ in range(team.n_rounds(n_snapshots, len(shards))):
            unit = units[round_] if round_ < len(units) else None
            if unit is not None:
                _harvest_unit(
                    suite,
                    unit,
                    manifest,
                    root,
                    hooks,
                    token_ids_NL,
                    keep_NL,
                    bar,
                    writer,
                    pending,
                    save=save,
                    tokenizer=tokenizer,
                    batch_size=batch_size,
                    device=device,
                    model_dtype=model_dtype,
                    identity=identities[unit[0]],
                    largest_id=largest_id,
                )
                if not save:  # the round's files are merged across the team: wait for them
                    _record_written(root, manifest, pending, save=save)
            if not save:
                manifest = team.merge(manifest, unit)
                if team.is_main:
                    write_manifest(root, manifest)
    finally:
        bar.close()
        writer.shutdown(wait=True)
        _record_written(
            root, manifest, pending, only_successful=True, save=save
        )  # keep what an interrupted run finished

    if team.is_main:
        manifest["norm_factors"] = {hook: norm_factors_from_manifest(manifest, hook) for hook in hooks}
        manifest["mean_norms"] = {
            hook: [math.sqrt(manifest["d_in"][hook]) / f for f in manifest["norm_factors"][hook]] for hook in hooks
        }
        manifest["complete"] = True
        write_manifest(root, manifest)


def _opened_manifest(
    suite: CheckpointSuite,
    token_ids_NL: torch.Tensor,
    keep_NL: torch.Tensor,
    root: Path,
    spec: dict,
    provenance: dict,
    identities: list[dict | None],
    overwrite: bool,
    verify_hashes: bool,
) -> dict:
    """The store's manifest, resumed (its snapshots' identities checked against the files) or
    new, with the token tables written."""
    manifest = start_or_resume(root, spec, overwrite=overwrite, verify_hashes=verify_hashes)
    if manifest is None:
        manifest = new_manifest(spec, keep_NL, suite.snapshots, identities)
    else:
        check_identities(root, manifest, identities)
    for s, entry in enumerate(provenance.get("snapshots", [])):  # hashes of snapshots loaded earlier, if any
        check_known_weights(manifest, s, entry.get("weights_sha256"), entry.get("revision"))
    if TOKENS_NAME not in manifest["files"]:
        manifest["files"][TOKENS_NAME] = _write_tokens(
            root,
            {"sequences": token_ids_NL, "token_ids": token_ids_NL[keep_NL], "positions": keep_NL.nonzero()},
        )
        write_manifest(root, manifest)
    return manifest


def _shard_tokens(shards: list[dict], k: int) -> int:
    return shards[k]["token_stop"] - shards[k]["token_start"]


def _missing(manifest: dict, hooks: list[str], s: int, k: int) -> bool:
    """Whether shard ``k`` of snapshot ``s`` still lacks a file for one of ``hooks``."""
    return any(shard_relpath(h, s, k) not in manifest["files"] for h in hooks)


def _harvest_unit(
    suite: CheckpointSuite,
    unit: tuple[int, list[int]],
    manifest: dict,
    root: Path,
    hooks: list[str],
    token_ids_NL: torch.Tensor,
    keep_NL: torch.Tensor,
    bar: Any,
    writer: ThreadPoolExecutor,
    pending: list,
    *,
    save: bool,
    tokenizer: Any,
    batch_size: int,
    device: str | torch.device,
    model_dtype: str,
    identity: dict | None = None,
    largest_id: int,
) -> None:
    """Load snapshot ``s`` once and write the missing ones among its shards ``ks``."""
    s, ks = unit
    ref, shards = suite.snapshots[s], manifest["shards"]
    todo = [k for k in ks if _missing(manifest, hooks, s, k)]
    if not todo and manifest["snapshots"][s].get("source") is not None:
        return  # finished from these very files (checked above): not even loaded
    # (with no file identity, loading it checks its weights hash against the recorded one)
    bar.set_postfix_str(f"snapshot {ref.revision}")
    stop_at_layer = stop_layer_for(hooks)
    record, model = load_snapshot(
        suite,
        ref,
        device=device,
        reference_tokenizer=tokenizer,
        model_dtype=model_dtype,
        first_n_layers=None if stop_at_layer is None else max(1, stop_at_layer),
        identity=identity,
    )
    try:
        check_snapshot(manifest, s, record, model, largest_id, token_ids_NL.shape[1])
        for k in todo:
            a, b = shards[k]["seq_start"], shards[k]["seq_stop"]
            rows = harvest_rows(
                model, token_ids_NL[a:b], keep_NL[a:b], hooks, batch_size=batch_size, device=device, on_batch=bar.update
            )
            _record_written(root, manifest, pending, save=save)
            pending.extend(_submit_shard(writer, root, manifest, rows, s, k, revision=ref.revision))
    finally:
        release_model(model)


def _submit_shard(
    writer: ThreadPoolExecutor,
    root: Path,
    manifest: dict,
    rows: dict[str, torch.Tensor],
    s: int,
    k: int,
    *,
    revision: str,
) -> list[tuple[str, Future, dict]]:
    """Queue shard ``k`` of snapshot ``s`` for writing, one file per hook."""
    dtype, files = manifest["spec"]["dtype"], manifest["files"]
    queued = []
    for hook, acts_ND in rows.items():
        check_width(manifest, hook, acts_ND.shape[1], revision)
        rel = shard_relpath(hook, s, k)
        if rel in files:  # only a sibling hook's file was damaged; this one is intact
            continue
        record = {"rows": int(acts_ND.shape[0])}
        queued.append((rel, writer.submit(_write_shard, root / rel, acts_ND, dtype), record))
    return queued


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


def _record_written(
    root: Path,
    manifest: dict,
    pending: list[tuple[str, Future, dict]],
    *,
    only_successful: bool = False,
    save: bool = True,
) -> None:
    """Wait for queued shard files, enter them in the manifest and (``save``) save it."""
    recorded = False
    for rel, future, record in pending:
        if only_successful and (not future.done() or future.cancelled() or future.exception() is not None):
            continue
        manifest["files"][rel] = {**record, **future.result()}  # result() re-raises a failed write
        recorded = True
    pending.clear()
    if recorded and save:
        write_manifest(root, manifest)
