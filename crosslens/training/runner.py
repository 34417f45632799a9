"""Train a crosscoder on an activation store: the glue between ``activations`` and ``training``.

The trainer (:class:`CrosscoderTrainer`) only sees ``[batch, n_snapshots, d_in]`` batches;
this runner opens the store, builds the architecture's training config with sensible
per-architecture defaults, records provenance (suite, hook, normalisation factors) in the
crosscoder's metadata, and wires checkpoint + resume to the store's batch order.

Output folder layout::

    out_dir/step_XXXXXXXX/               resumable checkpoints
    out_dir/final/                       inference crosscoder (cfg.json + sae_weights.safetensors)
    out_dir/run.json                     the runner config
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import SAE

from crosslens.activations import ActivationProvider, ActivationStore
from crosslens.crosscoders import ARCHITECTURES, set_crosscoder_metadata
from crosslens.training.config import CrosscoderTrainerConfig
from crosslens.training.trainer import FINAL_DIRNAME, CrosscoderTrainer, crosscoder_metrics, latest_checkpoint

# lambda and learning rate that train well on the pico suite's normalised activations
# (mean norm sqrt(d_in)); on large models start from the papers' values instead.
# ReLU: Bayazit et al.'s 2. JumpReLU: 0.6 per unit of n_snapshots * d_in / d_sae (see
# default_sparsity_coefficient; measured on the planted set of issue 11, 2x Ge et al.'s 0.3).
DEFAULT_SPARSITY = {
    "crosscoder": 2.0,
    "jumprelu_crosscoder": 0.6,
    "topk_crosscoder": None,
    "batchtopk_crosscoder": None,
}
# Architectures whose default lambda is multiplied by n_snapshots * d_in / d_sae.
SHAPE_SCALED_SPARSITY = ("jumprelu_crosscoder",)
DEFAULT_LR = 1e-3
# fraction of training over which the sparsity coefficient warms up (Bayazit 5%, Ge 10%)
DEFAULT_SPARSITY_WARM_UP = {"crosscoder": 0.05, "jumprelu_crosscoder": 0.1}


@dataclass
class CrosscoderRunnerConfig:
    """Everything ``crosslens train`` needs: where the data is, which crosscoder, how long."""

    store_path: str
    """Activation store folder written by ``crosslens harvest``."""
    out_dir: str
    """Where checkpoints, the final crosscoder and run.json go."""
    hook: str | None = None
    """Hook in the store to train on; None for the store's only hook."""
    architecture: str = "jumprelu_crosscoder"
    """One of crosscoder, jumprelu_crosscoder, topk_crosscoder, batchtopk_crosscoder."""
    d_sae: int = 1024
    """Number of shared features."""
    k: int = 32
    """Active features per token for topk/batchtopk crosscoders."""
    sparsity_coefficient: float | None = None
    """lambda of the L1 (crosscoder) or tanh (jumprelu_crosscoder) penalty; None: per-architecture
    default (:func:`default_sparsity_coefficient`)."""
    sparsity_warm_up_fraction: float | None = None
    """Fraction of steps over which lambda warms up linearly; None: 5% (ReLU), 10% (JumpReLU)."""
    n_steps: int = 3000
    """Optimizer steps (one batch each)."""
    batch_size: int = 1024
    """Tokens per batch."""
    lr: float | None = None
    """Adam learning rate; None: 1e-3."""
    lr_warm_up_steps: int = 0
    """Linear learning-rate warm-up steps."""
    lr_decay_fraction: float = 0.2
    """Final fraction of steps with linear decay to 0 (Bayazit et al.: 20%)."""
    decoder_init_norm: float = 0.08
    """Initial norm of each W_dec[i, s] (Bayazit et al.: 0.08)."""
    seed: int = 0
    """Seeds initialisation and the batch order."""
    checkpoint_every: int = 500
    """Steps between resumable checkpoints; 0 disables them."""
    device: str = "cpu"
    """Where training runs."""
    log_to_wandb: bool = False
    """Log to Weights & Biases (WANDB_MODE=offline works)."""
    wandb_project: str = "crosslens"
    """W&B project."""
    wandb_run_name: str | None = None
    """W&B run name."""
    log_every: int = 50
    """Steps between W&B logs."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r}; choose one of {sorted(ARCHITECTURES)}."
            )
        if self.d_sae < 1 or self.n_steps < 1 or self.batch_size < 1:
            raise ValueError("d_sae, n_steps and batch_size must all be >= 1.")
        if self.architecture.endswith("topk_crosscoder") and not 1 <= self.k <= self.d_sae:
            raise ValueError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}.")
        if not 0 <= self.lr_decay_fraction < 1:
            raise ValueError(f"lr_decay_fraction must be in [0, 1), got {self.lr_decay_fraction}.")
        if self.sparsity_coefficient is None and self.architecture not in SHAPE_SCALED_SPARSITY:
            self.sparsity_coefficient = DEFAULT_SPARSITY[self.architecture]
        if self.sparsity_warm_up_fraction is None:
            self.sparsity_warm_up_fraction = DEFAULT_SPARSITY_WARM_UP.get(self.architecture, 0.0)
        if self.lr is None:
            self.lr = DEFAULT_LR


def default_sparsity_coefficient(architecture: str, *, n_snapshots: int, d_in: int, d_sae: int) -> float | None:
    """The sparsity coefficient ``crosslens train`` uses when none is given.

    JumpReLU's tanh penalty counts firing features (``sum_i p_i (1 + p_i / q)``, growing
    with d_sae) while the reconstruction term sums squared errors over snapshots and
    dimensions (growing with ``n_snapshots * d_in`` on normalised activations), so one
    lambda cannot fit every shape. The default is ``0.6 * n_snapshots * d_in / d_sae``.
    Measured points, in those units: Ge et al. use 0.3 at 32 snapshots x 768 dims x 24,576
    features (ratio 1); the pico demo's hand-tuned 0.5 (mean L0 23, held-out explained
    variance >= 97.9%) is 0.33 at 12 x 128 / 1024; on the planted set of issue 11
    (8 x 64 / 128, ratio 4) lambda 0.3 fired 6x as often as the planted features and
    recovered 21-23 of 48, 1.2 recovered 36-37 and 2.5 recovered 43 (issue-11 note), so
    0.6 per unit (2.4 there). On a new model check L0 and explained variance, and set
    ``--sparsity`` if they are off.
    """
    base = DEFAULT_SPARSITY[architecture]
    if base is None or architecture not in SHAPE_SCALED_SPARSITY:
        return base
    return base * n_snapshots * d_in / d_sae


def build_training_crosscoder(
    architecture: str,
    *,
    d_in: int,
    n_snapshots: int,
    d_sae: int,
    k: int = 32,
    sparsity_coefficient: float | None = None,
    sparsity_warm_up_steps: int = 0,
    decoder_init_norm: float = 0.08,
    device: str = "cpu",
    **extra: Any,
):
    """A freshly initialised training crosscoder of ``architecture`` (SAELens registry name)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}.")
    _, _, train_cls, train_cfg_cls = ARCHITECTURES[architecture]
    kwargs: dict[str, Any] = dict(
        d_in=d_in, d_sae=d_sae, n_snapshots=n_snapshots, decoder_init_norm=decoder_init_norm, device=device
    )
    if architecture == "crosscoder":
        kwargs.update(l1_coefficient=sparsity_coefficient, l1_warm_up_steps=sparsity_warm_up_steps)
    elif architecture == "jumprelu_crosscoder":
        kwargs.update(l0_coefficient=sparsity_coefficient, l0_warm_up_steps=sparsity_warm_up_steps)
    else:
        kwargs.update(k=k)
    kwargs.update(extra)
    return train_cls(train_cfg_cls(**kwargs))


class CrosscoderTrainingRunner:
    """Trains one crosscoder from an activation store; ``run(resume=True)`` continues a run."""

    def __init__(self, config: CrosscoderRunnerConfig):
        self.config = config
        self.store = ActivationStore.open(config.store_path)
        self.hook = self.store.resolve_hook(config.hook)
        self.out_dir = Path(config.out_dir)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir

    @property
    def final_path(self) -> Path:
        return self.out_dir / FINAL_DIRNAME

    def _batches(self, start_step: int):
        cfg = self.config
        return iter(
            ActivationProvider(
                self.store,
                self.hook,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                drop_last=True,
                start_batch=start_step,
                device=cfg.device,
            )
        )

    def _trainer_config(self) -> CrosscoderTrainerConfig:
        cfg = self.config
        return CrosscoderTrainerConfig(
            total_steps=cfg.n_steps,
            lr=float(cfg.lr),
            lr_warm_up_steps=cfg.lr_warm_up_steps,
            lr_decay_steps=int(cfg.n_steps * cfg.lr_decay_fraction),
            device=cfg.device,
            seed=cfg.seed,
            checkpoint_dir=str(self.checkpoint_dir),
            checkpoint_every=cfg.checkpoint_every,
            log_to_wandb=cfg.log_to_wandb,
            wandb_project=cfg.wandb_project,
            wandb_run_name=cfg.wandb_run_name,
            wandb_dir=str(self.out_dir),
            log_every=cfg.log_every,
        )

    def _new_crosscoder(self):
        cfg = self.config
        d_in, n_snapshots = self.store.d_in_of(self.hook), self.store.n_snapshots
        sparsity = cfg.sparsity_coefficient
        if sparsity is None:
            sparsity = default_sparsity_coefficient(
                cfg.architecture, n_snapshots=n_snapshots, d_in=d_in, d_sae=cfg.d_sae
            )
        crosscoder = build_training_crosscoder(
            cfg.architecture,
            d_in=d_in,
            n_snapshots=n_snapshots,
            d_sae=cfg.d_sae,
            k=cfg.k,
            sparsity_coefficient=sparsity,
            sparsity_warm_up_steps=int(cfg.n_steps * float(cfg.sparsity_warm_up_fraction or 0.0)),
            decoder_init_norm=cfg.decoder_init_norm,
            device=cfg.device,
        )
        set_crosscoder_metadata(
            crosscoder.cfg,
            provenance=store_provenance(self.store),
            hook_name=self.hook,
            activation_norm_factors=self.store.norm_factors(self.hook),
        )
        return crosscoder

    def run(self, *, resume: bool = False) -> SAE:
        """Train (or continue) and return the inference crosscoder saved in ``final_path``."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        run_file = self.out_dir / "run.json"
        resume_from = latest_checkpoint(self.checkpoint_dir) if resume else None
        if resume and resume_from is None and run_file.exists():
            print(f"no checkpoint under {self.checkpoint_dir}; starting from scratch")
        if resume_from is not None:
            previous = json.loads(run_file.read_text()) if run_file.exists() else None
            if previous is not None and previous != _jsonable(asdict(self.config)):
                raise ValueError(
                    f"{self.out_dir} holds a run with another configuration; resume with the same "
                    "settings, or pick a new --out."
                )
            trainer = CrosscoderTrainer.from_checkpoint(resume_from, self._trainer_config())
            trainer.fit(self._batches, resume_from=resume_from)
        else:
            run_file.write_text(json.dumps(_jsonable(asdict(self.config)), indent=2))
            trainer = CrosscoderTrainer(self._new_crosscoder(), self._trainer_config())
            trainer.fit(self._batches)
        return SAE.load_from_disk(str(self.final_path), device=self.config.device)


@torch.no_grad()
def evaluate_crosscoder(
    crosscoder: SAE,
    store: ActivationStore,
    hook: str | None = None,
    *,
    n_tokens: int = 8192,
    batch_size: int = 2048,
) -> dict[str, Any]:
    """Per-snapshot explained variance and MSE, mean L0 and dead features on ``store``'s tokens.

    Use a store harvested from tokens the crosscoder was not trained on. Activations are
    normalised with the store's factors, as in training.
    """
    hook = store.resolve_hook(hook)
    n = min(n_tokens, store.n_tokens)
    fired = None
    xs, xhats, fs = [], [], []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x_BSD = store.read(hook, idx, normalize=True).to(crosscoder.device)
        f_BF = crosscoder.encode(x_BSD)
        xs.append(x_BSD)
        xhats.append(crosscoder.decode(f_BF))
        fs.append(f_BF)
        fired = (f_BF != 0).any(0) if fired is None else fired | (f_BF != 0).any(0)
    metrics = crosscoder_metrics(torch.cat(xs), torch.cat(xhats), torch.cat(fs))
    S = store.n_snapshots
    result = {
        "explained_variance": [metrics[f"metrics/explained_variance/snapshot_{s}"] for s in range(S)],
        "mse": [metrics[f"metrics/mse/snapshot_{s}"] for s in range(S)],
        "l0": metrics["metrics/l0"],
        "dead_features": int((~fired).sum().item()) if fired is not None else 0,
        "n_tokens": n,
    }
    return result


def store_provenance(store: ActivationStore) -> dict[str, Any]:
    """The suite provenance of a store's snapshots, weight hashes included."""
    suite = dict(store.manifest["spec"]["suite"])
    suite["snapshots"] = [dict(entry) for entry in store.manifest["snapshots"]]
    return suite


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
