"""Per-snapshot SAELens SAEs as the crosscoder's baseline: trained, evaluated, calibrated.

A crosscoder earns its shared code only if it reconstructs every snapshot about as well
as a plain SAE trained on that snapshot alone, at the same width and sparsity (Ge et al.
report the two comparable). This module trains those SAEs with SAELens's own training
classes (``StandardTrainingSAE``, ``JumpReLUTrainingSAE``, ``TopKTrainingSAE``) and its
``SAETrainer``, on one snapshot's activations from an :class:`ActivationStore`,
normalised exactly as the crosscoder's are (mean norm ``sqrt(d_in)``), and evaluates
them with the definitions of :func:`evaluate_crosscoder`:

    explained_variance = 1 - sum_b ||x_hat_b - x_b||^2 / sum_b ||x_b - mean_b x||^2
    mse = mean_b ||x_hat_b - x_b||^2;   l0 = mean number of non-zero features per token

Matching sparsity. ``topk`` keeps ``k = round(target_l0)`` features per token.
``jumprelu`` uses SAELens's ``quadratic`` sparsity loss (Gemma Scope 2), which pulls
each token's L0 towards ``target_l0`` by itself (with the straight-through gradient
passed to the pre-activations, so it gets there in a short run), and starts from a
threshold at which the first batch's L0 already is the target
(:func:`threshold_at_l0`): from SAELens's fixed 0.01, where half the latents fire, the
loss drives most latents below the threshold for good before they learn anything, and
SAELens's trainer never revives them. ``standard`` (ReLU +
L1) has no such knob, so :func:`calibrate_sparsity_coefficient` searches the L1
coefficient with a few full-length runs. The achieved L0 of every baseline goes into
the table, so a comparison at mismatched sparsity shows as such.

Like the crosscoders, the baselines keep reading normalised activations: the
normalisation factor of their snapshot is recorded in ``cfg.metadata`` and not folded.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import SAE, TrainingSAE
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from crosslens.activations import ActivationProvider, ActivationStore
from crosslens.activations.tokens import position_record
from crosslens.architectures import BASELINE_OF, DEFAULT_LR, TRAINING_DEFAULTS
from crosslens.core.seeding import seeded
from crosslens.training.config import LR_DECAY_FRACTION, dead_feature_window
from crosslens.training.factory import build_training_model
from crosslens.training.metrics import EVAL_TOKENS, crosscoder_metrics

# architecture -> (SAELens training class, its config)
BASELINE_ARCHITECTURES: dict[str, tuple[type[TrainingSAE[Any]], type[Any]]] = {
    "standard": (StandardTrainingSAE, StandardTrainingSAEConfig),
    "jumprelu": (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig),
    "topk": (TopKTrainingSAE, TopKTrainingSAEConfig),
}
# On activations normalised to mean norm sqrt(d_in): where the L1 search of ``standard``
# starts, and the weight of ``jumprelu``'s quadratic target-L0 loss, which lands a little
# above the demo's target at 1 and no closer at 10, where it explains less variance
# (benchmarks/README.md, "Why the training defaults").
DEFAULT_SPARSITY_COEFFICIENT = {"standard": 5.0, "jumprelu": 1.0}
# warm-up of the sparsity coefficient as a fraction of training: that of the crosscoder
# each baseline is compared with (crosslens.architectures)
BASELINE_SPARSITY_WARM_UP = {sae: TRAINING_DEFAULTS[cc].sparsity_warm_up for sae, cc in BASELINE_OF.items()}
BASELINE_STEPS = 2000
"""Training steps of a per-snapshot baseline SAE where none are given."""
BASELINE_BATCH = 1024
"""Tokens per batch of a per-snapshot baseline SAE where none are given."""
JUMPRELU_THRESHOLD_START = "threshold_at_l0"
"""Where a ``jumprelu`` baseline with a target L0 starts its thresholds (:func:`threshold_at_l0`
of its first batch); tables of baselines record it, so that one measured from another start is
not taken for this one's."""


def open_store(store: ActivationStore | str | os.PathLike) -> ActivationStore:
    return store if isinstance(store, ActivationStore) else ActivationStore.open(store)


def check_snapshot(store: ActivationStore, snapshot: int) -> int:
    if not 0 <= snapshot < store.n_snapshots:
        raise ValueError(
            f"snapshot {snapshot} is out of range: the store holds snapshots 0..{store.n_snapshots - 1} "
            "(indices, not training steps; store.snapshots lists their steps)."
        )
    return int(snapshot)


def check_architecture(architecture: str) -> str:
    if architecture not in BASELINE_ARCHITECTURES:
        raise ValueError(
            f"unknown baseline architecture {architecture!r}; choose one of {sorted(BASELINE_ARCHITECTURES)}."
        )
    return architecture


def snapshot_batches(
    store: ActivationStore,
    hook: str,
    snapshot: int,
    batch_size: int,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Iterator[Float[torch.Tensor, "batch d_in"]]:
    """Endless shuffled ``[batch, d_in]`` batches of one snapshot's normalised activations.

    The same token order as the crosscoder's :class:`ActivationProvider` with this seed,
    so a baseline and a crosscoder trained with one seed see the tokens in the same order.
    """
    if batch_size > store.n_tokens:
        raise ValueError(
            f"batch_size={batch_size} exceeds the store's {store.n_tokens} tokens; lower batch_size "
            "or harvest more tokens."
        )
    batches = ActivationProvider(store, hook, batch_size, seed=seed, drop_last=True, device=device).batches()
    try:
        for batch_BSD in batches:
            yield batch_BSD[:, snapshot].contiguous()
    finally:
        batches.close()  # stops the provider's prefetch thread


def build_training_sae(
    architecture: str,
    *,
    d_in: int,
    d_sae: int,
    k: int | None = None,
    sparsity_coefficient: float | None = None,
    target_l0: float | None = None,
    sparsity_warm_up_steps: int = 0,
    device: str = "cpu",
    **config_overrides: Any,
) -> TrainingSAE[Any]:
    """A freshly initialised SAELens training SAE of ``architecture`` (standard, jumprelu, topk).

    ``topk`` keeps ``k`` features per token (default ``round(target_l0)``). ``jumprelu``
    uses the ``quadratic`` sparsity loss around ``target_l0`` when one is given, else the
    ``tanh`` loss; ``sparsity_coefficient`` weighs it (and the L1 term of ``standard``).
    With a target, the JumpReLU straight-through gradient also reaches the pre-activations
    (``jumprelu_ste_to_input=True``, Anthropic's setting), which is what lets L0 reach the
    target in a short run.
    ``config_overrides`` go to the SAELens config as they are (e.g. ``apply_b_dec_to_input``).
    """
    train_cls, cfg_cls = BASELINE_ARCHITECTURES[check_architecture(architecture)]
    kwargs: dict[str, Any] = {}
    coefficient = None
    if architecture == "topk":
        if k is None:
            if target_l0 is None:
                raise ValueError("a topk SAE needs k (or target_l0, rounded to k); pass k=...")
            k = max(1, round(target_l0))
        if not 1 <= k <= d_sae:
            raise ValueError(f"k must be in [1, d_sae={d_sae}], got {k}; lower k or raise d_sae.")
        k = int(k)
    else:
        coefficient = float(
            DEFAULT_SPARSITY_COEFFICIENT[architecture] if sparsity_coefficient is None else sparsity_coefficient
        )
        if not coefficient >= 0:
            raise ValueError(f"sparsity_coefficient must be >= 0, got {coefficient}.")
        if architecture == "jumprelu":
            if target_l0 is not None:
                if not 0 < target_l0 <= d_sae:
                    raise ValueError(f"target_l0 must be in (0, d_sae={d_sae}], got {target_l0}.")
                # Anthropic's straight-through gradient to the pre-activations: with the
                # threshold-only (DeepMind) gradient L0 hardly moves in a few thousand steps
                kwargs.update(
                    jumprelu_sparsity_loss_mode="quadratic", target_l0=float(target_l0), jumprelu_ste_to_input=True
                )
            else:
                kwargs.update(jumprelu_sparsity_loss_mode="tanh")
    return build_training_model(
        train_cls,
        cfg_cls,
        architecture,
        sparsity_coefficient=coefficient,
        sparsity_warm_up_steps=sparsity_warm_up_steps,
        k=k,
        d_in=d_in,
        d_sae=d_sae,
        device=device,
        **{**kwargs, **config_overrides},
    )


@torch.no_grad()
def threshold_at_l0(training_sae: TrainingSAE[Any], x_BD: Float[torch.Tensor, "batch d_in"], target_l0: float) -> float:
    """The JumpReLU threshold at which ``training_sae`` fires ``target_l0`` latents per row of
    ``x_BD`` on average: the ``round(target_l0 * batch)``-th largest pre-activation, or 0 where
    fewer pre-activations than that are positive (a JumpReLU threshold is not negative)."""
    _, hidden_pre_BF = training_sae.encode_with_hidden_pre(x_BD.to(training_sae.device, training_sae.dtype))
    values = hidden_pre_BF.flatten().float()
    n_fire = min(values.numel(), max(1, round(target_l0 * x_BD.shape[0])))
    # a latent fires above its threshold, so just below the n_fire-th largest value n_fire fire
    kth = values.kthvalue(values.numel() - n_fire + 1).values
    return max(0.0, float(torch.nextafter(kth, kth.new_tensor(-math.inf))))


def inference_sae(training_sae: TrainingSAE[Any]) -> SAE[Any]:
    """The inference SAE of a training SAE, through SAELens's own save/load path
    (``save_inference_model`` then ``SAE.load_from_disk``), so TopK's decoder-norm folding
    and every other save-time conversion happen as in a SAELens training run."""
    with tempfile.TemporaryDirectory(prefix="crosslens-sae-") as tmp:
        training_sae.save_inference_model(tmp)
        return SAE.load_from_disk(tmp, device=str(training_sae.device))


def _snapshot_metadata(store: ActivationStore, hook: str, snapshot: int) -> dict[str, Any]:
    spec = store.manifest.get("spec", {})
    return {
        "hook_name": hook,
        "model_name": spec.get("suite", {}).get("model_id"),
        "snapshot": dict(store.snapshots[snapshot], index=snapshot),
        "activation_norm_factor": float(store.norm_factors(hook)[snapshot]),
        "store_fingerprint": store.fingerprint,
        **position_record(
            exclude_bos=bool(spec.get("exclude_bos")), exclude_token_ids=spec.get("exclude_token_ids", [])
        ),
    }


def train_snapshot_sae(
    store: ActivationStore | str | os.PathLike,
    hook: str | None,
    snapshot: int,
    architecture: str,
    d_sae: int,
    *,
    k: int | None = None,
    sparsity_coefficient: float | None = None,
    target_l0: float | None = None,
    n_steps: int = BASELINE_STEPS,
    batch_size: int = BASELINE_BATCH,
    lr: float | None = None,
    lr_decay_fraction: float = LR_DECAY_FRACTION,
    sparsity_warm_up_fraction: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    **config_overrides: Any,
) -> SAE[Any]:
    """Train a SAELens SAE on snapshot ``snapshot``'s normalised activations; return the inference SAE.

    Training runs through SAELens's ``SAETrainer`` (Adam, gradient clipping at 1, its
    coefficient warm-up and dead-feature tracking) with the crosscoder runner's schedule:
    learning rate ``lr`` (default 1e-3) decaying linearly to 0 over the last
    ``lr_decay_fraction`` of ``n_steps``, sparsity coefficient warmed up over
    ``sparsity_warm_up_fraction`` (5% standard, 10% jumprelu). See :func:`build_training_sae`
    for ``k``, ``sparsity_coefficient``, ``target_l0`` and ``config_overrides``. A ``jumprelu``
    SAE with a ``target_l0`` starts every threshold at :func:`threshold_at_l0` of its first
    batch, unless ``config_overrides`` sets ``jumprelu_init_threshold``.
    ``cfg.metadata`` records the hook, the snapshot and its normalisation factor.
    """
    store = open_store(store)
    hook = store.resolve_hook(hook)
    snapshot = check_snapshot(store, snapshot)
    check_architecture(architecture)
    if n_steps < 1 or batch_size < 1 or d_sae < 1:
        raise ValueError(f"n_steps, batch_size and d_sae must be >= 1, got {n_steps}, {batch_size}, {d_sae}.")
    if not 0 <= lr_decay_fraction < 1:
        raise ValueError(f"lr_decay_fraction must be in [0, 1), got {lr_decay_fraction}.")
    lr = DEFAULT_LR if lr is None else lr
    if sparsity_warm_up_fraction is None:
        sparsity_warm_up_fraction = BASELINE_SPARSITY_WARM_UP.get(architecture, 0.0)

    with seeded(seed, device):  # initial weights and any sampling come from the seed alone
        training_sae = build_training_sae(
            architecture,
            d_in=store.d_in_of(hook),
            d_sae=d_sae,
            k=k,
            sparsity_coefficient=sparsity_coefficient,
            target_l0=target_l0,
            sparsity_warm_up_steps=int(n_steps * sparsity_warm_up_fraction),
            device=device,
            **config_overrides,
        )
        for key, value in _snapshot_metadata(store, hook, snapshot).items():
            training_sae.cfg.metadata[key] = value
        trainer_cfg = _trainer_config(n_steps, batch_size, lr, lr_decay_fraction, device)
        batches = snapshot_batches(store, hook, snapshot, batch_size, seed=seed, device=device)
        try:
            first_BD = next(batches)
            if (
                architecture == "jumprelu"
                and target_l0 is not None
                and "jumprelu_init_threshold" not in config_overrides
            ):
                _start_threshold_at(training_sae, threshold_at_l0(training_sae, first_BD, target_l0))
            data = itertools.chain([first_BD], batches)
            trained = SAETrainer(cfg=trainer_cfg, sae=training_sae, data_provider=data).fit()
        finally:
            batches.close()
        return inference_sae(trained)


def _trainer_config(
    n_steps: int, batch_size: int, lr: float, lr_decay_fraction: float, device: str
) -> SAETrainerConfig:
    """SAELens's trainer settings for the crosscoder runner's schedule: ``lr`` constant, then
    decaying linearly to 0 over the last ``lr_decay_fraction`` of ``n_steps``."""
    return SAETrainerConfig(
        total_training_samples=n_steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr,  # only read by cosine schedules; the constant one decays from lr
        lr_decay_steps=int(n_steps * lr_decay_fraction),
        device=device,
        # the crosscoder trainer's window, so both dictionaries revive latents alike
        dead_feature_window=max(1, math.ceil(dead_feature_window(n_steps * batch_size) / batch_size)),
        feature_sampling_window=n_steps,  # one window: metadata.l0 covers the whole run
    )


def _start_threshold_at(training_sae: TrainingSAE[Any], threshold: float) -> None:
    """Every latent's initial threshold, also in the config the saved SAE records."""
    training_sae.threshold.data.fill_(threshold)
    training_sae.cfg.jumprelu_init_threshold = threshold


@torch.no_grad()
def evaluate_sae(
    sae: SAE[Any],
    store: ActivationStore | str | os.PathLike,
    hook: str | None,
    snapshot: int,
    *,
    n_tokens: int = EVAL_TOKENS,
    batch_size: int = 2048,
) -> dict[str, Any]:
    """Explained variance, MSE, mean L0 and dead features of ``sae`` on one snapshot.

    The first ``n_tokens`` tokens of ``store``, normalised as in training, scored with
    the same function as :func:`evaluate_crosscoder` so the numbers compare directly.
    Use a store harvested from tokens the SAE was not trained on.
    """
    store = open_store(store)
    hook = store.resolve_hook(hook)
    snapshot = check_snapshot(store, snapshot)
    if sae.cfg.d_in != store.d_in_of(hook):
        raise ValueError(
            f"the SAE reads d_in={sae.cfg.d_in} but {hook!r} in the store has width "
            f"{store.d_in_of(hook)}; evaluate it on the hook it was trained on."
        )
    n = min(n_tokens, store.n_tokens)
    xs, xhats, fs = [], [], []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x_BD = store.read(hook, idx, normalize=True)[:, snapshot].to(sae.device)
        f_BF = sae.encode(x_BD)
        xs.append(x_BD)
        xhats.append(sae.decode(f_BF))
        fs.append(f_BF)
    f_NF = torch.cat(fs)
    metrics = crosscoder_metrics(torch.cat(xs)[:, None], torch.cat(xhats)[:, None], f_NF)
    return {
        "explained_variance": metrics["metrics/explained_variance/snapshot_0"],
        "mse": metrics["metrics/mse/snapshot_0"],
        "l0": metrics["metrics/l0"],
        "dead_features": int((f_NF == 0).all(dim=0).sum().item()),
        "n_tokens": n,
        "d_sae": int(sae.cfg.d_sae),
    }


@dataclass
class Calibration:
    """Outcome of :func:`calibrate_sparsity_coefficient`."""

    coefficient: float
    """The coefficient whose run came closest to the target L0."""
    l0: float
    """Mean L0 that run reached on the evaluation tokens."""
    history: list[tuple[float, float]] = field(default_factory=list)
    """Every (coefficient, L0) tried, in order."""
    sae: SAE[Any] | None = None
    """The SAE trained with ``coefficient`` (a calibration run, ``n_steps`` long)."""


def calibrate_sparsity_coefficient(
    store: ActivationStore | str | os.PathLike,
    hook: str | None,
    snapshot: int,
    architecture: str,
    d_sae: int,
    target_l0: float,
    *,
    n_steps: int = BASELINE_STEPS,
    initial: float | None = None,
    max_runs: int = 5,
    rel_tolerance: float = 0.1,
    eval_store: ActivationStore | str | os.PathLike | None = None,
    n_eval_tokens: int = 4096,
    **train_kwargs: Any,
) -> Calibration:
    """Search the sparsity coefficient that gives mean L0 near ``target_l0``.

    Each run trains ``n_steps`` on ``snapshot`` and measures L0 with :func:`evaluate_sae`
    (on ``eval_store``, default ``store``). Train the calibration runs as long as the real
    one: an L1 SAE's L0 keeps falling through training at the same coefficient. The search stops once L0 is
    within ``rel_tolerance`` of the target or after ``max_runs`` runs and returns the
    closest run, SAE included; see :func:`_next_coefficient` for the steps. Meant for
    ``standard``; ``jumprelu`` reaches a target L0 by itself through its quadratic loss.
    """
    check_architecture(architecture)
    if architecture == "topk":
        raise ValueError("topk needs no calibration: its L0 is k; pass k=round(target_l0).")
    if not target_l0 > 0 or max_runs < 1:
        raise ValueError(f"target_l0 must be > 0 and max_runs >= 1, got {target_l0} and {max_runs}.")
    store = open_store(store)
    hook = store.resolve_hook(hook)
    eval_store = store if eval_store is None else open_store(eval_store)
    coefficient = DEFAULT_SPARSITY_COEFFICIENT[architecture] if initial is None else float(initial)

    def miss(l0: float) -> float:
        return abs(math.log(max(l0, 1e-3) / target_l0))

    history: list[tuple[float, float]] = []
    best: Calibration | None = None
    for _ in range(max_runs):
        sae = train_snapshot_sae(
            store,
            hook,
            snapshot,
            architecture,
            d_sae,
            sparsity_coefficient=coefficient,
            n_steps=n_steps,
            **train_kwargs,
        )
        l0 = evaluate_sae(sae, eval_store, hook, snapshot, n_tokens=n_eval_tokens)["l0"]
        history.append((coefficient, l0))
        if best is None or miss(l0) < miss(best.l0):
            best = Calibration(coefficient=coefficient, l0=l0, sae=sae)
        if miss(l0) <= math.log1p(rel_tolerance):
            break
        coefficient = _next_coefficient(history, target_l0)
    assert best is not None
    best.history = history
    return best


def _next_coefficient(history: Sequence[tuple[float, float]], target_l0: float) -> float:
    """Next coefficient to try, working in log coefficient and log L0 (L0 falls as the
    coefficient grows, roughly as a power of it until features start dying wholesale).

    Once runs bracket the target (one too dense, one too sparse), interpolate linearly in
    L0 against log coefficient between the tightest pair (L0 runs down to 0 when features
    die wholesale, where log L0 would blow up), kept to the middle 60% of the bracket.
    Before that, step along the log-log secant of the last two runs (slope -1 from a
    single run; slopes clamped to [-3, -0.2]), by at most a factor e^2 per run.
    """
    log_target = math.log(target_l0)
    too_dense = [(math.log(c), l0) for c, l0 in history if l0 > target_l0]
    too_sparse = [(math.log(c), l0) for c, l0 in history if l0 < target_l0]
    if too_dense and too_sparse:
        lo = max(too_dense)  # the largest coefficient that is still too dense
        hi = min(too_sparse)  # the smallest one that is already too sparse
        if hi[0] > lo[0]:
            fraction = (lo[1] - target_l0) / (lo[1] - hi[1])
            return math.exp(lo[0] + min(max(fraction, 0.2), 0.8) * (hi[0] - lo[0]))
        return math.exp((lo[0] + hi[0]) / 2)  # non-monotone runs: bisect
    points = [(math.log(c), math.log(max(l0, 0.5))) for c, l0 in history]
    log_c, log_l0 = points[-1]
    slope = -1.0
    if len(points) >= 2 and abs(log_c - points[-2][0]) > 1e-9:
        slope = (log_l0 - points[-2][1]) / (log_c - points[-2][0])
    slope = min(max(slope, -3.0), -0.2)
    step = min(max((log_target - log_l0) / slope, -2.0), 2.0)
    return math.exp(log_c + step)
