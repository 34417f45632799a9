"""Helpers every stage shares: the home folder, weight hashing, hook resolution, token packing.

This module sits below every subpackage (tests/test_imports.py holds the layering): it
imports nothing from crosslens, only torch and the standard library.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Int


def crosslens_home() -> Path:
    """``$CROSSLENS_HOME``, by default ``~/.cache/crosslens``."""
    return Path(os.environ.get("CROSSLENS_HOME", "~/.cache/crosslens")).expanduser()


_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


def weights_sha256(model: torch.nn.Module, *, first_n_layers: int | None = None) -> str:
    """sha256 over the sorted state-dict keys and each tensor's float32 bytes.

    Identical weights give identical hashes whatever the family or device; the suite
    takes it on the HookedTransformer after loading, so the same raw checkpoint always
    hashes the same. With ``first_n_layers``, blocks from that index on are left out:
    the hash a model loaded with only its first ``first_n_layers`` blocks gives.
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        block = _BLOCK_KEY.match(key)
        if first_n_layers is not None and block is not None and int(block.group(1)) >= first_n_layers:
            continue
        digest.update(key.encode())
        values = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(values.numpy().data)
    return digest.hexdigest()


def resolve_hook(store: Any, hook: str | None) -> str:
    """``hook`` if ``store`` holds it; with None, the store's only hook.

    ``store`` is anything with a ``hooks`` list (an ``ActivationStore``, a provider); an
    object without one accepts any named hook.
    """
    hooks = list(getattr(store, "hooks", []))
    if hook is None:
        if len(hooks) != 1:
            raise ValueError(f"the store holds hooks {hooks}; say which one to use (hook=...).")
        return hooks[0]
    if hooks and hook not in hooks:
        raise ValueError(f"hook {hook!r} is not in the store; it has {hooks}.")
    return hook


def crosscoder_hook(crosscoder: Any, hook: str | None) -> str:
    """``hook``, or the hook recorded in the crosscoder's metadata."""
    if hook is not None:
        return hook
    recorded = crosscoder.cfg.metadata.get("hook_name")
    if not recorded:
        raise ValueError(
            "the crosscoder's metadata records no hook_name; pass hook=, e.g. 'blocks.1.hook_resid_post'"
        )
    return str(recorded)


def pack_documents(
    documents: Iterable[Sequence[int]],
    seq_len: int,
    *,
    n_seqs: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> Int[torch.Tensor, "n_seqs seq_len"]:
    """Concatenate tokenized documents (EOS after each) into rows of ``seq_len``.

    Each row starts with ``bos_token_id`` when given, followed by ``seq_len - 1`` tokens
    of the running stream; a final partial row is dropped. ``documents`` may be a lazy
    iterable: packing stops as soon as ``n_seqs`` rows are full. The pico corpus and every
    harvest token table are packed this way, so their bytes (and every figure seeded on
    them) depend on it.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} is too short; use seq_len >= 2.")
    if n_seqs is not None and n_seqs < 1:
        raise ValueError(f"n_seqs={n_seqs} must be >= 1 (or None for all documents).")
    body_len = seq_len - (1 if bos_token_id is not None else 0)
    prefix = [bos_token_id] if bos_token_id is not None else []
    rows: list[list[int]] = []
    stream: list[int] = []
    for doc in documents:
        stream.extend(int(t) for t in doc)
        if eos_token_id is not None:
            stream.append(int(eos_token_id))
        start = 0  # walk an offset rather than re-slicing the stream: long documents stay linear
        while len(stream) - start >= body_len and (n_seqs is None or len(rows) < n_seqs):
            rows.append(prefix + stream[start : start + body_len])
            start += body_len
        del stream[:start]
        if n_seqs is not None and len(rows) >= n_seqs:
            break
    if not rows:
        raise ValueError(
            f"the documents hold fewer than {body_len} tokens, not enough for one row of "
            f"seq_len={seq_len}; give more text or a shorter seq_len."
        )
    if n_seqs is not None and len(rows) < n_seqs:
        raise ValueError(
            f"the documents fill only {len(rows)} rows of seq_len={seq_len}, but n_seqs={n_seqs} "
            "were asked for; give more text or ask for fewer tokens."
        )
    return torch.tensor(rows, dtype=torch.long)


def row_counts(mask: Bool[torch.Tensor, "... n"]) -> Int[torch.Tensor, "..."]:
    """True entries along the last dimension, as int32. A bool tensor's ``sum`` or
    ``count_nonzero`` over a dimension first converts it to int64, which on a CPU takes
    about ten times as long as summing its bytes (``benchmarks/cpu_ops.py``)."""
    return mask.view(torch.uint8).sum(dim=-1, dtype=torch.int32)


def one_vs_all_share(values: torch.Tensor) -> torch.Tensor:
    """``|v_c| / sum_c' |v_c'|`` along the last axis; rows that are all zero get ``1 / n``.

    RelIE (on indirect effects) and RelDec (on decoder norms) are both this ratio, so they
    share this one implementation.
    """
    if values.ndim < 1 or values.shape[-1] < 2:
        raise ValueError(f"a one-vs-all share compares at least 2 snapshots along the last axis, got shape {tuple(values.shape)}")
    magnitude = values.abs().to(torch.float64)
    total = magnitude.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(magnitude, 1.0 / values.shape[-1])
    share = torch.where(total > 0, magnitude / total.clamp_min(torch.finfo(torch.float64).tiny), uniform)
    return share.to(values.dtype if values.is_floating_point() else torch.float32)


# ----------------------------------------------------------------- folded normalisation
def is_folded(crosscoder: Any) -> bool:
    """Whether per-snapshot normalisation factors are folded into the crosscoder's weights
    (it then reads raw activations; unfolded, it reads ``store.read(normalize=True)``).

    The one test every stage uses: the metadata flag that folding sets, or a
    ``folded_norm_factors`` buffer that is not all ones (for a crosscoder whose metadata
    was rebuilt without the flag).
    """
    cfg = getattr(crosscoder, "cfg", None)
    metadata = getattr(cfg, "metadata", None)
    if metadata is not None and bool(_metadata_get(metadata, "activation_norm_factors_folded")):
        return True
    folded_S = getattr(crosscoder, "folded_norm_factors", None)
    return isinstance(folded_S, torch.Tensor) and not bool(torch.all(folded_S == 1))


def training_space_decoder(crosscoder: Any) -> torch.Tensor:
    """``W_dec [d_sae, n_snapshots, d_in]`` in the normalised space the crosscoder was trained
    in: the stored weights times the folded factors, so folding changes nothing here."""
    W_dec_FSD = crosscoder.W_dec.detach()
    folded_S = getattr(crosscoder, "folded_norm_factors", None)
    if isinstance(folded_S, torch.Tensor) and folded_S.numel() == W_dec_FSD.shape[1]:
        W_dec_FSD = W_dec_FSD * folded_S.detach().to(W_dec_FSD)[None, :, None]
    return W_dec_FSD


def resolve_norm_factors(crosscoder: Any, norm_factors: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Per-snapshot factors ``c_s`` to apply around the crosscoder (ones once folded).

    Explicit ``norm_factors`` win. Otherwise the metadata's ``activation_norm_factors``
    are used unless they are already folded into the weights (:func:`is_folded`).
    """
    n_snapshots = crosscoder.cfg.n_snapshots
    if norm_factors is None:
        recorded = _metadata_get(crosscoder.cfg.metadata, "activation_norm_factors")
        norm_factors = [1.0] * n_snapshots if is_folded(crosscoder) or recorded is None else recorded
    factors = torch.as_tensor(norm_factors, dtype=torch.float32).flatten()
    if factors.shape != (n_snapshots,) or not bool(torch.all(torch.isfinite(factors) & (factors > 0))):
        raise ValueError(
            f"norm_factors must be {n_snapshots} finite positive numbers (one per snapshot), "
            f"got {factors.tolist()}"
        )
    return factors


def _metadata_get(metadata: Any, key: str) -> Any:
    if isinstance(metadata, dict):
        return metadata.get(key)
    getter = getattr(metadata, "get", None)
    return getter(key) if callable(getter) else getattr(metadata, key, None)
