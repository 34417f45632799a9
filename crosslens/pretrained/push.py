"""Publish a trained crosscoder: SAELens layout on the Hugging Face hub, a model card, and
the registry entry to paste into ``pretrained_crosscoders.yaml``.

Hub layout (what ``SAE.from_pretrained(repo_id, crosscoder_id)`` and SAELens's
``upload_saes_to_huggingface`` use)::

    ORG/NAME/README.md                              model card
    ORG/NAME/<crosscoder_id>/cfg.json               architecture, sizes, metadata (suite, hook, ...)
    ORG/NAME/<crosscoder_id>/sae_weights.safetensors

``crosscoder_id`` defaults to the hook name, as in SAELens releases. By default the
activation normalisation is folded into the weights first, so the published crosscoder
reads raw activations (SAELens's convention for published SAEs).

:class:`~crosslens.pretrained.local_hub.LocalHubApi` stands in for ``huggingface_hub.HfApi`` when there is no network: it
writes each upload into the local Hugging Face cache exactly as a download would have
left it, so ``load_pretrained`` with ``HF_HUB_OFFLINE=1`` finds it.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import torch
import yaml
from huggingface_hub.errors import OfflineModeIsEnabled

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.architectures import uses_k
from crosslens.checkpoints.models import chosen_processing
from crosslens.core.errors import CrosslensError
from crosslens.core.model_specs import MODELS_FAMILY, is_models_suite, parse_models
from crosslens.core.paths import FINAL_DIRNAME, QUALITY_NAME, RUN_CONFIG_NAME
from crosslens.pretrained.card import (
    diffing_section,
    emergence_section,
    front_matter,
    load_section,
    public_dataset_path,
    publish_local_paths,
    run_diffing,
    saelens_load_section,
    saved_emergence,
)
from crosslens.pretrained.convert import SOURCE_RECORD, source_record
from crosslens.pretrained.registry import get_release, is_release_name, pretrained_directory
from crosslens.training.metrics import EVAL_TOKENS

if TYPE_CHECKING:
    from crosslens.crosscoders.protocol import Crosscoder

CARD_TAGS = ("crosslens", "crosscoder", "sae_lens", "sparse-autoencoder", "training-dynamics")
HUB_FAMILIES = ("pythia", "olmo", "bloom")
"""Suite families whose model_id is a hub repo (a valid ``base_model``)."""


@dataclass(frozen=True)
class Publication:
    """One crosscoder as it is published: where it goes and what was measured of it, the facts
    its model card and its registry entry are both written from."""

    crosscoder: Crosscoder
    repo_id: str
    crosscoder_id: str
    """Its folder in the repo (SAELens: ``sae_id``)."""
    release: str
    """The registry release it is listed under."""
    evaluation: dict[str, Any] | None = None
    """Per-snapshot explained variance, L0 and firing frequency on the run's activation store."""
    spliced: dict[str, Any] | None = None
    """The run's spliced-model loss per snapshot (``quality.json``)."""
    run_config: dict[str, Any] | None = None
    """The run's ``run.json``, for the card's training settings."""
    class_counts: dict[str, int] | None = None
    """Features per evolution class, for the card."""
    diffing: Any = None
    """A two-model crosscoder's diffing classes and latent scaling's verdict (``card.run_diffing``)."""
    emergence: Any = None
    """A multi-snapshot crosscoder's emergence check, where ``crosslens analyze`` saved it for these
    weights (``card.saved_emergence``)."""


@dataclass
class PushResult:
    """What :func:`push_to_hub` uploaded."""

    repo_id: str
    crosscoder_id: str
    release: str
    card: str
    """The README.md uploaded."""
    registry_entry: dict[str, Any]
    """``{release: {...}}`` in the registry's schema."""
    evaluation: dict[str, Any] | None
    """Per-snapshot explained variance and L0 measured on the run's activation store."""

    @property
    def registry_yaml(self) -> str:
        return registry_yaml(self.registry_entry)


def check_push_names(
    crosscoder_id: str | None, release: str | None, store_path: str | Path | None, n_eval_tokens: int
) -> None:
    """Refuse, before anything is read or uploaded, what would be published wrong: a crosscoder id
    that leaves its folder in the repo, a release name the registry refuses, a store named but not
    there (the card would go out without its evaluation), and no tokens to evaluate on."""
    parts = PurePosixPath(crosscoder_id or "x").parts
    if crosscoder_id is not None and (
        not crosscoder_id or crosscoder_id.startswith("/") or ".." in parts or "\\" in crosscoder_id
    ):
        raise ValueError(
            f"crosscoder id {crosscoder_id!r} is a folder inside the repo: no '..', no leading '/'; pass --id NAME "
            "(default: the hook name)"
        )
    if release is not None and not is_release_name(release):
        raise ValueError(f"release name {release!r} has a '/', which names a hub repo; pass --release NAME without one")
    if store_path is not None and not Path(store_path).exists():
        raise ValueError(
            f"--store {store_path} does not exist; pass the store the crosscoder was trained on, or leave it out "
            "(the run's own store is used where it is still there)"
        )
    if n_eval_tokens < 1:
        raise ValueError(f"n_eval_tokens={n_eval_tokens}: evaluate on 1 token or more")


def _partner_store(crosscoder: Any, folder: Path, store_path: str | Path | None) -> Any:
    """The store the card's figures are measured on, opened and checked to be the crosscoder's;
    None when there is no store at hand."""
    if store_path is None or not Path(store_path).exists():
        return None
    from crosslens.activations import ActivationStore
    from crosslens.activations.partners import check_crosscoder_store

    store = ActivationStore.open(store_path)
    check_crosscoder_store(crosscoder, store, crosscoder_name=folder)
    return store


def _store_evaluation(crosscoder: Any, store: Any, n_tokens: int) -> dict | None:
    """Per-snapshot explained variance and L0 on ``n_tokens`` of the checked ``store`` (None: none)."""
    if store is None:
        return None
    return evaluate_per_snapshot(crosscoder, store, crosscoder.cfg.metadata.get("hook_name"), n_tokens=n_tokens)


def push_to_hub(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    crosscoder_id: str | None = None,
    release: str | None = None,
    store_path: str | Path | None = None,
    fold_normalization: bool = True,
    n_eval_tokens: int = EVAL_TOKENS,
    revision: str = "main",
    api: Any = None,
) -> PushResult:
    """Upload the final crosscoder of ``run_dir`` (a ``crosslens train`` output folder, or a
    crosscoder folder) to ``repo_id`` with a model card; return the registry entry.

    Per-snapshot explained variance and L0 are measured on ``n_eval_tokens`` tokens of the
    activation store (``store_path``, default the run's ``run.json`` store) when it is at
    hand; the card says which tokens. ``api`` defaults to ``huggingface_hub.HfApi()``. A crosscoder
    others published is refused (:func:`refuse_republishing`); no local path goes up.
    """
    from crosslens.analysis.diffing import is_diffing
    from crosslens.crosscoders.saved import load_crosscoder_folder

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo id must be ORG/NAME, got {repo_id!r}; pass --repo ORG/NAME.")
    check_push_names(crosscoder_id, release, store_path, n_eval_tokens)
    folder, run_config = find_final_crosscoder(Path(run_dir))
    refuse_republishing(folder, run_config)
    crosscoder = load_crosscoder_folder(folder)
    diffing_run = is_diffing(crosscoder, str(folder))  # a suite of three models is refused before the hub
    meta = crosscoder.cfg.metadata
    crosscoder_id = crosscoder_id or meta.get("hook_name") or "crosscoder"
    release = release or default_release_name(repo_id)

    store = _partner_store(crosscoder, folder, store_path or (run_config or {}).get("store_path"))
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:  # the repo before the measurement: a hub out of reach is said before the store is read
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    except OfflineModeIsEnabled:
        raise CrosslensError(
            f"pushing to {repo_id} needs the hub, which HF_HUB_OFFLINE=1 forbids; unset it and log in to the hub, "
            "or write the folder with push_to_hub(..., api=LocalHubApi()) for air-gapped sharing"
        ) from None
    evaluation = _store_evaluation(crosscoder, store, n_eval_tokens)
    spliced = run_spliced_loss(folder, run_config, crosscoder)
    if fold_normalization and not meta.get("activation_norm_factors_folded") and meta.get("activation_norm_factors"):
        crosscoder.fold_activation_norm_scaling_factors()
    frequency = torch.tensor(evaluation["firing_frequency"]) if evaluation else None
    diffing = run_diffing(crosscoder, folder, frequency) if diffing_run else None
    class_counts = None if diffing is not None else feature_class_counts(crosscoder, frequency)
    emergence = None if diffing is not None else saved_emergence(folder)
    publication = Publication(
        crosscoder, repo_id, crosscoder_id, release, evaluation, spliced, run_config, class_counts, diffing, emergence
    )
    card, entry = model_card(publication), registry_entry(publication)

    publish_local_paths(crosscoder.cfg.metadata)  # after the card, which says which names were local files
    with tempfile.TemporaryDirectory() as tmp:
        crosscoder.save_model(tmp)
        api.upload_folder(
            folder_path=tmp,
            path_in_repo=crosscoder_id,
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=f"Upload crosscoder {crosscoder_id}",
        )
    api.upload_file(
        path_or_fileobj=io.BytesIO(card.encode("utf-8")),
        path_in_repo="README.md",
        repo_id=repo_id,
        repo_type="model",
        revision=revision,
        commit_message="Model card",
    )
    return PushResult(repo_id, crosscoder_id, release, card, entry, evaluation)


def find_final_crosscoder(run_dir: Path) -> tuple[Path, dict[str, Any] | None]:
    """``run_dir/final`` (a training run) or ``run_dir`` itself (a crosscoder folder), and
    the run's ``run.json`` when there is one. A run's crosscoder is published only once the
    run is sealed: the card's steps, seed and tokens come from its run.json."""
    from crosslens.core.metadata import CFG_NAME, WEIGHTS_NAME
    from crosslens.training.runfolder import check_run, enclosing_run, is_run_folder

    run = run_dir if is_run_folder(run_dir) or (run_dir / FINAL_DIRNAME).is_dir() else enclosing_run(run_dir)
    if run is not None:
        check_run(run)
    for folder in (run_dir / FINAL_DIRNAME, run_dir):
        if (folder / CFG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():
            run_file = None if run is None else run / RUN_CONFIG_NAME
            return folder, (json.loads(run_file.read_text()) if run_file is not None else None)
    raise FileNotFoundError(
        f"{run_dir} holds no trained crosscoder (neither final/cfg.json nor cfg.json with "
        "sae_weights.safetensors); pass the --out folder of `crosslens train` after it finished."
    )


def refuse_republishing(folder: Path, run_config: dict[str, Any] | None) -> None:
    """Refuse a crosscoder published by others (a ``crosslens pretrained run`` folder, a converted
    one): pushed, it would go out as trained with crosslens, without its licence, credit and source."""
    pretrained = (run_config or {}).get("pretrained")
    if pretrained is None and (folder / SOURCE_RECORD).is_file():
        pretrained = source_record(folder)
    if pretrained is None:
        return
    release, crosscoder_id, source = (pretrained.get(key) for key in ("release", "crosscoder_id", "source"))
    source = source or {}
    registered = get_release(release).repo_id if release in pretrained_directory() else None
    repo = source.get("repo_id") or registered or source.get("path")
    if release:
        what, load = f"crosscoder {crosscoder_id!r} of release {release!r}", f"{release!r}, {crosscoder_id!r}"
    else:
        where = (source["repo_id"], source.get("path") or "") if source.get("repo_id") else (repo,)
        what, load = "a converted crosscoder", ", ".join(map(repr, where))
    raise CrosslensError(
        f"{folder} holds {what}, published at {repo}, not one trained with crosslens: cite it and load it from "
        f"there (crosslens.from_pretrained({load})) rather than pushing it again; crosslens push publishes the "
        "runs of `crosslens train`"
    )


def run_spliced_loss(folder: Path, run_config: dict[str, Any] | None, crosscoder: Crosscoder) -> dict[str, Any] | None:
    """The spliced-loss record of the run's quality.json (sealed with the run, which
    :func:`find_final_crosscoder` has checked) when ``crosslens train`` measured one."""
    if run_config is None or folder.name != FINAL_DIRNAME:
        return None
    path = folder.parent / QUALITY_NAME
    quality = json.loads(path.read_text()) if path.is_file() else None
    spliced = quality.get("spliced_loss") if isinstance(quality, dict) else None
    if spliced is None:
        return None
    if len(spliced["crosscoder"]) != crosscoder.cfg.n_snapshots:
        raise ValueError(
            f"{path} holds the spliced loss of {len(spliced['crosscoder'])} snapshots but the crosscoder reads "
            f"{crosscoder.cfg.n_snapshots}; measure it again into the run with its `crosslens train` command and "
            "--resume --eval-store STORE (`crosslens evaluate --spliced-loss` only prints it), or retrain."
        )
    return spliced


def default_release_name(repo_id: str) -> str:
    return repo_id.split("/", 1)[1].lower()


# --------------------------------------------------------------------------- measurements
@torch.no_grad()
def evaluate_per_snapshot(
    crosscoder: Crosscoder, store: Any, hook: str | None, *, n_tokens: int = EVAL_TOKENS, batch_size: int = 2048
) -> dict[str, Any]:
    """Per-snapshot explained variance and L0 of the code feeding each snapshot, plus
    firing frequencies, on the first ``n_tokens`` tokens of ``store``.

    L0 at snapshot s counts the features that reach snapshot s's reconstruction: the
    per-snapshot gates of a JumpReLU crosscoder, the shared code otherwise.
    """
    from crosslens.crosscoders.folding import resolve_norm_factors

    hook = store.resolve_hook(hook)
    n = min(n_tokens, store.n_tokens)
    factors_S = resolve_norm_factors(crosscoder).to(crosscoder.W_dec.device, crosscoder.W_dec.dtype)
    S, F_ = crosscoder.cfg.n_snapshots, crosscoder.cfg.d_sae
    sq_err_S = torch.zeros(S, dtype=torch.float64)
    sum_S = torch.zeros(S, store.d_in_of(hook), dtype=torch.float64)
    sumsq_S = torch.zeros(S, dtype=torch.float64)
    active_S = torch.zeros(S, dtype=torch.float64)
    fired_F = torch.zeros(F_, dtype=torch.float64)
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        raw_BSD = store.read(hook, idx, normalize=False).to(crosscoder.W_dec.device, crosscoder.W_dec.dtype)
        x_BSD = raw_BSD * factors_S[:, None]
        f_BF = crosscoder.encode(x_BSD)
        x_hat_BSD = crosscoder.decode(f_BF)
        sq_err_S += (x_hat_BSD - x_BSD).double().pow(2).sum(dim=(0, 2)).cpu()
        sum_S += x_BSD.double().sum(dim=0).cpu()
        sumsq_S += x_BSD.double().pow(2).sum(dim=(0, 2)).cpu()
        if hasattr(crosscoder, "encode_per_snapshot"):
            active_S += (crosscoder.encode_per_snapshot(x_BSD) != 0).sum(dim=(0, 2)).double().cpu()
        else:
            active_S += float((f_BF != 0).sum())
        fired_F += (f_BF != 0).sum(dim=0).double().cpu()
    variance_S = sumsq_S - sum_S.pow(2).sum(dim=1) / n  # sum over tokens of ||x - mean||^2
    return {
        "variance_explained": (1 - sq_err_S / variance_S).tolist(),
        "l0": (active_S / n).tolist(),
        "firing_frequency": (fired_F / n).tolist(),
        "dead_features": int((fired_F == 0).sum()),
        "n_tokens": n,
        "store": str(store.path),
    }


def feature_class_counts(crosscoder: Crosscoder, frequency: torch.Tensor | None) -> dict[str, int] | None:
    """Feature classes from the decoder-norm timelines (with firing frequencies when measured)."""
    from crosslens.analysis.evolution_analysis import EvolutionAnalysis

    try:
        return EvolutionAnalysis.from_crosscoder(crosscoder, frequency=frequency).class_counts()
    except ValueError:  # e.g. snapshots without steps in training order: no timeline to classify
        return None


# --------------------------------------------------------------------------- card and entry
def model_card(publication: Publication) -> str:
    """The README.md of a published crosscoder (front matter + markdown)."""
    p = publication
    crosscoder, repo_id, crosscoder_id, release = p.crosscoder, p.repo_id, p.crosscoder_id, p.release
    cfg, meta = crosscoder.cfg, crosscoder.cfg.metadata
    suite = meta.get("suite") or {}
    model_id = suite.get("model_id") or meta.get("model_name") or "unknown model"
    snapshots = suite.get("snapshots") or [{} for _ in range(cfg.n_snapshots)]
    front: dict[str, Any] = {"library_name": "saelens", "tags": list(CARD_TAGS)}
    models = [m["model_id"] for m in suite.get("models") or []]  # a diffing suite reads models, not checkpoints
    if suite.get("family") in HUB_FAMILIES or models:
        front["base_model"] = models or model_id
    hook = meta.get("hook_name") or "unknown hook"
    reads = f"the {cfg.n_snapshots} models {', '.join(models)}" if models else None
    lines = [
        *front_matter(front),
        f"# Model-diffing crosscoder: {' vs '.join(models)} at `{hook}`"
        if models
        else f"# Multi-snapshot crosscoder: `{model_id}` at `{hook}`",
        "",
        f"A `{cfg.architecture()}` trained with crosslens on the activations of the same tokens at "
        f"{reads or f'{cfg.n_snapshots} training checkpoints of `{model_id}`'}: one shared "
        f"sparse code of {cfg.d_sae} features, one decoder per checkpoint. `||W_dec[i, s]||` is feature i's "
        "strength at checkpoint s, so each feature's decoder norms across checkpoints are its timeline.",
        *load_section(
            [
                f'crosscoder = crosslens.load_pretrained("{release}", "{crosscoder_id}")  # once the release is registered',
                "sae = crosscoder.snapshot_sae(0)  # checkpoint 0 as a plain SAELens SAE, for HookedSAETransformer",
            ]
        ),
        *saelens_load_section(repo_id, crosscoder_id),
        "",
        "A snapshot SAE reads checkpoint s's activation alone (the crosscoder's per-snapshot mode), so it "
        "reconstructs less well than the crosscoder, which reads the token at every checkpoint; the figures "
        "below are the crosscoder's.",
        "",
        "Inputs are `[..., n_snapshots, d_in]`: the activation of one token at every checkpoint below, in order.",
        "",
        "## Checkpoints",
        "",
    ]
    lines += _checkpoint_section(snapshots, p.evaluation)
    if p.spliced is not None:
        lines += _spliced_section(p.spliced)
    settings = _training_settings(cfg, meta, hook, p.run_config)
    lines += ["## Training", "", "| setting | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in settings]
    lines.append("")
    if p.diffing is not None:  # two models: the diffing classes, not timelines
        lines += diffing_section(p.diffing)
    if p.class_counts:
        lines += [
            "## Feature classes",
            "",
            "From the decoder-norm timelines (crosslens's `EvolutionAnalysis`): "
            + ", ".join(f"{name} {count}" for name, count in p.class_counts.items())
            + ".",
            "",
        ]
    if p.diffing is None:
        lines += emergence_section(p.emergence)
    link = wandb_link(meta)
    if link:
        lines += ["## Weights & Biases", "", f"Training run: {link}", ""]
    return "\n".join(lines)


def _checkpoint_section(snapshots: list[dict[str, Any]], evaluation: dict[str, Any] | None) -> list[str]:
    """The model card's table of checkpoints, with each one's explained variance and L0 when measured."""
    measured = evaluation is not None
    header = "| snapshot | revision | step | tokens seen |" + (" explained variance | L0 |" if measured else "")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for s, snap in enumerate(snapshots):
        tokens_seen = snap.get("tokens_seen")
        row = f"| {s} | {snap.get('revision', '')} | {snap.get('step', '')} | {'' if tokens_seen is None else tokens_seen} |"
        if measured:
            row += f" {evaluation['variance_explained'][s]:.3f} | {evaluation['l0'][s]:.1f} |"
        lines.append(row)
    lines.append("")
    if measured:
        lines += [
            f"Measured on {evaluation['n_tokens']} tokens of the training activation store "
            f"({evaluation['dead_features']} features never fired on them). L0 at a checkpoint counts the "
            "features reaching that checkpoint's reconstruction.",
            "",
        ]
    else:
        lines += ["Explained variance and L0 were not measured (the activation store was not at hand).", ""]
    return lines


def _spliced_section(spliced: dict[str, Any]) -> list[str]:
    """The model card's spliced-model loss per checkpoint: raw losses beside the recovered share."""
    from crosslens.causal.spliced_loss_eval import (  # loads TransformerLens
        MIN_FLOOR_COST,
        percent_or_na,
        positions_sentence,
        recovered_share,
    )

    floor = spliced["ablation"]
    lines = [
        "## Spliced-model loss",
        "",
        f"| snapshot | CE clean | CE spliced | CE {floor}-ablated | CE recovered | KL spliced |",
        "|---|---|---|---|---|---|",
    ]
    for row in spliced["crosscoder"]:
        lines.append(
            f"| {row['snapshot']} | {row['ce_loss_without_sae']:.4f} | {row['ce_loss_with_sae']:.4f} | "
            f"{row['ce_loss_with_ablation']:.4f} | {percent_or_na(recovered_share(row))} | {row['kl_div_with_sae']:.4f} |"
        )
    lines += [
        "",
        f"Each checkpoint's model run on {spliced['n_seqs']} token rows of {spliced['seq_len']} tokens from the "
        f"quality table's activation store, with the activation at the hook replaced by the crosscoder's "
        f"reconstruction. CE recovered is (CE {floor}-ablated - CE spliced) / (CE {floor}-ablated - CE clean); it "
        f"means little where ablating costs little, so the raw losses stand beside it, and it reads n/a where "
        f"ablating costs under {MIN_FLOOR_COST} nats. KL is the mean divergence "
        "of the next-token distribution from the clean model's. " + positions_sentence(spliced),
        "",
    ]
    return lines


def _training_settings(cfg: Any, meta: Any, hook: str, run_config: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The model card's training table: the crosscoder's config, its metadata and the run's settings."""
    settings: list[tuple[str, Any]] = [
        ("hook", f"`{hook}`"),
        ("architecture", f"`{cfg.architecture()}`"),
        ("d_in (per checkpoint)", cfg.d_in),
        ("d_sae", cfg.d_sae),
        ("n_snapshots", cfg.n_snapshots),
        ("normalisation folded into the weights", bool(meta.get("activation_norm_factors_folded"))),
    ]
    for key in ("context_size", "prepend_bos", "dataset_path", "exclude_special_tokens", "l0", "num_dead_features"):
        value = meta.get(key)
        if value is not None:
            settings.append((key, _dataset_path_shown(value) if key == "dataset_path" else value))
    if run_config:  # run.json: the runner config, with the architecture's settings under "sae"
        sae = run_config.get("sae") or {}
        steps, batch = run_config.get("n_steps"), run_config.get("train_batch_size_tokens")
        for key, value in (
            ("n_steps", steps),
            ("batch_size (tokens)", batch),
            ("lr", run_config.get("lr")),
            ("sparsity_coefficient", sae.get("sparsity_coefficient")),
            ("k", sae.get("k") if uses_k(cfg.architecture()) else None),
            ("seed", run_config.get("seed")),
        ):
            if value is not None:
                settings.append((key, value))
        if steps and batch:
            settings.append(("training tokens", int(steps) * int(batch)))
    return settings


def _dataset_path_shown(value: Any) -> str | None:
    """The card's dataset_path: a local file by its name, saying it is one; a hub dataset by its id."""
    shown, local = public_dataset_path(value)
    return f"local files: {shown}" if local else shown


def wandb_link(meta: Any) -> str | None:
    """URL of the W&B run recorded in the metadata (a plain description without an entity)."""
    run_id, project, entity = meta.get("wandb_run_id"), meta.get("wandb_project"), meta.get("wandb_entity")
    if not run_id:
        return None
    if entity and project:
        return f"https://wandb.ai/{entity}/{project}/runs/{run_id}"
    return f"project `{project}`, run id `{run_id}`"


def registry_entry(publication: Publication) -> dict[str, Any]:
    """``{release: {...}}`` in the registry schema (see :mod:`crosslens.pretrained.registry`)."""
    p = publication
    crosscoder, evaluation, spliced = p.crosscoder, p.evaluation, p.spliced
    cfg, meta = crosscoder.cfg, crosscoder.cfg.metadata
    suite = meta.get("suite") or {}
    entry: dict[str, Any] = {
        "id": p.crosscoder_id,
        "path": p.crosscoder_id,
        "hook_name": meta.get("hook_name"),
        "architecture": cfg.architecture(),
    }
    if evaluation is not None:
        entry["l0"] = [round(v, 3) for v in evaluation["l0"]]
        entry["variance_explained"] = [round(v, 4) for v in evaluation["variance_explained"]]
    if spliced is not None:
        entry["ce_loss_score"] = [round(row["ce_loss_score"], 4) for row in spliced["crosscoder"]]
        entry["kl_div_with_sae"] = [round(row["kl_div_with_sae"], 5) for row in spliced["crosscoder"]]
        entry["spliced_ablation"] = spliced["ablation"]
        from crosslens.causal.spliced_loss_eval import spliced_where_trained  # loads TransformerLens

        entry["spliced_positions"] = "trained" if spliced_where_trained(spliced) else "every"
    entry["normalization_folded"] = bool(meta.get("activation_norm_factors_folded"))
    link = wandb_link(meta)
    if link and link.startswith("http"):
        entry["wandb_run"] = link
    model_id = suite.get("model_id") or meta.get("model_name") or "unknown"
    return {
        p.release: {"repo_id": p.repo_id, "model": model_id, "suite": registry_suite(suite, model_id), "saes": [entry]}
    }


def registry_suite(suite: dict[str, Any], model_id: str) -> dict[str, Any]:
    """The crosscoder's recorded suite as the registry reads it: a suite of models by its models (and
    the processing they were read with, where it is not crosslens's), any other by its revisions and
    steps (see :mod:`crosslens.pretrained.release_fields`)."""
    if is_models_suite(suite):
        models = [str(model) for model in parse_models(suite.get("models") or model_id)]
        processing = chosen_processing(suite.get("processing"))
        return {"family": MODELS_FAMILY, "models": models, **({"processing": processing} if processing else {})}
    snapshots = suite.get("snapshots") or []
    return {
        "family": suite.get("family"),
        "model_id": model_id,
        "revisions": [s.get("revision") for s in snapshots],
        "steps": [s.get("step") for s in snapshots],
    }


def registry_yaml(entry: dict[str, Any]) -> str:
    return yaml.safe_dump(entry, sort_keys=False, default_flow_style=None, width=100)
