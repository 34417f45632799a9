"""``crosslens suite build`` (a pico suite trained from flags) and ``crosslens suite list`` (the
revisions of a model): model suites with training checkpoints.

Most build flags set a field of the pico suite's ``PicoConfig`` (``default_from``); the help
shows that field's default, so each default is written once, in the config.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from crosslens.checkpoints.local import SUITE_FILE
from crosslens.cli.common import CLIError, missing_path_error, pico_listing
from crosslens.cli.flags import Subcommand
from crosslens.cli.inputs import check_output_folder
from crosslens.core.paths import looks_like_path
from crosslens.pico.config import (
    PicoConfig,
    default_root,
    is_built,
    pico_manifest,
    pythia_like_schedule,
)


@dataclass
class SuiteBuildFlags:
    corpus: list[str] | None = field(default=None, metadata={"nargs": "+", "metavar": "FILE|DIR|dataset:NAME:COLUMN"})
    """Train on your text: text files, folders of .txt files, or dataset:NAME:COLUMN (a datasets dataset
    available offline); a BPE tokenizer is trained on it (default: crosslens's generated grammar)."""
    eval: str | None = field(default=None, metadata={"metavar": "PAIRS"})
    """Minimal pairs (BLiMP or crosslens JSONL, or CLAMS text) scored at every checkpoint by summed
    log-probability of each continuation."""
    n_layers: int | None = field(default=None, metadata={"default_from": (PicoConfig, "n_layers")})
    """Transformer blocks."""
    d_model: int | None = field(default=None, metadata={"default_from": (PicoConfig, "d_model")})
    """Residual width (the MLP is 4x this)."""
    n_heads: int | None = field(default=None, metadata={"default_from": (PicoConfig, "n_heads")})
    """Attention heads."""
    train_steps: int | None = field(default=None, metadata={"default_from": (PicoConfig, "n_steps")})
    """Optimizer steps."""
    checkpoints: int | None = field(default=None, metadata={"min": 16})
    """About how many checkpoints to save, log-spaced early then even (>= 16; default: the config's
    schedule, 21 at the default steps)."""
    seq_len: int | None = field(default=None, metadata={"default_from": (PicoConfig, "seq_len")})
    """Tokens per training row."""
    batch_size: int | None = field(default=None, metadata={"default_from": (PicoConfig, "batch_size")})
    """Rows per step."""
    bpe_vocab: int | None = field(default=None, metadata={"default_from": (PicoConfig, "bpe_vocab_size")})
    """Vocabulary of the BPE tokenizer trained on --corpus."""
    small: bool = False
    """The small, fast configuration used by tests."""
    long: bool = False
    """A longer build (1536 steps, 2.4x the default's training)."""
    force: bool = False
    """Rebuild even if a cached build exists (at --root, with these flags)."""
    seed: int | None = field(default=None, metadata={"default_from": (PicoConfig, "seed")})
    """Seed of the build."""
    root: str | None = None
    """Where to write the suite (default: $CROSSLENS_HOME/suites/pico-HASH); a complete suite there is used
    as it is unless flags or --force say otherwise."""
    device: str | None = None
    """cpu only: pico trains on the CPU (bitwise reproducible)."""
    dtype: str | None = None
    """float32 only: pico trains on the CPU in float32 (bitwise reproducible)."""


@dataclass
class SuiteListFlags:
    model: str = field(metadata={"positional": True})
    """Hub model id, local folder, or pico (the embedded suite)."""


# suite build flag -> PicoConfig field
BUILD_FLAGS = {
    "n_layers": "n_layers",
    "d_model": "d_model",
    "n_heads": "n_heads",
    "train_steps": "n_steps",
    "seq_len": "seq_len",
    "batch_size": "batch_size",
    "bpe_vocab": "bpe_vocab_size",
    "seed": "seed",
}


def checkpoint_schedule(n_steps: int, n_checkpoints: int) -> tuple[int, int]:
    """``(log_checkpoints_until, checkpoint_every)`` giving the Pythia-shaped schedule (powers of
    two, then evenly spaced) with the checkpoint count closest to ``n_checkpoints``, more preferred."""
    best: tuple[int, int] | None = None
    best_key: tuple[int, int] | None = None
    for every in range(1, n_steps + 1):
        count = len(pythia_like_schedule(n_steps, every, every))
        key = (0 if count >= n_checkpoints else 1, abs(count - n_checkpoints))
        if best_key is None or key < best_key:
            best, best_key = (every, every), key
    assert best is not None
    return best


def _build_config(args: argparse.Namespace):
    """The PicoConfig the suite build flags describe, and whether any flag set one of its fields."""
    if args.small and args.long:
        raise CLIError("--small and --long name two configurations; pass one of them")
    base = PicoConfig.small() if args.small else PicoConfig.long() if args.long else PicoConfig()
    changes = {field: getattr(args, flag) for flag, field in BUILD_FLAGS.items() if getattr(args, flag) is not None}
    if args.d_model is not None:
        changes["d_mlp"] = 4 * args.d_model
        if args.n_heads is None and args.d_model % base.n_heads:
            changes["n_heads"] = next(h for h in (4, 2, 1) if args.d_model % h == 0)
    if args.corpus:
        changes["corpus"] = _corpus_spec(args.corpus)
    if args.eval:
        if not Path(args.eval).is_file():
            raise CLIError(f"--eval {args.eval}: no such file; pass a BLiMP, crosslens JSONL or CLAMS pairs file")
        _check_pairs_file(args.eval)
        changes["eval_pairs"] = str(Path(args.eval).resolve())
    n_steps = changes.get("n_steps", base.n_steps)
    if args.checkpoints is not None:
        if args.checkpoints > n_steps + 1:
            raise CLIError(
                f"--checkpoints {args.checkpoints} exceeds the {n_steps} training steps + 1; raise --train-steps"
            )
        log_until, every = checkpoint_schedule(n_steps, args.checkpoints)
        changes.update(log_checkpoints_until=log_until, checkpoint_every=every)
    elif "n_steps" in changes and changes["n_steps"] != base.n_steps:  # keep about the base's checkpoint count
        log_until, every = checkpoint_schedule(n_steps, len(base.checkpoint_steps))
        changes.update(log_checkpoints_until=log_until, checkpoint_every=every)
    if "n_steps" in changes:
        changes["warmup_steps"] = min(base.warmup_steps, max(1, changes["n_steps"] // 10))
    try:
        return replace(base, **changes), bool(changes) or args.small or args.long
    except ValueError as error:  # PicoConfig's own check: name the flag instead of the field
        message = str(error)
        for flag, field in {**BUILD_FLAGS, "checkpoints": "checkpoint", "eval": "eval_pairs"}.items():
            message = message.replace(f"PicoConfig.{field}", f"--{flag.replace('_', '-')}")
        message = message.replace("raise n_steps or lower checkpoint_every", "raise --train-steps or --checkpoints")
        raise CLIError(message) from None


def _check_pairs_file(path: str) -> None:
    """Read the --eval file before anything is built, so a malformed line names the flag (and not
    `attribute`'s --skip-invalid, which the build has not: it evaluates every pair)."""
    import re

    from crosslens.tasks.blimp import SKIP_HINT, load_task_file

    try:
        load_task_file(path)
    except ValueError as error:
        message = re.sub(rf" \({re.escape(SKIP_HINT)} \w+\)", "", str(error))
        raise CLIError(
            f"--eval {path}: {message} (the build evaluates every pair: fix the line or delete it)"
        ) from None


def _corpus_spec(values: list[str]):
    """``--corpus`` values as PicoConfig.corpus: text files (folders expanded) or one dataset:NAME:COLUMN."""
    from crosslens.core.documents import text_files
    from crosslens.pico.corpus import DATASET_PREFIX

    datasets = [v for v in values if v.startswith(DATASET_PREFIX)]
    if datasets:
        if len(values) > 1:
            raise CLIError("--corpus takes either text files and folders, or one dataset:NAME:COLUMN, not both")
        return datasets[0]
    try:
        return tuple(str(path.resolve()) for path in text_files(values))
    except ValueError as error:
        raise CLIError(f"--corpus: {error}") from None


def suite_build(args: argparse.Namespace) -> int:
    if args.device not in (None, "cpu") or (args.dtype or "float32").lower() not in ("float32", "fp32"):
        raise CLIError(
            "the pico suite trains on the CPU in float32, so its checkpoints are bitwise reproducible; "
            "drop --device/--dtype (or pass --device cpu --dtype float32)"
        )
    from crosslens.pico.build import build_pico_suite  # after the check: a refused line loads no torch
    from crosslens.pico.evals import format_eval_table, format_targets

    if args.root:
        check_output_folder(args.root, "--root", "the suite's checkpoints")
    config, configured = _build_config(args)
    root = Path(args.root) if args.root else default_root(config)
    # A folder holding no pico suite is never ours to overwrite: build_pico_suite refuses it.
    manifest = pico_manifest(root)
    if args.root and manifest is not None and is_built(root) and not configured:
        config = PicoConfig(**manifest["build"]["config"])  # a suite built earlier, maybe with other flags: use it
    built = is_built(root, config)
    if manifest is not None and not built and not args.force:
        raise CLIError(
            f"--root {root} holds a pico suite built with other settings; add --force to rebuild it there "
            "with these flags, drop the flags to use it as it is, or choose another --root"
        )
    cached = not args.force and built
    created = not root.exists()
    try:
        root = build_pico_suite(config, root=root, force=args.force, progress=True)
    except Exception:  # an interrupt (KeyboardInterrupt) keeps the folder: the build resumes from it
        if created and root.exists():  # leave no half-built folder behind, and never one the user had
            shutil.rmtree(root, ignore_errors=True)
        raise
    manifest = json.loads((Path(root) / SUITE_FILE).read_text())
    if cached:  # a fresh build already printed its table row by row
        extra = list(dict.fromkeys(n for row in manifest["evals"] for n in row.get("extra", {})))
        print(format_eval_table(manifest["evals"], extra, grammar=config.corpus is None))
        if manifest.get("targets"):
            print(format_targets(manifest["targets"]))
        print("(cached build; --force rebuilds)")
    for note in manifest["build"].get("notes") or []:
        print(f"note: {note}")
    if config.eval_pairs:
        print(
            "pairs columns: share of pairs whose correct continuation has the higher summed log-probability (chance 50)"
        )
    print(f"\npico suite: {root}")
    return 0


def suite_list(args: argparse.Namespace) -> int:
    from crosslens.checkpoints import list_revisions
    from crosslens.checkpoints.trajectory import group_by_stage

    spec = args.model
    if spec == "pico":  # what --suite pico means elsewhere; listing it needs no build
        suite, built = pico_listing()
        if not built:
            print(
                f"# pico is not built yet: the first --suite pico (or `crosslens suite build`) writes it to {suite.root}"
            )
        print("\n".join(suite.revisions))
        return 0
    folder = Path(spec).expanduser()
    if looks_like_path(spec) and not folder.exists():
        raise missing_path_error(spec, flag=None)
    for heading, revisions in group_by_stage(list_revisions(folder if folder.exists() else spec)):
        if heading:  # staged runs (OLMo-2/3): one block per stage and ingredient
            print(f"# {heading}: {len(revisions)} revisions")
        for revision in revisions:
            print(revision)
    return 0


BUILD = Subcommand(
    ("suite", "build"),
    "train a pico suite (a tiny Pythia-architecture model, checkpoints saved) on the grammar or your text",
    (SuiteBuildFlags,),
    suite_build,
)
LIST = Subcommand(
    ("suite", "list"),
    "list the revisions of a model (hub id or local folder)",
    (SuiteListFlags,),
    suite_list,
)
