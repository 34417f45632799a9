"""The demo's settings (:class:`DemoConfig`) and its stages, each one cached and resumable;
:func:`crosslens.cli.demo_run.run_demo` runs them in order on the embedded pico suite (see
:mod:`crosslens.cli.demo`). It imports torch and every stage.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.activations import (
    ActivationStore,
    StoreMismatchError,
    harvest_activations,
    tokens_from_dataset,
    tokens_from_pico,
)
from crosslens.activations.budget import TokenBudget
from crosslens.analysis import EvolutionAnalysis, analyze_crosscoder
from crosslens.analysis.probes import FREQUENCY_TOKENS, firing_frequency
from crosslens.analysis.stability import add_stability_section, format_stability, seed_stability, stable_features
from crosslens.architectures import PICO_DEMO_JUMPRELU_SPARSITY
from crosslens.causal import defaults
from crosslens.causal.claims import format_stable_claims, stable_claim_rows, stable_claims_over_seeds
from crosslens.causal.sections import attribution_sections, causal_out_dir
from crosslens.causal.spliced_loss_eval import (
    add_baselines,
    format_comparison,
    format_spliced_loss,
    spliced_record,
    spliced_where_trained,
)
from crosslens.checkpoints import CheckpointSuite, spaced_steps
from crosslens.checkpoints.local import SUITE_FILE
from crosslens.checkpoints.on_device import on_device
from crosslens.core.errors import DamagedManifestError
from crosslens.core.metadata import CFG_NAME, TRAINING_DETAILS_KEY, saved_metadata
from crosslens.core.paths import IE_TABLE_NAME, RUN_CONFIG_NAME, checkpoint_folders
from crosslens.crosscoders.saved import load_crosscoder_folder
from crosslens.htmlreport import Report
from crosslens.pico.build import build_pico_suite
from crosslens.pico.config import PicoConfig, default_root, is_built
from crosslens.pico.evals import format_eval_table, format_targets
from crosslens.training.baselines import JUMPRELU_THRESHOLD_START
from crosslens.training.comparison import compare_with_saes, format_quality_table, quality_table
from crosslens.training.config import RUN_STORE_SEAL, ArchitectureConfig, CrosscoderRunnerConfig
from crosslens.training.factory import changed_training_fields
from crosslens.training.metrics import evaluate_crosscoder
from crosslens.training.records import read_record, record_problem
from crosslens.training.runfolder import RunFolderInUseError
from crosslens.training.runner import CrosscoderTrainingRunner, new_training_crosscoder


@dataclass
class DemoConfig:
    """Settings of the demo; ``DemoConfig.fast()`` is the quick variant (and what tests use)."""

    hook: str = "blocks.0.hook_resid_post"
    """Hook harvested and crosscoded: the middle of the pico model's residual stream."""
    snapshot_steps: tuple[int, ...] | None = None
    """Checkpoint steps to use; None picks ``n_snapshots`` spread over training."""
    n_snapshots: int = 12
    """How many snapshots the crosscoder reads (when snapshot_steps is None)."""
    seq_len: int = 64
    """Tokens per harvested row."""
    n_train_seqs: int = 1024
    """Rows harvested for training (about seq_len - 1 tokens each after dropping BOS)."""
    n_eval_seqs: int = 64
    """Held-out rows for the quality table."""
    sae: ArchitectureConfig = field(default_factory=lambda: _pico_jumprelu(d_sae=1024))
    """The crosscoder, as ``crosslens train`` takes it: Ge et al.'s JumpReLU with 1024 shared
    features and the lambda tuned for pico (``crosslens.architectures.PICO_DEMO_JUMPRELU_SPARSITY``)."""
    n_steps: int = 1500
    """Crosscoder training steps."""
    train_batch_size_tokens: int = 512
    """Tokens per training batch (crosscoder and baseline SAEs)."""
    baseline_snapshots: int = 3
    """Snapshots (spread over training) that get per-snapshot SAELens SAEs for comparison; 0 skips."""
    baseline_steps: int = 1000
    """Training steps of each baseline SAE."""
    spliced_seqs: int = 16
    """Held-out rows on which the crosscoder and the baseline SAEs are spliced into each snapshot's
    model (CE recovered against the zero-ablation floor, KL from the clean model); 0 skips it. Fewer
    than ``crosslens train``'s and ``evaluate``'s 64, for the demo's minutes: the baselines are
    spliced too (benchmarks/README.md's table is ``evaluate``'s)."""
    n_task_examples: int = defaults.N_EXAMPLES
    """Minimal pairs used for attribution and ablation."""
    seed: int = 0
    """Seed of every stage."""
    extra_seeds: tuple[int, ...] = (1, 2)
    """Crosscoder seeds trained besides ``seed`` on the same store, for the causal claims'
    mean +/- sd and the seed-stability table; () skips them."""
    extra_seed_steps: int | None = None
    """Training steps of each extra seed (None: ``n_steps``, so every seed trains alike). At
    half the main run, seeds 1 and 2 match seed 0 on fewer features than with every seed at the
    main run's length (benchmarks/README.md, "The demo"). Shorter extra seeds are named in
    the printout."""
    task: str = defaults.TASK
    """The task of the causal stage and of the claims over seeds."""
    claim_min_cosine: float = 0.7
    """Decoder cosine at which a feature counts as found by another seed: causal claims over
    seeds rank only features matched at this cosine in every other seed."""
    claim_ks: tuple[int, ...] = defaults.ABLATION_KS
    """Sizes of the ablated and kept feature sets of the seed-stable claims (those larger
    than the fewest stable features of any seed are dropped)."""
    lineage_referee: str | None = "crosscoder"
    """The architecture of a second crosscoder trained on the same store (the demo's steps, batch and
    seed, that architecture's defaults) whose moves the lineage events are checked against, as
    ``crosslens analyze --lineage-against`` checks them; None skips it. Another architecture, since
    a second seed of the same one repeats its reorganisations of latents (benchmarks/README.md)."""

    @classmethod
    def fast(cls) -> "DemoConfig":
        return cls(
            n_snapshots=8,
            n_train_seqs=192,
            n_eval_seqs=32,
            sae=_pico_jumprelu(d_sae=256),
            n_steps=300,
            train_batch_size_tokens=256,
            baseline_snapshots=1,
            baseline_steps=200,
            spliced_seqs=4,
            n_task_examples=16,
            extra_seeds=(1,),
            extra_seed_steps=150,
        )


def _pico_jumprelu(*, d_sae: int) -> ArchitectureConfig:
    return ArchitectureConfig("jumprelu_crosscoder", d_sae=d_sae, sparsity_coefficient=PICO_DEMO_JUMPRELU_SPARSITY)


def choose_steps(available: list[int], n: int) -> list[int]:
    """``n`` steps: half log-spaced (early learning is fast), half evenly over training."""
    if n >= len(available):
        return list(available)
    n_log = n // 2
    chosen = set(spaced_steps(available, n_log, spacing="log"))
    for step in spaced_steps(available, n, spacing="linear"):
        if len(chosen) >= n:
            break
        chosen.add(step)
    for step in spaced_steps(available, n, spacing="log"):  # top up if linear picks repeated
        if len(chosen) >= n:
            break
        chosen.add(step)
    return sorted(chosen)


def suite_stage(*, force: bool = False, small: bool = False):
    """Build (or reuse) the pico suite and print its learning table."""
    config = PicoConfig.small() if small else PicoConfig()
    cached = not force and is_built(default_root(config), config)
    root = build_pico_suite(config, force=force, progress=True)
    manifest = json.loads((Path(root) / SUITE_FILE).read_text())
    if cached:  # a fresh build prints its table as it trains
        print(format_eval_table(manifest["evals"]))
        if manifest.get("targets"):
            print(format_targets(manifest["targets"]))
    print(f"pico suite: {root}")
    return CheckpointSuite.local(root), manifest


def harvest_stage(
    suite,
    *,
    hooks,
    n_tokens: int | None = None,
    n_seqs: int | None = None,
    seq_len: int = TokenBudget.seq_len,
    out_dir,
    dtype: str = "float32",
    dataset: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    device: str = "cpu",
    model_dtype: str = "float32",
):
    """Tokens from the pico grammar (or ``dataset`` = NAME:COLUMN), harvested at ``hooks``.

    ``dtype`` is the store's; ``model_dtype`` what the snapshot models run in, on ``device``."""
    budget = TokenBudget(TokenBudget.n_tokens if n_tokens is None else n_tokens, seq_len, heldout_tokens=0)
    seq_len = budget.seq_len
    if n_seqs is None:
        n_seqs = budget.n_rows
    tokenizer = suite.tokenizer()
    if dataset:
        name, _, column = dataset.partition(":")
        tokens = tokens_from_dataset(tokenizer, name, seq_len, n_seqs, column=column or "text")
    else:
        tokens = tokens_from_pico(tokenizer, seq_len, n_seqs, seed=seed)
    return harvest_activations(
        suite, hooks, tokens, out_dir, dtype=dtype, overwrite=overwrite, device=device, model_dtype=model_dtype
    )


def harvest_or_reuse(suite, *, out_dir, force: bool, **settings):
    """The store in ``out_dir`` when it was built from exactly these inputs, else a fresh harvest."""
    try:
        return harvest_stage(suite, out_dir=out_dir, overwrite=force, **settings)
    except (StoreMismatchError, DamagedManifestError) as reason:
        print(f"re-harvesting {out_dir}: {reason}")
        return harvest_stage(suite, out_dir=out_dir, overwrite=True, **settings)


def train_stage(store, out_dir, config: DemoConfig, *, force: bool = False, device: str = "cpu"):
    """Train (or resume, or reuse) the demo's crosscoder on ``store`` (an open
    ``ActivationStore``, reused as it is, or its path)."""
    out_dir = Path(out_dir)
    if force and out_dir.exists():
        shutil.rmtree(out_dir)
    runner_config = CrosscoderRunnerConfig(
        store_path=str(getattr(store, "path", store)),
        out_dir=str(out_dir),
        hook_name=config.hook,
        sae=config.sae,
        n_steps=config.n_steps,
        train_batch_size_tokens=config.train_batch_size_tokens,
        seed=config.seed,
        checkpoint_every=max(50, config.n_steps // 5),
        device=device,
    )
    runner = CrosscoderTrainingRunner(runner_config, store=None if isinstance(store, (str, Path)) else store)
    run_file = out_dir / RUN_CONFIG_NAME
    if run_file.exists():
        try:
            skip = {RUN_STORE_SEAL, *runner.launch_record()}  # the demo runs in one process, whatever a folder records
            recorded = {k: v for k, v in json.loads(run_file.read_text()).items() if k not in skip}
            wanted = json.loads(json.dumps({k: v for k, v in runner.run_record().items() if k not in skip}))
            changed = sorted(k for k in recorded.keys() | wanted.keys() if recorded.get(k) != wanted.get(k))
        except (ValueError, AttributeError):  # a damaged run.json
            changed = [RUN_CONFIG_NAME]
        if not changed and (fields := training_fields_changed(runner)):  # a changed setting moves those it sets
            changed = [f"the crosscoder's training fields {', '.join(fields)}"]
        trained_on = _store_trained_on(runner)
        if changed or trained_on not in (None, runner.store.content_sha256):
            why = (
                f"demo settings changed ({', '.join(changed)})"
                if changed
                else "the activations changed since it was trained (another store content hash)"
            )
            print(f"{why}: retraining the crosscoder in {out_dir}")
            shutil.rmtree(out_dir)
        elif record_problem(runner.final_path) is None:
            print(f"reusing trained crosscoder {runner.final_path}")
            return load_crosscoder_folder(runner.final_path, device=device)
    # continue from the last checkpoint of an interrupted run; a folder without one starts afresh,
    # without the CLI's line about a --resume the demo's user never gave
    resume = bool(checkpoint_folders(runner.checkpoint_dir))  # the runner verifies them
    try:
        return runner.run(resume=resume)
    except RunFolderInUseError as refused:  # results no checkpoint continues: the demo owns its folder
        print(f"{refused}: retraining the crosscoder in {out_dir}")
        return runner.run(overwrite=True)


def current_quality(quality: Any, config: DemoConfig) -> bool:
    """Whether a demo's cached quality.json holds this version's table: the explained variance,
    baseline SAEs trained as ``config`` and this version train them, and a spliced loss
    measured where the crosscoder trained."""
    if not (isinstance(quality, dict) and "rows" in quality):
        return False
    if quality.get("baselines") != baseline_settings(config):
        return False
    spliced = quality.get("spliced_loss")
    return spliced is None or spliced_where_trained(spliced)


def training_fields_changed(runner) -> list[str]:
    """The training fields (:data:`~crosslens.core.metadata.TRAINING_DETAILS_KEY`) in which the
    crosscoder of the run in ``runner.out_dir`` differs from one the runner would build now, a field
    either lacks included. run.json holds the runner's settings, not the defaults and names of the
    architecture's training config: a crosscoder trained before one of them changed is trained
    again, not shown as what this code trains. Empty where the run has no crosscoder yet."""
    if not (runner.final_path / CFG_NAME).is_file():
        return []
    details = saved_metadata(runner.final_path).get(TRAINING_DETAILS_KEY)
    if not isinstance(details, dict):
        return [TRAINING_DETAILS_KEY]
    store = runner.store  # the shapes it is built for; on "meta" no weights are allocated
    built = new_training_crosscoder(
        runner.config, d_in=store.d_in_of(runner.hook), n_snapshots=store.n_snapshots, device="meta"
    )
    return changed_training_fields(details, built.cfg)


def _store_trained_on(runner) -> str | None:
    """Content hash of the store the run in ``runner.out_dir`` trained on (None: nothing verifiable)."""
    for folder in (runner.final_path, runner.verified_checkpoint()):
        if folder is not None and record_problem(folder) is None:
            return read_record(folder).get("store", {}).get("content_sha256")
    return None


DEMO_BASELINES = ("jumprelu", "topk")
"""The demo's per-snapshot SAELens SAEs. No L1 ("standard") baseline: at the crosscoder's L0
it needs far more than ``baseline_steps`` to converge (benchmarks/README.md, "The demo"), a
baseline set up to lose. JumpReLU and TopK SAEs reach the crosscoder's L0 directly."""


def baseline_settings(config: DemoConfig) -> dict[str, Any]:
    """What the demo's baseline SAEs and spliced loss depend on besides the crosscoder and the
    stores, as the quality record keeps it: a cached table measured otherwise is measured again."""
    return {
        "architectures": list(DEMO_BASELINES),
        "snapshots": config.baseline_snapshots,
        "steps": config.baseline_steps,
        "batch_size": config.train_batch_size_tokens,
        "seed": config.seed,
        "spliced_seqs": config.spliced_seqs,
        "jumprelu_threshold_start": JUMPRELU_THRESHOLD_START,
    }


def quality_stage(
    crosscoder, train_store, eval_store, config: DemoConfig, suite=None, *, device: str = "cpu", dtype: str = "float32"
) -> dict:
    """Held-out explained variance per snapshot, beside per-snapshot SAELens SAEs of the same
    width and L0 trained on a few snapshots; with ``suite``, each one also spliced into its
    snapshot's model on ``config.spliced_seqs`` held-out rows. Returns ``{"rows", "spliced_loss"}``."""
    saes: dict = {}
    if config.baseline_snapshots > 0:
        S = eval_store.n_snapshots
        n = min(config.baseline_snapshots, S)
        picks = [S - 1] if n == 1 else sorted({round(i * (S - 1) / (n - 1)) for i in range(n)})
        rows = compare_with_saes(
            train_store,
            config.hook,
            crosscoder,
            snapshots=picks,
            architectures=DEMO_BASELINES,
            n_steps=config.baseline_steps,
            batch_size=config.train_batch_size_tokens,
            seed=config.seed,
            eval_store=eval_store,
            trained=saes,
        )
    else:
        rows = quality_table(
            evaluate_crosscoder(crosscoder, eval_store, config.hook), {}, eval_store.snapshots, d_sae=config.sae.d_sae
        )
    quality = {"rows": rows, "spliced_loss": None, "baselines": baseline_settings(config)}
    if suite is not None and config.spliced_seqs > 0:
        models = on_device(suite, device, dtype)
        quality["spliced_loss"] = spliced_record(models, crosscoder, eval_store, config.spliced_seqs)
        add_baselines(quality["spliced_loss"], models, saes, eval_store, config.hook)
    print(format_demo_quality(quality))
    return quality


def format_demo_quality(quality: dict) -> str:
    """The demo's quality table, then the spliced-model loss: every snapshot, and the crosscoder
    beside the per-snapshot SAEs where they were trained."""
    parts = [format_quality_table(quality["rows"])]
    spliced = quality.get("spliced_loss")
    if spliced:
        parts += [
            f"spliced-model loss per snapshot on {spliced['n_seqs']} held-out rows (zero-ablation floor):",
            format_spliced_loss(spliced["crosscoder"]),
        ]
        beside = format_comparison(spliced)
        if beside:
            parts += ["crosscoder vs per-snapshot SAEs spliced in (same width, L0 as above):", beside]
    return "\n".join(parts)


def analyze_stage(
    crosscoder, *, store=None, store_path=None, out, tokenizer=None, extra_sections=None, device=None, dtype=None
):
    """Feature-evolution analysis of a crosscoder (object or folder) -> HTML report path.

    A folder is loaded on ``device`` (default cpu) in ``dtype`` (default float32)."""
    if isinstance(crosscoder, (str, Path)):
        crosscoder = load_crosscoder_folder(
            crosscoder, device=str(device or "cpu"), dtype=str(dtype) if dtype else None
        )
    if store is None and store_path is not None:
        store = ActivationStore.open(store_path)
    analysis, report = analyze_crosscoder(crosscoder, store=store, tokenizer=tokenizer, device=device)
    for section in extra_sections or []:
        report.extend(section)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    report.write(path)
    return path, analysis, report


def attribute_stage(
    suite,
    crosscoder,
    *,
    task: str = defaults.TASK,
    n_examples: int = defaults.N_EXAMPLES,
    out=None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    results=None,
    model_lines: bool = True,
):
    """IG attribution per snapshot, RelIE classes and ablation curves; returns report sections
    (and appends the stage's :class:`~crosslens.causal.stage.CausalStageResult` to ``results``
    when given). The snapshot models run
    on ``device`` in ``dtype``; the crosscoder loads on ``device``. ``model_lines=False``:
    the model's metric per snapshot is not printed again (an extra crosscoder seed)."""
    return attribution_sections(
        suite,
        crosscoder,
        task=task,
        n_examples=n_examples,
        out=out,
        seed=seed,
        device=device,
        dtype=dtype,
        results=results,
        model_lines=model_lines,
    )


def stability_analyses(crosscoders, store, n_tokens: int = FREQUENCY_TOKENS) -> tuple[list, list[float]]:
    """Each crosscoder's evolution analysis with its firing frequency on ``store`` (so latents
    that never fire count as dead and stay out of seed matching), and its mean L0 there."""
    analyses, l0 = [], []
    for crosscoder in crosscoders:
        frequency_F = firing_frequency(store, crosscoder, n_tokens=n_tokens)
        analyses.append(EvolutionAnalysis.from_crosscoder(crosscoder, frequency=frequency_F))
        l0.append(float(frequency_F.double().sum()))
    return analyses, l0


def seeds_stage(
    suite,
    train_store,
    out_dir,
    config: DemoConfig,
    crosscoder,
    main_result,
    *,
    force: bool = False,
    device: str = "cpu",
    dtype: str = "float32",
):
    """Extra crosscoder seeds on the same store: feature stability across seeds at each
    threshold of :data:`~crosslens.analysis.stability.THRESHOLDS`, and the causal claims
    counting only features with a match in every seed, as mean +/- sd over seeds; returns a
    report section."""
    crosscoders, results, labels = [crosscoder], [main_result], [f"seed {config.seed}"]
    for seed in config.extra_seeds:
        seed_config = replace(config, seed=seed, n_steps=config.extra_seed_steps or config.n_steps)
        print(f"extra crosscoder seed {seed} ({seed_config.n_steps} steps)")
        extra = train_stage(train_store, out_dir / f"crosscoder-seed{seed}", seed_config, force=force, device=device)
        extra_results: list = []
        attribute_stage(
            suite,
            extra,
            task=config.task,
            n_examples=config.n_task_examples,
            out=out_dir / f"seed{seed}",
            seed=config.seed,
            device=device,
            dtype=dtype,
            results=extra_results,
            model_lines=False,
        )
        crosscoders.append(extra)
        results.append(extra_results[0])
        # a seed trained for a different length says so wherever it is compared
        labels.append(
            f"seed {seed}" + (f" ({seed_config.n_steps} steps)" if seed_config.n_steps != config.n_steps else "")
        )
    analyses, _ = stability_analyses(crosscoders, train_store)
    stability = seed_stability(analyses, labels)
    print(f"seed stability over {len(crosscoders)} crosscoder seeds (live: fires on sampled training tokens):")
    print(format_stability(stability))
    main_summary = main_result.summary
    final_label = main_summary.snapshots[-1]
    if main_summary.behaviour and main_summary.behaviour[-1].get("at_chance"):  # no behaviour to make claims about
        claims: dict = {"per_seed": {}, "at_chance": True}
        text = f"causal claims at {final_label}: none, the model is at chance on the task there"
    else:
        stable = stable_features(analyses, config.claim_min_cosine)
        claims = _stable_claims(suite, crosscoders, results, stable, labels, config, device=device, dtype=dtype)
        text = format_stable_claims(claims, final_label)
    print(text)
    (out_dir / "claims_over_seeds.json").write_text(json.dumps(claims, indent=1, default=str))
    report = Report("Causal claims across seeds")  # the demo's report takes it in under this heading
    add_claims_text(
        report,
        text,
        "Every seed's crosscoder was trained on the same activations"
        + (
            f" (the extra seeds with {config.extra_seed_steps} steps instead of {config.n_steps}, to keep the demo "
            "short)"
            if config.extra_seed_steps and config.extra_seed_steps != config.n_steps
            else ""
        )
        + ".",
    )
    report.add_table(
        [
            {"crosscoder": label, **{k: v for k, v in c.items() if k not in _UNSTATED}}
            for label, c in claims["per_seed"].items()
        ],
        title="Seed-stable claims per crosscoder seed",
        percent=["ablation_shift", "keep_only_restored", "min_shift", "keep_only_area"],
    )
    add_stability_section(report, stability)
    return report


def add_claims_text(report, text: str, intro: str) -> None:
    """The console's claims ``text`` in a report, after ``intro``: its first line as a sentence,
    each indented line under it as a bullet."""
    first, *claims = [line.strip() for line in text.strip().splitlines() if line.strip()]
    report.add_text(f"{intro} {first[:1].upper()}{first[1:]}")
    report.add_list(claims)


_UNSTATED = ("snapshot", "keep_only_claim", "min_restored")
"""Per-seed entries the seeds table leaves out: the keep-only verdict at one k is not a claim the demo makes."""


def _stable_claims(suite, crosscoders, results, stable, labels, config, *, device, dtype) -> dict:
    """:func:`~crosslens.causal.claims.stable_claims_over_seeds` at the last snapshot, each seed's
    features ranked by the IE its causal stage found, on the task as the first seed's stage
    prepared it (tokenized, its activations collected)."""
    models = on_device(suite, device, dtype)
    snapshot = results[0].table.snapshots[-1]
    rows, ks = stable_claim_rows(
        models,
        crosscoders,
        [r.table.ie[:, -1] for r in results],
        stable,
        results[0].task,
        snapshot=snapshot,
        ks=config.claim_ks,
        label=results[0].summary.snapshots[-1],
    )
    return stable_claims_over_seeds(
        rows, snapshot, ks, [len(s) for s in stable], labels, min_cosine=config.claim_min_cosine
    )


def dashboards_stage(
    out_dir: Path, config: DemoConfig, train_store, *, force: bool = False, device: str = "cpu"
) -> Path:
    """The run's feature database (every feature's contexts, densities, logit effects and the
    causal stage's scores), browsable with ``crosslens browse``; reused when already computed for
    these inputs."""
    from crosslens.dashboards import DashboardsConfig, StaleDatabaseError, compute_dashboards

    run = out_dir / "crosscoder"
    ie_table = causal_out_dir(out_dir, config.task) / IE_TABLE_NAME
    settings = DashboardsConfig(
        attribution=[str(ie_table)] if ie_table.is_file() else None, seed=config.seed, overwrite=force
    )
    try:
        path = compute_dashboards(run, store=train_store.path, config=settings, device=device)
    except StaleDatabaseError as refused:  # the demo owns its folder: an older database is replaced
        print(f"{refused.problem}: computing it again")
        path = compute_dashboards(run, store=train_store.path, config=replace(settings, overwrite=True), device=device)
    print(f"browse every feature: crosslens browse {run}")
    return path
