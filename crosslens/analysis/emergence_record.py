"""The emergence check and lineage of a crosscoder, in one bundle, and saved beside its run.

:class:`EmergenceResult` is what :func:`~crosslens.analysis.analyze.analyze_crosscoder` computes
(``analysis.emergence``): latent scaling and the check built on it (where activations were at
hand) and the lineage. ``crosslens analyze`` saves it into the run folder
(:func:`save_emergence`: ``RUN/emergence.safetensors`` holds the tables, ``RUN/emergence.json``
the events, the settings, what it was computed from and the tables' sha256, sealed, written
last); ``crosslens dashboards`` reads it back (:func:`read_emergence`) into the feature database,
refusing one computed for another crosscoder.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from crosslens.activations.partners import store_seal
from crosslens.activations.store import ActivationStore
from crosslens.analysis.composition import CoFiring, composition_pairs
from crosslens.analysis.emergence_check import EmergenceCheck, EmergenceCheckConfig, check_emergence
from crosslens.analysis.evolution import Lifetimes
from crosslens.analysis.lineage_events import (
    Lineage,
    LineageConfig,
    LineageEvent,
    counts_text,
    first_snapshot_events,
    lineage_of,
)
from crosslens.analysis.probes import device_and_dtype
from crosslens.analysis.scaling import (
    LatentScaling,
    LatentScalingConfig,
    check_snapshot_decoders,
    latent_scaling,
)
from crosslens.core.errors import CrosslensError
from crosslens.core.hashing import AGREEMENT_READING, crosscoder_sha256, file_sha256
from crosslens.core.paths import EMERGENCE_NAME, EMERGENCE_TENSORS_NAME, FINAL_DIRNAME
from crosslens.core.sealed import BrokenSealError, UnreadableRecordError, read_sealed, write_sealed

EMERGENCE_FORMAT = "crosslens.emergence/3"
"""The record's format. Each earlier one was written under other rules, and is read as none: a
``/2`` record's lineage events can list latents the activations hold at no snapshot, and a ``/1``
record's presence counted other latents' reconstruction wherever it lay."""
EMERGENCE_KEY = "emergence_sha256"
_LIFETIMES = ("emergence", "peak", "fade", "dead", "dip", "recovery")


class EmergenceRecordError(CrosslensError):
    """A run's saved emergence check is missing, damaged or of another crosscoder; the message is the fix."""


class NoEmergenceRecordError(EmergenceRecordError):
    """A run holds no saved emergence check of the crosscoder asked about: none at all, or one of
    another crosscoder (the run trained again since), as against one that is there but damaged."""


def made_there(agreement: float, line: float) -> bool | None:
    """Whether an event of this ``agreement`` counts as made by the other crosscoder too: at or
    above ``line``; None for NaN (none of the event's latents present on its side of it)."""
    return None if math.isnan(agreement) else agreement >= line


@dataclass(frozen=True)
class LineageAgreement:
    """How far another crosscoder of the same store makes each lineage event's moves, as
    ``crosslens analyze --lineage-against`` measured it (:mod:`crosslens.analysis.agreement`)."""

    against: str
    """The other run's folder, as it was given."""
    crosscoder_sha256: str
    """The identity of the other run's final crosscoder it was measured with (:func:`crosscoder_sha256`)."""
    line: float
    """The agreement at or above which an event counts as made there too."""
    agreement: list[float]
    """Per event of the lineage (``Lineage.events``, in order); NaN where none of its latents is
    present on its side of the event's snapshot."""
    store: dict[str, str] | None = None
    """The seal of the store both crosscoders' latent scaling read (:func:`store_seal`): the
    presence each side's moves are looked for in. None where none was named."""
    reading: str | None = AGREEMENT_READING
    """How the agreement read an event's latents (:data:`~crosslens.core.hashing.AGREEMENT_READING`:
    this crosslens's); None read from a record that names none, measured under an earlier reading."""

    def made(self) -> list[bool | None]:
        """Per event: whether the other crosscoder makes it (None: NaN, nothing to look for)."""
        return [made_there(a, self.line) for a in self.agreement]

    def to_dict(self) -> dict[str, Any]:
        return {
            "against": self.against,
            "crosscoder": self.crosscoder_sha256,
            "line": self.line,
            "events": [None if math.isnan(a) else float(a) for a in self.agreement],
            "store": self.store,
            "reading": self.reading,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LineageAgreement:
        events = [math.nan if a is None else float(a) for a in d["events"]]
        return cls(str(d["against"]), str(d["crosscoder"]), float(d["line"]), events, d.get("store"), d.get("reading"))


@dataclass(frozen=True)
class EmergenceResult:
    """Latent scaling, the emergence check and lineage of one crosscoder."""

    steps: list[int]
    """Training step of each snapshot."""
    lineage: Lineage
    lineage_config: LineageConfig
    scaling: LatentScaling | None = None
    """None where no activations were at hand (no store): nothing is then contested or not."""
    check: EmergenceCheck | None = None
    scaling_config: LatentScalingConfig | None = None
    agreement: LineageAgreement | None = None
    """Another crosscoder's agreement with each lineage event, where ``analyze --lineage-against`` measured it."""
    frequency: torch.Tensor | None = None
    """Each latent's firing frequency the evolution analysis read, ``[d_sae]``, where it read one:
    its dead latents, which the check does not measure and lineage does not read. The feature
    database classes latents by it, so that its classes are the ones the check was made with."""

    def counts(self) -> dict[str, int]:
        return {**(self.check.counts() if self.check is not None else {}), **self.lineage.counts()}

    def summary(self, peak_F: torch.Tensor | None = None) -> str:
        """The lines ``crosslens analyze`` prints; given each latent's peak snapshot (the evolution
        analysis's ``lifetimes.peak``), also how many events join latents strongest at the first
        snapshot (:func:`~crosslens.analysis.lineage_events.first_snapshot_events`)."""
        lineage = f"lineage: {counts_text(self.lineage.counts())}"
        if self.check is not None and self.lineage_config.held_by_activations:
            lineage += (
                f" ({len(self.lineage.set_aside)} more read from decoder rows the activations do not hold, set aside)"
            )
        first = "" if peak_F is None else first_snapshot_counts(self.lineage.events, peak_F, self.steps[0])
        if first:
            lineage += f"\n  of them, {first}"
        if self.check is None:
            return f"emergence check: not run (no activation store: latent scaling reads activations)\n{lineage}"
        c = self.check.counts()
        return (
            f"emergence check (latent scaling on {self.scaling.n_tokens:,} tokens): {c['contested']} of "
            f"{c['measured']} measured emergences contested ({c['earlier']} present earlier by latent scaling: "
            f"{c['in_error']} in the error, {c['in_reconstruction']} in other latents; {c['later']} later)\n{lineage}"
        )


def first_snapshot_counts(events: Sequence[LineageEvent], peak_F: torch.Tensor, first_step: int) -> str:
    """The events among latents strongest at the first snapshot (:func:`first_snapshot_events`) as the
    summary and the report say them, e.g. "joining latents strongest at step 0 (the untrained model):
    2 splits, 32 merges, 0 handoffs"; empty where there are none."""
    first = first_snapshot_events(events, peak_F)
    if not any(first.values()):
        return ""
    untrained = " (the untrained model)" if first_step == 0 else ""
    return f"joining latents strongest at step {first_step}{untrained}: {counts_text(first)}"


def compute_emergence(
    crosscoder: Any,
    analysis: Any,
    source: Any = None,
    *,
    hook: str | None = None,
    scaling_config: LatentScalingConfig | None = None,
    check_config: EmergenceCheckConfig | None = None,
    lineage_config: LineageConfig | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> EmergenceResult:
    """Latent scaling on ``source`` (skipped without one), the check against ``analysis`` (the
    crosscoder's :class:`~crosslens.analysis.evolution_analysis.EvolutionAnalysis`) and lineage.
    ``device`` is where lineage's cosines are computed."""
    check_snapshot_decoders(crosscoder)
    if analysis is None:
        raise ValueError(
            "the emergence check compares latent scaling with the evolution analysis's decoder-norm emergence: pass "
            "the crosscoder's EvolutionAnalysis (EvolutionAnalysis.from_crosscoder, or analyze_crosscoder's first result)"
        )
    lineage_config = lineage_config or LineageConfig()
    if source is None:
        return EmergenceResult(list(analysis.steps), lineage_of(analysis, lineage_config, device), lineage_config)
    scaling_config = scaling_config or LatentScalingConfig()
    cofiring = None
    if lineage_config.compositions:
        cofiring = CoFiring.zeros(*composition_pairs(analysis, lineage_config), device_and_dtype(crosscoder)[0])
    scaling = latent_scaling(crosscoder, source, hook=hook, config=scaling_config, progress=progress, cofiring=cofiring)
    check = check_emergence(analysis, scaling, check_config)
    lineage = lineage_of(
        analysis,
        lineage_config,
        device,
        scaled_present_FS=check.present,
        activation_share_FS=scaling.activation_share,
        cofiring=cofiring,
    )
    frequency = None if analysis.frequency is None else analysis.frequency.float().cpu()
    return EmergenceResult(
        list(analysis.steps), lineage, lineage_config, scaling, check, scaling_config, frequency=frequency
    )


def _tensors(result: EmergenceResult) -> dict[str, torch.Tensor]:
    out = {
        "relatives": result.lineage.relatives.int(),
        "relative_cosine": result.lineage.relative_cosine.float(),
    }
    if result.scaling is not None and result.check is not None:
        out |= {f"scaling.{k}": v for k, v in result.scaling.tensors().items()}
        check = result.check
        out |= {
            "check.presence": check.presence.float(),
            "check.decoder_emergence": check.decoder_emergence.int(),
            "check.measured": check.measured.to(torch.uint8),
            "check.contested": check.contested.to(torch.uint8),
        }
        out |= {f"check.scaled.{name}": getattr(check.scaled, name).int() for name in _LIFETIMES}
        if result.frequency is not None:
            out["analysis.frequency"] = result.frequency.float()
    return {k: v.contiguous().cpu() for k, v in out.items()}


def save_emergence(run_dir: str | os.PathLike, result: EmergenceResult, partners: dict[str, Any]) -> Path:
    """Write ``result`` into ``run_dir`` (the tables, then the sealed record naming their sha256)."""
    if result.agreement is not None and len(result.agreement.agreement) != len(result.lineage.events):
        raise ValueError(
            f"the lineage agreement holds {len(result.agreement.agreement)} values for {len(result.lineage.events)} "
            "events: measure it on this lineage (lineage_agreement(result.lineage, ...))"
        )
    run_dir = Path(run_dir)
    tensors_path, tmp = run_dir / EMERGENCE_TENSORS_NAME, run_dir / f".{EMERGENCE_TENSORS_NAME}.tmp"
    save_file(_tensors(result), str(tmp), metadata={"format": EMERGENCE_FORMAT})
    os.replace(tmp, tensors_path)
    check = result.check
    record = {
        "format": EMERGENCE_FORMAT,
        "partners": partners,
        "steps": [int(s) for s in result.steps],
        "tensors": EMERGENCE_TENSORS_NAME,
        "tensors_sha256": file_sha256(tensors_path),
        "n_tokens": None if result.scaling is None else result.scaling.n_tokens,
        "settings": {
            "latent_scaling": None if result.scaling_config is None else asdict(result.scaling_config),
            "check": None if check is None else asdict(check.config),
            "lineage": asdict(result.lineage_config),
        },
        "early_presence": None if check is None else {str(i): p for i, p in enumerate(check.early_presence) if p},
        "events": [e.to_dict() for e in result.lineage.events],
        "set_aside": [e.to_dict() for e in result.lineage.set_aside],
        "agreement": None if result.agreement is None else result.agreement.to_dict(),
        "counts": result.counts(),
    }
    write_sealed(run_dir / EMERGENCE_NAME, record, EMERGENCE_KEY)
    return run_dir / EMERGENCE_NAME


def save_run_emergence(run_dir: str | os.PathLike, result: EmergenceResult, store: Any = None) -> Path:
    """:func:`save_emergence` into a run folder, naming its final crosscoder and the store latent
    scaling read (an :class:`~crosslens.activations.store.ActivationStore`, or None) as its partners."""
    seal = store_seal(store) if isinstance(store, ActivationStore) else None
    return save_emergence(run_dir, result, {"crosscoder": crosscoder_sha256(run_dir), "store": seal})


def _fix(run_dir: Path) -> str:
    return f"run `crosslens analyze --crosscoder {run_dir}` (with the run's activation store) to write it"


def read_record(run_dir: str | os.PathLike, crosscoder_sha: str | None = None) -> dict[str, Any]:
    """The sealed record of ``run_dir``'s emergence check; :class:`EmergenceRecordError` naming the
    fix when it is missing, damaged, or (``crosscoder_sha`` given) of another crosscoder (missing or
    of another crosscoder: :class:`NoEmergenceRecordError`)."""
    run_dir = Path(run_dir)
    path = run_dir / EMERGENCE_NAME
    if not path.is_file():
        raise NoEmergenceRecordError(f"{run_dir} has no emergence check ({EMERGENCE_NAME}): {_fix(run_dir)}")
    try:
        record = read_sealed(path, EMERGENCE_KEY)
    except (UnreadableRecordError, BrokenSealError) as error:
        raise EmergenceRecordError(f"{path} is damaged ({error}); {_fix(run_dir)} again") from None
    if record.get("format") != EMERGENCE_FORMAT:
        raise EmergenceRecordError(
            f"{path} is not a {EMERGENCE_FORMAT} record (it is {record.get('format')!r}, written under other "
            f"rules); {_fix(run_dir)} again"
        )
    recorded = (record.get("partners") or {}).get("crosscoder")
    if crosscoder_sha is not None and recorded != crosscoder_sha:
        raise NoEmergenceRecordError(
            f"{path} was computed for another crosscoder than {run_dir / FINAL_DIRNAME} (the run was trained again "
            f"since); {_fix(run_dir)} again"
        )
    return record


def _recorded_config(cls: type[Any], recorded: dict[str, Any], what: str, run_dir: Path) -> Any:
    """A config the record's ``what`` was computed with; :class:`EmergenceRecordError` where its
    fields are not this crosslens's (a record of a version with other settings: its results would be
    read as if this version's rules had found them)."""
    names = {f.name for f in fields(cls)}
    if set(recorded) != names:
        said = [f"without {', '.join(sorted(names - set(recorded)))}"] * bool(names - set(recorded))
        said += [f"with {', '.join(sorted(set(recorded) - names))}"] * bool(set(recorded) - names)
        raise EmergenceRecordError(
            f"{run_dir / EMERGENCE_NAME} holds {what} found under other rules than this crosslens's "
            f"({'; '.join(said)}); {_fix(run_dir)} again"
        )
    return cls(**recorded)


def read_emergence(
    run_dir: str | os.PathLike, crosscoder_sha: str | None = None, *, record: dict[str, Any] | None = None
) -> EmergenceResult:
    """:func:`save_emergence`'s result read back, its tables checked against the record's sha256;
    ``record``: the one :func:`read_record` already read (and checked), not read again."""
    run_dir = Path(run_dir)
    record = read_record(run_dir, crosscoder_sha) if record is None else record
    tensors_path = run_dir / str(record["tensors"])
    if not tensors_path.is_file() or file_sha256(tensors_path) != record.get("tensors_sha256"):
        raise EmergenceRecordError(f"{tensors_path} is missing or altered; {_fix(run_dir)} again")
    try:
        tensors = load_file(str(tensors_path))
    except (OSError, SafetensorError) as error:
        raise EmergenceRecordError(f"{tensors_path} cannot be read ({error}); {_fix(run_dir)} again") from None
    settings, steps = record["settings"], [int(s) for s in record["steps"]]
    lineage = Lineage(
        relatives=tensors["relatives"].long(),
        relative_cosine=tensors["relative_cosine"],
        events=[LineageEvent.from_dict(e) for e in record["events"]],
        set_aside=[LineageEvent.from_dict(e) for e in record["set_aside"]],
    )
    lineage_config = _recorded_config(LineageConfig, settings["lineage"], "lineage", run_dir)
    agreement = None if record.get("agreement") is None else LineageAgreement.from_dict(record["agreement"])
    if agreement is not None and len(agreement.agreement) != len(lineage.events):
        raise EmergenceRecordError(
            f"{run_dir / EMERGENCE_NAME}'s lineage agreement is not of its events; {_fix(run_dir)} again"
        )
    if settings.get("check") is None:
        return EmergenceResult(steps=steps, lineage=lineage, lineage_config=lineage_config, agreement=agreement)
    try:
        scaling = LatentScaling.from_tensors(
            {k.removeprefix("scaling."): v for k, v in tensors.items() if k.startswith("scaling.")}, record["n_tokens"]
        )
    except KeyError as error:
        raise EmergenceRecordError(f"{tensors_path} lacks tables ({error.args[0]}); {_fix(run_dir)} again") from None
    column = lambda name: tensors[f"check.scaled.{name}"]  # noqa: E731
    scaled = Lifetimes(**{name: column(name).bool() if name == "dead" else column(name).long() for name in _LIFETIMES})
    early = record.get("early_presence") or {}
    check = EmergenceCheck(
        steps=steps,
        config=_recorded_config(EmergenceCheckConfig, settings["check"], "an emergence check", run_dir),
        presence=tensors["check.presence"],
        decoder_emergence=tensors["check.decoder_emergence"].long(),
        scaled=scaled,
        measured=tensors["check.measured"].bool(),
        contested=tensors["check.contested"].bool(),
        early_presence=[early.get(str(i)) for i in range(scaling.d_sae)],
    )
    scaling_config = _recorded_config(LatentScalingConfig, settings["latent_scaling"], "latent scaling", run_dir)
    frequency = tensors.get("analysis.frequency")  # None in a record of an earlier crosslens
    if frequency is not None and frequency.shape != (scaling.d_sae,):
        raise EmergenceRecordError(f"{tensors_path}'s firing frequencies are not its latents'; {_fix(run_dir)} again")
    return EmergenceResult(steps, lineage, lineage_config, scaling, check, scaling_config, agreement, frequency)
