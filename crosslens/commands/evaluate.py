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
    steps = [int(s.get("step", i)) for i, s in enumerate(eval_store.snapshots)]
    return quality_table(result, {}, steps, d_sae=int(crosscoder.cfg.d_sae)), result


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
    eval_flag: str = "--eval-store",
) -> None:
    """The quality table of a saved crosscoder: held-out explained variance per snapshot, L0, dead features.

    The store measured on is re-hashed (the training store, which training has just hashed:
    sizes only) and checked against the crosscoder's snapshots and hook before anything is computed."""
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
    rows, result = quality_rows(crosscoder, store)
    print(format_quality(rows, result, where))
    if save_to is not None:
        record = {"measured_on": str(Path(store.path).resolve()), "measured_on_seal": store_seal(store)}
        save_to.write_text(json.dumps({**record, "rows": rows, "dead_features": result["dead_features"]}, indent=1))


def evaluate(args: argparse.Namespace) -> int:
    from crosslens.commands.runs import crosscoder_folder

    device, _ = device_and_dtype(args)
    folder = crosscoder_folder_arg(args.crosscoder, "CROSSCODER")
    if not Path(args.store).exists():
        raise CLIError(f"--store {args.store}: the path does not exist; pass an activation store written by `crosslens harvest`")
    print_quality(crosscoder_folder(folder), args.store, args.store, device, eval_flag="--store")
    if args.spliced_loss:
        print_spliced_loss(crosscoder_folder(folder), args.store, args, device)
    return 0


def print_spliced_loss(crosscoder_path: Path, store_path: str, args: argparse.Namespace, device: str) -> None:
    """The spliced-model loss per snapshot (:func:`crosslens.causal.spliced_loss`) on the first
    ``--spliced-seqs`` token rows of the store, with the snapshot models of the suite it records."""
    from crosslens.activations import ActivationStore
    from crosslens.causal.spliced_loss import format_spliced_loss, spliced_loss
    from crosslens.checkpoints.on_device import on_device
    from crosslens.commands.common import resolve_suite
    from crosslens.crosscoders.saved import load_crosscoder_folder

    store = ActivationStore.open(store_path, verify="none")  # print_quality has just verified it
    record = store.manifest["spec"].get("suite") or {}
    spec = record.get("root") or record.get("model_id")
    if not spec:
        raise CLIError(f"--store {store_path}: its manifest records no suite, so the snapshot models cannot be loaded")
    steps = [int(s["step"]) for s in store.snapshots]
    suite = on_device(resolve_suite(spec, steps, None), device, args.dtype or "float32")
    crosscoder = load_crosscoder_folder(crosscoder_path, device=device)
    tokens_NL = store.sequences[: args.spliced_seqs]
    labels = [str(s.get("revision", s.get("step"))) for s in store.snapshots]
    rows = spliced_loss(suite, crosscoder, tokens_NL, ablation=args.spliced_ablation, labels=labels)
    print(f"spliced-model loss per snapshot on {len(tokens_NL)} rows of {store_path} ({args.spliced_ablation}-ablation floor):")
    print(format_spliced_loss(rows))
