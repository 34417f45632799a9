"""``crosslens evaluate`` and the quality table ``train`` prints: held-out explained variance per
snapshot, L0 and dead features of a saved crosscoder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from crosslens.commands.common import CLIError, crosscoder_folder_arg, device_and_dtype


def quality_rows(crosscoder: Any, eval_store: Any, hook: str | None = None) -> tuple[list[dict], dict]:
    """:func:`quality_table` rows (explained variance per snapshot, mean L0, d_sae) and the raw
    evaluation (with ``dead_features``) of ``crosscoder`` on ``eval_store``."""
    from crosslens.training.comparison import quality_table
    from crosslens.training.runner import evaluate_crosscoder

    result = evaluate_crosscoder(crosscoder, eval_store, hook)
    return quality_table(result, {}, eval_store.snapshots, d_sae=int(crosscoder.cfg.d_sae)), result


def format_quality(rows: list[dict], result: dict, where: str) -> str:
    """The quality table with a line saying which tokens it was measured on and the dead features."""
    from crosslens.training.comparison import format_quality_table

    d_sae = next(r["crosscoder"] for r in rows if r["kind"] == "d_sae")
    return (
        f"explained variance per snapshot on {where} ({result['n_tokens']} tokens):\n"
        + format_quality_table(rows)
        + f"\ndead features (never fire on these tokens): {result['dead_features']} of {d_sae}"
    )


def print_quality(
    crosscoder_path, store_path: str, eval_store: str | None, device: str, save_to: Path | None = None,
    eval_flag: str = "--eval-store", spliced_seqs: int = 0, spliced_ablation: str = "zero",
    model_dtype: str | None = None, trained_on: Any = None,
) -> dict | None:
    """The quality table of a saved crosscoder: held-out explained variance per snapshot, L0, dead features,
    and with ``spliced_seqs`` > 0 the spliced-model loss per snapshot on that many token rows of the same
    store (:mod:`crosslens.commands.spliced`), which is returned.

    The store measured on is re-hashed (the training store, which training has just hashed:
    sizes only) and checked against the crosscoder's snapshots and hook before anything is computed.
    ``trained_on``: the training token table ``[n_seqs, seq_len]`` (or its
    :class:`~crosslens.activations.partners.RowDigests`) where known; an ``eval_store``
    whose sequences it holds is said to be partly (or wholly) training data, in the table's heading
    and in ``save_to``."""
    from crosslens.activations import ActivationStore
    from crosslens.activations.partners import check_crosscoder_store, store_seal
    from crosslens.commands.runs import open_heldout
    from crosslens.crosscoders.saved import load_crosscoder_folder

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
    from crosslens.activations.partners import shared_sequences

    if trained_on is None:
        return f"{where} (not compared with the training tokens, which are not at hand)", None
    seen, total = shared_sequences(store.sequences, trained_on), len(store.sequences)
    if seen:
        print(f"note: {seen} of {total} sequences of {where} are training sequences, so the table below is "
              f"{'not held out' if seen == total else 'partly measured on training data'}; harvest with "
              "--heldout-tokens for a held-out store")  # fmt: skip
        where = f"{where} ({seen} of {total} sequences seen in training)"
    return where, seen


def _spliced_quality(crosscoder, store, n_seqs: int, ablation: str, device: str, model_dtype: str | None) -> dict | None:
    """The spliced-loss record printed under the quality table; None (said, not silent) when the
    store's snapshot models cannot be loaded, so a finished training run still gets its table."""
    from crosslens.causal.spliced_loss import format_spliced_loss
    from crosslens.commands.spliced import measure_spliced, spliced_heading

    if n_seqs <= 0:
        return None
    from crosslens.core.errors import CrosslensError

    try:
        spliced = measure_spliced(crosscoder, store, n_seqs, ablation, device, model_dtype)
    except (CLIError, CrosslensError, OSError) as reason:  # the models are not at hand (moved, offline)
        print(f"spliced-model loss not measured: {' '.join(str(reason).split())}; "
              "`crosslens evaluate RUN --store STORE --spliced-loss` measures it once they are")  # fmt: skip
        return None
    print(spliced_heading(spliced))
    print(format_spliced_loss(spliced["crosscoder"]))
    return spliced


def evaluate(args: argparse.Namespace) -> int:
    from crosslens.commands.runs import crosscoder_folder

    device, _ = device_and_dtype(args)
    folder = crosscoder_folder_arg(args.crosscoder, "CROSSCODER")
    if not Path(args.store).exists():
        raise CLIError(f"--store {args.store}: the path does not exist; pass an activation store written by `crosslens harvest`")
    path = crosscoder_folder(folder)
    print_quality(path, args.store, args.store, device, eval_flag="--store", trained_on=_training_tokens(path))
    if args.spliced_loss:
        print_spliced_loss(crosscoder_folder(folder), args.store, args, device)
    return 0


def _training_tokens(crosscoder_path: Path) -> Any:
    """The token table the crosscoder was trained on, from its run's store, or the digests of its
    rows a streamed run sealed with it (None when neither is at hand: the store gone or replaced)."""
    from crosslens.activations import ActivationStore
    from crosslens.activations.partners import RowDigests
    from crosslens.commands.runs import run_folder, run_store
    from crosslens.core.errors import CrosslensError
    from crosslens.core.paths import TRAINED_ROWS_NAME

    run_dir = run_folder(crosscoder_path)
    if run_dir is not None and (run_dir / TRAINED_ROWS_NAME).is_file():  # sealed with the run: run_folder checked it
        return RowDigests.load(run_dir / TRAINED_ROWS_NAME)
    try:
        store = run_store(run_dir)
    except CrosslensError:  # the path now holds another store: its rows say nothing of training
        return None
    return None if store is None else ActivationStore.open(store, verify="none").sequences


def print_spliced_loss(crosscoder_path: Path, store_path: str, args: argparse.Namespace, device: str) -> None:
    """The spliced-model loss per snapshot (:func:`crosslens.causal.spliced_loss`) on the first
    ``--spliced-seqs`` token rows of the store, with the snapshot models of the suite it records."""
    from crosslens.activations import ActivationStore
    from crosslens.causal.spliced_loss import format_spliced_loss
    from crosslens.commands.spliced import measure_spliced, spliced_heading
    from crosslens.crosscoders.saved import load_crosscoder_folder

    store = ActivationStore.open(store_path, verify="none")  # print_quality has just verified it
    crosscoder = load_crosscoder_folder(crosscoder_path, device=device)
    record = measure_spliced(crosscoder, store, args.spliced_seqs, args.spliced_ablation, device, args.dtype)
    print(spliced_heading(record, store_path))
    print(format_spliced_loss(record["crosscoder"]))
