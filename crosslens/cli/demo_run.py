"""The demo's pipeline: :func:`run_demo` runs the stages of :mod:`crosslens.cli.demo_stages` in
order on the embedded pico suite, one step a stage, and prints what each found. Imported by the
``demo`` command's function: it imports torch and every stage.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.activations import ActivationStore
from crosslens.analysis.emergence_record import save_run_emergence
from crosslens.causal.spliced_loss_eval import add_spliced_loss_section
from crosslens.cli.demo_lineage import lineage_referee_stage
from crosslens.cli.demo_stages import (
    DemoConfig,
    analyze_stage,
    attribute_stage,
    choose_steps,
    current_quality,
    dashboards_stage,
    format_demo_quality,
    harvest_or_reuse,
    quality_stage,
    seeds_stage,
    suite_stage,
    train_stage,
)
from crosslens.core.paths import QUALITY_NAME, REPORT_NAME, crosslens_home
from crosslens.htmlreport import Report
from crosslens.training.runfolder import seal_run


def run_demo(
    out_dir=None,
    *,
    fast: bool = False,
    force: bool = False,
    config: DemoConfig | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> Path:
    """Run every stage; return the report path. Models and crosscoder run on ``device``;
    ``dtype`` is the snapshot models' (harvest and attribution)."""
    config = config or (DemoConfig.fast() if fast else DemoConfig())
    out_dir = Path(out_dir) if out_dir is not None else crosslens_home() / ("demo-fast" if fast else "demo")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    run = {"force": force, "device": device, "dtype": dtype}

    _banner("1/6 pico suite: a tiny Pythia-architecture model trained from scratch")
    suite = _snapshots(config, force)

    _banner(f"2/6 harvest {config.hook} across snapshots (one model resident at a time)")
    train_store, eval_store = _stores(suite, out_dir, config, **run)

    _banner(f"3/6 train a {config.sae.architecture} (d_sae {config.sae.d_sae})")
    crosscoder = train_stage(train_store, out_dir / "crosscoder", config, force=force, device=device)
    quality = _quality(crosscoder, train_store, eval_store, suite, out_dir, config, **run)

    _banner("4/6 causal role: IG attribution, RelIE and ablations on agreement across an attractor")
    sections = _causal_sections(suite, crosscoder, train_store, quality, out_dir, config, **run)

    _banner("5/6 feature evolution from per-snapshot decoder norms -> report.html")
    report_path = _evolution_report(
        crosscoder, train_store, suite, sections, out_dir, config, force=force, device=device
    )

    _banner("6/6 every feature at every snapshot -> the feature database")
    dashboards_stage(out_dir, config, train_store, force=force, device=device)
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return report_path


def _banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 74 - len(text)), flush=True)


def _snapshots(config: DemoConfig, force: bool):
    """The pico suite, narrowed to the snapshots the demo crosscodes."""
    suite, _ = suite_stage(force=force)
    steps = list(config.snapshot_steps) if config.snapshot_steps else choose_steps(suite.steps, config.n_snapshots)
    print(f"crosscoding {len(steps)} snapshots: steps {steps}")
    return suite.select(steps=steps)


def _stores(suite, out_dir: Path, config: DemoConfig, *, force: bool, device: str, dtype: str) -> tuple[Any, Any]:
    """The training store and the evaluation store (other sequences, the next seed)."""
    stores = [
        harvest_or_reuse(
            suite,
            hooks=[config.hook],
            n_seqs=n_seqs,
            seq_len=config.seq_len,
            out_dir=out_dir / name,
            seed=seed,
            force=force,
            device=device,
            model_dtype=dtype,
        )
        for name, n_seqs, seed in (
            ("acts-train", config.n_train_seqs, config.seed),
            ("acts-eval", config.n_eval_seqs, config.seed + 1),
        )
    ]
    train_store = stores[0]
    print(f"train store: {train_store.n_tokens} tokens x {train_store.n_snapshots} snapshots x d_in {train_store.d_in}")
    return stores[0], stores[1]


def _quality(
    crosscoder,
    train_store,
    eval_store,
    suite,
    out_dir: Path,
    config: DemoConfig,
    *,
    force: bool,
    device: str,
    dtype: str,
) -> dict:
    """The crosscoder's quality table: the one written after it, where it is this demo's; else
    computed again and sealed with the run."""
    quality_file = out_dir / "crosscoder" / QUALITY_NAME
    quality = json.loads(quality_file.read_text()) if quality_file.exists() and not force else None
    if current_quality(quality, config):  # written after the crosscoder it describes
        print(format_demo_quality(quality))
        return quality
    # none yet, or an older demo's table: baselines trained otherwise, or a spliced loss without or over every position
    quality = quality_stage(crosscoder, train_store, eval_store, config, suite, device=device, dtype=dtype)
    quality_file.write_text(json.dumps(quality, indent=1, default=str))
    seal_run(out_dir / "crosscoder")  # the table joins the run's seal, as `crosslens train`'s does
    return quality


def _causal_sections(
    suite,
    crosscoder,
    train_store,
    quality: dict,
    out_dir: Path,
    config: DemoConfig,
    *,
    force: bool,
    device: str,
    dtype: str,
) -> list:
    """The causal stage's report sections, the spliced loss's and, with extra seeds, the claims
    that hold across seeds."""
    results: list = []
    sections = attribute_stage(
        suite,
        crosscoder,
        task=config.task,
        n_examples=config.n_task_examples,
        out=out_dir,
        seed=config.seed,
        device=device,
        dtype=dtype,
        results=results,
    )
    if quality.get("spliced_loss"):
        sections.append(add_spliced_loss_section(Report(""), quality["spliced_loss"]))  # untitled: it heads itself
    if config.extra_seeds:
        sections.append(
            seeds_stage(
                suite, train_store, out_dir, config, crosscoder, results[0], force=force, device=device, dtype=dtype
            )
        )
    return sections


def _evolution_report(
    crosscoder,
    train_store,
    suite,
    sections: list,
    out_dir: Path,
    config: DemoConfig,
    *,
    force: bool,
    device: str,
) -> Path:
    """The feature-evolution report with the other stages' sections; prints its classes and emergence,
    and the lineage events a crosscoder of another architecture makes too."""
    report_path, analysis, report = analyze_stage(
        crosscoder,
        store=ActivationStore.open(train_store.path),
        out=out_dir / "crosscoder" / REPORT_NAME,
        tokenizer=suite.tokenizer(),
        extra_sections=sections,
        device=device,
    )
    print(_class_summary(analysis))
    print(analysis.emergence.summary(analysis.lifetimes.peak))
    print(save_run_emergence(out_dir / "crosscoder", analysis.emergence, train_store))
    checked = lineage_referee_stage(train_store, out_dir, config, analysis, force=force, device=device)
    if checked is not None:
        line, section, agreement = checked
        print(line)
        report.extend(section).write(report_path)
        # saved again with the agreement, which the feature database shows beside each event
        save_run_emergence(out_dir / "crosscoder", replace(analysis.emergence, agreement=agreement), train_store)
    print(f"\nreport: {report_path}")
    return report_path


def _class_summary(analysis: Any) -> str:
    counts = analysis.class_counts()
    return "feature classes: " + ", ".join(f"{name} {count}" for name, count in counts.items())
