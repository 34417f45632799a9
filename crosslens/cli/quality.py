"""The quality table a command reports for a saved crosscoder (``train`` after training,
``evaluate`` on demand): held-out explained variance per snapshot, L0 and dead features, and the
spliced-model loss, printed and saved as ``quality.json``, whose ``"spliced_loss"`` entry is::

    {"ablation": "zero", "n_seqs": 64, "seq_len": 64, "measured_on": STORE, "crosscoder": [row, ...]}

with one :func:`~crosslens.causal.spliced_loss_eval.spliced_loss` row per snapshot (the demo adds
``"baselines"``: the per-snapshot SAEs' rows, by architecture). The spliced-loss figures also go
to the summary of the W&B run training logged to.

Imported by the commands' functions: it imports torch and the stages.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from crosslens.activations import ActivationStore
from crosslens.activations.partners import check_crosscoder_store, open_heldout, shared_sequences, store_seal
from crosslens.causal import defaults
from crosslens.causal.spliced_loss_eval import format_spliced_loss, spliced_record
from crosslens.checkpoints.on_device import on_device
from crosslens.cli.common import CLIError, resolve_suite
from crosslens.core.errors import CrosslensError
from crosslens.crosscoders.saved import load_crosscoder_folder
from crosslens.training.comparison import format_quality_table, quality_table
from crosslens.training.metrics import evaluate_crosscoder

WANDB_SUMMARY_KEYS = ("ce_loss_score", "kl_div_with_sae")
"""The per-snapshot figures a W&B run's summary carries, under spliced/<name>/<snapshot>."""


def quality_rows(crosscoder: Any, eval_store: Any, hook: str | None = None) -> tuple[list[dict], dict]:
    """:func:`quality_table` rows (explained variance per snapshot, mean L0, d_sae) and the raw
    evaluation (with ``dead_features``) of ``crosscoder`` on ``eval_store``."""
    result = evaluate_crosscoder(crosscoder, eval_store, hook)
    return quality_table(result, {}, eval_store.snapshots, d_sae=int(crosscoder.cfg.d_sae)), result


def format_quality(rows: list[dict], result: dict, where: str) -> str:
    """The quality table with a line saying which tokens it was measured on and the dead features."""
    d_sae = next(r["crosscoder"] for r in rows if r["kind"] == "d_sae")
    return (
        f"explained variance per snapshot on {where} ({result['n_tokens']} tokens):\n"
        + format_quality_table(rows)
        + f"\ndead features (never fire on these tokens): {result['dead_features']} of {d_sae}"
    )


def print_quality(
    crosscoder_path,
    store_path: str,
    eval_store: str | None,
    device: str,
    save_to: Path | None = None,
    eval_flag: str = "--eval-store",
    spliced_seqs: int = 0,
    spliced_ablation: str = defaults.SPLICED_ABLATION,
    model_dtype: str | None = None,
    trained_on: Any = None,
) -> dict | None:
    """The quality table of a saved crosscoder: held-out explained variance per snapshot, L0, dead features,
    and with ``spliced_seqs`` > 0 the spliced-model loss per snapshot on that many token rows of the same
    store, which is returned.

    The store measured on is re-hashed (the training store, which training has just hashed:
    sizes only) and checked against the crosscoder's snapshots and hook before anything is computed.
    ``trained_on``: the training token table ``[n_seqs, seq_len]`` (or its
    :class:`~crosslens.activations.partners.RowDigests`) where known; an ``eval_store``
    whose sequences it holds is said to be partly (or wholly) training data, in the table's heading
    and in ``save_to``."""
    crosscoder = load_crosscoder_folder(crosscoder_path, device=device)
    heldout = None if eval_store is not None else open_heldout(store_path)
    if eval_store is not None:
        store, where = ActivationStore.open(eval_store, verify="full"), f"{eval_flag} {eval_store}"
    elif heldout is not None:
        store, where = heldout, f"held-out tokens ({heldout.path})"
    else:
        where = "the TRAINING tokens (no held-out store: pass --eval-store, or harvest with --heldout-tokens)"
        store = ActivationStore.open(store_path, verify="size")
    check_crosscoder_store(crosscoder, store, crosscoder_name=crosscoder_path)
    seen = None
    if eval_store is not None:
        where, seen = _training_overlap(store, trained_on, where)
    rows, result = quality_rows(crosscoder, store)
    print(format_quality(rows, result, where))
    spliced = _spliced_quality(crosscoder, store, spliced_seqs, spliced_ablation, device, model_dtype)
    if save_to is not None:
        record = {"measured_on": str(Path(store.path).resolve()), "measured_on_seal": store_seal(store)}
        record.update(rows=rows, dead_features=result["dead_features"])
        if seen is not None:
            record["training_sequences"] = seen
        if spliced_seqs > 0:
            record["spliced_loss"] = spliced
        save_to.write_text(json.dumps(record, indent=1))
    return spliced


def _training_overlap(store, trained_on: Any, where: str) -> tuple[str, int | None]:
    """``where`` with what is known of ``store``'s sequences among the training ones, and their
    count (None when the training tokens are not at hand); a store that shares any is said aloud."""
    if trained_on is None:
        return f"{where} (not compared with the training tokens, which are not at hand)", None
    seen, total = shared_sequences(store.sequences, trained_on), len(store.sequences)
    if seen:
        print(
            f"note: {seen} of {total} sequences of {where} are training sequences, so the table below is "
            f"{'not held out' if seen == total else 'partly measured on training data'}; harvest with "
            "--heldout-tokens for a held-out store"
        )
        where = f"{where} ({seen} of {total} sequences seen in training)"
    return where, seen


def _spliced_quality(
    crosscoder, store, n_seqs: int, ablation: str, device: str, model_dtype: str | None
) -> dict | None:
    """The spliced-loss record printed under the quality table; None (said, not silent) when the
    store's snapshot models cannot be loaded, so a finished training run still gets its table."""
    if n_seqs <= 0:
        return None
    try:
        spliced = measure_spliced(crosscoder, store, n_seqs, ablation, device, model_dtype)
    except (CLIError, CrosslensError, OSError) as reason:  # the models are not at hand (moved, offline)
        print(
            f"spliced-model loss not measured: {' '.join(str(reason).split())}; "
            "`crosslens evaluate RUN --store STORE --spliced-loss` measures it once they are"
        )
        return None
    print(spliced_heading(spliced))
    print(format_spliced_loss(spliced["crosscoder"]))
    return spliced


def store_suite(store: Any, device: str, dtype: str | None, flag: str = "--store"):
    """The snapshot models ``store`` was harvested from, as a CheckpointSuite on ``device``."""
    record = store.manifest["spec"].get("suite") or {}
    spec = record.get("root") or record.get("model_id")
    if not spec:
        raise CLIError(f"{flag} {store.path}: its manifest records no suite, so the snapshot models cannot be loaded")
    steps = [int(s["step"]) for s in store.snapshots]
    suite = resolve_suite(
        spec,
        steps,
        None,
        processing=record.get("processing"),
        steps_from="the store holds",
        named=f"{flag} {store.path}: the suite it was harvested from, {spec},",
    )
    return on_device(suite, device, dtype or "float32")


def measure_spliced(
    crosscoder: Any, store: Any, n_seqs: int, ablation: str, device: str, dtype: str | None = None
) -> dict[str, Any]:
    """The ``"spliced_loss"`` record of ``crosscoder`` on the first ``n_seqs`` token rows of ``store``."""
    return spliced_record(store_suite(store, device, dtype), crosscoder, store, n_seqs, ablation)  # type: ignore[arg-type]


def spliced_heading(record: dict[str, Any], where: str | None = None) -> str:
    """The line above the printed table: how many token rows of which store, and the floor."""
    return (
        f"spliced-model loss per snapshot on {record['n_seqs']} rows of {where or record['measured_on']} "
        f"({record['ablation']}-ablation floor):"
    )


def wandb_summary(record: dict[str, Any]) -> dict[str, float]:
    """``spliced/<figure>/<snapshot>`` for each figure of :data:`WANDB_SUMMARY_KEYS`."""
    return {
        f"spliced/{key}/{row['snapshot']}": float(row[key])
        for row in record["crosscoder"]
        for key in WANDB_SUMMARY_KEYS
    }


def log_spliced_to_wandb(logger: Any, run_id: str | None, record: dict[str, Any]) -> None:
    """Put the spliced-loss figures into the summary of the W&B run training logged to: the
    caller's open run, else the run ``run_id`` reopened (``logger`` is the run's LoggingConfig)."""
    import wandb  # seconds to import, and only a run that logged to W&B gets here

    summary = wandb_summary(record)
    if wandb.run is not None:
        wandb.run.summary.update(summary)
        return
    if not run_id:
        print("spliced loss not logged to W&B: the run records no W&B run id")
        return
    run = wandb.init(
        project=logger.wandb_project,
        entity=logger.wandb_entity,
        dir=logger.wandb_dir,
        mode=logger.wandb_mode,
        id=run_id,
        resume="allow",
    )
    try:
        run.summary.update(summary)
    finally:
        run.finish()


def log_run_spliced(runner: Any, spliced: dict[str, Any] | None) -> None:
    """The spliced-loss figures into the summary of the W&B run a training runner logged to, if any."""
    logger = runner.config.logger
    if spliced is None or not logger.log_to_wandb:
        return
    run_id = load_crosscoder_folder(runner.final_path).cfg.metadata.get("wandb_run_id")
    log_spliced_to_wandb(replace(logger, wandb_dir=logger.wandb_dir or str(runner.out_dir)), run_id, spliced)
