"""A suite's snapshots as every harvest meets them (a store's, a provider's, a streamed run's).

Before any model loads, the suite's own config-level checks run (:func:`check_suite`) and each
snapshot's identity is read from its files (:func:`suite_identities`). Then each snapshot is
loaded and checked as it loads (:func:`load_snapshot`): its tokenizer against the suite's
(:func:`check_same_tokenizer`), its vocabulary and context against the token table
(:func:`check_tokens_fit`).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.errors import SnapshotMismatchError, TokenizerMismatchError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformers import PreTrainedTokenizerBase

    from crosslens.checkpoints import CheckpointSuite


def check_suite(suite: Any) -> bool:
    """Run the suite's own config-level checks (architectures, tokenizers) before any model
    loads. Returns True when the suite has no tokenizer check, so each loaded model's
    tokenizer must be compared instead."""
    if hasattr(suite, "check_architectures"):
        suite.check_architectures()
    if hasattr(suite, "check_same_tokenizer"):
        suite.check_same_tokenizer()
        return False
    return True


def suite_identities(suite: Any) -> list[dict | None]:
    """Each snapshot's identity from its files (:func:`~crosslens.checkpoints.identity.snapshot_identities`,
    which refuses byte-identical snapshots); a suite from elsewhere is checked by its weights hash
    as each snapshot loads instead (all None)."""
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.checkpoints.identity import snapshot_identities

    if not isinstance(suite, CheckpointSuite):
        return [None] * len(suite.snapshots)
    return snapshot_identities(suite)


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
    ``identity`` (:func:`suite_identities`), a snapshot whose full weights hash is already
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


def vocab_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of the tokenizer's vocabulary and special ids: equal iff they tokenize alike."""
    vocab = sorted(tokenizer.get_vocab().items())
    specials = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    return hashlib.sha256(repr((vocab, specials)).encode()).hexdigest()


def check_same_tokenizer(
    reference: PreTrainedTokenizerBase, other: PreTrainedTokenizerBase | None, *, revision: str
) -> None:
    """Refuse snapshot ``revision``'s tokenizer ``other`` when it differs from ``reference``."""
    if other is None or other is reference:
        return
    if vocab_fingerprint(other) != vocab_fingerprint(reference):
        ref_vocab, other_vocab = reference.get_vocab(), other.get_vocab()
        diff = sorted(set(ref_vocab.items()) ^ set(other_vocab.items()))[:5]
        raise TokenizerMismatchError(
            f"snapshot {revision!r} tokenizes differently from the suite's tokenizer "
            f"(vocab sizes {len(ref_vocab)} vs {len(other_vocab)}; first differences {diff}). "
            "Crosscoders need the same tokens at every snapshot: drop that snapshot from the suite "
            "(suite.select(...)) or use a suite whose snapshots share one tokenizer.",
            revision=revision,
            differences={"vocab_size": (len(ref_vocab), len(other_vocab))},
        )


def largest_token_id(token_ids_NL: torch.Tensor) -> int:
    """The largest id of a token table (-1 when it is empty): what :func:`check_tokens_fit` checks."""
    return int(token_ids_NL.max()) if token_ids_NL.numel() else -1


def check_tokens_fit(model: HookedTransformer, revision: str, largest_id: int, seq_len: int, retry: str = "") -> None:
    """Refuse a token table the snapshot ``model`` cannot read: its ``largest_id`` beyond the
    model's vocabulary, or rows of ``seq_len`` longer than its context (``retry`` is said after the
    fix for the latter). The table's largest id is taken once (:func:`largest_token_id`), however
    many snapshots check it."""
    if largest_id >= model.cfg.d_vocab:
        raise SnapshotMismatchError(
            f"token id {largest_id} is outside snapshot {revision!r}'s vocabulary "
            f"of {model.cfg.d_vocab}; build the tokens with this suite's tokenizer.",
            revision=revision,
        )
    if seq_len > model.cfg.n_ctx:
        raise SnapshotMismatchError(
            f"the token table's rows of {seq_len} tokens are longer than snapshot "
            f"{revision!r}'s context of {model.cfg.n_ctx}; build them with seq_len <= {model.cfg.n_ctx} "
            f"(`crosslens harvest --seq-len`).{retry}",
            revision=revision,
        )
