"""Every setting of crosscoder training, each in one place, with its default and a docstring.

SAELens's layout: a runner config (:class:`CrosscoderRunnerConfig`) that *nests* the
crosscoder's own settings (:class:`ArchitectureConfig`, SAELens's ``sae``) and the W&B settings
(:class:`LoggingConfig`, SAELens's ``logger``), under SAELens's names where the meaning
matches (``hook_name``, ``train_batch_size_tokens``, ``run_name``, ``wandb_log_frequency``,
``eval_every_n_wandb_logs``). :class:`CrosscoderTrainerConfig` is what the model-agnostic
trainer takes. The ``crosslens train`` flags are generated from these dataclasses (each
field's docstring is its ``--help``), so a new setting is one field here.

This module imports neither torch nor SAELens: ``crosslens --help`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from crosslens.architectures import (
    ARCHITECTURE_NAMES,
    DEFAULT_DECODER_INIT_NORM,
    DEFAULT_K,
    defaults_for,
    uses_k,
)
from crosslens.core.bounds import check_bounds
from crosslens.core.devices import device_spelling
from crosslens.training.memory import OPTIMIZER_STATES

LR_SCHEDULERS = ("constant", "cosineannealing", "cosineannealingwarmrestarts")

LR_DECAY_FRACTION = 0.2
"""Final share of a run's steps over which the learning rate decays linearly to 0 (Bayazit et
al.: the last 20%), for every architecture: the runner's ``lr_decay_fraction`` and a hand-built
trainer's ``lr_decay_steps`` default to it."""

DEAD_FEATURE_WINDOW_TOKENS = 1_000_000
"""Tokens a feature may stay silent before it counts as dead, on a run long enough."""

DEAD_FEATURE_WINDOW_SHARE = 1 / 30
"""On a shorter run, the window is this share of the run's tokens. A window of a third of the
run (1M tokens of a 3M-token planted run) leaves TopK's aux loss too little of training to
revive latents, and BatchTopK then keeps latents that each carry parts of two features
(benchmarks/README.md, "Planted features recovered")."""


def check_lr_schedule(names: tuple[str, str, str], warm_up: int, decay: tuple[float, int], total: int) -> None:
    """Refuse a learning-rate warm-up and decay that together take more steps than the run.

    ``names``: how the caller's settings name the warm-up, the decay and the run's length (a
    field name becomes its flag on the command line); ``decay``: the decay as the setting gives
    it (steps, or a fraction of the run) and in steps."""
    given, steps = decay
    if warm_up + steps > total:
        warm_up_name, decay_name, total_name = names
        in_steps = "" if given == steps else f" ({steps} steps)"
        raise ValueError(
            f"{warm_up_name} {warm_up} and {decay_name} {given}{in_steps} exceed {total_name} {total}: "
            f"pass a smaller {warm_up_name} or {decay_name}, or a larger {total_name}."
        )


def dead_feature_window(run_tokens: int) -> int:
    """The default dead-feature window, in tokens, of a run of ``run_tokens`` tokens."""
    return max(1, min(DEAD_FEATURE_WINDOW_TOKENS, int(run_tokens * DEAD_FEATURE_WINDOW_SHARE)))


CHECKPOINTS_PER_RUN = 20
"""Checkpoints a run writes by default. Each holds the whole crosscoder and Adam's two moments:
14.5 GB at Ge et al.'s shape (1.21 B parameters). One every 500 steps of their 390,625 would
fill 11 TB, and writing each would take a good share of the time the 500 steps train."""

MIN_CHECKPOINT_STEPS = 500
"""Fewest steps between two default checkpoints, for short runs."""


def checkpoint_interval(n_steps: int, checkpoint_every: int | None) -> int:
    """Steps between a run's checkpoints: ``checkpoint_every`` where given (0: none), else about
    :data:`CHECKPOINTS_PER_RUN` a run, at least :data:`MIN_CHECKPOINT_STEPS` apart."""
    if checkpoint_every is not None:
        return checkpoint_every
    return max(MIN_CHECKPOINT_STEPS, n_steps // CHECKPOINTS_PER_RUN)


def checkpoints_on_disk(count: int, keep: int) -> tuple[int, int]:
    """``(kept, at_once)`` of a run that writes ``count`` checkpoints and keeps the newest ``keep``
    (0: every one): those left at the end, and the most on disk together (the kept ones and the
    one being written before the oldest goes)."""
    if not keep:
        return count, count
    return min(count, keep), min(count, keep + 1)


@dataclass
class LoggingConfig:
    """Weights & Biases logging (SAELens's ``LoggingConfig`` names)."""

    log_to_wandb: bool = field(default=False, metadata={"flag": "--wandb"})
    """Log to Weights & Biases (WANDB_MODE=offline works without an account)."""
    wandb_project: str = "crosslens"
    """W&B project."""
    wandb_entity: str | None = None
    """W&B entity (user or team); None: your default entity."""
    run_name: str | None = field(default=None, metadata={"flag": "--wandb-run-name"})
    """W&B run name; None lets W&B pick one."""
    wandb_log_frequency: int = field(default=50, metadata={"min": 1})
    """Steps between logs of the scalar metrics: the progress bar's, the run's train_log.jsonl,
    and W&B's."""
    eval_every_n_wandb_logs: int = field(default=10, metadata={"min": 0})
    """Per-snapshot decoder-norm histograms every this many scalar logs; 0: none."""
    log_model_artifact: bool = field(default=True, metadata={"cli": False})
    """With W&B on, log the final crosscoder folder as a W&B model artifact."""
    wandb_dir: str | None = field(default=None, metadata={"cli": False})
    """Directory W&B writes its run folder under; None means the current directory."""
    wandb_mode: str | None = field(default=None, metadata={"cli": False})
    """"online", "offline" or "disabled"; None reads WANDB_MODE."""

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.wandb_mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"wandb_mode must be online, offline, disabled or None, got {self.wandb_mode!r}.")

    @property
    def histogram_every(self) -> int:
        """Steps between decoder-norm histograms (0: none)."""
        return self.wandb_log_frequency * self.eval_every_n_wandb_logs


@dataclass
class ArchitectureConfig:
    """Which crosscoder to train and its sparsity (SAELens's ``sae`` config, less the shape
    that the activation store gives: ``d_in`` and ``n_snapshots``)."""

    architecture: str = field(default="jumprelu_crosscoder", metadata={"flag": "--arch", "choices": ARCHITECTURE_NAMES})
    """Crosscoder architecture (SAELens registry name)."""
    d_sae: int = field(default=1024, metadata={"min": 1})
    """Number of shared features."""
    k: int = field(default=DEFAULT_K, metadata={"min": 1})
    """Active features per token of topk_crosscoder and batchtopk_crosscoder."""
    sparsity_coefficient: float | None = field(default=None, metadata={"flag": "--sparsity", "min": 0})
    """lambda of the sparsity penalty (L1 for crosscoder, tanh for jumprelu_crosscoder, the L1
    term beside k for topk_crosscoder and batchtopk_crosscoder); None: the architecture's
    default (crosslens.architectures, shape-scaled for JumpReLU)."""
    sparsity_warm_up_fraction: float | None = field(default=None, metadata={"min": 0, "max": 1})
    """Fraction of the steps over which lambda rises linearly from 0; None: the architecture's
    ({architectures.SPARSITY_WARM_UPS})."""
    decoder_init_norm: float = field(default=DEFAULT_DECODER_INIT_NORM, metadata={"min": 0, "strictly": True})
    """Norm of every decoder row W_dec[i, s] at initialisation (Bayazit et al.)."""
    resample_dead: int | None = field(default=None, metadata={"min": 0})
    """Times during training that silent latents (firing on under a tenth of the mean
    latent's rate since the last time) are pointed at the worst-reconstructed tokens, evenly
    spaced through the first two thirds of the steps (crosslens.training.resample); 0: never;
    None: the architecture's ({architectures.RESAMPLES}: a JumpReLU latent's shut gate passes
    no gradient)."""
    target_l0: float | None = field(default=None, metadata={"min": 0, "strictly": True})
    """jumprelu_crosscoder only: active features per token that lambda is steered to during
    training (lambda starts at --sparsity or its default and is multiplied each step after
    the warm-up by (L0 / target_l0) ** 0.01); None keeps lambda fixed."""
    sparse_step: str = field(default="auto", metadata={"choices": ("auto", "on", "off")})
    """jumprelu_crosscoder: gate, score and decode each batch from its active (token, feature)
    entries with gather-sum kernels (the same values up to the order of float sums); auto: on
    CUDA for each batch sparse enough that it pays (a trained crosscoder's, not a fresh one's:
    crosslens.kernels.jumprelu_pairs.sparse_step_pays); on: always (slower on a CPU); off:
    never."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURE_NAMES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose one of {sorted(ARCHITECTURE_NAMES)}.")
        check_bounds(self)
        if uses_k(self.architecture) and self.k > self.d_sae:
            raise ValueError(f"k must be at most d_sae ({self.d_sae}) for a top-k crosscoder, got {self.k}")
        if self.target_l0 is not None and self.architecture != "jumprelu_crosscoder":
            raise ValueError(
                f"target_l0 steers JumpReLU's lambda; {self.architecture} sets its sparsity with "
                + ("k" if uses_k(self.architecture) else "--sparsity")
                + ": leave target_l0 (--target-l0) unset."
            )
        if self.sparse_step not in ("auto", "on", "off"):
            raise ValueError(f"sparse_step must be auto, on or off, got {self.sparse_step!r}.")
        if self.sparse_step != "auto" and self.architecture != "jumprelu_crosscoder":
            raise ValueError(
                f"sparse_step (--sparse-step) is the JumpReLU crosscoder's; {self.architecture} has none: leave it at auto."
            )
        defaults = defaults_for(self.architecture)
        if self.sparsity_coefficient is None and not defaults.sparsity_per_shape:
            self.sparsity_coefficient = defaults.sparsity_coefficient
        if self.sparsity_warm_up_fraction is None:
            self.sparsity_warm_up_fraction = defaults.sparsity_warm_up
        if self.resample_dead is None:
            self.resample_dead = defaults.resample_dead


@dataclass
class CrosscoderTrainerConfig:
    """How to train a crosscoder; the crosscoder's own config holds its loss settings
    (sparsity coefficient and its warm-up, k, thresholds).

    A setting left None takes the default of the crosscoder's architecture
    (:mod:`crosslens.architectures`, through :meth:`for_architecture`) when a
    :class:`~crosslens.training.trainer.CrosscoderTrainer` takes this config, so a trainer
    built by hand trains as ``crosslens train`` and its runner do."""

    total_steps: int
    """Optimizer steps to train for (one batch per step)."""
    lr: float | None = None
    """Adam learning rate; None: the architecture's (``TrainingDefaults.lr``)."""
    lr_warm_up_steps: int = 0
    """Steps of linear learning-rate warm-up from lr / lr_warm_up_steps."""
    lr_decay_steps: int | None = None
    """Final steps of linear decay to 0; None: the last :data:`LR_DECAY_FRACTION` of
    ``total_steps`` (Bayazit et al.: 20%)."""
    lr_scheduler_name: str = "constant"
    """SAELens schedule between warm-up and decay (constant or cosineannealing[warmrestarts])."""
    lr_end: float | None = None
    """Learning rate the cosine schedules end at; None: lr / 10."""
    n_restart_cycles: int = 1
    """Cycles of cosineannealingwarmrestarts."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient's global norm to this; None disables clipping."""
    fused_clip: bool = True
    """Hand the clip's coefficient to Adam's own pass over the gradients (one read for the
    norm, none to scale); False: torch's clip_grad_norm_, then Adam."""
    optimizer_state_dtype: str = "float32"
    """Dtype of Adam's two moments: "float32", or "bfloat16" (half the memory, stochastically
    rounded; one process only)."""
    micro_batches: int = 1
    """Split each batch into this many equal micro-batches, each one forward and backward with
    its loss weighted by its share, so the gradients add up to the whole batch's before the one
    optimizer step; the activations held at once shrink with it. The step's losses, codes, L0
    and once-per-step updates (the target_l0 controller, BatchTopK's threshold) are the whole
    batch's. Exact to float rounding for every architecture: JumpReLU's quadratic sparsity
    term and BatchTopK's k * batch selection read whole-batch numbers from a gradient-free
    pass over every micro-batch first (its encoder products are the micro-batches' own, so it
    adds JumpReLU's scores or BatchTopK's selection, not a forward)."""
    dead_feature_window_tokens: int | None = None
    """A feature silent for more than this many tokens is dead (feeds TopK's aux loss). None:
    1M tokens, or a thirtieth of the run's tokens where that is fewer
    (:func:`dead_feature_window`)."""
    resample_dead: int | None = None
    """Times silent latents are resampled, evenly spaced through the first two thirds of
    training (:func:`crosslens.training.resample.resample_steps`); 0: never; None: the
    architecture's (``TrainingDefaults.resample_dead``: 4 for JumpReLU, 0 for the others)."""
    resample_below_share: float = 0.1
    """A latent is silent when it fired, since the previous resampling, on less than this share
    of the mean latent's rate (L0 / d_sae)."""
    dense_feature_threshold: float = 0.1
    """A feature firing on more than this fraction of tokens in a logging window is dense."""
    device: str = "cpu"
    """Device for the crosscoder and batches."""
    seed: int = 0
    """Seeds torch, numpy and random at the start of a fresh (not resumed) run."""
    checkpoint_dir: str | None = None
    """Where checkpoints (step_XXXXXXXX/) and the final inference model (final/) go."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every this many steps; 0 disables."""
    save_final: bool = True
    """Save the trained crosscoder for inference to checkpoint_dir/final."""
    log_path: str | None = None
    """The run's own log (:mod:`crosslens.training.run_log`): metrics every
    ``logger.wandb_log_frequency`` steps and each checkpoint's seconds; None: none."""
    autocast_dtype: str | None = None
    """Run the crosscoder's forward and backward under torch.autocast in this dtype
    ("bfloat16"); parameters, gradients and Adam stay float32. None: float32 throughout."""
    activation_scale_check: str = "warn"
    """What to do when the first batch's per-snapshot mean norms are far from sqrt(d_in)
    (un-normalised activations, see crosslens.training.checks): "warn", "error" or "off"."""
    logger: LoggingConfig = field(default_factory=LoggingConfig)
    """W&B logging."""

    def __post_init__(self) -> None:
        if self.optimizer_state_dtype not in OPTIMIZER_STATES:
            raise ValueError(
                f"optimizer_state_dtype must be one of {OPTIMIZER_STATES}, got {self.optimizer_state_dtype!r}."
            )
        if self.autocast_dtype not in (None, "bfloat16"):
            raise ValueError(
                f"autocast_dtype must be None or 'bfloat16', got {self.autocast_dtype!r}; float16 "
                "would need loss scaling, which this trainer does not do."
            )
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}.")
        if self.micro_batches < 1:
            raise ValueError(f"micro_batches (--micro-batches) must be >= 1, got {self.micro_batches}.")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}.")
        if self.lr_decay_steps is None:
            self.lr_decay_steps = int(self.total_steps * LR_DECAY_FRACTION)
        if self.lr_warm_up_steps < 0 or self.lr_decay_steps < 0:
            raise ValueError("lr_warm_up_steps and lr_decay_steps must be >= 0.")
        check_lr_schedule(
            ("lr_warm_up_steps", "lr_decay_steps", "total_steps"),
            self.lr_warm_up_steps,
            (self.lr_decay_steps, self.lr_decay_steps),
            self.total_steps,
        )
        if self.lr_scheduler_name.lower() not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler_name must be one of {LR_SCHEDULERS}, got {self.lr_scheduler_name!r}.")
        if self.lr_end is None and self.lr is not None:
            self.lr_end = self.lr / 10
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}.")
        if self.dead_feature_window_tokens is not None and self.dead_feature_window_tokens < 1:
            raise ValueError("dead_feature_window_tokens must be >= 1.")
        if self.resample_dead is not None and self.resample_dead < 0:
            raise ValueError(f"resample_dead must be >= 0 (0: never), got {self.resample_dead}.")
        if not 0 < self.resample_below_share < 1:
            raise ValueError(f"resample_below_share must be in (0, 1), got {self.resample_below_share}.")
        if not 0 < self.dense_feature_threshold <= 1:
            raise ValueError("dense_feature_threshold must be in (0, 1].")
        if self.checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0 (0 disables checkpoints).")
        if self.checkpoint_every and self.checkpoint_dir is None:
            raise ValueError("checkpoint_every needs checkpoint_dir; set where checkpoints go.")
        if self.activation_scale_check not in ("warn", "error", "off"):
            raise ValueError(f"activation_scale_check must be warn, error or off, got {self.activation_scale_check!r}.")

    def for_architecture(self, architecture: str) -> CrosscoderTrainerConfig:
        """This config with each setting left None set to ``architecture``'s default
        (:func:`~crosslens.architectures.defaults_for`): what a trainer of that architecture runs."""
        defaults = defaults_for(architecture)
        return replace(
            self,
            lr=defaults.lr if self.lr is None else self.lr,
            resample_dead=defaults.resample_dead if self.resample_dead is None else self.resample_dead,
        )

    @classmethod
    def from_dict(cls, values: dict) -> CrosscoderTrainerConfig:
        """The config :func:`dataclasses.asdict` turned into ``values`` (a checkpoint's record)."""
        return cls(**{**values, "logger": LoggingConfig(**values.get("logger", {}))})


def micro_batch_error(batch: int, micro_batches: int) -> str:
    """Why a batch of ``batch`` tokens cannot be trained in ``micro_batches`` micro-batches."""
    smaller = max(n for n in range(1, micro_batches + 1) if batch % n == 0)
    return (
        f"--batch-size {batch} does not split into --micro-batches {micro_batches} equal micro-batches; "
        f"use a --batch-size divisible by {micro_batches} (e.g. {batch - batch % micro_batches or micro_batches}) "
        f"or --micro-batches {smaller}."
    )


AUTOCAST_CHOICES = ("auto", "bfloat16", "none")
"""``--autocast`` values; a run folder records "bfloat16" or "none" (null in older run.json files)."""


def resolved_autocast(choice: str, device_kind: str) -> str:
    """``--autocast`` with "auto" replaced by its choice on a ``device_kind`` ("cuda", "cpu",
    ...): bfloat16 on CUDA, "none" elsewhere (bfloat16 matmuls are slow on CPUs)."""
    if choice != "auto":
        return choice
    return "bfloat16" if device_kind == "cuda" else "none"


RUN_STORE_SEAL = "store_seal"
"""run.json key beside the settings: the seal of the store the run trains on
(``crosslens.activations.partners.store_seal``)."""

RUN_STREAM = "stream"
"""run.json key of a streamed run, in place of a store: what it streamed."""

LAUNCH_KEYS = ("world_size", "kernel_plan")
"""run.json keys of how the run was launched, not set by the config: how many processes train
(torchrun decides it) and the kernels they run."""

RUN_RECORD_KEYS = (RUN_STORE_SEAL, RUN_STREAM, *LAUNCH_KEYS)
"""What run.json holds beside the runner config's fields."""


@dataclass
class CrosscoderRunnerConfig:
    """Everything ``crosslens train`` needs: where the data is, which crosscoder, how long."""

    store_path: str = field(metadata={"flag": "--store"})
    """Activation store folder written by ``crosslens harvest``."""
    out_dir: str = field(metadata={"flag": "--out"})
    """Where checkpoints, the final crosscoder and run.json go."""
    hook_name: str | None = field(default=None, metadata={"flag": "--hook"})
    """Hook in the store to train on; None for the store's only hook."""
    sae: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    """The crosscoder's architecture and sparsity."""
    n_steps: int = field(default=3000, metadata={"min": 1})
    """Optimizer steps (one batch each)."""
    train_batch_size_tokens: int = field(default=1024, metadata={"flag": "--batch-size", "min": 1})
    """Tokens per batch."""
    lr: float | None = field(default=None, metadata={"min": 0, "strictly": True})
    """Adam learning rate; None: the architecture's (crosslens.architectures)."""
    lr_warm_up_steps: int = field(default=CrosscoderTrainerConfig.lr_warm_up_steps, metadata={"min": 0})
    """Linear learning-rate warm-up steps."""
    lr_decay_fraction: float = field(default=LR_DECAY_FRACTION, metadata={"min": 0, "max": 1, "max_strictly": True})
    """Final fraction of steps with linear decay to 0 (Bayazit et al.: 20%)."""
    seed: int = CrosscoderTrainerConfig.seed
    """Seeds initialisation and the batch order."""
    checkpoint_every: int | None = field(default=None, metadata={"min": 0})
    """Steps between resumable checkpoints; 0: none; None: about {CHECKPOINTS_PER_RUN} a run (n_steps //
    {CHECKPOINTS_PER_RUN}), at least {MIN_CHECKPOINT_STEPS} steps apart."""
    keep_checkpoints: int = field(default=2, metadata={"min": 0})
    """Newest checkpoints kept: an older one is removed once a newer one is written and sealed (the
    one before the newest stays for a resume if the newest is damaged); 0: every one."""
    device: str = field(default="cpu", metadata={"cli": False})
    """Where training runs (under torchrun, cuda means this rank's cuda:LOCAL_RANK)."""
    snapshot_parallel: int = field(default=1, metadata={"min": 1})
    """Under torchrun: ranks on the mesh's snapshot axis (each holds a block of snapshots);
    the rest of the world splits each batch. See docs/DISTRIBUTED.md."""
    autocast_dtype: str = field(default="auto", metadata={"flag": "--autocast", "choices": AUTOCAST_CHOICES})
    """Precision of the crosscoder step: "bfloat16" autocast (parameters and Adam stay float32),
    "none" (float32 throughout), or "auto": bfloat16 on CUDA, float32 elsewhere (bfloat16 is
    slow on CPUs). run.json records the choice made, which a resume left at auto keeps."""
    optimizer_state: str = field(default="auto", metadata={"choices": ("auto", *OPTIMIZER_STATES)})
    """Dtype of Adam's moments: "float32", "bfloat16" (half the memory; one process only), or
    "auto": bfloat16 when the step would not fit the CUDA device with float32 state (the
    estimate `crosslens plan` prints). run.json records the choice made, which a resume left at auto
    keeps."""
    micro_batches: int = field(default=CrosscoderTrainerConfig.micro_batches, metadata={"min": 1})
    """Train each batch in this many equal micro-batches whose gradients add up to the batch's
    before the one optimizer step: the step's activations shrink N-fold (`crosslens plan
    --micro-batches N` prints the peak; it names the smallest N that fits a GPU). Same result to
    float rounding; JumpReLU (with its quadratic sparsity term) and BatchTopK first score or
    select over every micro-batch, without gradient, for their whole-batch numbers. --batch-size
    must divide by N (per data rank on a mesh)."""
    fused_clip: bool = field(default=CrosscoderTrainerConfig.fused_clip, metadata={"flag": "--no-fused-clip"})
    """Fold the gradient clip into Adam's pass (--no-fused-clip: torch's clip_grad_norm_, then Adam)."""
    verify_store: bool = field(default=True, metadata={"flag": "--no-verify"})
    """Re-hash every store file against its manifest before training (--no-verify checks sizes only)."""
    dataset_path: str | None = field(default=None, metadata={"cli": False})
    """Where the store's tokens came from, one string (the crosscoder's metadata.dataset_path, which
    SAELens defines as one string); None: the store's record, as its dataset's NAME:COLUMN or its text
    files' paths joined by ", " (`crosslens.activations.config.recorded_dataset_path`)."""
    progress: bool = field(default=True, metadata={"cli": False})
    """Show a progress bar."""
    logger: LoggingConfig = field(default_factory=LoggingConfig)
    """W&B logging."""

    def __post_init__(self) -> None:
        check_bounds(self)
        self.device = device_spelling(self.device)
        if self.train_batch_size_tokens % self.micro_batches:
            raise ValueError(micro_batch_error(self.train_batch_size_tokens, self.micro_batches))
        if self.autocast_dtype not in AUTOCAST_CHOICES:
            raise ValueError(f"autocast_dtype must be one of {AUTOCAST_CHOICES}, got {self.autocast_dtype!r}.")
        if self.optimizer_state not in ("auto", *OPTIMIZER_STATES):
            raise ValueError(
                f"optimizer_state must be auto or one of {OPTIMIZER_STATES}, got {self.optimizer_state!r}."
            )
        if self.lr is None:
            self.lr = defaults_for(self.sae.architecture).lr
        check_lr_schedule(
            ("lr_warm_up_steps", "lr_decay_fraction", "n_steps"),
            self.lr_warm_up_steps,
            (self.lr_decay_fraction, self.lr_decay_steps),
            self.n_steps,
        )

    @classmethod
    def from_dict(cls, values: dict) -> CrosscoderRunnerConfig:
        """The config :func:`dataclasses.asdict` turned into ``values``, or a ``run.json`` (whose
        records beside the settings, :data:`RUN_RECORD_KEYS`, are left out)."""
        values = {key: value for key, value in values.items() if key not in RUN_RECORD_KEYS}
        nested = {
            "sae": ArchitectureConfig(**values.get("sae", {})),
            "logger": LoggingConfig(**values.get("logger", {})),
        }
        return cls(**{**values, **nested})

    @property
    def lr_decay_steps(self) -> int:
        """The final steps of the learning rate's linear decay, ``lr_decay_fraction`` of ``n_steps``."""
        return int(self.n_steps * self.lr_decay_fraction)

    @property
    def training_tokens(self) -> int:
        """SAELens's measure of the training length: ``n_steps * train_batch_size_tokens``."""
        return self.n_steps * self.train_batch_size_tokens

    @property
    def checkpoint_interval(self) -> int:
        """Steps between the run's checkpoints (0: none), ``checkpoint_every`` resolved."""
        return checkpoint_interval(self.n_steps, self.checkpoint_every)
