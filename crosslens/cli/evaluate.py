"""``crosslens evaluate``: explained variance per snapshot, L0 and dead features of a saved
crosscoder on a store, and with ``--spliced-loss`` the next-token loss it recovers spliced into
each snapshot's model (:mod:`crosslens.cli.quality`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosslens.cli.common import CLIError, crosscoder_folder_arg, device_and_dtype
from crosslens.cli.flags import Subcommand, field_flags
from crosslens.cli.options import DeviceFlags, SplicedLossFlags
from crosslens.core.errors import CrosslensError
from crosslens.core.paths import TRAINED_ROWS_NAME


@dataclass
class EvaluateFlags:
    crosscoder: str = field(metadata={"positional": True, "metavar": "CROSSCODER"})
    """RUN_DIR, RUN_DIR/final or RELEASE/ID."""
    store: str = field(metadata={"flag": "--store"})
    """Activation store to measure on (best: tokens it was not trained on); re-hashed against its manifest,
    and refused unless it holds the crosscoder's snapshots and hook."""
    spliced_loss: bool = False
    """Also splice each snapshot's reconstruction into that snapshot's model and report the next-token
    cross-entropy it recovers and the KL divergence from the clean model, on the store's token rows
    (loads every snapshot model once)."""


SPLICED_FLAGS = field_flags((SplicedLossFlags,))
"""The flags that only --spliced-loss reads."""


def evaluate(args: argparse.Namespace) -> int:
    from crosslens.cli.quality import print_quality
    from crosslens.training.runfolder import crosscoder_folder

    if args.spliced_seqs == 0:  # before the advice to add --spliced-loss, which 0 would refuse
        raise CLIError("--spliced-seqs 0 measures no spliced loss: drop it, or pass --spliced-loss with 1 or more rows")
    stray = sorted(flag for dest, flag in SPLICED_FLAGS.items() if dest in getattr(args, "explicit", ()))
    if stray and not args.spliced_loss:
        raise CLIError(f"{', '.join(stray)} set{'s' if len(stray) == 1 else ''} the spliced loss: add --spliced-loss")
    device, _ = device_and_dtype(args)
    folder = crosscoder_folder_arg(args.crosscoder, "CROSSCODER")
    if not Path(args.store).exists():
        raise CLIError(
            f"--store {args.store}: the path does not exist; pass an activation store written by `crosslens harvest`"
        )
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
    from crosslens.training.runfolder import run_folder, run_store

    run_dir = run_folder(crosscoder_path)
    if run_dir is not None and (run_dir / TRAINED_ROWS_NAME).is_file():  # sealed with the run: run_folder checked it
        return RowDigests.load(run_dir / TRAINED_ROWS_NAME)
    try:
        store = run_store(run_dir)
    except CrosslensError:  # the path now holds another store: its rows say nothing of training
        return None
    return None if store is None else ActivationStore.open(store, verify="none").sequences


def print_spliced_loss(crosscoder_path: Path, store_path: str, args: argparse.Namespace, device: str) -> None:
    """The spliced-model loss per snapshot (:func:`crosslens.causal.spliced_loss_eval`) on the first
    ``--spliced-seqs`` token rows of the store, with the snapshot models of the suite it records."""
    from crosslens.activations import ActivationStore
    from crosslens.causal.spliced_loss_eval import format_spliced_loss
    from crosslens.cli.quality import measure_spliced, spliced_heading
    from crosslens.crosscoders.saved import load_crosscoder_folder

    store = ActivationStore.open(store_path, verify="none")  # print_quality has just verified it
    crosscoder = load_crosscoder_folder(crosscoder_path, device=device)
    record = measure_spliced(crosscoder, store, args.spliced_seqs, args.spliced_ablation, device, args.dtype)
    print(spliced_heading(record, store_path))
    print(format_spliced_loss(record["crosscoder"]))


COMMAND = Subcommand(
    ("evaluate",),
    "explained variance per snapshot, L0 and dead features of a crosscoder on a store",
    (EvaluateFlags, SplicedLossFlags, DeviceFlags),
    evaluate,
)
