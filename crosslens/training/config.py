"""Configuration of :class:`crosslens.training.CrosscoderTrainer`."""

from __future__ import annotations

from dataclasses import dataclass

from crosslens.crosscoders.defaults import DEFAULT_LR

LR_SCHEDULERS = ("constant", "cosineannealing", "cosineannealingwarmrestarts")


@dataclass
class CrosscoderTrainerConfig:
    """How to train a crosscoder; the crosscoder's own config holds its loss settings
    (sparsity coefficient and its warm-up, k, thresholds)."""

    total_steps: int
    """Optimizer steps to train for (one batch per step)."""
    lr: float = DEFAULT_LR
    """Adam learning rate (``crosslens.crosscoders.defaults.DEFAULT_LR``, 1e-3, measured on pico;
    Bayazit et al. and Ge et al. use 5e-5 on runs of hundreds of millions of tokens)."""
    lr_warm_up_steps: int = 0
    """Steps of linear learning-rate warm-up from lr / lr_warm_up_steps."""
    lr_decay_steps: int = 0
    """Final steps of linear decay to 0 (Bayazit et al.: the last 20%)."""
    lr_scheduler_name: str = "constant"
    """SAELens schedule between warm-up and decay (constant or cosineannealing[warmrestarts])."""
    lr_end: float | None = None
    """Learning rate the cosine schedules end at; None means lr / 10."""
    n_restart_cycles: int = 1
    """Cycles of cosineannealingwarmrestarts."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient's global norm to this; None disables clipping."""
    dead_feature_window_tokens: int = 1_000_000
    """A feature silent for more than this many tokens is dead (feeds TopK's aux loss)."""
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
    log_to_wandb: bool = False
    """Log to Weights & Biases (mode from wandb_mode or WANDB_MODE)."""
    wandb_project: str = "crosslens"
    """W&B project."""
    wandb_run_name: str | None = None
    """W&B run name; None lets W&B pick one."""
    wandb_dir: str | None = None
    """Directory W&B writes its run folder under; None means the current directory."""
    wandb_mode: str | None = None
    """"online", "offline" or "disabled"; None reads WANDB_MODE."""
    log_every: int = 50
    """Log scalar metrics every this many steps."""
    histogram_every: int = 500
    """Log per-snapshot decoder-norm histograms every this many steps; 0 disables."""
    # SAELens's LoggingConfig names (see docs/API-names.md); given, they win over the
    # crosslens names above, which are then set to match.
    wandb_entity: str | None = None
    """W&B entity (user or team); None: your default entity."""
    run_name: str | None = None
    """SAELens's name for wandb_run_name."""
    wandb_log_frequency: int | None = None
    """SAELens's name for log_every."""
    eval_every_n_wandb_logs: int | None = None
    """Heavier logging (decoder-norm histograms) every this many scalar logs: histogram_every = wandb_log_frequency * this."""
    log_model_artifact: bool = True
    """With W&B on, log the final crosscoder folder as a W&B model artifact."""
    autocast_dtype: str | None = None
    """Run the crosscoder's forward and backward under torch.autocast in this dtype
    ("bfloat16"); parameters, gradients and Adam stay float32. None: float32 throughout."""
    activation_scale_check: str = "warn"
    """What to do when the first batch's per-snapshot mean norms are far from sqrt(d_in)
    (un-normalised activations, see crosslens.training.checks): "warn", "error" or "off"."""

    def __post_init__(self) -> None:
        if self.autocast_dtype not in (None, "bfloat16"):
            raise ValueError(
                f"autocast_dtype must be None or 'bfloat16', got {self.autocast_dtype!r}; float16 "
                "would need loss scaling, which this trainer does not do."
            )
        self._resolve_saelens_logging_names()
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}.")
        if self.lr_warm_up_steps < 0 or self.lr_decay_steps < 0:
            raise ValueError("lr_warm_up_steps and lr_decay_steps must be >= 0.")
        if self.lr_warm_up_steps + self.lr_decay_steps > self.total_steps:
            raise ValueError(
                f"lr_warm_up_steps ({self.lr_warm_up_steps}) + lr_decay_steps "
                f"({self.lr_decay_steps}) exceed total_steps ({self.total_steps}); shorten them."
            )
        if self.lr_scheduler_name.lower() not in LR_SCHEDULERS:
            raise ValueError(
                f"lr_scheduler_name must be one of {LR_SCHEDULERS}, got {self.lr_scheduler_name!r}."
            )
        if self.lr_end is None:
            self.lr_end = self.lr / 10
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}.")
        if self.dead_feature_window_tokens < 1:
            raise ValueError("dead_feature_window_tokens must be >= 1.")
        if not 0 < self.dense_feature_threshold <= 1:
            raise ValueError("dense_feature_threshold must be in (0, 1].")
        if self.checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0 (0 disables checkpoints).")
        if self.checkpoint_every and self.checkpoint_dir is None:
            raise ValueError("checkpoint_every needs checkpoint_dir; set where checkpoints go.")
        if self.log_every < 1 or self.histogram_every < 0:
            raise ValueError("log_every must be >= 1 and histogram_every >= 0.")
        if self.activation_scale_check not in ("warn", "error", "off"):
            raise ValueError(
                f"activation_scale_check must be warn, error or off, got {self.activation_scale_check!r}."
            )
        if self.wandb_mode not in (None, "online", "offline", "disabled"):
            raise ValueError(
                f"wandb_mode must be online, offline, disabled or None, got {self.wandb_mode!r}."
            )

    def _resolve_saelens_logging_names(self) -> None:
        if self.run_name is not None and self.wandb_run_name not in (None, self.run_name):
            raise ValueError(
                f"run_name={self.run_name!r} and wandb_run_name={self.wandb_run_name!r} name the "
                "same thing (SAELens's and crosslens's name); set one of them."
            )
        self.run_name = self.wandb_run_name = self.run_name or self.wandb_run_name
        if self.wandb_log_frequency is not None:
            self.log_every = self.wandb_log_frequency
        self.wandb_log_frequency = self.log_every
        if self.eval_every_n_wandb_logs is not None:
            if self.eval_every_n_wandb_logs < 0:
                raise ValueError(f"eval_every_n_wandb_logs must be >= 0, got {self.eval_every_n_wandb_logs}.")
            self.histogram_every = self.log_every * self.eval_every_n_wandb_logs
