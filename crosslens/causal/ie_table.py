"""One task's indirect effects: IE of every crosscoder feature at every attributed snapshot,
as :func:`crosslens.causal.attribution.attribute` returns them, with tidy rows and JSON
save/load."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int

from crosslens.activations.store import snapshot_label
from crosslens.causal.behaviour import SnapshotBehaviour, mark_no_behaviour
from crosslens.causal.relative_ie import (
    RelIEThresholds,
    bootstrap_ie_ci,
    classify_relie,
    relie,
    relie_floor_mask,
    select_top_features,
)
from crosslens.causal.snapshot_models import task_sha256
from crosslens.core.hashing import weights_sha256
from crosslens.core.metadata import metadata_value
from crosslens.tasks.base import TokenizedTask


@dataclass
class IETable:
    """IE of every feature at every attributed snapshot for one task (dense ``[d_sae, n]``)."""

    task: str
    snapshots: list[int]
    """Crosscoder snapshot index of each column."""
    ie: Float[torch.Tensor, "d_sae n_snapshots"]
    error_ie: Float[torch.Tensor, " n_snapshots"]
    metric_clean: Float[torch.Tensor, " n_snapshots"]
    """Mean clean metric per snapshot."""
    metric_patch: Float[torch.Tensor, " n_snapshots"]
    """Mean metric at the patch point (corrupted prompt, or all features and error zeroed)."""
    snapshot_labels: list[str] = field(default_factory=list)
    """Human-readable name per column (revision), defaults to ``s{index}``."""
    config: dict[str, Any] = field(default_factory=dict)
    """How it was computed (:class:`~crosslens.causal.attribution.AttributionConfig`, hook, metric)
    and with what (:func:`table_identity`)."""
    ie_per_example: Float[torch.Tensor, "n_examples d_sae n_snapshots"] | None = field(default=None, repr=False)
    """Each example's IE (``ie`` is its mean over examples); kept in memory for bootstrap
    confidence intervals, not written by :meth:`save`."""

    def __post_init__(self) -> None:
        if self.ie.ndim != 2 or self.ie.shape[1] != len(self.snapshots):
            raise ValueError(
                f"ie must be [d_sae, {len(self.snapshots)}] (one column per snapshot), got {tuple(self.ie.shape)}"
            )
        if not self.snapshot_labels:
            self.snapshot_labels = [f"s{index}" for index in self.snapshots]

    @property
    def d_sae(self) -> int:
        return int(self.ie.shape[0])

    def rows(self, features: Sequence[int] | torch.Tensor | None = None, *, include_zero: bool = False) -> list[dict]:
        """Tidy rows ``{feature, snapshot, label, task, ie}`` (zero IE skipped unless asked)."""
        chosen = torch.arange(self.d_sae) if features is None else torch.as_tensor(features, dtype=torch.long)
        outside = chosen[(chosen < 0) | (chosen >= self.d_sae)]
        if len(outside):  # -1 was read as the last feature and reported as feature -1
            raise IndexError(f"feature {int(outside[0])}: this table has features 0 to {self.d_sae - 1}")
        values = self.ie[chosen]
        keep = torch.ones_like(values, dtype=torch.bool) if include_zero else values != 0
        out = []
        for row, column in torch.nonzero(keep).tolist():
            out.append(
                {
                    "feature": int(chosen[row]),
                    "snapshot": self.snapshots[column],
                    "label": self.snapshot_labels[column],
                    "task": self.task,
                    "ie": float(values[row, column]),
                }
            )
        return out

    def relie(self) -> Float[torch.Tensor, "d_sae n_snapshots"]:
        """One-vs-all RelIE over this table's snapshots."""
        return relie(self.ie)

    def top_features(self, k: int) -> Int[torch.Tensor, " n_selected"]:
        """Union over snapshots of each snapshot's top-k features by |IE|."""
        return select_top_features(self.ie, k)

    def feature_classes(
        self,
        features: torch.Tensor,
        relie_values: torch.Tensor,
        thresholds: RelIEThresholds,
        effect_floor: float,
        n_boot: int,
        behaviours: Sequence[SnapshotBehaviour],
    ) -> tuple[Any, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The stage's RelIE classes of ``features`` (their ``relie_values``): none below the noise
        floor (``effect_floor`` and the bootstrap intervals over examples, ``n_boot`` resamples),
        none at a snapshot at chance; with the mask of classed entries and the intervals."""
        ci_low = ci_high = None
        if self.ie_per_example is not None and self.ie_per_example.shape[0] > 1 and len(features):  # none: all IE 0
            ci_low, ci_high = bootstrap_ie_ci(self.ie_per_example[:, features], n_boot=n_boot)
        classed = relie_floor_mask(self.ie[features], effect_floor, ci_low, ci_high)
        labels = mark_no_behaviour(classify_relie(relie_values, thresholds, classed=classed), behaviours)
        return labels, classed, ci_low, ci_high

    def save(self, path: str | Path) -> Path:
        """JSON: metadata plus tidy rows of every non-zero IE."""
        path = Path(path)
        payload = {
            "task": self.task,
            "snapshots": self.snapshots,
            "snapshot_labels": self.snapshot_labels,
            "d_sae": self.d_sae,
            "error_ie": self.error_ie.tolist(),
            "metric_clean": self.metric_clean.tolist(),
            "metric_patch": self.metric_patch.tolist(),
            "config": self.config,
            "rows": [{"feature": r["feature"], "snapshot": r["snapshot"], "ie": r["ie"]} for r in self.rows()],
        }
        path.write_text(json.dumps(payload))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "IETable":
        payload = json.loads(Path(path).read_text())
        column = {snapshot: i for i, snapshot in enumerate(payload["snapshots"])}
        ie = torch.zeros(payload["d_sae"], len(payload["snapshots"]))
        for row in payload["rows"]:
            ie[row["feature"], column[row["snapshot"]]] = row["ie"]
        return cls(
            task=payload["task"],
            snapshots=list(payload["snapshots"]),
            ie=ie,
            error_ie=torch.tensor(payload["error_ie"]),
            metric_clean=torch.tensor(payload["metric_clean"]),
            metric_patch=torch.tensor(payload["metric_patch"]),
            snapshot_labels=list(payload["snapshot_labels"]),
            config=payload.get("config", {}),
        )


def crosscoder_identity(crosscoder: Any) -> dict[str, Any]:
    """What identifies a crosscoder to an IE table: its weights' sha256 and its snapshots (as its
    record names them, else ``s{index}``)."""
    recorded = (metadata_value(crosscoder, "suite") or {}).get("snapshots") or []
    if recorded and all(isinstance(entry, Mapping) for entry in recorded):
        snapshots = [snapshot_label(entry) for entry in recorded]
    else:
        snapshots = [f"s{index}" for index in range(int(crosscoder.cfg.n_snapshots))]
    return {"crosscoder_sha256": weights_sha256(crosscoder), "crosscoder_snapshots": snapshots}


def table_identity(crosscoder: Any, task: TokenizedTask) -> dict[str, Any]:
    """What an IE table records it was computed with: :func:`crosscoder_identity` and the
    tokenized task's :func:`~crosslens.causal.snapshot_models.task_sha256`."""
    return {**crosscoder_identity(crosscoder), "task_sha256": task_sha256(task)}


def identity_problem(table: IETable, identity: Mapping[str, Any]) -> str | None:
    """Why ``table`` was not computed with what ``identity`` describes (:func:`crosscoder_identity`,
    or :func:`table_identity` to check the task too), or None. A table that records none of it
    cannot be verified, and is said to be so."""
    recorded = table.config
    if any(key not in recorded for key in identity):
        return "it records no crosscoder or task it was computed with (saved before crosslens recorded them)"
    sha, ours = str(recorded["crosscoder_sha256"]), str(identity["crosscoder_sha256"])
    if sha != ours:
        return f"it was computed with another crosscoder (weights sha256 {sha[:12]}..., this one's {ours[:12]}...)"
    if list(recorded["crosscoder_snapshots"]) != list(identity["crosscoder_snapshots"]):
        return (
            f"its crosscoder's snapshots are {', '.join(recorded['crosscoder_snapshots'])}, this one's "
            f"{', '.join(identity['crosscoder_snapshots'])}"
        )
    if "task_sha256" in identity and recorded["task_sha256"] != identity["task_sha256"]:
        return "it was computed on other tokens than this task's"
    return None
