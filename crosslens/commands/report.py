"""``crosslens analyze`` and ``crosslens report``: the feature-evolution report of a saved crosscoder."""

from __future__ import annotations

import argparse
from pathlib import Path

from crosslens.commands.common import CLIError, crosscoder_folder_arg, device_and_dtype


def analyze(args: argparse.Namespace) -> int:
    folder = crosscoder_folder_arg(args.crosscoder, "--crosscoder")
    return _write_report(folder, args.store, args.out, args)


def report(args: argparse.Namespace) -> int:
    from crosslens.commands.runs import run_folder

    folder = crosscoder_folder_arg(args.run_dir, "RUN_DIR")
    if run_folder(folder) is None:  # a pretrained release or a crosscoder saved by hand has no run's report
        raise CLIError(
            f"RUN_DIR {args.run_dir}: not a `crosslens train` run folder, so it has no report to rebuild; "
            f"for any crosscoder, `crosslens analyze --crosscoder {args.run_dir}` writes one"
        )
    return _write_report(folder, args.store, args.out, args)


def _default_report(folder: Path, run_dir: Path | None) -> Path:
    """Where ``analyze`` writes without ``--out``: the run's report.html for its final crosscoder,
    ``report-<checkpoint>.html`` beside it for one of its checkpoints (which must not overwrite
    the finished run's report), report.html here for a crosscoder outside a run."""
    from crosslens.commands.runs import is_final_crosscoder

    if run_dir is None:
        return Path("report.html")
    if is_final_crosscoder(folder, run_dir):
        return run_dir / "report.html"
    return run_dir / f"report-{Path(folder).name}.html"


def _write_report(folder: Path, store: str | None, out: str | None, args: argparse.Namespace) -> int:
    """Analyse the crosscoder in ``folder`` and write report.html, with the sections other commands
    saved in its run folder (``crosslens attribute``)."""
    from crosslens.activations import ActivationStore
    from crosslens.activations.partners import check_crosscoder_store
    from crosslens.analysis import analyze_crosscoder
    from crosslens.commands.inputs import check_output_file
    from crosslens.commands.runs import (
        crosscoder_suite_record, recorded_store, run_folder, run_store, saved_sections, streamed_store_command, suite_title,
        suite_tokenizer,
    )  # fmt: skip
    from crosslens.core.devices import dtype_name
    from crosslens.core.hooks import recorded_hook
    from crosslens.crosscoders.saved import load_crosscoder_folder

    device, _ = device_and_dtype(args)
    run_dir = run_folder(folder)
    if store is not None and not Path(store).exists():
        raise CLIError(f"--store {store}: the path does not exist; pass the store `crosslens harvest --out` wrote")
    store = store or run_store(run_dir)
    out_path = check_output_file(  # before the analysis
        Path(out) if out else _default_report(folder, run_dir), suffixes=(".html", ".htm"), kind="the report is an HTML page"
    )
    record = crosscoder_suite_record(folder)
    dtype = dtype_name(args.dtype) if args.dtype else None
    crosscoder = load_crosscoder_folder(folder, device=device, dtype=dtype)
    hook = recorded_hook(crosscoder)
    opened = ActivationStore.open(store, verify="full") if store else None
    if opened is not None:
        check_crosscoder_store(crosscoder, opened, crosscoder_name=folder)
    tokenizer = suite_tokenizer(record) if store else None
    analysis, report = analyze_crosscoder(
        crosscoder, store=opened, tokenizer=tokenizer,
        title=suite_title(record, hook), device=device,
    )  # fmt: skip
    spliced = _spliced_record(run_dir)
    if spliced is not None:
        from crosslens.causal.spliced_loss import add_spliced_loss_section

        add_spliced_loss_section(report, spliced)
    sections = saved_sections(run_dir)
    for section in sections:
        report.extend(section)
    report.write(out_path)
    print("feature classes: " + ", ".join(f"{name} {n}" for name, n in analysis.class_counts().items()))
    if store is None:
        gone, harvest = recorded_store(run_dir), streamed_store_command(run_dir)
        print(f"the store the run trained on, {gone} (its run.json), is not there: pass --store with where it is now"
              if gone else "no activation store (--store)",
              "; the report has no firing frequencies, probes or top contexts, and no feature is classed dead "
              "(that needs firing frequencies)", sep="")  # fmt: skip
        if harvest is not None:
            print(f"the run streamed its activations (train --stream); `{harvest}` writes a store of the tokens "
                  "it trained on, to pass as --store")  # fmt: skip
    if sections:
        print(f"with {len(sections)} saved section(s) from {run_dir / 'sections'}")
    print(f"report: {out_path}")
    return 0


def _spliced_record(run_dir: Path | None) -> dict | None:
    """The spliced-loss record of the run's quality.json (sealed with the run), when it has one."""
    import json

    from crosslens.core.paths import QUALITY_NAME

    path = None if run_dir is None else Path(run_dir) / QUALITY_NAME
    if path is None or not path.is_file():
        return None
    quality = json.loads(path.read_text())
    return quality.get("spliced_loss") if isinstance(quality, dict) else None
