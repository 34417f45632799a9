"""The demo's lineage check: a crosscoder of another architecture trained on the same store, and how
many of the demo crosscoder's lineage events it makes too, as ``crosslens analyze
--lineage-against`` counts them (:mod:`crosslens.analysis.agreement`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from crosslens.analysis import EvolutionAnalysis, analyze_crosscoder, lineage_agreement
from crosslens.analysis.agreement import (
    AGREEMENT_LINE,
    agreement_line,
    agreement_record,
    check_agreement_run,
)
from crosslens.analysis.emergence_record import EmergenceRecordError, LineageAgreement, save_run_emergence
from crosslens.analysis.emergence_report import lineage_agreement_section
from crosslens.cli.demo_stages import DemoConfig, train_stage
from crosslens.htmlreport import Report
from crosslens.training.config import ArchitectureConfig


def lineage_referee_stage(
    train_store: Any, out_dir: Path, config: DemoConfig, analysis: Any, *, force: bool = False, device: str = "cpu"
) -> tuple[str, Report, LineageAgreement] | None:
    """Train (or reuse) ``config.lineage_referee``'s crosscoder on ``train_store`` with the demo's
    steps, batch and seed and that architecture's defaults, analyse it with the store (or reuse its
    saved check); return the line counting ``analysis``'s lineage events it makes too, the report
    section listing each event's agreement, and the agreement as the emergence record keeps it. None without a referee or without latent scaling's
    presence to read."""
    arch = config.lineage_referee
    emergence = analysis.emergence
    if arch is None or emergence is None or emergence.check is None:
        return None
    if arch == config.sae.architecture:
        raise ValueError(
            f"lineage_referee {arch!r} is the demo crosscoder's own architecture: trained with the same seed and steps "
            "it is the same crosscoder; name another architecture, or None"
        )
    run_dir = Path(out_dir) / f"referee-{arch}"
    print(f"a second crosscoder ({arch}) on the same store, to check the lineage against: {run_dir}")
    referee_config = replace(config, sae=ArchitectureConfig(arch, d_sae=config.sae.d_sae))
    referee = train_stage(train_store, run_dir, referee_config, force=force, device=device)
    try:
        checked = check_agreement_run(run_dir, train_store, config.hook)
    except EmergenceRecordError:  # none yet, damaged, or of weights trained since
        checked = analyze_crosscoder(referee, store=train_store, device=device)[0].emergence
        save_run_emergence(run_dir, checked, train_store)
    other = EvolutionAnalysis.from_crosscoder(referee, steps=checked.steps)  # the referee in hand, not read again
    agreement = lineage_agreement(emergence.lineage, analysis, other, emergence.check.present, checked.check.present)
    section = lineage_agreement_section(emergence.lineage, agreement, analysis.steps, run_dir.name, AGREEMENT_LINE)
    line = agreement_line(run_dir, emergence.lineage.events, agreement)
    return line, section, agreement_record(run_dir, agreement, train_store)
