"""Train a crosscoder on an activation store: the glue between ``activations`` and ``training``.

The trainer (:class:`CrosscoderTrainer`) only sees ``[batch, n_snapshots, d_in]`` batches;
this runner opens the store, builds the architecture's training config with sensible
per-architecture defaults, records provenance (suite, hook, normalisation factors) in the
crosscoder's metadata, and wires checkpoint + resume to the store's batch order.

Output folder layout::

    out_dir/step_XXXXXXXX/               resumable checkpoints
    out_dir/final/                       inference crosscoder (cfg.json + sae_weights.safetensors)
    out_dir/run.json                     the runner config

Trust: the crosscoder is built from ``seed`` whatever ran before in the process, so the
same seed and store give byte-identical weights. The store is re-hashed against its
manifest before training (``verify_store=False`` / ``--no-verify`` checks sizes only).
Each checkpoint folder is sealed with ``crosslens_checkpoint.json`` (file hashes, config,
store identity; see ``crosslens.training.records``): resume starts from the newest
checkpoint that verifies and refuses a store that changed since the run started.

Ownership (``crosslens.training.runfolder``): a run holds the folder's lock while it writes,
refuses a folder holding another run's results unless told to overwrite them, and seals
run.json with final/ when it ends. A Ctrl-C or SIGTERM stops between two steps with a
checkpoint of the step reached (``crosslens.training.interrupts``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import SAE

from crosslens.activations import ActivationProvider, ActivationStore
from crosslens.activations.config import recorded_dataset_path
from crosslens.activations.partners import STORE_SEAL_KEY, store_seal
from crosslens.activations.tokens import bos_prepended, position_record
from crosslens.architectures import sparsity_coefficient_for, sparsity_warm_up_steps
from crosslens.core.errors import CrosslensError, StorageError, StoreChangedError, keyword_and_flag, run_again
from crosslens.core.launch import launched_by_torchrun
from crosslens.core.paths import FINAL_DIRNAME, RUN_CONFIG_NAME, TRAIN_LOG_NAME, checkpoint_dirname, checkpoint_step
from crosslens.core.seeding import seeded
from crosslens.crosscoders.base import set_crosscoder_metadata
from crosslens.distributed import init_mesh, shard_batches
from crosslens.kernels.plan import KernelPlan
from crosslens.training.config import (
    LAUNCH_KEYS,
    RUN_STORE_SEAL,
    RUN_STREAM,
    CrosscoderRunnerConfig,
    CrosscoderTrainerConfig,
)
from crosslens.training.factory import build_training_crosscoder
from crosslens.training.interrupts import StopRequest, TrainingInterrupted, stop_between_steps
from crosslens.training.memory import checkpoint_bytes, parameter_counts
from crosslens.training.precision import precision_line, resolve_precision
from crosslens.training.records import read_record, record_problem, write_record
from crosslens.training.runfolder import (
    OTHER_OUT,
    OVERWRITE,
    RESUME,
    check_run_start,
    checkpoint_space_problem,
    clear_run_results,
    newest_verified_checkpoint,
    owned_run_folder,
    prune_checkpoints,
    refuse_store_folder,
    seal_run,
)
from crosslens.training.trainer import CrosscoderTrainer


class CrosscoderTrainingRunner:
    """Trains one crosscoder from an activation store; ``run(resume=True)`` continues a run."""

    def __init__(self, config: CrosscoderRunnerConfig, store: ActivationStore | None = None):
        """``store``: the store at ``config.store_path`` when the caller already holds it open
        (and verified), so it is not opened, and hashed, a second time."""
        self.config = config
        refuse_store_folder(config.out_dir)  # before the store is hashed or any lock is taken in it
        if store is None:
            store = ActivationStore.open(config.store_path, verify="full" if config.verify_store else "size")
        elif Path(store.path).resolve() != Path(config.store_path).resolve():
            raise ValueError(
                f"the store given ({store.path}) is not config.store_path ({config.store_path}); "
                "pass the store opened from that path, or none"
            )
        self.store = store
        self.hook = self.store.resolve_hook(config.hook_name)
        _check_store_holds_a_batch(store, config.train_batch_size_tokens)  # before the run folder is written
        self.out_dir = Path(config.out_dir)
        self.device = config.device
        self.asked = config
        """The config as given: :attr:`config` before its hook and "auto" precision are settled."""
        self.shape = (self.store.n_snapshots, self.store.d_in_of(self.hook))
        """``(n_snapshots, d_in)`` the precision is chosen for (d_in None: not known before training)."""
        self.config = resolve_precision(replace(config, hook_name=self.hook), *self.shape)
        self.mesh = None
        """(layout, collectives) once :meth:`run` joins a torchrun job; None in a plain process."""
        self.finished_before = False
        """Set by ``run(resume=True)`` when the folder already held this run, finished."""
        self._replacing: str | None = None
        """``--overwrite`` while a run started with it trains: a stop's message says to resume instead."""

    @property
    def is_main(self) -> bool:
        return self.mesh is None or self.mesh[0].is_main

    def join_mesh(self) -> None:
        """Under torchrun, join the job's (data, snapshot) mesh; this rank's device follows."""
        if self.mesh is not None:
            return
        if not launched_by_torchrun():
            if self.config.snapshot_parallel > 1:
                raise ValueError(
                    f"snapshot_parallel={self.config.snapshot_parallel} needs several processes: launch with "
                    "torchrun --nproc_per_node=N -m crosslens train ... --snapshot-parallel P."
                )
            return
        layout, collectives, device = init_mesh(
            self.store.n_snapshots, snapshot_parallel=self.config.snapshot_parallel, device=self.config.device
        )
        layout.batch_rows(self.config.train_batch_size_tokens)  # refuses a batch that does not split evenly
        self.mesh, self.device = (layout, collectives), str(device)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir

    @property
    def final_path(self) -> Path:
        return self.out_dir / FINAL_DIRNAME

    def _batches(self, start_step: int):
        cfg = self.config
        # on a mesh each global batch is cut in host memory and only this rank's part moves
        provider = ActivationProvider(
            self.store,
            self.hook,
            batch_size=cfg.train_batch_size_tokens,
            seed=cfg.seed,
            drop_last=True,
            device=self.device if self.mesh is None else "cpu",
        )
        batches = provider.batches(start_step, stop=cfg.n_steps)  # nothing read past the run's last step
        if self.mesh is None:
            return batches
        return (part_BSD.to(self.device) for part_BSD in shard_batches(batches, self.mesh[0]))

    def _trainer_config(self) -> CrosscoderTrainerConfig:
        cfg = self.config
        return CrosscoderTrainerConfig(
            total_steps=cfg.n_steps,
            lr=float(cfg.lr),
            lr_warm_up_steps=cfg.lr_warm_up_steps,
            lr_decay_steps=cfg.lr_decay_steps,
            device=self.device,
            seed=cfg.seed,
            checkpoint_dir=str(self.checkpoint_dir),
            checkpoint_every=cfg.checkpoint_interval,
            log_path=str(self.out_dir / TRAIN_LOG_NAME),
            autocast_dtype="bfloat16" if cfg.autocast_dtype == "bfloat16" else None,
            optimizer_state_dtype=cfg.optimizer_state,
            fused_clip=cfg.fused_clip,
            micro_batches=cfg.micro_batches,
            resample_dead=cfg.sae.resample_dead,
            logger=replace(cfg.logger, wandb_dir=cfg.logger.wandb_dir or str(self.out_dir)),
        )

    def _new_crosscoder(self):
        d_in, n_snapshots = self.store.d_in_of(self.hook), self.store.n_snapshots
        crosscoder = new_training_crosscoder(self.config, d_in=d_in, n_snapshots=n_snapshots, device=self.device)
        set_crosscoder_metadata(
            crosscoder.cfg,
            provenance=store_provenance(self.store),
            hook_name=self.hook,
            activation_norm_factors=self.store.norm_factors(self.hook),
        )
        for key, value in training_data_metadata(self.store, self.config.dataset_path).items():
            crosscoder.cfg.metadata[key] = value
        crosscoder.cfg.metadata[STORE_SEAL_KEY] = store_seal(self.store)
        return crosscoder

    def store_identity(self) -> dict[str, Any]:
        """What this run trains on: the store's input fingerprint and content hash, and the hook."""
        return {
            "fingerprint": self.store.fingerprint,
            "content_sha256": self.store.content_sha256,
            "hook": self.hook,
            "path": str(self.store.path),
            "spec": self.store.manifest["spec"],
        }

    def _settings(self) -> dict[str, Any]:
        """The configuration a resumed run must share. Where the run and the store live may
        change (folders get moved; the store is checked by content), and so may verification."""
        return _resume_settings(self.run_record())

    def config_record(self) -> dict[str, Any]:
        """The runner config as JSON values."""
        return _jsonable(asdict(self.config))

    def launch_record(self) -> dict[str, Any]:
        """How many processes train (not a config field: torchrun decides it, but a resume on
        another count splits the batch otherwise), and the kernels they run."""
        return {
            "world_size": 1 if self.mesh is None else self.mesh[0].world_size,
            "kernel_plan": self.kernel_plan.to_dict(),
        }

    def run_record(self) -> dict[str, Any]:
        """What run.json holds: the runner config and its launch, with the store's absolute path
        and its seal, so a reader finds the store from any working directory and can tell whether
        it is still the one trained on."""
        values = {**self.config_record(), **self.launch_record()}
        values["store_path"] = str(Path(self.store.path).resolve())
        values[RUN_STORE_SEAL] = store_seal(self.store)
        return values

    def verified_checkpoint(self) -> Path | None:
        """The newest checkpoint whose sealed record verifies (older ones are tried in turn)."""
        return newest_verified_checkpoint(self.checkpoint_dir)

    def _check_resumable(self, checkpoint: Path, run_file: Path) -> None:
        """Refuse other settings or another store before a single batch is read. A setting left
        "auto" first takes the choice the run sealed (:func:`resolve_precision`)."""
        record = read_record(checkpoint)
        sealed, hook = record.get("settings"), record.get("store", {}).get("hook")
        if sealed is not None:  # compare what a resume may not change: a record may seal the rest too
            sealed = _compared_settings(sealed, hook)
        current = self._settings_against(sealed)
        if sealed is not None and (RUN_STREAM in sealed) != (RUN_STREAM in current):
            how = (
                "was streamed from resident models: resume it with `crosslens train --stream` and its flags"
                if RUN_STREAM in sealed
                else "trained on a store: resume it with --store, without --stream"
            )
            raise ValueError(f"{self.out_dir} holds a run that {how}, or pick {OTHER_OUT}.")
        if sealed != current:
            differs = "; ".join(differing_settings(sealed or {}, current))
            raise ValueError(
                f"{self.out_dir} holds a run with another configuration (differs in {differs}); "
                f"resume with the same settings, pass {OVERWRITE} to start again, or pick {OTHER_OUT}."
            )
        try:
            previous = _compared_settings(json.loads(run_file.read_text()), hook)
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous != sealed and self.is_main:  # run.json missing or damaged: the sealed record is the truth
            print(f"{run_file} was missing or damaged; rewritten from {checkpoint.name}'s record", file=sys.stderr)
            run_file.write_text(json.dumps(self.run_record(), indent=2))
        started_on, now = record.get("store", {}), self.store_identity()
        same_store = started_on.get("content_sha256") == now["content_sha256"]
        if not same_store or started_on.get("fingerprint") != now["fingerprint"]:
            raise StoreChangedError(_store_changed_message(started_on, now, checkpoint))

    def _settings_against(self, sealed: dict[str, Any] | None) -> dict[str, Any]:
        """This run's settings as a resume compares them with the ``sealed`` ones: a precision left
        at "auto" takes the run's choice (:func:`resolve_precision`), and a hook left unnamed the
        run's (the store's only hook: the store's identity, compared after, holds its hooks)."""
        if sealed is None:
            return self._settings()
        self.config = resolve_precision(replace(self.asked, hook_name=self.hook), *self.shape, sealed=sealed)
        current = self._settings()
        if self.asked.hook_name is None:
            current["hook_name"] = sealed.get("hook_name")
        return current

    def _say_what_changes_the_bytes(self, run_file: Path) -> None:
        """Name the hardware settings a resume changes: each trains the same steps, but rounds
        otherwise, so the run no longer ends in the bytes an uninterrupted run would."""
        try:
            started = json.loads(run_file.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(started, dict):
            return
        now = {**self.config_record(), **self.launch_record()}
        if isinstance(started.get("kernel_plan"), dict):  # read as the plan it records, not as its words
            started["kernel_plan"] = KernelPlan.from_dict(started["kernel_plan"]).to_dict()
        keys = [key for key in BYTE_LAYOUT_SETTINGS if key in started and started[key] != now.get(key)]
        if "kernel_plan" in keys and len(keys) > 1:  # another device or mesh: its plan follows
            keys.remove("kernel_plan")
        changed = [f"{key} {now[key]!r} (the run started with {started[key]!r})" for key in keys]
        if changed:
            print(
                f"--resume: {', '.join(changed)}: the same training to float rounding, not the bytes an "
                "uninterrupted run would end in"
            )

    @property
    def kernel_plan(self) -> KernelPlan:
        """Which kernels the run's step and optimizer take (:func:`run_kernel_plan`), printed and
        recorded in run.json."""
        return run_kernel_plan(self.config, self.device)

    def _trainer(self, checkpoint: Path | None) -> CrosscoderTrainer:
        plan = self.kernel_plan
        if checkpoint is None:
            trainer = _SealedTrainer(self._new_crosscoder(), self._trainer_config(), mesh=self.mesh, plan=plan)
        else:
            trainer = _SealedTrainer.from_checkpoint(checkpoint, self._trainer_config(), mesh=self.mesh, plan=plan)
        trainer.record = {"settings": self._settings(), "store": self.store_identity()}
        trainer.keep_checkpoints = self.config.keep_checkpoints
        return trainer

    def _check_checkpoint_space(self, trainer: CrosscoderTrainer) -> None:
        """Refuse a run whose checkpoints the folder's disk cannot hold, before its first step
        rather than at a checkpoint hours in."""
        cfg, sae = self.config, trainer.sae.cfg
        every = cfg.checkpoint_interval
        to_write = cfg.n_steps // every - trainer.n_steps // every if every else 0  # a resumed run has written some
        if not to_write:
            return
        whole = sum(parameter_counts(trainer.layout.n_snapshots, sae.d_in, sae.d_sae, cfg.sae.architecture).values())
        each = checkpoint_bytes(whole, cfg.optimizer_state)
        problem = checkpoint_space_problem(self.out_dir, each, whole * 4, to_write=to_write, keep=cfg.keep_checkpoints)
        if problem is not None:
            raise StorageError(problem, folder=str(self.out_dir))

    def run(self, *, resume: bool = False, overwrite: bool = False) -> SAE | None:
        """Train (or continue) and return the inference crosscoder saved in ``final_path``.

        The folder is locked while this runs. A new run refuses a folder holding another run's
        results unless ``overwrite`` (which removes them first); ``resume`` continues from the
        newest verified checkpoint, or returns the crosscoder of a run that finished with these
        settings. A Ctrl-C or SIGTERM stops between two steps: the step reached is checkpointed
        and :class:`TrainingInterrupted` says how to continue. Under torchrun every rank calls
        this; rank 0 writes the files and gets the crosscoder, the other ranks None (on a mesh
        the whole crosscoder need not fit one of their GPUs)."""
        self.join_mesh()
        self._replacing = OVERWRITE if overwrite else None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with owned_run_folder(self.out_dir, enabled=self.is_main):
            state = check_run_start(self.out_dir, resume=resume, overwrite=overwrite)
            self._all_ranks_barrier()  # every rank has looked before rank 0 changes anything
            run_file = self.out_dir / RUN_CONFIG_NAME
            if resume and state.finished:
                return self._finished(run_file)
            resume_from = state.checkpoint if resume else None
            if resume_from is not None:  # a refused resume leaves the folder as it was
                self._check_resumable(resume_from, run_file)
            if self.is_main:
                clear_run_results(self.out_dir, everything=overwrite)
            if resume and resume_from is None and self.is_main:
                print(f"--resume: no checkpoint under {self.checkpoint_dir} to resume from; starting from scratch")
            if resume_from is not None:
                if self.is_main:
                    step = checkpoint_step(Path(resume_from).name)
                    of = "" if step is None else f" (step {step} of {self.config.n_steps})"
                    print(f"--resume: continuing from {resume_from}{of}")
                    self._say_what_changes_the_bytes(run_file)
            elif self.is_main:
                run_file.write_text(json.dumps(self.run_record(), indent=2))
            if self.is_main:
                print(precision_line(self.config))
                autocast = self.config.autocast_dtype == "bfloat16"
                print(self.kernel_plan.describe(torch.device(self.device).type, autocast=autocast))
                if self.store is not None:
                    print(data_line(self.config, self.store.n_tokens))
            trainer = self._trainer(resume_from)
            if self.is_main:
                self._check_checkpoint_space(trainer)
            with stop_between_steps(enabled=self.mesh is None) as request:
                trainer.fit(self._stoppable_batches(trainer, request), resume_from=resume_from)
            if self.is_main:
                self._write_data_record()
                write_record(self.final_path, **trainer.record)
                seal_run(self.out_dir)
            trainer._barrier()
        if request.signum is not None:  # the signal came during the last step: the run is whole
            raise TrainingInterrupted(
                f"stopped by {request.name} after the last step; the crosscoder is saved in {self.final_path}: "
                f"{run_again(replacing=self._replacing, adding=RESUME)} to measure its quality",
                signum=request.signum,
            )
        return self._final_crosscoder()

    def _final_crosscoder(self) -> SAE | None:
        """The saved inference crosscoder on rank 0's device; None on a mesh's other ranks."""
        return SAE.load_from_disk(str(self.final_path), device=self.device) if self.is_main else None

    def _write_data_record(self) -> None:
        """Write what the run seals beside its crosscoder to say which rows it trained on: nothing
        for a run on a store, whose sealed identity names them."""

    def _finished(self, run_file: Path) -> SAE | None:
        """The crosscoder of the finished run in the folder, once its settings and store are these."""
        self._check_resumable(self.final_path, run_file)
        self.finished_before = True
        if self.is_main:
            print(
                f"{self.out_dir} holds this run, finished: nothing to train; {OVERWRITE} instead of {RESUME} "
                "trains it again"
            )
        return self._final_crosscoder()

    def _all_ranks_barrier(self) -> None:
        if self.mesh is not None and self.mesh[1].is_distributed:
            torch.distributed.barrier()

    def _stoppable_batches(self, trainer: CrosscoderTrainer, request: StopRequest):
        """The batch factory, stopping before the next batch once a stop is requested: the trainer
        asks for batch k + 1 only when step k is whole, so the state it saves then is exact."""

        def batches(start_step: int):
            inner, end = iter(self._batches(start_step)), object()
            while True:
                if request.signum is not None:
                    self._stop(trainer, request)
                batch = next(inner, end)
                if batch is end:
                    return
                yield batch

        return batches

    def _stop(self, trainer: CrosscoderTrainer, request: StopRequest) -> None:
        step, total = trainer.n_steps, self.config.n_steps
        if step == 0:
            raise TrainingInterrupted(
                f"stopped by {request.name} before the first step; nothing was trained: run the same command again",
                signum=request.signum,
            )
        checkpoint = self.checkpoint_dir / checkpoint_dirname(step)
        if record_problem(checkpoint) is not None:  # not already saved at this step
            trainer.save_checkpoint(checkpoint)
        raise TrainingInterrupted(
            f"stopped by {request.name} at step {step} of {total}; checkpoint {checkpoint} keeps it: "
            f"{run_again(replacing=self._replacing, adding=RESUME)} to continue",
            signum=request.signum,
        )


class _SealedTrainer(CrosscoderTrainer):
    """A trainer whose checkpoints are sealed with a record (see ``crosslens.training.records``),
    the older ones removed past the newest ``keep_checkpoints`` (0: none removed)."""

    record: dict[str, Any] = {}
    keep_checkpoints: int = 0

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        saved = super().save_checkpoint(path)
        if self.is_main:
            write_record(saved, **self.record)
            if path is None:  # the run's own cadence, in its folder
                prune_checkpoints(saved.parent, self.keep_checkpoints)
        self._barrier()
        return saved


def run_kernel_plan(config: CrosscoderRunnerConfig, device: Any) -> KernelPlan:
    """The :class:`KernelPlan` of a run: the default of the device it trains on, with the run's
    settings' choices (``--sparse-step``)."""
    sparse = {"auto": None, "on": True, "off": False}[config.sae.sparse_step]
    return KernelPlan.resolve(device, jumprelu_sparse=sparse)


def new_training_crosscoder(config: CrosscoderRunnerConfig, *, d_in: int, n_snapshots: int, device: Any):
    """The freshly initialised training crosscoder ``config.sae`` asks for, its weights from
    ``config.seed`` alone (the shape-scaled sparsity default filled in from ``d_in`` and
    ``n_snapshots``)."""
    sae = config.sae
    sparsity = sae.sparsity_coefficient
    if sparsity is None:
        sparsity = sparsity_coefficient_for(sae.architecture, n_snapshots=n_snapshots, d_in=d_in, d_sae=sae.d_sae)
    warm_up = sparsity_warm_up_steps(sae.architecture, config.n_steps, sae.sparsity_warm_up_fraction)
    jumprelu_only: dict[str, Any] = {} if sae.target_l0 is None else {"target_l0": sae.target_l0}
    with seeded(config.seed, device):
        return build_training_crosscoder(
            sae.architecture,
            d_in=d_in,
            n_snapshots=n_snapshots,
            d_sae=sae.d_sae,
            k=sae.k,
            sparsity_coefficient=sparsity,
            sparsity_warm_up_steps=warm_up,
            decoder_init_norm=sae.decoder_init_norm,
            device=device,
            **jumprelu_only,
        )


def _check_store_holds_a_batch(store: ActivationStore, batch_size: int) -> None:
    """Refuse a batch larger than the store: every batch is cut from the whole store (on a mesh too,
    before it is split), and a run drops a last partial batch, so it would serve nothing."""
    if store.n_tokens < batch_size:
        raise CrosslensError(
            f"a batch of {batch_size:,} tokens (`--batch-size`) is more than "
            f"the {store.n_tokens:,} training tokens of the store {store.path}: pass a batch size of at most "
            f"{store.n_tokens:,}, or a store of more tokens (`crosslens harvest --n-tokens`)"
        )


def data_line(config: CrosscoderRunnerConfig, store_tokens: int) -> str:
    """How many times the run reads its store, said so that many passes over a small one are seen."""
    tokens = config.n_steps * config.train_batch_size_tokens
    return (
        f"data: {config.n_steps:,} steps (--n-steps) x {config.train_batch_size_tokens:,} tokens (--batch-size) = "
        f"{tokens:,} tokens, "
        f"{tokens / store_tokens:,.2f} passes over the store's {store_tokens:,}"
    )


BYTE_LAYOUT_SETTINGS = ("device", "snapshot_parallel", "micro_batches", *LAUNCH_KEYS)
"""Settings a resume may change that round the same training otherwise (another device's
kernels, another mesh's sums, another split of the batch, another plan's kernels)."""


def _resume_settings(config: dict[str, Any]) -> dict[str, Any]:
    # where things live, how they are checked, on what hardware, and how often the run is saved
    # and logged: a run may resume elsewhere, on another device, on another mesh, in micro-batches
    # that fit another GPU, with its checkpoints spaced and kept otherwise, or logged otherwise
    # (none changes what it trains)
    where = (
        "out_dir",
        "store_path",
        RUN_STORE_SEAL,
        "verify_store",
        "progress",
        *BYTE_LAYOUT_SETTINGS,
        "checkpoint_every",
        "keep_checkpoints",
        "logger",
    )
    return {key: value for key, value in config.items() if key not in where}


def _compared_settings(settings: dict[str, Any], hook: str | None) -> dict[str, Any]:
    """What a resume compares of recorded ``settings``: :func:`_resume_settings`, with the hook the
    run trained on (``hook``, from its record's store identity) where they name none (the store's
    only hook, in a record written before the runner recorded the hook it resolved)."""
    compared = _resume_settings(settings)
    if compared.get("hook_name") is None and hook is not None:
        compared["hook_name"] = hook
    return compared


def differing_settings(run: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """``"sae.d_sae: 64 in the run, 32 now"`` for each setting (nested ones by dotted name) that differs."""
    found = []
    for key in sorted(set(run) | set(now)):
        old, new = run.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += differing_settings(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix}{key}: {old!r} in the run, {new!r} now")
    return found


def _store_changed_message(started_on: dict[str, Any], now: dict[str, Any], checkpoint: Path) -> str:
    if started_on.get("fingerprint") != now["fingerprint"]:
        old, new = started_on.get("spec") or {}, now["spec"]
        fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["fingerprint"]
        what = f"it was harvested again for other inputs (differs in: {', '.join(fields)})"
    else:
        what = "it holds other activations for the same inputs (re-harvested, or snapshots changed)"
    return (
        f"the activation store {now['path']} is not the one this run was trained on up to {checkpoint.name}: "
        f"{what}. Resuming would continue on other data: point {keyword_and_flag('store_path', '--store')} at the "
        f"original store ({started_on.get('path')}), or start a new run in {OTHER_OUT}."
    )


def training_data_metadata(store: ActivationStore, dataset_path: str | None = None) -> dict[str, Any]:
    """What SAELens's trainer records about the training data, read from the store:
    ``model_name``, ``model_class_name``, ``context_size``, ``prepend_bos``,
    ``exclude_special_tokens`` (the excluded token ids), ``seqpos_slice`` (position 0 dropped
    or not) and ``dataset_path`` (the source of the store's tokens as its harvest recorded it, one
    string as a streamed run's: :func:`~crosslens.activations.config.recorded_dataset_path`; None where
    the store records none)."""
    spec = store.manifest["spec"]
    excluded = [int(i) for i in spec.get("exclude_token_ids", [])]
    return {
        "model_name": spec["suite"].get("model_id"),
        "model_class_name": "HookedTransformer",
        "context_size": int(spec["seq_len"]),
        "prepend_bos": bos_prepended(store.sequences, excluded),
        **position_record(exclude_bos=bool(spec.get("exclude_bos")), exclude_token_ids=excluded),
        "dataset_path": dataset_path or recorded_dataset_path(store.token_source),
    }


def store_provenance(store: ActivationStore) -> dict[str, Any]:
    """The suite provenance of a store's snapshots, weight hashes included."""
    suite = dict(store.manifest["spec"]["suite"])
    suite["snapshots"] = [dict(entry) for entry in store.manifest["snapshots"]]
    return suite


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
