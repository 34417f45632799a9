"""A model-agnostic crosscoder trainer: batches of ``[batch, n_snapshots, d_in]`` in,
trained crosscoder out.

Why not SAELens's ``SAETrainer`` itself? It does train these crosscoders (the
architectures are registered, and its step only needs ``training_forward_pass``), but
several of its parts assume one activation vector per token or do not fit this
project: a single Adam param group (the JumpReLU threshold needs 0.1x the learning
rate), checkpoints by sample count without RNG or data position (no exact resume),
dead features counted in steps, a hard-coded gradient clip, explained variance pooled
over snapshots, and W&B set up by its runner. So this is a lean trainer that reuses
SAELens's pieces where they fit: ``get_lr_scheduler`` (warm-up, main schedule, linear
decay), ``CoefficientScheduler`` (sparsity-coefficient warm-up from the crosscoder's
``get_coefficients()``), ``TrainStepInput``/``TrainStepOutput`` and the crosscoder's
``training_forward_pass``, and SAELens's save layout for checkpoints.

Data contract. ``fit(batches)`` takes either an iterable of batches or a factory
``make_batches(start_step) -> Iterator`` that yields the batches from step
``start_step`` on. Resuming from step k calls the factory with k; a plain iterable is
read from its start and its first k batches are skipped. Either way a resumed run sees
the same batches as an uninterrupted one, and, with optimizer, schedulers, RNG states
and feature statistics restored from the checkpoint, ends at the same weights.

Checkpoint layout (``checkpoint_dir/step_00000100/``): ``cfg.json`` and
``sae_weights.safetensors`` of the training crosscoder (SAELens's ``save_model``) plus
``trainer_state.pt``. ``checkpoint_dir/final/`` holds the inference crosscoder
(``save_inference_model``), loadable with ``SAE.load_from_disk``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import TrainCoefficientConfig, TrainingSAE, TrainingSAEConfig, TrainStepOutput
from sae_lens.training.optim import CoefficientScheduler, get_lr_scheduler

from crosslens.core.errors import storage_errors
from crosslens.core.metadata import CFG_NAME, WEIGHTS_NAME
from crosslens.core.paths import FINAL_DIRNAME, TRAINER_STATE_FILENAME, checkpoint_dirname
from crosslens.core.progress import progress_bar
from crosslens.core.seeding import seed_everything
from crosslens.core.tensors import HostListing, row_counts
from crosslens.crosscoders.base import CrosscoderStepInput, CrosscoderTrainingMixin, set_crosscoder_metadata
from crosslens.crosscoders.collectives import LocalCollectives
from crosslens.distributed.mesh import MeshLayout, local_layout
from crosslens.distributed.sharding import (
    full_crosscoder,
    gather_optimizer_state,
    parameter_names,
    read_state_block,
    reduce_gradients,
    shard_crosscoder,
    slice_optimizer_state,
)
from crosslens.kernels.plan import KernelPlan
from crosslens.training.checks import check_activation_scale
from crosslens.training.config import DEAD_FEATURE_WINDOW_TOKENS, CrosscoderTrainerConfig, dead_feature_window
from crosslens.training.factory import fill_sparsity_warm_up
from crosslens.training.guard import check_finite_step
from crosslens.training.memory import checkpoint_bytes
from crosslens.training.micro import micro_batched_pass
from crosslens.training.optim import clipped_step, load_optimizer_state, make_optimizer, step_weights_for
from crosslens.training.resample import (
    clear_adam_rows,
    resample_latents,
    resample_steps,
    silent_latents,
    token_draw_generator,
)
from crosslens.training.run_log import RunLog
from crosslens.training.trainer_state import restore_trainer_state, saved_config, trainer_state
from crosslens.training.wandb_log import histograms, log_model_artifact, start_wandb, step_log

Batch = Float[torch.Tensor, "batch n_snapshots d_in"]
BatchSource = Iterable[Batch] | Callable[[int], Iterator[Batch]]
Mesh = tuple[MeshLayout, LocalCollectives]
"""Where a trainer sits in a ``(data, snapshot)`` mesh (``crosslens.distributed.init_mesh``)."""


@dataclass(frozen=True)
class DeadAhead:
    """A step's dead features, counted during the step before, and their listing
    (:class:`HostListing`) started there."""

    step: int
    """The step they are for."""
    counts_F: Int[torch.Tensor, " d_sae"]
    """The ``tokens_since_fired`` tensor they were counted from."""
    version: int
    """Its in-place version then: any write since, a caller's included, makes them stale."""
    window: int
    """The dead-feature window they were counted with."""
    rows: HostListing
    """The listing of the dead features (its ``mask``)."""

    @property
    def dead_F(self) -> Bool[torch.Tensor, " d_sae"]:
        return self.rows.mask

    def holds(self, step: int, counts_F: torch.Tensor, window: int) -> bool:
        """Whether they are still the dead features of ``step``, counted from ``counts_F`` as it
        stands, with ``window``."""
        return (
            (step, window) == (self.step, self.window)
            and counts_F is self.counts_F
            and counts_F._version == self.version
        )


class CrosscoderTrainer:
    """Trains any registered crosscoder training class on ``[batch, S, d_in]`` batches.

    With ``mesh`` (from ``crosslens.distributed.init_mesh``, one trainer per ``torchrun``
    process) the trainer keeps only its rank's block of snapshots of ``sae`` and trains
    on its rank's part of each batch: ``[batch / data_size, |S_r|, d_in]`` (see
    ``crosslens.distributed.shard_batches``). Every rank must be given the same full
    ``sae`` (same seed); the result equals the single-process run's. Checkpoints and the
    final crosscoder are gathered and written by rank 0 in the single-process layout.

    Settings left None in ``cfg`` (learning rate, resampling), and the sparsity warm-up where
    ``sae``'s config leaves it None, take the defaults of ``sae``'s architecture
    (:mod:`crosslens.architectures`), as ``crosslens train`` gives them; the warm-up is written
    into ``sae.cfg``, so its checkpoints record it.
    """

    def __init__(
        self,
        sae: TrainingSAE[Any],
        cfg: CrosscoderTrainerConfig,
        *,
        mesh: Mesh | None = None,
        plan: KernelPlan | None = None,
    ):
        if not isinstance(sae, CrosscoderTrainingMixin):
            raise TypeError(
                f"CrosscoderTrainer trains crosscoder training classes, got "
                f"{type(sae).__name__}; build one from crosslens.crosscoders (e.g. "
                "ReLUTrainingCrosscoder) or use SAELens's SAETrainer for plain SAEs."
            )
        cfg = cfg.for_architecture(sae.cfg.architecture())
        assert cfg.lr is not None and cfg.lr_end is not None and cfg.resample_dead is not None
        fill_sparsity_warm_up(sae.cfg, cfg.total_steps)
        self.layout, self.collectives = mesh or local_layout(sae.cfg.n_snapshots)
        # sliced where it stands, then moved: a mesh rank's GPU holds its block, not the whole
        self.sae = shard_crosscoder(sae, self.layout, self.collectives).to(cfg.device)
        self.cfg = cfg
        self.plan = plan if plan is not None else KernelPlan.resolve(cfg.device)
        """Which kernels the step and the optimizer run (:class:`KernelPlan`), handed to both."""
        self.sae.use_kernel_plan(self.plan)
        self.n_steps = 0
        self.n_tokens = 0
        self.wandb_run_id: str | None = None
        d_sae = sae.cfg.d_sae
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=cfg.device)
        self.window_fire_counts = torch.zeros(d_sae, dtype=torch.long, device=cfg.device)
        self.window_tokens = 0
        self.resample_at = resample_steps(cfg.total_steps, cfg.resample_dead)
        """Steps after which silent latents are resampled (:mod:`crosslens.training.resample`)."""
        self.resample_counts = torch.zeros(d_sae, dtype=torch.long, device=cfg.device)
        """Tokens each latent fired on since the last resampling, over ``resample_tokens``."""
        self.resample_tokens = 0
        self.resampled: dict[int, int] = {}
        """Latents resampled at each step where some were."""
        self.last_l0: torch.Tensor | float | None = None
        """Mean active features per token on the latest batch (recorded as the final l0)."""
        self.dead_ahead: DeadAhead | None = None
        """The next step's dead features, counted and their listing started before this step's
        backward was queued, where the crosscoder reads their indices (:meth:`_count_firing`);
        a step takes them only while they hold (:meth:`DeadAhead.holds`), else counts its own."""

        if cfg.optimizer_state_dtype != "float32" and self.collectives.is_distributed:
            raise ValueError(
                f"optimizer_state_dtype={cfg.optimizer_state_dtype!r} trains in one process only; "
                "on a mesh keep float32 Adam state (shard the snapshots over more ranks instead)."
            )
        self.step_weights = step_weights_for(cfg.optimizer_state_dtype, cfg.autocast_dtype, self.plan)
        """What the optimizer's pass writes for the next step: each step hands it to the crosscoder
        (:meth:`~crosslens.kernels.step_weights.StepWeights.reading`), whose kernels take what it holds
        by argument."""
        self.optimizer = make_optimizer(
            self.sae.optimizer_param_groups(cfg.lr),
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            state_dtype=cfg.optimizer_state_dtype,
            seed=cfg.seed,
            device=torch.device(cfg.device),
            plan=self.plan,
        )
        self.lr_scheduler = get_lr_scheduler(
            cfg.lr_scheduler_name,
            optimizer=self.optimizer,
            training_steps=cfg.total_steps,
            lr=cfg.lr,
            warm_up_steps=cfg.lr_warm_up_steps,
            decay_steps=cfg.lr_decay_steps,
            lr_end=cfg.lr_end,
            num_cycles=cfg.n_restart_cycles,
        )
        self.coefficient_schedulers: dict[str, CoefficientScheduler] = {}
        for name, coeff in self.sae.get_coefficients().items():
            if not isinstance(coeff, TrainCoefficientConfig):
                coeff = TrainCoefficientConfig(value=coeff, warm_up_steps=0)
            self.coefficient_schedulers[name] = CoefficientScheduler(
                warm_up_steps=coeff.warm_up_steps, final_value=coeff.value
            )

    # ---------------------------------------------------------------- stepping
    @property
    def coefficients(self) -> dict[str, float]:
        return {name: s.value for name, s in self.coefficient_schedulers.items()}

    @property
    def dead_features(self) -> torch.Tensor:
        return self.tokens_since_fired > self.dead_feature_window_tokens

    @property
    def dead_feature_window_tokens(self) -> int:
        return self._dead_window(self.n_steps, self.n_tokens)

    def _dead_window(self, n_steps: int, n_tokens: int) -> int:
        """The configured window, or the default for this run's tokens (its steps times the
        tokens each step has taken; before the first step nothing has been silent anyway)."""
        if self.cfg.dead_feature_window_tokens is not None:
            return self.cfg.dead_feature_window_tokens
        if n_steps == 0:
            return DEAD_FEATURE_WINDOW_TOKENS
        return dead_feature_window(self.cfg.total_steps * n_tokens // n_steps)

    @property
    def is_main(self) -> bool:
        """Rank 0 of a mesh (or a plain process): the one that logs and writes files."""
        return self.layout.is_main

    def step(self, batch: Batch) -> TrainStepOutput:
        """One optimizer step on one batch; advances the step and token counters."""
        check_batch(batch)
        x_BSD = batch.to(self.cfg.device)
        distributed = self.collectives.is_distributed
        if distributed and (x_BSD.ndim != 3 or x_BSD.shape[1] != self.sae.cfg.n_snapshots):
            raise ValueError(
                f"rank {self.layout.rank} holds snapshots {list(self.layout.snapshots)} and "
                f"needs batches shaped [batch, {self.sae.cfg.n_snapshots}, d_in], got "
                f"{tuple(x_BSD.shape)}; shard global batches with "
                "crosslens.distributed.shard_batches."
            )
        if self.n_steps == 0:  # raw activations silently break every default
            check_activation_scale(x_BSD, self.cfg.activation_scale_check)
        self.sae.train()

        def autocast() -> torch.autocast:
            return torch.autocast(x_BSD.device.type, torch.bfloat16, enabled=self.cfg.autocast_dtype == "bfloat16")

        # one step's settings, the same for each of its micro-batches
        coefficients, logging = self.coefficients, self._is_log_step(self.n_steps + 1)
        ahead, self.dead_ahead = self.dead_ahead, None
        if ahead is not None and ahead.holds(self.n_steps, self.tokens_since_fired, self.dead_feature_window_tokens):
            dead_F, dead_rows = ahead.dead_F, ahead.rows
        else:
            dead_F, dead_rows = self.dead_features, None

        def step_input(x: torch.Tensor) -> CrosscoderStepInput:
            return CrosscoderStepInput(
                sae_in=x,
                coefficients=coefficients,
                dead_neuron_mask=dead_F,
                n_training_steps=self.n_steps,
                is_logging_step=logging,
                dead_rows=dead_rows,
            )

        with self.step_weights.reading(self.sae):
            if self.cfg.micro_batches > 1:
                output = micro_batched_pass(self.sae, x_BSD, self.cfg.micro_batches, step_input, autocast)
                n_batch = self._count_firing(output.feature_acts)
            else:
                with autocast():
                    output = self.sae.training_forward_pass(step_input(x_BSD))
                n_batch = self._count_firing(output.feature_acts)
                output.loss.backward()
        reduce_gradients(self.sae, self.collectives)
        self.step_weights.keep(
            clipped_step(
                self.optimizer,
                self.sae,
                self.collectives,
                self.cfg.max_grad_norm,
                fused=self.cfg.fused_clip,
                writes=self.step_weights.writes(),
            )
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        for scheduler in self.coefficient_schedulers.values():
            scheduler.step()
        self.n_steps += 1
        self.n_tokens += n_batch
        if self.n_steps in self.resample_at:
            self._resample(x_BSD)
        # Stop at a non-finite loss, and before any checkpoint of non-finite weights.
        check_finite_step(self, output.loss)
        return output

    def _count_firing(self, feature_acts_NF: torch.Tensor) -> int:
        """Counts where each feature fired on the step's tokens, and returns the step's global
        token count. Called before the backward is queued: the next step's dead features are
        then known, and where the crosscoder reads their indices, their listing's copy
        (:class:`HostListing`) is queued ahead of this step's backward and optimizer, so that
        the next step reads it without waiting for the device to finish this one."""
        with torch.no_grad():
            n_local = feature_acts_NF.shape[0]
            n_batch = self.collectives.global_batch(n_local)
            fired_F = row_counts((feature_acts_NF != 0).T)  # tokens each feature fired on
            self.tokens_since_fired += n_batch
            # masked_fill_, not [mask] = 0: a boolean index lists the mask's entries, a device sync
            self.tokens_since_fired.masked_fill_(self.collectives.data_any(fired_F > 0), 0)
            fired_all_F = self.collectives.data_sum(fired_F)
            self.window_fire_counts += fired_all_F
            self.window_tokens += n_batch
            if self.resample_at:
                self.resample_counts += fired_all_F
                self.resample_tokens += n_batch
            self.last_l0 = fired_F.sum() / n_local  # a tensor: no device sync per step
            if self.sae.reads_dead_rows():
                window = self._dead_window(self.n_steps + 1, self.n_tokens + n_batch)
                counts_F = self.tokens_since_fired
                dead_F = counts_F > window
                self.dead_ahead = DeadAhead(
                    self.n_steps + 1, counts_F, counts_F._version, window, HostListing.start(dead_F)
                )
        return n_batch

    def _resample(self, x_BSD: torch.Tensor) -> None:
        """Resample the latents silent since the last time, from this step's batch."""
        silent_F = silent_latents(self.resample_counts, self.resample_tokens, self.cfg.resample_below_share)
        rate_F = self.resample_counts.double() / max(self.resample_tokens, 1)
        self.resample_counts.zero_()
        self.resample_tokens = 0
        if not bool(silent_F.any()):
            return
        generator = token_draw_generator(self.cfg.seed, self.n_steps)
        x_NSD = x_BSD.reshape(-1, *x_BSD.shape[-2:])
        idx_L = resample_latents(self.sae, x_NSD, silent_F, rate_F, generator, data_rank=self.layout.data_rank)
        clear_adam_rows(self.optimizer, self.sae.latent_rows(), idx_L)
        self.step_weights.keep(None)  # what the optimizer wrote predates the new rows
        self.resampled[self.n_steps] = len(idx_L)

    def fit(self, batches: BatchSource, *, resume_from: str | Path | None = None) -> TrainingSAE[Any]:
        """Train until ``cfg.total_steps``; with ``resume_from``, continue that checkpoint."""
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        elif self.n_steps == 0:
            seed_everything(self.cfg.seed)
        if not self.collectives.is_distributed:  # a mesh rank's provider serves its snapshot block alone
            record_provider(self.sae.cfg, batches)
        batch_iter = _open_batches(batches, self.n_steps)
        log_here = self.cfg.logger.log_to_wandb and self.is_main
        wandb_run, owns_run = start_wandb(self) if log_here else (None, False)
        if wandb_run is not None:  # also the caller's run: the crosscoder's metadata names it
            self.wandb_run_id = self.wandb_run_id or wandb_run.id
        pbar = progress_bar(
            total=self.cfg.total_steps, initial=self.n_steps, desc="Training crosscoder", show=self.is_main
        )
        run_log = RunLog.begin(
            self.cfg.log_path if self.is_main else None,
            step=self.n_steps,
            total_steps=self.cfg.total_steps,
            d_sae=int(self.sae.cfg.d_sae),
        )
        last_seconds, last_tokens = run_log.seconds(), self.n_tokens
        output = None
        try:
            while self.n_steps < self.cfg.total_steps:
                batch = next(batch_iter, None)
                if batch is None:
                    raise ValueError(
                        f"the batches ran out after {self.n_steps} of {self.cfg.total_steps} "
                        "steps; provide more batches or lower total_steps."
                    )
                output = self.step(batch)
                pbar.update(1)
                if self.collectives.is_distributed and self._shows_progress(self.n_steps):
                    # every rank holds a share of the loss and of each of its terms; all take part
                    names = list(output.losses)
                    loss, *terms = self.collectives.world_sum_floats(
                        [output.loss.item(), *(float(output.losses[name]) for name in names)]
                    )
                    output.loss = output.loss.new_tensor(loss)
                    output.losses = dict(zip(names, terms))
                if self._shows_progress(self.n_steps):  # a read of the device, once a log interval
                    loss, l0 = output.loss.item(), float(self.last_l0)
                    seconds = run_log.seconds()  # after the read: the step has finished
                    pbar.set_postfix(loss=f"{loss:.4g}", l0=f"{l0:.1f}")
                    self._log_step(run_log, loss, l0, seconds)
                    if wandb_run is not None:  # the run log's clock: both say the same tokens/s
                        rate = (self.n_tokens - last_tokens) / max(seconds - last_seconds, 1e-9)
                        self._log_to_wandb(wandb_run, output, rate)
                    last_seconds, last_tokens = seconds, self.n_tokens
                if self.cfg.checkpoint_every and self.n_steps % self.cfg.checkpoint_every == 0:
                    with run_log.timed("checkpoint", self.cfg.device, step=self.n_steps):
                        self.save_checkpoint()
            self.set_final_sae_metadata(output, wandb_run)
            if self.cfg.checkpoint_dir is not None and self.cfg.save_final:
                final_dir = Path(self.cfg.checkpoint_dir) / FINAL_DIRNAME
                final = self.full_crosscoder()
                if self.is_main:
                    with run_log.timed("final", self.cfg.device, step=self.n_steps):
                        final.save_inference_model(final_dir)
                    if wandb_run is not None and self.cfg.logger.log_model_artifact:
                        log_model_artifact(self, wandb_run, final_dir)
                self._barrier()
        finally:
            pbar.close()
            self.step_weights.keep(None)  # no step comes to take them
            if owns_run and wandb_run is not None:
                wandb_run.finish()
        return self.sae

    @torch.no_grad()
    def set_final_sae_metadata(self, output: TrainStepOutput | None, wandb_run: Any = None) -> None:
        """End-of-training facts in the crosscoder's metadata, under SAELens's names where it
        has them: ``l0`` (mean active features per token on the last batch; SAELens averages
        over its sparsity window), ``num_dead_features``, and the W&B run."""
        meta = self.sae.cfg.metadata
        if self.last_l0 is not None:  # also after a resume that had no step left to take
            meta.l0 = float(self.last_l0)
        meta.num_dead_features = int(self.dead_features.sum())
        meta.n_training_steps = self.n_steps
        meta.n_training_samples = self.n_tokens  # SAELens's name; one sample = one token's [S, D] stack
        if self.wandb_run_id:
            meta.wandb_run_id = self.wandb_run_id
            meta.wandb_project = getattr(wandb_run, "project", None) or self.cfg.logger.wandb_project
            meta.wandb_entity = getattr(wandb_run, "entity", None) or self.cfg.logger.wandb_entity

    def _is_log_step(self, step: int) -> bool:
        return self.cfg.logger.log_to_wandb and self._shows_progress(step)

    def _shows_progress(self, step: int) -> bool:
        """Whether this step's loss and L0 are read (for the progress bar, the run log and W&B):
        once a log interval; on a mesh every rank sums its share of the loss there."""
        return step % self.cfg.logger.wandb_log_frequency == 0

    def _log_step(self, run_log: RunLog, loss: float, l0: float, seconds: float) -> None:
        run_log.write(
            "step",
            step=self.n_steps,
            n_tokens=self.n_tokens,
            seconds=seconds,
            loss=loss,
            l0=l0,
            lr=self.optimizer.param_groups[0]["lr"],
            coefficients=self.coefficients,
        )

    def _log_to_wandb(self, wandb_run: Any, output: TrainStepOutput, tokens_per_s: float) -> None:
        log = step_log(self, output, tokens_per_s=tokens_per_s)
        if self.cfg.logger.histogram_every and self.n_steps % self.cfg.logger.histogram_every == 0:
            log.update(histograms(self))
        wandb_run.log(log, step=self.n_steps)

    # ------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Save everything a resume needs; default path ``checkpoint_dir/step_XXXXXXXX``."""
        if path is None:
            if self.cfg.checkpoint_dir is None:
                raise ValueError("no path given and cfg.checkpoint_dir is None; pass a path.")
            path = Path(self.cfg.checkpoint_dir) / checkpoint_dirname(self.n_steps)
        path = Path(path)
        full = self.full_crosscoder()
        optimizer_state = gather_optimizer_state(self.optimizer, self.sae, self.layout, self.collectives)
        if not self.is_main:
            self._barrier()
            return path
        needed = checkpoint_bytes(sum(p.numel() for p in full.parameters()), "float32")
        # torch.save reports a full disk as a RuntimeError from its zip writer: both become one line
        with storage_errors(
            path.parent, f"checkpoint {path.name}", needed=needed, fix="train into another folder (`--out`)"
        ):
            self._write_checkpoint(full, optimizer_state, path)
        self._barrier()
        return path

    def _write_checkpoint(self, full: TrainingSAE[Any], optimizer_state: dict, path: Path) -> None:
        full.save_model(path)
        torch.save(trainer_state(self, optimizer_state), path / TRAINER_STATE_FILENAME)

    def full_crosscoder(self) -> TrainingSAE[Any] | None:
        """The whole crosscoder as one plain module: gathered on a mesh (a collective, so every
        rank must call it) into rank 0's host memory, None on the other ranks."""
        if not self.collectives.is_distributed:
            return self.sae
        return full_crosscoder(self.sae, self.layout, self.collectives)

    def _barrier(self) -> None:
        if self.collectives.is_distributed:
            torch.distributed.barrier()

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore weights and trainer state saved by :meth:`save_checkpoint`."""
        path = Path(path)
        state_file = path / TRAINER_STATE_FILENAME
        if not state_file.exists():
            raise FileNotFoundError(
                f"{state_file} not found; pass a folder written by save_checkpoint "
                "(checkpoint_dir/step_XXXXXXXX), e.g. latest_checkpoint(checkpoint_dir)."
            )
        # checkpoints hold the whole crosscoder; a mesh rank reads its block of it alone
        weights = read_state_block(path / WEIGHTS_NAME, self.layout.snapshots)
        self.sae.process_state_dict_for_loading(weights)
        self.sae.load_state_dict(weights)
        # numpy's RNG state is not a tensor, so this file needs the full unpickler; off the CPU it
        # is mapped, not read, so a rank's host holds its block of the moments, not all of them
        # (on a CPU the moments must be fresh tensors, as a run's own: kernels round by alignment)
        on_cpu = torch.device(self.cfg.device).type == "cpu"
        state = torch.load(state_file, map_location="cpu", weights_only=False, mmap=not on_cpu)
        names = parameter_names(self.optimizer, self.sae)
        load_optimizer_state(self.optimizer, slice_optimizer_state(state["optimizer"], names, self.layout.snapshots))
        restore_trainer_state(self, state)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        cfg: CrosscoderTrainerConfig | None = None,
        *,
        mesh: Mesh | None = None,
        plan: KernelPlan | None = None,
    ) -> "CrosscoderTrainer":
        """Rebuild crosscoder and trainer from a checkpoint (config from it unless given),
        on any mesh: the checkpoint holds the whole crosscoder whatever mesh wrote it. The saved
        config names the device of the rank that wrote it; under torchrun each rank takes its own."""
        path = Path(path)
        if cfg is None:  # mapped, not read: only its config is wanted here (load_checkpoint reads the rest)
            cfg = saved_config(
                torch.load(path / TRAINER_STATE_FILENAME, map_location="cpu", weights_only=False, mmap=True)
            )
        with open(path / CFG_NAME) as f:  # built in host memory: the trainer moves its block
            sae_cfg_dict = {**json.load(f), "device": "cpu"}
        sae_cfg = TrainingSAEConfig.from_dict(sae_cfg_dict)
        # Build fresh tensors and copy the weights in (load_checkpoint) rather than
        # SAE.load_from_disk, whose tensors sit where safetensors put them: CPU kernels
        # round differently on differently aligned memory, and resume must be exact.
        sae = get_sae_training_class(sae_cfg.architecture())[0](sae_cfg)
        trainer = cls(sae, cfg, mesh=mesh, plan=plan)
        trainer.load_checkpoint(path)
        return trainer


def record_provider(cfg: Any, batches: BatchSource) -> None:
    """An activation provider's hook and normalisation factors in the crosscoder's metadata,
    where the caller recorded none (the runners record them with the suite): a crosscoder
    trained on normalised activations that did not say so would be read as trained on raw
    ones by every later stage (its snapshot SAEs, splicing, the quality table)."""
    hook = getattr(batches, "hook", None)
    if isinstance(hook, str) and cfg.metadata.hook_name is None:
        set_crosscoder_metadata(cfg, hook_name=hook)
    factors = getattr(batches, "norm_factors", None) if getattr(batches, "normalize", False) else None
    if factors is not None and cfg.metadata.activation_norm_factors is None:
        set_crosscoder_metadata(cfg, activation_norm_factors=factors)


def check_batch(batch: Any) -> None:
    """Refuse what a step cannot train on: a batch that is not a ``[batch, n_snapshots, d_in]``
    tensor of at least one token (one token's ``[n_snapshots, d_in]`` would train as a batch of
    one, and an empty batch reads as a loss gone NaN)."""
    if not isinstance(batch, torch.Tensor):
        fix = "torch.as_tensor(batch)" if type(batch).__module__ == "numpy" else "a torch tensor"
        raise TypeError(
            f"a training batch of type {type(batch).__name__}; pass {fix} shaped [batch, n_snapshots, d_in]"
        )
    if batch.ndim != 3 or len(batch) == 0:
        raise ValueError(
            f"a training batch has shape {tuple(batch.shape)}; a step takes [batch, n_snapshots, d_in] with at "
            "least one token (an ActivationProvider yields such batches; a tensor of tokens splits into them "
            "with acts_NSD.split(batch_size))"
        )


def _open_batches(batches: BatchSource, start_step: int) -> Iterator[Batch]:
    if isinstance(batches, torch.Tensor) and batches.ndim < 4:
        # iterating it would hand the steps one token (or less) each
        raise ValueError(
            f"fit got one tensor of shape {tuple(batches.shape)}, whose rows would each train as a batch; "
            "pass batches: acts_NSD.split(batch_size), or an ActivationProvider"
        )
    if callable(batches) and not isinstance(batches, Iterable):
        return iter(batches(start_step))
    return itertools.islice(iter(batches), start_step, None)
