"""``crosslens analyze``: the feature-evolution report of a saved crosscoder (a run's, a
checkpoint's or a pretrained release's), with the sections other commands saved in its run folder
(``crosslens attribute``); ``crosslens report`` rebuilds a run's report the same way."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosslens.cli.common import CLIError, crosscoder_folder_arg, device_and_dtype
from crosslens.cli.flags import Subcommand
from crosslens.cli.inputs import check_output_file
from crosslens.cli.options import LoadedCrosscoderFlags
from crosslens.core.devices import dtype_name
from crosslens.core.hashing import crosscoder_sha256
from crosslens.core.hooks import recorded_hook
from crosslens.core.metadata import crosscoder_suite_record
from crosslens.core.paths import QUALITY_NAME, SECTIONS_DIR


@dataclass
class AnalyzeFlags:
    crosscoder: str = field(metadata={"flag": "--crosscoder"})
    """The --out folder of crosslens train (RUN_DIR or RUN_DIR/final), or RELEASE/ID."""
    store: str | None = None
    """Activation store, for firing frequencies, probes and top contexts (default: the one the run trained on);
    re-hashed against its manifest, and refused unless it holds the crosscoder's snapshots and hook."""
    out: str | None = None
    """Report file (default: RUN_DIR/report.html, else report.html)."""
    lineage_against: str | None = None
    """Another run trained on the same store (best, of another architecture) and analysed with it:
    how many of this crosscoder's lineage events its crosscoder makes too."""


def analyze(args: argparse.Namespace) -> int:
    folder = crosscoder_folder_arg(args.crosscoder, "--crosscoder")
    return write_report(folder, args.store, args.out, args, lineage_against=args.lineage_against)


def _default_report(folder: Path, run_dir: Path | None) -> Path:
    """Where ``analyze`` writes without ``--out``: the run's report.html for its final crosscoder,
    ``report-<checkpoint>.html`` beside it for one of its checkpoints (which must not overwrite
    the finished run's report), report.html here for a crosscoder outside a run."""
    from crosslens.core.paths import REPORT_NAME
    from crosslens.training.runfolder import is_final_crosscoder

    if run_dir is None:
        return Path(REPORT_NAME)
    if is_final_crosscoder(folder, run_dir):
        return run_dir / REPORT_NAME
    return run_dir / f"report-{Path(folder).name}.html"


def write_report(
    folder: Path, store: str | None, out: str | None, args: argparse.Namespace, lineage_against: str | None = None
) -> int:
    """Analyse the crosscoder in ``folder`` and write report.html, with the sections other commands
    saved in its run folder (``crosslens attribute``); ``lineage_against``: another run whose
    crosscoder the lineage is checked against (``analyze --lineage-against``)."""
    from crosslens.activations import ActivationStore
    from crosslens.activations.partners import check_crosscoder_store, store_seal
    from crosslens.analysis import analyze_crosscoder
    from crosslens.analysis.diffing import is_diffing
    from crosslens.analysis.scaling import check_snapshot_decoders
    from crosslens.causal.spliced_loss_eval import add_spliced_loss_section
    from crosslens.crosscoders.saved import load_crosscoder_folder
    from crosslens.training.runfolder import is_final_crosscoder, run_folder, run_store

    device, _ = device_and_dtype(args)
    run_dir = run_folder(folder)
    if store is not None and not Path(store).exists():
        raise CLIError(f"--store {store}: the path does not exist; pass the store `crosslens harvest --out` wrote")
    store = store or run_store(run_dir)
    _check_norm_factors(run_dir, store)
    out_path = check_output_file(  # before the analysis
        Path(out) if out else _default_report(folder, run_dir),
        suffixes=(".html", ".htm"),
        kind="the report is an HTML page",
    )
    record = crosscoder_suite_record(folder)
    dtype = dtype_name(args.dtype) if args.dtype else None
    crosscoder = load_crosscoder_folder(folder, device=device, dtype=dtype)
    diffing = is_diffing(crosscoder, str(folder))  # before the store is hashed and read
    check_snapshot_decoders(crosscoder, str(folder))  # before the store is hashed and read
    hook = recorded_hook(crosscoder)
    opened = ActivationStore.open(store, verify="full") if store else None
    if opened is not None:
        check_crosscoder_store(crosscoder, opened, crosscoder_name=folder)
    if lineage_against is not None and diffing:
        raise CLIError(
            "--lineage-against reads lineage through training; this crosscoder is of two models, with no training "
            "order for a split or a merge: leave the flag out"
        )
    against = _lineage_run(lineage_against, folder, opened, hook)
    final = run_dir is not None and is_final_crosscoder(folder, run_dir)
    sections = saved_sections(run_dir) if final else []  # a damaged one is refused before the analysis
    # without a store, the final crosscoder's check as a store measured it: (the check, or None where it
    # cannot be read, and that store's seal); None where the run holds no such record
    measured = _measured_check(run_dir) if final and opened is None else None
    kept = measured[0] if measured is not None else None
    analysis, report = analyze_crosscoder(
        crosscoder,
        store=opened,
        tokenizer=suite_tokenizer(record) if store else None,
        title=suite_title(record, hook),
        device=device,
        emergence=True if kept is None else kept,
    )
    seal = store_seal(opened) if opened is not None else None if kept is None else measured[1]
    emergence = _with_agreement(folder, run_dir, analysis, against, device, opened, seal)
    if emergence.agreement is not None:
        report.extend(_agreement_section(emergence, analysis.steps))
    # the run's quality table and saved sections describe its final crosscoder, not a checkpoint
    spliced = _spliced_record(run_dir) if final else None
    if spliced is not None:
        add_spliced_loss_section(report, spliced)
    for section in sections:
        report.extend(section)
    report.write(out_path)
    _print_summary(analysis, emergence)
    if final:
        _save_emergence(run_dir, emergence, opened, measured)
    if store is None:
        _say_no_store(run_dir, read_firing=analysis.frequency is not None)
    if sections:
        print(f"with {len(sections)} saved section(s) from {run_dir / 'sections'}")
    print(f"report: {out_path}")
    return 0


def _check_norm_factors(run_dir: Path | None, store: str | None) -> None:
    """Refuse to read ``store`` through the crosscoder of a release's run whose source scaled
    activations by factors it did not save, none measured since: its activations cannot be put on
    the scale the crosscoder reads. The message names the command that measures them."""
    from crosslens.training.runfolder import norm_factors_problem

    problem = norm_factors_problem(run_dir) if store and run_dir is not None else None
    if problem is not None:
        raise CLIError(problem)


def _lineage_run(value: str | None, folder: Path, store: Any, hook: str | None) -> tuple[Path, Any] | None:
    """``--lineage-against``'s run folder and its saved check, read before the analysis."""
    from crosslens.analysis.agreement import check_agreement_run
    from crosslens.training.runfolder import is_final_crosscoder, run_folder

    if value is None:
        return None
    if store is None:
        raise CLIError("--lineage-against reads the lineage latent scaling holds: pass --store (the store both read)")
    other_folder = crosscoder_folder_arg(value, "--lineage-against")
    other = run_folder(other_folder)
    if other is None:
        raise CLIError(
            f"--lineage-against {value}: not a run folder; pass the --out folder of the other crosslens train"
        )
    if not is_final_crosscoder(other_folder, other):
        raise CLIError(
            f"--lineage-against {value} is a checkpoint: the check is read from a run's final crosscoder, with the "
            f"emergence check analyze saved for it; pass the run folder {other}"
        )
    this = run_folder(folder)
    if this is not None and other.resolve() == this.resolve():
        raise CLIError(f"--lineage-against {value} is this run: pass another run trained on the same store")
    return other, check_agreement_run(other, store, hook)


def _print_summary(analysis: Any, emergence: Any) -> None:
    if analysis.diffing is not None:  # two models: no training order for classes through time or emergences
        print("\n".join(analysis.diffing.summary_lines()))
        return
    print("feature classes: " + ", ".join(f"{name} {n}" for name, n in analysis.class_counts().items()))
    print(analysis.emergence.summary(analysis.lifetimes.peak))
    if emergence.agreement is not None:
        print(_agreement_line(emergence))


def _measured_check(run_dir: Path) -> tuple[Any, dict | None] | None:
    """Where the run's record holds an emergence check of its final crosscoder that latent scaling
    measured on a store: that check, without its agreement (which :func:`_with_agreement` decides
    again), or None where it cannot be read; and that store's seal. Where the record itself cannot be
    read (a broken seal, an older crosslens's format), ``(None, None)``: it may hold such a check.
    None where there is no such record (none, one of an earlier training of the run, or one measured
    without a store)."""
    from dataclasses import replace

    from crosslens.analysis.emergence_record import (
        EmergenceRecordError,
        NoEmergenceRecordError,
        read_emergence,
        read_record,
    )

    try:
        record = read_record(run_dir, crosscoder_sha256(run_dir))
    except NoEmergenceRecordError:
        return None
    except EmergenceRecordError:
        return None, None
    seal = (record.get("partners") or {}).get("store") or None
    if seal is None:
        return None
    try:
        result = read_emergence(run_dir, record=record)
    except EmergenceRecordError:
        return None, seal
    return (None if result.check is None else replace(result, agreement=None)), seal


def _with_agreement(
    folder: Path, run_dir: Path | None, analysis: Any, against: Any, device: str, store: Any, seal: dict | None
) -> Any:
    """The analysis's emergence result with its lineage's agreement: measured against ``against``
    (``--lineage-against``'s run and its check) on ``store``, else the one the run's saved record
    holds where it was measured on these very events, on the store of ``seal`` (the one the
    emergence check read), with the crosscoder that run still holds (a note says why one is
    dropped)."""
    from dataclasses import replace

    from crosslens.analysis.agreement import agreement_record, run_lineage_agreement

    emergence = analysis.emergence
    if against is not None:
        present = None if emergence.check is None else emergence.check.present
        other, checked = against
        values = run_lineage_agreement(emergence.lineage, analysis, present, other, device=str(device), checked=checked)
        return replace(emergence, agreement=agreement_record(other, values, store))
    saved, note = _saved_agreement(folder, run_dir, emergence, seal)
    if note:
        print(note)
    return emergence if saved is None else replace(emergence, agreement=saved)


def _saved_agreement(
    folder: Path, run_dir: Path | None, emergence: Any, seal: dict | None = None
) -> tuple[Any, str | None]:
    """The agreement the run's saved emergence record holds, where it still describes ``emergence``'s
    events, read on the store of seal ``seal`` (:func:`~crosslens.analysis.agreement.saved_agreement`);
    else None, with a note naming the command that measures it again where one was dropped."""
    from crosslens.analysis.agreement import measure_again, saved_agreement
    from crosslens.training.runfolder import is_final_crosscoder

    if run_dir is None or not is_final_crosscoder(folder, run_dir):
        return None, None
    saved, problem = saved_agreement(run_dir, emergence.lineage, seal)
    if problem is None:
        return saved, None
    return None, f"note: {problem}; {measure_again(run_dir, saved.against)}"


def _agreement_section(emergence: Any, steps: Any) -> Any:
    from crosslens.analysis.emergence_report import lineage_agreement_section

    agreement = emergence.agreement
    return lineage_agreement_section(emergence.lineage, agreement.agreement, steps, agreement.against, agreement.line)


def _agreement_line(emergence: Any) -> str:
    from crosslens.analysis.agreement import agreement_line

    agreement = emergence.agreement
    return agreement_line(agreement.against, emergence.lineage.events, agreement.agreement, agreement.line)


def _save_emergence(run_dir: Path, result: Any, store: Any, measured: tuple[Any, dict | None] | None) -> None:
    """Save the emergence check and lineage of the run's final crosscoder into the run folder
    (``crosslens dashboards`` reads them from there); without a store, a record latent scaling
    measured on one (``measured``: :func:`_measured_check`'s), which this analysis reused, stays as
    it is, saying so. One that could not be read (its tables, or the record itself) is replaced,
    saying that."""
    from crosslens.analysis.emergence_record import save_run_emergence
    from crosslens.core.paths import EMERGENCE_NAME

    if store is None and measured is not None and measured[0] is not None:
        print(
            f"emergence check and lineage: kept {run_dir / EMERGENCE_NAME}, which latent scaling measured on a store "
            "(this analysis read none; pass --store to measure it again)"
        )
        return
    saved = save_run_emergence(run_dir, result, store)
    if store is None and measured is not None:
        lost = (
            "the check latent scaling measured on a store could not be read (its tables are missing or altered, or "
            "an older crosslens wrote it)"
            if measured[1] is not None
            else "the saved record could not be read (its seal is broken, or an older crosslens wrote it)"
        )
        print(
            f"emergence check and lineage: {lost}; replaced by this analysis's, without latent scaling: {saved}; "
            "pass --store to measure it again"
        )
        return
    print(f"emergence check and lineage: {saved}")


def _say_no_store(run_dir: Path | None, read_firing: bool = False) -> None:
    """What a report without a store lacks, and where the store the run trained on is to be had;
    ``read_firing``: its dead latents are those of the saved check's firing frequencies."""
    from crosslens.training.runfolder import recorded_store, streamed_store_command

    gone, harvest = recorded_store(run_dir), streamed_store_command(run_dir)
    print(
        f"the store the run trained on, {gone} (its run.json), is not there: pass --store with where it is now"
        if gone
        else "no activation store (--store)",
        "; the report has no probes or top contexts (its dead features are those of the saved emergence check's "
        "firing frequencies)"
        if read_firing
        else "; the report has no firing frequencies, probes or top contexts, and no feature is classed dead "
        "(that needs firing frequencies)",
        sep="",
    )
    if harvest is not None:
        print(
            f"the run streamed its activations (train --stream); `{harvest}` writes a store of the tokens "
            "it trained on, to pass as --store"
        )


def _spliced_record(run_dir: Path | None) -> dict | None:
    """The spliced-loss record of the run's quality.json (sealed with the run), when it has one."""
    path = None if run_dir is None else Path(run_dir) / QUALITY_NAME
    if path is None or not path.is_file():
        return None
    quality = json.loads(path.read_text())
    return quality.get("spliced_loss") if isinstance(quality, dict) else None


def saved_sections(run_dir: Path | None) -> list[Any]:
    """The report sections saved in a run folder, in name order."""
    from crosslens.htmlreport import Report

    if run_dir is None or not (run_dir / SECTIONS_DIR).is_dir():
        return []
    sections = []
    for path in sorted((run_dir / SECTIONS_DIR).glob("*.json")):
        try:
            sections.append(Report.from_dict(json.loads(path.read_text())))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CLIError(
                f"{path} is not a section `crosslens attribute` wrote ({type(err).__name__}: {err}); "
                "run attribute again or delete it"
            ) from None
    return sections


def suite_title(record: dict[str, Any], hook: str | None = None) -> str:
    """A report title naming the suite: its folder for local suites (every pico build has the
    model id crosslens/pico), else its model id."""
    name = record.get("model_id") or "crosscoder"
    if record.get("root"):
        name = f"{Path(record['root']).name} ({name})" if name != Path(record["root"]).name else name
    return f"crosslens: {name}" + (f", {hook}" if hook else "")


def suite_tokenizer(record: dict[str, Any]) -> Any:
    """The tokenizer of the suite a crosscoder was trained on, for decoding contexts (None if unreachable)."""
    from transformers import AutoTokenizer

    from crosslens.checkpoints import CheckpointSuite
    from crosslens.core.model_specs import snapshot_model

    try:
        if record.get("root") and Path(record["root"]).is_dir():
            return CheckpointSuite.local(record["root"]).tokenizer()
        if record.get("model_id"):  # a diffing suite's models share its first one's tokenizer
            return AutoTokenizer.from_pretrained(snapshot_model(record, 0))
    except Exception:  # noqa: BLE001 - contexts then show token ids, and say so
        return None
    return None


COMMAND = Subcommand(
    ("analyze",),
    "feature evolution report from a trained crosscoder",
    (AnalyzeFlags, LoadedCrosscoderFlags),
    analyze,
)
