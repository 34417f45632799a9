"""What one activation store is harvested from, gathered and checked before anything is written.

:meth:`HarvestInputs.build` takes a suite, hooks and a token table and does every check that
needs no model: the storage dtype, the hooks, the table's shape, which tokens are kept, the suite's
own config-level checks (architectures, tokenizers), and each snapshot's identity read from its
files (damaged, uncached and duplicate snapshots are refused here). What it returns is complete:
the harvest (:func:`crosslens.activations.harvest.harvest_store`) reads it and asks the suite for
nothing but its models.

A store's *spec* (suite provenance, hooks, dtype, token table hash, exclusions, shard size)
fingerprints its inputs: a harvest resumes a store only under an equal spec
(:mod:`crosslens.activations.manifest`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int

from crosslens.activations.budget import HARVEST_BATCH_SEQS, SHARD_TOKENS
from crosslens.activations.forward import stop_layer_for
from crosslens.activations.snapshots import check_suite, suite_identities
from crosslens.activations.store import check_storage_dtype
from crosslens.activations.tokens import kept_tokens, tokens_sha256
from crosslens.core.hashing import json_sha256


@dataclass(frozen=True)
class HarvestInputs:
    """Everything one store is harvested from, checked (:meth:`build`)."""

    suite: Any
    """The snapshots (a :class:`~crosslens.checkpoints.CheckpointSuite`, or any suite with
    ``snapshots``, ``load``, ``tokenizer`` and ``provenance``), loaded one at a time."""
    hooks: list[str]
    """Hook names, duplicate-free, in the given order."""
    token_ids_NL: Int[torch.Tensor, "n_seqs seq_len"]
    """The token table every snapshot runs on: contiguous CPU int64."""
    keep_NL: Bool[torch.Tensor, "n_seqs seq_len"]
    """Which (sequence, position) pairs become stored tokens."""
    spec: dict
    """What the store is built from; a store on disk is resumed only under an equal spec."""
    identities: list[dict | None]
    """Each snapshot's identity from its files (None where it cannot be known before loading)."""
    reference_tokenizer: Any
    """The tokenizer each loaded snapshot's is compared with; None where the suite compared its
    snapshots' tokenizers itself."""
    first_n_layers: int | None
    """Blocks a snapshot needs to reach the hooks (None: all); a snapshot whose full weights hash
    is known loads only these (``CheckpointSuite.load``)."""
    batch_size: int
    """Sequences per forward pass."""
    token_source: dict | None = None
    """Where the token table's text came from (:meth:`~crosslens.activations.config.TokenSource.record`),
    recorded in the manifest beside the spec; :meth:`build` given none records the table itself
    (:func:`token_table_source`), so that a store always says what its tokens are."""

    @classmethod
    def build(
        cls,
        suite: Any,
        hooks: str | Sequence[str],
        token_ids_NL: Int[torch.Tensor, "n_seqs seq_len"],
        *,
        dtype: str = "float32",
        exclude_bos: bool = True,
        exclude_token_ids: Sequence[int] | None = None,
        batch_size: int = HARVEST_BATCH_SEQS,
        shard_tokens: int = SHARD_TOKENS,
        model_dtype: str | torch.dtype = "float32",
        identities: list[dict | None] | None = None,
        token_source: dict | None = None,
    ) -> HarvestInputs:
        """The inputs of a harvest of ``hooks`` on ``token_ids_NL`` at every snapshot of ``suite``,
        checked; the arguments are :func:`~crosslens.activations.harvest.harvest_activations`'s.
        ``identities``: the snapshots' identities where the caller has read them (a held-out split of
        the same suite: :attr:`identities` of its training rows' inputs); else they are read here.
        ``token_source``: where the tokens came from, for the manifest (:attr:`token_source`; None:
        the token table, by its hash)."""
        check_storage_dtype(dtype)
        hooks = as_hook_list(hooks)
        token_ids_NL = _checked_token_table(token_ids_NL, batch_size=batch_size, shard_tokens=shard_tokens)
        tokenizer = suite.tokenizer()
        exclude_token_ids, keep_NL = kept_tokens(tokenizer, token_ids_NL, exclude_bos, exclude_token_ids)
        settings = dict(
            dtype=dtype,
            exclude_bos=exclude_bos,
            exclude_token_ids=exclude_token_ids,
            shard_tokens=shard_tokens,
            model_dtype=str(model_dtype).removeprefix("torch."),
        )
        spec = store_spec(suite.provenance(), hooks, token_ids_NL, **settings)
        per_model_tokenizer = check_suite(suite)
        stop_at_layer = stop_layer_for(hooks)
        return cls(
            suite=suite,
            hooks=hooks,
            token_ids_NL=token_ids_NL,
            keep_NL=keep_NL,
            spec=spec,
            # before writing: refuses damaged, uncached and duplicate snapshots
            identities=suite_identities(suite) if identities is None else identities,
            reference_tokenizer=tokenizer if per_model_tokenizer else None,
            first_n_layers=None if stop_at_layer is None else max(1, stop_at_layer),
            batch_size=batch_size,
            token_source=token_table_source(spec) if token_source is None else token_source,
        )

    @property
    def fingerprint(self) -> str:
        """The spec's hash, which the store's manifest records."""
        return json_sha256(self.spec)

    @property
    def model_dtype(self) -> str:
        """What the models run in (``"float32"``, ``"bfloat16"``, ``"float16"``)."""
        return self.spec.get("model_dtype", "float32")


def as_hook_list(hooks: str | Sequence[str]) -> list[str]:
    """One hook name or several -> a duplicate-free list in the given order."""
    names = [hooks] if isinstance(hooks, str) else list(hooks)
    if not names:
        raise ValueError("no hooks given; pass a hook name such as 'blocks.1.hook_resid_post'.")
    return list(dict.fromkeys(names))


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


TOKEN_TABLE_KIND = "token_table"
"""The ``kind`` of a token source recorded as the token table a caller gave, its text's source unknown."""


def token_table_source(spec: dict) -> dict:
    """The token source of a table given without its text's source: its kind and its hash (the
    spec's), which names the rows a store holds though not where their text came from."""
    return {"kind": TOKEN_TABLE_KIND, "token_ids_sha256": spec["token_ids_sha256"]}


def store_spec(
    provenance: dict,
    hooks: list[str],
    token_ids_NL: torch.Tensor,
    *,
    dtype: str,
    exclude_bos: bool,
    exclude_token_ids: list[int],
    shard_tokens: int,
    model_dtype: str,
) -> dict:
    """What a store is built from; a store is resumed only under an equal spec."""
    spec = {
        "suite": _provenance_without_hashes(provenance),
        "hooks": hooks,
        "dtype": dtype,
        "exclude_bos": exclude_bos,
        "exclude_token_ids": exclude_token_ids,
        "token_ids_sha256": tokens_sha256(token_ids_NL),
        "n_seqs": token_ids_NL.shape[0],
        "seq_len": token_ids_NL.shape[1],
        "seqs_per_shard": max(1, shard_tokens // token_ids_NL.shape[1]),
    }
    if model_dtype != "float32":  # absent for float32, the default, so its fingerprint is unchanged by the option
        spec["model_dtype"] = model_dtype
    return spec


def _provenance_without_hashes(provenance: dict) -> dict:
    # Weights hashes enter a suite's provenance as its snapshots get loaded; they are
    # checked per snapshot instead, so the fingerprint must not depend on what ran before.
    snapshots = [{k: v for k, v in entry.items() if k != "weights_sha256"} for entry in provenance.get("snapshots", [])]
    return {**provenance, "snapshots": snapshots}


__all__ = ["HarvestInputs", "as_hook_list", "store_spec"]
