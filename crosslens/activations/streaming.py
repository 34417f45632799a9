"""Training batches straight from resident snapshot models: no activation store on disk.

A disk store costs ``tokens x snapshots x d_in`` values (about 40 TB for Ge et al.'s
Pythia-160M recipe in fp16). :class:`ResidentSnapshotProvider` instead keeps a block of
snapshot models in memory for the whole run, runs each only up to the hook on the same
token chunk, and serves shuffled ``[batch, |block|, d_in]`` batches from an in-memory
buffer. Under a ``(data, snapshot)`` mesh each rank keeps only its snapshots' models
(``snapshots=layout.snapshots``), every rank of a snapshot group reads the same tokens
(the sequence order is seeded and shared), and the data axis splits each chunk's
sequences (``data_rank``/``data_size``).

It is :class:`~crosslens.activations.provider.OnTheFlyProvider` with the reloads taken
out: the models are loaded once, checked to fit first, and never freed until
:meth:`close`. Batches, resume (``start_batch``) and the shuffle behave the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

from crosslens.activations.budget import chunk_buffer_bytes
from crosslens.activations.forward import harvest_rows, keep_first_blocks, kept_index
from crosslens.activations.provider import OnTheFlyProvider, epoch_rng, norm_factors_of
from crosslens.activations.snapshots import check_tokens_fit, load_snapshot
from crosslens.core.devices import RESIDENT_MEMORY_FRACTION, as_dtype, available_memory, release_model
from crosslens.core.hooks import hook_width

CALIBRATION_SEQS = 64
"""Sequences (the same on every rank) that the normalisation factors are measured on."""


class ModelsDoNotFitError(MemoryError):
    """The resident snapshot models would not fit in the memory available for them."""


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


class ResidentSnapshotProvider(OnTheFlyProvider):
    """Shuffled ``[batch, |snapshots|, d_in]`` batches from resident snapshot models.

    The chunk being served is a buffer on the training device (``device``) in
    ``buffer_dtype``: the models' rows go there directly, already in serving order, and are
    scaled to float32 one batch at a time. With ``prefetch`` a background thread harvests
    the next chunk while the current one is served (on CUDA, on its own stream, so its
    kernels queue beside the trainer's instead of waiting for the Python that launches them).

    Args (beyond :class:`OnTheFlyProvider`'s, which come first):
        snapshots: suite indices of the snapshots this process keeps and serves (default all).
        data_rank, data_size: this process's share of each chunk's sequences (sequence j
            of a chunk goes to data rank ``j % data_size``). Every data rank serves the same
            number of tokens each epoch (:attr:`n_tokens`): where rows keep different numbers of
            tokens, a few of a rank's last tokens in an epoch may go unserved.
        model_dtype: dtype the models run in, or its name (bfloat16/float16 halve their
            memory); activations are served as float32.
        buffer_dtype: dtype of the chunk buffer (default ``model_dtype``: the rows exactly as
            the models give them, in half the memory of float32 for half-precision models).
        prefetch: harvest the next chunk in a background thread while this one is served.
        compile: run the models' forward under ``torch.compile`` (None: on CUDA only).
        memory_fraction: share of the free memory on ``model_device`` the models may take.
    """

    def __init__(
        self,
        *args: Any,
        snapshots: Sequence[int] | None = None,
        data_rank: int = 0,
        data_size: int = 1,
        model_dtype: torch.dtype | str = torch.float32,
        buffer_dtype: torch.dtype | str | None = None,
        memory_fraction: float = RESIDENT_MEMORY_FRACTION,
        prefetch: bool = True,
        compile: bool | None = None,
        **kwargs: Any,
    ) -> None:
        # the snapshots served are known before the base class checks what it is given against them
        n_all = len(args[0] if args else kwargs["suite"])
        self.snapshot_indices = list(range(n_all) if snapshots is None else snapshots)
        if not self.snapshot_indices or not all(0 <= s < n_all for s in self.snapshot_indices):
            raise ValueError(f"snapshots must be indices of the suite's {n_all} snapshots, got {snapshots}.")
        if len(set(self.snapshot_indices)) != len(self.snapshot_indices):
            raise ValueError(f"snapshots must name each snapshot once, got {snapshots}.")
        super().__init__(*args, **kwargs)
        batch_size = self.batch_size
        model_dtype, buffer_dtype = as_dtype(model_dtype), None if buffer_dtype is None else as_dtype(buffer_dtype)
        if not 0 <= data_rank < data_size:
            raise ValueError(f"data_rank={data_rank} must be in [0, data_size={data_size}).")
        if not 0 < memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}.")
        self.data_rank, self.data_size = data_rank, data_size
        self.model_dtype = model_dtype
        self.buffer_dtype = model_dtype if buffer_dtype is None else buffer_dtype
        self.memory_fraction = memory_fraction
        self.prefetch, self.compile = prefetch, compile
        self._pending: tuple[tuple[int, int], Future] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stream: Any = None
        self._models: list[Any] | None = None
        self.provenance: list[dict] = []
        self.n_tokens = self._count_rank_tokens()
        if self.n_tokens == 0 or (self.drop_last and self.n_tokens < batch_size):
            raise ValueError(
                f"data rank {data_rank} of {data_size} gets {self.n_tokens} tokens, fewer than "
                f"one batch of {batch_size}; use more text or a smaller --batch-size."
            )

    # ------------------------------------------------------------------ models
    @property
    def n_snapshots(self) -> int:
        return len(self.snapshot_indices)

    def models(self) -> list[Any]:
        """The resident models, loaded on first use after checking that they fit (a chunk
        being harvested in the background is waited for: the caller may run them)."""
        self._drop_pending()
        return self._resident_models()

    def _resident_models(self) -> list[Any]:
        if self._models is None:
            self._models = self._load_models()
        return self._models

    def _load_models(self) -> list[Any]:
        device = torch.device(self.model_device)
        refs = [self.suite.snapshots[s] for s in self.snapshot_indices]
        reference = self._tokenizer if self._per_model_tokenizer else None
        models = []
        try:
            for i, ref in enumerate(refs):
                identity = self._identities()[self.snapshot_indices[i]]
                record, model = load_snapshot(
                    self.suite,
                    ref,
                    device=device,
                    reference_tokenizer=reference,
                    first_n_layers=self.first_n_layers,
                    identity=identity,
                )
                check_tokens_fit(model, ref.revision, self._largest_id, self.token_ids_NL.shape[1])
                # resident for the whole run: blocks past the hook would only hold memory
                model = keep_first_blocks(model, self.first_n_layers).to(self.model_dtype, print_details=False)
                if i == 0:
                    d_in = hook_width(self.hook, model.cfg.d_model, model.cfg.d_mlp or model.cfg.d_model)
                    self._check_fits(model_bytes(model), d_in, device)
                # the files' identity, as a store's manifest records it: weights_sha256 hashes the
                # weights in the dtype they loaded in, so a store of another dtype is matched by this
                self.provenance.append({**record, "source": identity})
                models.append(model)
        except BaseException:
            for model in models:
                release_model(model)
            raise
        return models

    def _check_fits(self, one_model: int, d_in: int, device: torch.device) -> None:
        """Refuse, as the first model loads, models and chunk buffers that would not fit."""
        free = available_memory(device)
        if free is None:
            return
        n_models = self.n_snapshots
        # a chunk holds at most chunk_seqs whole sequences of this rank at every held snapshot;
        # with prefetch the next one fills while this one is served
        n_chunks = 2 if self.prefetch else 1
        rows = self.chunk_seqs * self.token_ids_NL.shape[1]
        chunks = chunk_buffer_bytes(rows, n_models, d_in, self.buffer_dtype.itemsize, n_chunks)
        shared = torch.device(self.device).type == device.type
        # the first model is already resident, so it counts against what is left
        budget = int((free + one_model) * self.memory_fraction)
        needed = one_model * n_models + (chunks if shared else 0)
        if needed > budget:
            counted = f"{n_models} resident snapshot models need {_gib(one_model * n_models)}"
            if shared:
                counted += f" and their {n_chunks} chunk buffer(s) of {rows:,} tokens {_gib(chunks)}"
            raise ModelsDoNotFitError(
                f"{counted} on {device}, but about {_gib(budget)} is free for them; hold fewer "
                "snapshots per process (--snapshot-parallel), run them in bfloat16 (--dtype "
                "bfloat16), use smaller chunks (chunk_seqs), or harvest a disk store instead "
                "(crosslens harvest)."
            )

    def close(self) -> None:
        """Free the resident models (and stop the background harvest)."""
        self._drop_pending()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for model in self._models or []:
            release_model(model)
        self._models = None

    # ------------------------------------------------------------------ tokens
    def _draw_chunks(self, epoch: int) -> list[np.ndarray]:
        # every rank draws the same sequence order; data rank d takes every d-th sequence
        seq_order = epoch_rng(self.seed, epoch).permutation(self.token_ids_NL.shape[0])
        chunk = self.chunk_seqs * self.data_size
        return [seq_order[lo : lo + chunk][self.data_rank :: self.data_size] for lo in range(0, seq_order.size, chunk)]

    def _count_rank_tokens(self) -> int:
        """Tokens every data rank serves each epoch: what the fewest sequences a rank takes (a
        count fixed by the chunking, whatever the epoch's order) hold at the least, the shortest
        rows'. Rows keep different numbers of tokens, so a rank's share holds another count each
        epoch; served so, every rank gives as many batches of the same sizes in every epoch (on a
        mesh each step takes one from each). One process takes every sequence: every token."""
        full, rest = divmod(self.token_ids_NL.shape[0], self.chunk_seqs * self.data_size)
        fewest = full * self.chunk_seqs + len(range(self.data_size - 1, rest, self.data_size))
        kept_N = self.keep_NL.sum(dim=1)
        return int(kept_N.sort().values[:fewest].sum())

    def _measured_norm_factors(self) -> Float[torch.Tensor, " n_snapshots"]:
        """sqrt(d_in) / mean norm per held snapshot, measured on the first
        ``CALIBRATION_SEQS`` sequences (the same tokens on every rank)."""
        seqs = torch.arange(min(CALIBRATION_SEQS, self.token_ids_NL.shape[0]))
        return norm_factors_of(self._harvest(seqs)).cpu()

    def _harvest(
        self, seqs: torch.Tensor, order: torch.Tensor | None = None
    ) -> Float[torch.Tensor, "n n_snapshots d_in"]:
        """The kept rows of ``seqs`` at every held snapshot, as one buffer on ``device`` in
        ``buffer_dtype``; with ``order``, row i of the buffer is harvested row ``order[i]``."""
        models = self._resident_models()
        # one copy of the tokens, the kept rows' indices and the order to the devices for every
        # snapshot's forward
        model_device = models[0].cfg.device
        tokens, keep = self.token_ids_NL[seqs].to(model_device), self.keep_NL[seqs]
        kept = kept_index(keep, self.harvest_batch_size, model_device)
        order = None if order is None else order.to(self.device)
        buffer_NSD: torch.Tensor | None = None
        for s, model in enumerate(models):
            rows_ND = harvest_rows(
                model,
                tokens,
                keep,
                [self.hook],
                batch_size=self.harvest_batch_size,
                out_device=self.device,
                out_dtype=self.buffer_dtype,
                compile=self.compile,
                kept=kept,
            )[self.hook]
            if buffer_NSD is None:
                shape = (rows_ND.shape[0], self.n_snapshots, rows_ND.shape[1])
                buffer_NSD = torch.empty(shape, device=self.device, dtype=self.buffer_dtype)
            buffer_NSD[:, s] = rows_ND if order is None else rows_ND.index_select(0, order)
        self._d_in = int(buffer_NSD.shape[-1])
        return buffer_NSD

    def _serving_order(self, epoch: int, index: int, n_rows: int) -> torch.Tensor:
        return torch.from_numpy(epoch_rng(self.seed, epoch, index + 1, self.data_rank).permutation(n_rows))

    def _chunk(self, epoch: int, index: int) -> Float[torch.Tensor, "n n_snapshots d_in"]:
        """Raw activations of chunk ``index`` of ``epoch`` for this rank, in serving order."""
        key = (epoch, index)
        if self._cached_chunk is not None and self._cached_chunk[0] == key:
            return self._cached_chunk[1]
        self._cached_chunk = None  # the served chunk goes before the next is built
        acts_NSD = self._take_pending(key)
        if acts_NSD is None:
            acts_NSD = self._build_chunk(epoch, index)
        self._cached_chunk = (key, acts_NSD)
        return acts_NSD

    def _build_chunk(self, epoch: int, index: int) -> Float[torch.Tensor, "n n_snapshots d_in"]:
        seqs = torch.from_numpy(self._chunks(epoch)[index])
        return self._harvest(seqs, self._serving_order(epoch, index, int(self.keep_NL[seqs].sum())))

    # ------------------------------------------------------------------ prefetch
    def _prefetch(self, epoch: int, index: int) -> None:
        """Harvest chunk ``index`` of ``epoch`` in the background while the current one is served."""
        if not self.prefetch:
            return
        if self._pending is not None and self._pending[0] == (epoch, index):
            return
        self._drop_pending()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crosslens-prefetch")
        self._pending = ((epoch, index), self._executor.submit(self._build_aside, epoch, index))

    def _build_aside(self, epoch: int, index: int) -> tuple[torch.Tensor, Any]:
        """Build a chunk in the background thread; on CUDA on a side stream, with the event
        that marks it finished."""
        if self.device.type != "cuda":
            return self._build_chunk(epoch, index), None
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._stream):
            acts_NSD = self._build_chunk(epoch, index)
            done = torch.cuda.Event()
            done.record(self._stream)
        return acts_NSD, done

    def _take_pending(self, key: tuple[int, int]) -> torch.Tensor | None:
        """The background chunk ``key`` once ready (None when another chunk, or none, is pending)."""
        if self._pending is None or self._pending[0] != key:
            self._drop_pending()
            return None
        future, self._pending = self._pending[1], None
        acts_NSD, done = future.result()  # re-raises what failed in the background
        if done is not None:  # the serving stream waits for the side stream's kernels, and the
            consumer = torch.cuda.current_stream(self.device)  # allocator for the serving stream's
            consumer.wait_event(done)
            acts_NSD.record_stream(consumer)  # use before it reuses the memory
        return acts_NSD

    def _drop_pending(self) -> None:
        """Wait for a background harvest and discard it (its chunk is not the one wanted)."""
        if self._pending is not None:
            future, self._pending = self._pending[1], None
            if not future.cancel():  # already running: wait for it; its result (or failure) is unwanted
                future.exception()

    def chunk_positions(self, epoch: int, index: int) -> Int[torch.Tensor, "n 2"]:
        """``(sequence, position)`` of each row of :meth:`_chunk`, in serving order
        (matches ``ActivationStore.positions`` for the same token table)."""
        seqs = torch.from_numpy(self._chunks(epoch)[index])
        rows, cols = torch.nonzero(self.keep_NL[seqs], as_tuple=True)
        positions = torch.stack([seqs[rows], cols], dim=1)
        return positions[self._serving_order(epoch, index, positions.shape[0])]


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"
