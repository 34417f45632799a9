"""Where the dashboards' tokens come from: an activation store, or snapshot models kept resident
and run on a token table (``--stream``, no store on disk).

Both are read the same way: whole sequences in order, a batch at a time, each batch as the raw
activations of its kept tokens at every snapshot (the model's own scale, not normalised) with
where each token sits, so that a context's window (tokens of the same sequence around it) can be
read from the batch that holds it. A token is named by its *row id*, ``seq * seq_len + pos`` in
the source's token table, which both sources share with the database (``contexts.seq``/``pos``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.activations.budget import HARVEST_BATCH_SEQS
from crosslens.core.devices import RESIDENT_MEMORY_FRACTION, release_model

if TYPE_CHECKING:
    from crosslens.activations.store import ActivationStore
    from crosslens.checkpoints import CheckpointSuite


@dataclass
class Batch:
    """Whole sequences' kept tokens, with their activations at every snapshot."""

    acts_NSD: Float[torch.Tensor, "n n_snapshots d_in"]
    """Raw activations (float32, on the compute device)."""
    row_ids_N: Int[torch.Tensor, " n"]
    """``seq * seq_len + pos`` of each token."""
    local_seq_N: Int[torch.Tensor, " n"]
    """Index of each token's sequence among the batch's sequences."""
    pos_N: Int[torch.Tensor, " n"]
    """Each token's position in its sequence."""
    grid_QL: Int[torch.Tensor, "n_seqs seq_len"]
    """Row of the batch holding each (sequence, position); -1 where the token is not kept."""


def make_batch(acts_NSD: torch.Tensor, row_ids_N: torch.Tensor, seqs_Q: torch.Tensor, seq_len: int) -> Batch:
    """A :class:`Batch` of ``acts_NSD`` whose rows are the tokens ``row_ids_N`` of the sequences ``seqs_Q``
    (ascending)."""
    device = acts_NSD.device
    row_ids_N = row_ids_N.to(device)
    seq_N, pos_N = row_ids_N // seq_len, row_ids_N % seq_len
    local_seq_N = torch.searchsorted(seqs_Q.to(device), seq_N)
    grid_QL = torch.full((len(seqs_Q), seq_len), -1, dtype=torch.long, device=device)
    grid_QL[local_seq_N, pos_N] = torch.arange(len(row_ids_N), device=device)
    return Batch(acts_NSD, row_ids_N, local_seq_N, pos_N, grid_QL)


class TokenSource:
    """Sequences in order (``seq_ids``, each with ``seq_counts`` kept tokens), read a range at a time."""

    seq_len: int
    seq_ids: Int[torch.Tensor, " n_seqs"]
    seq_counts: Int[torch.Tensor, " n_seqs"]

    def plan(self, n_tokens: int, batch_size: int) -> tuple[list[tuple[int, int]], int]:
        """Ranges of sequence ordinals, each one batch of whole sequences of at most ``batch_size``
        tokens (one sequence at least), covering the first sequences up to ``n_tokens`` tokens (one
        sequence at least); and the tokens they hold."""
        counts = self.seq_counts.tolist()
        batches: list[tuple[int, int]] = []
        total, start, in_batch = 0, 0, 0
        for i, count in enumerate(counts):
            if total and total + count > n_tokens:
                break
            if in_batch and in_batch + count > batch_size:
                batches.append((start, i))
                start, in_batch = i, 0
            total += count
            in_batch += count
            end = i + 1
        if total:
            batches.append((start, end))
        return batches, total

    def read(self, start: int, stop: int, device: torch.device) -> Batch:
        raise NotImplementedError

    def token_table(self) -> Int[torch.Tensor, "n_seqs seq_len"]:
        """Every sequence's token ids, the tokens the store leaves out (BOS, separators) included."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """What identifies the tokens (JSON): the store's seal, or the streamed suite and token table;
        and the sequences' length."""
        raise NotImplementedError

    def snapshot_models(self, device: torch.device) -> Iterator[tuple[int, Any]]:
        """Each snapshot's model in turn (for its final norm and unembedding)."""
        raise NotImplementedError

    def close(self) -> None:
        """Free what the source holds (resident models)."""


class StoreTokens(TokenSource):
    """The tokens of an activation store, in (sequence, position) order whatever order it keeps rows in."""

    def __init__(self, store: ActivationStore, hook: str, suite: CheckpointSuite | None) -> None:
        from crosslens.activations.partners import store_seal

        self.store, self.hook, self.suite = store, hook, suite
        self._seal = store_seal(store)
        positions_N2 = torch.as_tensor(store.positions).long()
        self.seq_len = int(store.sequences.shape[1])
        keys_N = positions_N2[:, 0] * self.seq_len + positions_N2[:, 1]
        self.order_N = torch.argsort(keys_N, stable=True)
        self.keys_N = keys_N[self.order_N]
        self.seq_ids, self.seq_counts = torch.unique_consecutive(positions_N2[self.order_N, 0], return_counts=True)
        self.starts = torch.cumsum(self.seq_counts, 0) - self.seq_counts

    def read(self, start: int, stop: int, device: torch.device) -> Batch:
        lo, hi = int(self.starts[start]), int(self.starts[stop - 1] + self.seq_counts[stop - 1])
        acts_NSD = self.store.read(self.hook, self.order_N[lo:hi], normalize=False).to(device)
        return make_batch(acts_NSD, self.keys_N[lo:hi], self.seq_ids[start:stop], self.seq_len)

    def token_table(self) -> Int[torch.Tensor, "n_seqs seq_len"]:
        return torch.as_tensor(self.store.sequences).long()

    def record(self) -> dict[str, Any]:
        return {"store": self._seal, "seq_len": self.seq_len}

    def snapshot_models(self, device: torch.device) -> Iterator[tuple[int, Any]]:
        if self.suite is None:
            raise ValueError("no suite to load the snapshot models from")
        for s in range(len(self.suite)):
            model = self.suite.load(s, device=device, dtype=torch.float32)
            try:
                yield s, model
            finally:
                release_model(model)


@dataclass
class StreamSource:
    """Tokens for ``--stream``: the suite's snapshot models, kept resident (truncated after the hook's
    block), run on ``token_ids_NL`` one batch of sequences at a time; nothing is written to disk.

    ``crosslens dashboards RUN --stream`` builds it from the flags ``train --stream`` takes, as that
    command does: the selected suite, the training token table its token source and budget give
    (``crosslens harvest``'s), and the token source's record (``stream_record(...)["tokens"]`` with
    its budget) as ``spec``."""

    suite: CheckpointSuite
    """The crosscoder's snapshots (their revisions, steps and weights are checked against its record)."""
    token_ids_NL: Int[torch.Tensor, "n_seqs seq_len"]
    """The token table (``crosslens harvest``'s, from the same text and flags)."""
    spec: dict[str, Any] = field(default_factory=dict)
    """How the table was made (text or dataset, budget), recorded with the database as its token source."""
    hook: str | None = None
    """The hook to read (default: the crosscoder's)."""
    exclude_bos: bool = True
    exclude_token_ids: Sequence[int] | None = None
    harvest_batch_size: int = HARVEST_BATCH_SEQS
    """Sequences per forward pass of a snapshot model."""
    memory_fraction: float = RESIDENT_MEMORY_FRACTION
    """Share of the device's free memory the resident models may take (they are refused beyond it)."""


class StreamTokens(TokenSource):
    """A :class:`StreamSource`'s tokens, harvested from its resident models as they are read."""

    def __init__(self, source: StreamSource, hook: str, device: torch.device, model_dtype: str) -> None:
        from crosslens.activations.streaming import ResidentSnapshotProvider
        from crosslens.activations.tokens import tokens_sha256

        self.source, self.hook = source, hook
        self.provider = ResidentSnapshotProvider(
            source.suite,
            hook,
            source.token_ids_NL,
            1,
            device=device,
            model_device=device,
            model_dtype=model_dtype,
            prefetch=False,
            exclude_bos=source.exclude_bos,
            exclude_token_ids=source.exclude_token_ids,
            harvest_batch_size=source.harvest_batch_size,
            memory_fraction=source.memory_fraction,
            compile=False,
        )
        self.keep_NL = self.provider.keep_NL
        self.seq_len = int(self.keep_NL.shape[1])
        self.seq_ids = torch.arange(self.keep_NL.shape[0])
        self.seq_counts = self.keep_NL.sum(dim=1)
        self._tokens_sha256 = tokens_sha256(self.provider.token_ids_NL)

    def models(self) -> list[Any]:
        """The resident models (loaded, and checked to fit, on first use)."""
        return self.provider.models()

    @property
    def provenance(self) -> list[dict]:
        """The loaded snapshots' records (revision, step, weight identities)."""
        return list(self.provider.provenance)

    @torch.inference_mode()
    def read(self, start: int, stop: int, device: torch.device) -> Batch:
        from crosslens.activations.forward import harvest_rows, kept_index

        models = self.models()
        tokens_QL, keep_QL = self.provider.token_ids_NL[start:stop], self.keep_NL[start:stop]
        kept = kept_index(keep_QL, self.source.harvest_batch_size, models[0].cfg.device)
        rows = [
            harvest_rows(
                model,
                tokens_QL,
                keep_QL,
                [self.hook],
                batch_size=self.source.harvest_batch_size,
                out_device=device,
                out_dtype=torch.float32,
                kept=kept,
            )[self.hook]
            for model in models
        ]
        seq_K, pos_K = torch.nonzero(keep_QL, as_tuple=True)
        row_ids_N = (seq_K + start) * self.seq_len + pos_K
        return make_batch(torch.stack(rows, dim=1), row_ids_N, self.seq_ids[start:stop], self.seq_len)

    def token_table(self) -> Int[torch.Tensor, "n_seqs seq_len"]:
        return self.provider.token_ids_NL

    def record(self) -> dict[str, Any]:
        suite = self.source.suite
        snapshots = [{"revision": ref.revision, "step": ref.step} for ref in suite.snapshots]
        spec = {"model_id": suite.model_id, "snapshots": snapshots, "hook": self.hook}
        return {"stream": {**spec, **self.source.spec, "tokens_sha256": self._tokens_sha256}, "seq_len": self.seq_len}

    def snapshot_models(self, device: torch.device) -> Iterator[tuple[int, Any]]:
        yield from enumerate(self.models())

    def close(self) -> None:
        self.provider.close()


def recorded_suite(record: dict[str, Any]) -> CheckpointSuite:
    """The suite a crosscoder's record names (its local folder, else its hub id or models), at its snapshots."""
    from crosslens.checkpoints.records import suite_from_record

    try:
        return suite_from_record(record)
    except FileNotFoundError as error:
        raise ValueError(f"the crosscoder's suite cannot be loaded: {error}") from None
