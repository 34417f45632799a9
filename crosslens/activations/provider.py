"""Shuffled ``[batch, n_snapshots, d_in]`` training batches, from disk or harvested on the fly.

Both providers see an epoch as a stream: a seeded permutation of all training tokens,
cut into batches. Only a bounded window of that stream (the mixing buffer) is in memory
at a time, yet the shuffle is uniform over the whole epoch because the permutation is
global. The same seed gives the same batches, every token appears exactly once per
epoch, and ``start_batch=k`` resumes at batch k without reading batches 0..k-1.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float, Int

from crosslens.activations.budget import HARVEST_BATCH_SEQS
from crosslens.activations.forward import harvest_rows, stop_layer_for
from crosslens.activations.snapshots import (
    check_suite,
    check_tokens_fit,
    largest_token_id,
    load_snapshot,
    suite_identities,
)
from crosslens.activations.store import ActivationStore
from crosslens.activations.tokens import kept_tokens
from crosslens.core.devices import release_model
from crosslens.core.errors import check_store_given

if TYPE_CHECKING:
    from crosslens.checkpoints import CheckpointSuite


def epoch_rng(seed: int, epoch: int, *extra: int) -> np.random.Generator:
    """Independent, reproducible random stream for (seed, epoch, ...)."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, *extra]))


def norm_factors_of(acts_NSD: Float[torch.Tensor, "n n_snapshots d_in"]) -> Float[torch.Tensor, " n_snapshots"]:
    """Per-snapshot ``sqrt(d_in) / mean ||a_s||``: the factors that give each snapshot mean norm sqrt(d_in)."""
    mean_norms_S = torch.linalg.vector_norm(acts_NSD, dim=-1, dtype=torch.float64).mean(0)
    return (math.sqrt(acts_NSD.shape[-1]) / mean_norms_S).float()


def _check_one_batch(n_tokens: int, batch_size: int, drop_last: bool) -> None:
    """Refuse ``drop_last`` when fewer tokens than one batch would leave nothing to serve."""
    if drop_last and n_tokens < batch_size:
        raise ValueError(
            f"only {n_tokens} training tokens, fewer than one batch of {batch_size}, and drop_last=True "
            "would serve nothing; use a smaller batch_size (`crosslens train --batch-size`), take more "
            "tokens (`--n-tokens` of `crosslens harvest` or of `crosslens train --stream`), or, for a "
            "provider of your own, pass drop_last=False."
        )


def _check_batching(batch_size: int, n_epochs: int | None, start_batch: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    if n_epochs is not None and n_epochs < 1:
        raise ValueError(f"n_epochs={n_epochs} must be >= 1, or None to repeat forever.")
    if start_batch < 0:
        raise ValueError(f"start_batch={start_batch} must be >= 0.")


class _Batching:
    """What both providers share: how an epoch's token stream is cut into batches, and where they go."""

    def __init__(
        self,
        batch_size: int,
        seed: int,
        normalize: bool,
        drop_last: bool,
        n_epochs: int | None,
        start_batch: int,
        device: str | torch.device,
    ) -> None:
        _check_batching(batch_size, n_epochs, start_batch)
        self.batch_size, self.seed, self.normalize, self.drop_last = batch_size, seed, normalize, drop_last
        self.n_epochs, self.start_batch, self.device = n_epochs, start_batch, torch.device(device)

    @property
    def batches_per_epoch(self) -> int:
        """Batches in one epoch: each provider counts its own tokens."""
        raise NotImplementedError

    def _first_batch(self, start: int, stop: int | None) -> tuple[int, int]:
        """``(epoch, batch within it)`` of batch ``start``, refusing a ``stop`` before it."""
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"batches(start={start}, stop={stop}): need 0 <= start <= stop.")
        return divmod(start, self.batches_per_epoch)

    def _serves_epoch(self, epoch: int, stop: int | None) -> bool:
        """Whether any batch of ``epoch`` comes before ``stop`` and within ``n_epochs``."""
        return (self.n_epochs is None or epoch < self.n_epochs) and (
            stop is None or epoch * self.batches_per_epoch < stop
        )

    def _epoch_end(self, epoch: int, stop: int | None, served: int) -> int:
        """Where ``epoch``'s token stream ends: after its ``served`` tokens, or at batch ``stop``."""
        if stop is None:
            return served
        return min(served, (stop - epoch * self.batches_per_epoch) * self.batch_size)


class ActivationProvider(_Batching):
    """Shuffled batches from an :class:`ActivationStore`.

    Each epoch draws a permutation of all stored tokens from ``(seed, epoch)`` and reads
    it ``buffer_tokens`` rows at a time (random access across shards), so memory stays at
    about ``buffer_tokens * n_snapshots * d_in`` floats (twice that with ``prefetch``)
    plus 8 bytes per token for the permutation.

    Args:
        store: the activation store.
        hook: which stored hook; None for the store's only hook.
        batch_size: tokens per batch.
        seed: shuffling seed; same seed, same batches.
        buffer_tokens: rows read per gather (rounded to whole batches).
        normalize: scale each snapshot to mean norm sqrt(d_in) (``store.norm_factors``).
        drop_last: drop each epoch's final partial batch (else it is served, smaller).
        n_epochs: epochs to serve; None repeats forever.
        start_batch: index of the first batch to serve (to resume training at batch k).
        device: where batches are put.
        prefetch: read the next buffer in a background thread while batches are consumed.
    """

    def __init__(
        self,
        store: ActivationStore,
        hook: str | None = None,
        batch_size: int = 1024,
        *,
        seed: int = 0,
        buffer_tokens: int = 1 << 15,
        normalize: bool = True,
        drop_last: bool = False,
        n_epochs: int | None = None,
        start_batch: int = 0,
        device: str | torch.device = "cpu",
        prefetch: bool = True,
    ) -> None:
        _Batching.__init__(self, batch_size, seed, normalize, drop_last, n_epochs, start_batch, device)
        check_store_given(store, "ActivationProvider", needs="resolve_hook")
        hook = store.resolve_hook(hook)
        _check_one_batch(store.n_tokens, batch_size, drop_last)
        self.store = store
        self.hook = hook
        self.buffer_rows = max(1, buffer_tokens // batch_size) * batch_size
        self.prefetch = prefetch

    @property
    def n_snapshots(self) -> int:
        return self.store.n_snapshots

    @property
    def d_in(self) -> int:
        return self.store.d_in_of(self.hook)

    @property
    def norm_factors(self) -> Float[torch.Tensor, " n_snapshots"]:
        """Factors applied when ``normalize`` (fold them into a crosscoder with its folding method)."""
        return self.store.norm_factors(self.hook)

    @property
    def batches_per_epoch(self) -> int:
        n = self.store.n_tokens
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch_order(self, epoch: int) -> Int[np.ndarray, " n_tokens"]:
        """Store indices of all tokens in the order epoch ``epoch`` serves them."""
        return epoch_rng(self.seed, epoch).permutation(self.store.n_tokens)

    def __iter__(self) -> Iterator[Float[torch.Tensor, "batch n_snapshots d_in"]]:
        return self.batches(self.start_batch)

    def batches(
        self, start: int = 0, stop: int | None = None
    ) -> Iterator[Float[torch.Tensor, "batch n_snapshots d_in"]]:
        """Batches ``start`` to ``stop`` (counting from the first batch of epoch 0; ``stop`` None:
        to the end of the last epoch); nothing past ``stop`` is read."""
        epoch, first = self._first_batch(start, stop)
        executor = ThreadPoolExecutor(max_workers=1) if self.prefetch else None
        try:
            while self._serves_epoch(epoch, stop):
                order = self.epoch_order(epoch)
                served = self.batches_per_epoch * self.batch_size if self.drop_last else order.size
                end = self._epoch_end(epoch, stop, served)
                windows = [
                    order[lo : min(lo + self.buffer_rows, end)]
                    for lo in range(first * self.batch_size, end, self.buffer_rows)
                ]
                pending = self._submit(executor, windows[0]) if windows else None
                for i in range(len(windows)):
                    buffer_BSD = pending.result() if executor else pending
                    pending = self._submit(executor, windows[i + 1]) if i + 1 < len(windows) else None
                    for lo in range(0, buffer_BSD.shape[0], self.batch_size):
                        yield buffer_BSD[lo : lo + self.batch_size].to(self.device)
                epoch, first = epoch + 1, 0
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)

    def _submit(self, executor: ThreadPoolExecutor | None, window: np.ndarray) -> Any:
        if executor is None:
            return self.store.read(self.hook, window, normalize=self.normalize)
        return executor.submit(self.store.read, self.hook, window, normalize=self.normalize)


class OnTheFlyProvider(_Batching):
    """Shuffled batches harvested into memory as they are needed, nothing written to disk.

    Each epoch permutes the sequences (seeded), takes them ``chunk_seqs`` at a time,
    harvests a chunk at every snapshot (one model resident at a time), shuffles the
    chunk's tokens and serves them. Every snapshot is therefore reloaded once per chunk:
    this pays off only for small suites, or when there is no disk for a store. The shuffle
    mixes tokens within a chunk only (sequences are shuffled across the epoch).

    Normalisation factors are measured on the first chunk of epoch 0 unless given.
    Arguments as :class:`ActivationProvider`, plus the suite, hook and token table, the
    exclusions of :func:`harvest_activations`, ``harvest_batch_size`` (sequences per
    forward pass), and ``identities``: each snapshot's file identity where the caller has read
    them already (:func:`suite_identities`), else read as the first model loads.
    """

    def __init__(
        self,
        suite: CheckpointSuite,
        hook: str,
        token_ids_NL: Int[torch.Tensor, "n_seqs seq_len"],
        batch_size: int = 1024,
        *,
        seed: int = 0,
        chunk_seqs: int = 256,
        exclude_bos: bool = True,
        exclude_token_ids: Sequence[int] | None = None,
        normalize: bool = True,
        norm_factors: Sequence[float] | torch.Tensor | None = None,
        drop_last: bool = False,
        n_epochs: int | None = None,
        start_batch: int = 0,
        device: str | torch.device = "cpu",
        model_device: str | torch.device = "cpu",
        harvest_batch_size: int = HARVEST_BATCH_SEQS,
        identities: Sequence[dict | None] | None = None,
    ) -> None:
        _Batching.__init__(self, batch_size, seed, normalize, drop_last, n_epochs, start_batch, device)
        if chunk_seqs < 1:
            raise ValueError(f"chunk_seqs={chunk_seqs} must be >= 1.")
        if token_ids_NL.ndim != 2:
            raise ValueError(f"token_ids_NL must be [n_seqs, seq_len], got shape {tuple(token_ids_NL.shape)}.")
        self.suite = suite
        self.hook = hook
        self.token_ids_NL = token_ids_NL.detach().cpu().long()
        self._tokenizer = suite.tokenizer()
        self._per_model_tokenizer = check_suite(suite)
        _, self.keep_NL = kept_tokens(self._tokenizer, self.token_ids_NL, exclude_bos, exclude_token_ids)
        self.n_tokens = int(torch.count_nonzero(self.keep_NL))  # no int64 copy of the mask
        _check_one_batch(self.n_tokens, batch_size, drop_last)
        self.chunk_seqs = chunk_seqs
        self.model_device = model_device
        self.harvest_batch_size = harvest_batch_size
        self._norm_factors = None if norm_factors is None else torch.as_tensor(norm_factors, dtype=torch.float32)
        if self._norm_factors is not None and (
            self._norm_factors.ndim != 1
            or not bool((torch.isfinite(self._norm_factors) & (self._norm_factors > 0)).all())
        ):
            raise ValueError(f"norm_factors must be one finite positive number per snapshot, got {norm_factors}.")
        if self._norm_factors is not None and len(self._norm_factors) != self.n_snapshots:  # not broadcast
            raise ValueError(
                f"norm_factors holds {len(self._norm_factors)} numbers for {self.n_snapshots} snapshots; "
                "pass one per snapshot served."
            )
        self._largest_id = largest_token_id(self.token_ids_NL)  # checked against each snapshot's vocabulary
        self._cached_chunk: tuple[tuple[int, int], torch.Tensor] | None = None
        self._d_in: int | None = None
        stop_at_layer = stop_layer_for([hook])
        self.first_n_layers = None if stop_at_layer is None else max(1, stop_at_layer)
        """Blocks a snapshot needs to reach the hook (None: all); loads keep only these
        once a snapshot's full weights hash is known (``CheckpointSuite.load``)."""
        self._snapshot_identities: list[dict | None] | None = None if identities is None else list(identities)

    def _identities(self) -> list[dict | None]:
        """Each snapshot's file identity, read once (refuses byte-identical snapshots)."""
        if self._snapshot_identities is None:
            self._snapshot_identities = suite_identities(self.suite)
        return self._snapshot_identities

    @property
    def n_snapshots(self) -> int:
        return len(self.suite)

    @property
    def d_in(self) -> int:
        """Width of the hook's activations (harvests the first chunk if nothing ran yet)."""
        if self._d_in is None:
            self._d_in = int(self._chunk(0, 0).shape[-1])
        return self._d_in

    @property
    def batches_per_epoch(self) -> int:
        return self.n_tokens // self.batch_size if self.drop_last else math.ceil(self.n_tokens / self.batch_size)

    @property
    def norm_factors(self) -> Float[torch.Tensor, " n_snapshots"]:
        """sqrt(d_in) / mean norm per snapshot served, measured unless given."""
        if self._norm_factors is None:
            self._norm_factors = self._measured_norm_factors()
        return self._norm_factors

    def _measured_norm_factors(self) -> Float[torch.Tensor, " n_snapshots"]:
        """sqrt(d_in) / mean norm per snapshot, measured on the first chunk of epoch 0."""
        return norm_factors_of(self._chunk(0, 0))

    _epoch_chunks: tuple[int, list[np.ndarray]] | None = None

    def _chunks(self, epoch: int) -> list[np.ndarray]:
        """The epoch's chunks of sequence indices, drawn once an epoch: the stream asks once a
        chunk, and an epoch of Ge et al.'s table has 12,207."""
        cached = self._epoch_chunks  # read once: a prefetch thread may put another epoch's there
        if cached is None or cached[0] != epoch:
            cached = self._epoch_chunks = (epoch, self._draw_chunks(epoch))
        return cached[1]

    def _draw_chunks(self, epoch: int) -> list[np.ndarray]:
        seq_order = epoch_rng(self.seed, epoch).permutation(self.token_ids_NL.shape[0])
        return [seq_order[lo : lo + self.chunk_seqs] for lo in range(0, seq_order.size, self.chunk_seqs)]

    def _chunk(self, epoch: int, index: int) -> Float[torch.Tensor, "n n_snapshots d_in"]:
        """Raw (unnormalised) activations of chunk ``index`` of ``epoch``, in serving order."""
        if self._cached_chunk is not None and self._cached_chunk[0] == (epoch, index):
            return self._cached_chunk[1]
        seqs = torch.from_numpy(self._chunks(epoch)[index])
        tokens, keep = self.token_ids_NL[seqs], self.keep_NL[seqs]
        per_snapshot = []
        for s, ref in enumerate(self.suite.snapshots):
            reference = self._tokenizer if self._per_model_tokenizer else None
            _, model = load_snapshot(
                self.suite,
                ref,
                device=self.model_device,
                reference_tokenizer=reference,
                first_n_layers=self.first_n_layers,
                identity=self._identities()[s],
            )
            try:
                check_tokens_fit(model, ref.revision, self._largest_id, self.token_ids_NL.shape[1])
                rows = harvest_rows(model, tokens, keep, [self.hook], batch_size=self.harvest_batch_size)
            finally:
                release_model(model)
            per_snapshot.append(rows[self.hook])
        acts_NSD = torch.stack(per_snapshot, dim=1)
        self._d_in = int(acts_NSD.shape[-1])
        shuffle = epoch_rng(self.seed, epoch, index + 1).permutation(acts_NSD.shape[0])
        acts_NSD = acts_NSD[torch.from_numpy(shuffle)]
        self._cached_chunk = ((epoch, index), acts_NSD)
        return acts_NSD

    def _prefetch(self, epoch: int, index: int) -> None:
        """Start on chunk ``index`` of ``epoch`` ahead of its turn (here: nothing; each
        chunk reloads every snapshot, so it is harvested when it is served)."""

    def _cut(
        self, acts_NSD: torch.Tensor, carry: torch.Tensor | None, factors: torch.Tensor | None
    ) -> Generator[torch.Tensor, None, torch.Tensor | None]:
        """Yield the whole batches of ``carry`` followed by ``acts_NSD``, each scaled by ``factors``
        (on the chunk's device) in float32 as it is cut (the chunk itself stays in its own
        dtype); return what is left."""

        def scaled(part: torch.Tensor) -> torch.Tensor:
            part = part.float()
            return part * factors if factors is not None else part

        lo = 0
        if carry is not None:
            lo = self.batch_size - carry.shape[0]
            carry = torch.cat([carry, scaled(acts_NSD[:lo])])
            if carry.shape[0] < self.batch_size:
                return carry
            yield carry.to(self.device)
        n_full = lo + (acts_NSD.shape[0] - lo) // self.batch_size * self.batch_size
        for start in range(lo, n_full, self.batch_size):
            yield scaled(acts_NSD[start : start + self.batch_size]).to(self.device)
        return scaled(acts_NSD[n_full:]) if n_full < acts_NSD.shape[0] else None

    def __iter__(self) -> Iterator[Float[torch.Tensor, "batch n_snapshots d_in"]]:
        return self.batches(self.start_batch)

    def batches(
        self, start: int = 0, stop: int | None = None
    ) -> Iterator[Float[torch.Tensor, "batch n_snapshots d_in"]]:
        """Float32 batches ``start`` to ``stop`` (None: to the end of the last epoch); chunks
        before ``start`` are never harvested, nor those after ``stop`` prefetched."""
        # measured (a harvest of its own) before any chunk is prefetched
        factors = self.norm_factors[None, :, None] if self.normalize else None
        kept_per_seq = self.keep_NL.sum(dim=1).numpy()
        epoch, first = self._first_batch(start, stop)
        served = self.batches_per_epoch * self.batch_size if self.drop_last else self.n_tokens
        while self._serves_epoch(epoch, stop):
            chunks = self._chunks(epoch)
            chunk_ends = np.cumsum([kept_per_seq[c].sum() for c in chunks])
            end = self._epoch_end(epoch, stop, served)
            position = first * self.batch_size  # in the epoch's token stream
            carry: torch.Tensor | None = None
            for index in range(int(np.searchsorted(chunk_ends, position, side="right")), len(chunks)):
                if position >= end:
                    break
                chunk_start = int(chunk_ends[index - 1]) if index else 0
                acts_NSD = self._chunk(epoch, index)[position - chunk_start : end - chunk_start]
                position += acts_NSD.shape[0]
                if position < end:
                    self._prefetch(epoch, index + 1)
                elif self._serves_epoch(epoch + 1, stop):
                    self._prefetch(epoch + 1, 0)
                if factors is not None:  # copied to the chunks' device once (then .to returns it as it is): a
                    # copy from host memory per batch would wait for the device's queued work each time
                    factors = factors.to(acts_NSD.device)
                carry = yield from self._cut(acts_NSD, carry, factors)
            if carry is not None:  # only when not drop_last: the epoch's last, smaller batch
                yield carry.to(self.device)
            epoch, first = epoch + 1, 0
