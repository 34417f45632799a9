"""``crosslens export RUN --format delphi``: the latent cache EleutherAI's delphi reads for
auto-interpretation, one hookpoint per snapshot.

delphi explains and scores each latent from a cache of every non-zero latent activation over a
token table. A crosscoder's code at snapshot s, in its per-snapshot mode (snapshot s's
activation alone, as :mod:`crosslens.dashboards.schema` describes), is one SAE's code at one
hookpoint, so each snapshot is cached as a hookpoint of its own, named ``HOOK@REVISION``
(``blocks.6.hook_resid_post@step1000``); delphi's ``LatentDataset(OUT/latents, ...,
modules=[...])`` then loads any of them. The tokens and the activations come from an activation
store holding the run's snapshots at its hook (by default the one it was trained on). Layout of
``OUT``, as delphi's ``LatentCache.save_splits`` and ``save_config`` write it (eai-delphi 0.1.3
from the package index, ``delphi/latents/cache.py``, read by ``delphi/latents/loader.py``; the
same in its repository at commit 3c2e139)::

    crosslens_export.json                          the manifest (crosslens.exports.run)
    latents/
        blocks.6.hook_resid_post@step1000/         one folder per snapshot ("hookpoint")
            0_6553.safetensors                     latents 0..6553 (first_last, both inclusive),
            6554_13106.safetensors ...             n_splits files cut at linspace(0, d_sae, n_splits+1)
            config.json                            delphi's CacheConfig.to_dict() + model_name

Each ``FIRST_LAST.safetensors`` holds

* ``locations``: ``[n, 3]`` rows ``(sequence, position, latent - FIRST)``, ``uint16`` when every
  sequence index and local latent is below 2**16, else ``uint32``; sorted by sequence,
  position, latent, as delphi's ``torch.nonzero`` over ``[batch, seq, latents]`` leaves them;
* ``activations``: ``[n]`` ``float16``, every activation with ``|a| > 1e-5`` (delphi's cut);
* ``tokens``: ``[n_sequences, seq_len]`` ``int64``, the token table (the store's first sequences).

The store keeps no activations for the tokens a harvest excludes (BOS and other special tokens),
so no latent fires there in the cache. ``config.json``'s ``model_name`` is what delphi loads the
tokenizer from; its ``crosslens`` entry names the snapshot, hook and store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.metadata import metadata_value
from crosslens.core.model_specs import snapshot_model
from crosslens.core.paths import RUN_CONFIG_NAME
from crosslens.exports.config import ExportError
from crosslens.exports.run import ExportContext, SnapshotRef, write_json

DELPHI_VERSION = "0.1.3"
"""The eai-delphi release whose cache layout this writes."""

NONZERO = 1e-5
"""delphi keeps the activations whose magnitude exceeds this."""

LATENTS_DIR = "latents"
"""The folder delphi's ``LatentDataset`` is pointed at (``raw_dir``)."""


def write_export(context: ExportContext, out: Path) -> dict[str, Any]:
    """One hookpoint folder per chosen snapshot; returns the manifest's ``delphi``."""
    store = open_store(context)
    hook = str(metadata_value(context.crosscoder, "hook_name"))
    rows, n_sequences = chosen_rows(store, context.config.n_tokens)
    tokens = store.sequences[:n_sequences].to(torch.int64).numpy()
    found = encode_rows(context, store, hook, rows)
    tokenizer = context.config.tokenizer or default_tokenizer(context.crosscoder)
    d_sae, n_splits = int(context.crosscoder.cfg.d_sae), int(context.config.n_splits)
    modules = []
    for ref in context.snapshots:
        module = f"{hook}@{ref.label}"
        folder = out / LATENTS_DIR / module
        locations, activations = found[ref.index]
        folder.mkdir(parents=True, exist_ok=True)
        for first, last in split_bounds(d_sae, n_splits):
            save_file(
                split_arrays(locations, activations, tokens, first, last), str(folder / f"{first}_{last}.safetensors")
            )
        write_json(folder / "config.json", cache_config(context, ref, hook, store, tokens, tokenizer), indent=4)
        modules.append({"snapshot": ref.label, "module": module})
    return {"delphi": {"delphi_version": DELPHI_VERSION, "raw_dir": LATENTS_DIR, "modules": modules}}


def open_store(context: ExportContext) -> Any:
    """The activation store the cache reads, checked against the run's crosscoder."""
    import json

    from crosslens.activations.partners import check_crosscoder_store
    from crosslens.activations.store import ActivationStore

    path = context.config.store
    if path is None:
        try:
            path = json.loads((context.run_dir / RUN_CONFIG_NAME).read_text(encoding="utf-8")).get("store_path")
        except (OSError, ValueError):
            path = None
    if not path:
        raise ExportError(
            f"the run in {context.run_dir} records no activation store (it was trained from a stream); pass --store "
            "STORE, a store harvested from the run's snapshots at its hook"
        )
    try:
        store = ActivationStore.open(path)
    except FileNotFoundError as error:
        raise ExportError(f"{error}; or pass --store STORE, a store of the run's snapshots") from None
    check_crosscoder_store(context.crosscoder, store, crosscoder_name=context.run_dir)
    return store


def chosen_rows(store: Any, n_tokens: int | None) -> tuple[np.ndarray, int]:
    """The stored rows of the first whole sequences holding at most ``n_tokens`` stored tokens
    (at least one sequence; all with None), sorted, and how many sequences that is."""
    seq = store.positions[:, 0].numpy().astype(np.int64)
    n_all = int(store.sequences.shape[0])
    n_sequences = n_all
    if n_tokens is not None:
        per_sequence = np.cumsum(np.bincount(seq, minlength=n_all))
        n_sequences = max(1, int(np.searchsorted(per_sequence, int(n_tokens), side="right")))
        n_sequences = min(n_sequences, n_all)
    return np.flatnonzero(seq < n_sequences), n_sequences


def encode_rows(
    context: ExportContext, store: Any, hook: str, rows: np.ndarray
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per chosen snapshot: the (sequence, position, latent) of every activation above
    :data:`NONZERO` of its per-snapshot code, and those activations (float16), in delphi's order."""
    from crosslens.crosscoders.per_snapshot_sae import SnapshotCodec

    codecs = {ref.index: SnapshotCodec(context.crosscoder, ref.index) for ref in context.snapshots}
    positions = store.positions.numpy().astype(np.int64)
    parts: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {s: [] for s in codecs}
    with torch.no_grad():
        for start in range(0, rows.size, int(context.config.batch_size)):
            chunk = rows[start : start + int(context.config.batch_size)]
            acts = store.read(hook, chunk, normalize=False)
            for s, codec in codecs.items():
                codes = codec.encode_single(acts[:, s]).float()
                keep = codes.abs() > NONZERO
                local, latent = (index.cpu().numpy() for index in keep.nonzero(as_tuple=True))
                where = positions[chunk[local]]
                locations = np.stack([where[:, 0], where[:, 1], latent.astype(np.int64)], axis=1)
                parts[s].append((locations, codes[keep].cpu().numpy().astype(np.float16)))
    found = {}
    for s, pieces in parts.items():
        locations = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros((0, 3), np.int64)
        activations = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, np.float16)
        order = np.lexsort((locations[:, 2], locations[:, 1], locations[:, 0]))
        found[s] = (locations[order], activations[order])
    return found


def split_bounds(d_sae: int, n_splits: int) -> list[tuple[int, int]]:
    """(first, last) latent of each file, both inclusive, cut as delphi's
    ``_generate_split_indices`` cuts them (``torch.linspace(0, width, n_splits + 1).long()``)."""
    bounds = torch.linspace(0, d_sae, steps=n_splits + 1).long().tolist()
    return [(int(a), int(b) - 1) for a, b in zip(bounds[:-1], bounds[1:])]


def split_arrays(
    locations: np.ndarray, activations: np.ndarray, tokens: np.ndarray, first: int, last: int
) -> dict[str, np.ndarray]:
    """One file's tensors: the locations of latents ``first..last`` (latent made local), their
    activations and the token table, in the dtypes delphi's ``save_splits`` picks."""
    mask = (locations[:, 2] >= first) & (locations[:, 2] <= last)
    local = locations[mask].copy()
    local[:, 2] -= first
    small = local.shape[0] == 0 or (local[:, 2].max() < 2**16 and local[:, 0].max() < 2**16)
    return {
        "locations": np.ascontiguousarray(local.astype(np.uint16 if small else np.uint32)),
        "activations": np.ascontiguousarray(activations[mask]),
        "tokens": np.ascontiguousarray(tokens),
    }


def default_tokenizer(crosscoder: Any) -> str:
    """Where delphi loads the tokenizer from: a local suite's first snapshot folder (or the suite's
    folder), else the suite's model id."""
    suite = metadata_value(crosscoder, "suite") or {}
    root = suite.get("root")
    if root:
        snapshots = suite.get("snapshots") or []
        first = Path(root) / str(snapshots[0].get("revision")) if snapshots else Path(root)
        return str(first if (first / "tokenizer_config.json").is_file() else Path(root))
    return str(snapshot_model(suite, 0) or metadata_value(crosscoder, "model_name") or "")


def cache_config(
    context: ExportContext, ref: SnapshotRef, hook: str, store: Any, tokens: np.ndarray, tokenizer: str
) -> dict[str, Any]:
    """``config.json``: delphi's ``CacheConfig`` fields (in its order) and ``model_name``, then
    what crosslens adds about the snapshot."""
    n_sequences, seq_len = (int(n) for n in tokens.shape)
    return {
        "dataset_repo": str(Path(store.path).resolve()),
        "dataset_split": "",
        "dataset_name": "",
        "dataset_column": "text",
        "batch_size": n_sequences,
        "cache_ctx_len": seq_len,
        "n_tokens": n_sequences * seq_len,
        "n_splits": int(context.config.n_splits),
        "model_name": tokenizer,
        "crosslens": {
            "snapshot": ref.label,
            "snapshot_index": ref.index,
            "step": ref.step,
            "hook_name": hook,
            "activation": "per-snapshot mode: snapshot s's activation alone (SnapshotCodec.encode_single)",
            "store_content_sha256": store.content_sha256,
        },
    }
