"""``crosslens harvest``: activations at hooks across snapshots, to disk: a verified activation
store, and its held-out store beside it. ``train`` (with ``--stream``, or a ``--recipe`` without
``--store``) reads its suite, hooks and tokens through the functions here too."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from crosslens.activations.budget import TokenBudget
from crosslens.cli.common import (
    CLIError,
    device_and_dtype,
    print_peak_memory,
    recipe_suite,
    resolve_suite,
    select_snapshots,
    torchrun_job,
)
from crosslens.cli.flags import Subcommand
from crosslens.cli.options import DeviceFlags, SuiteFlags, TokenBudgetFlags, TokenFlags
from crosslens.core.devices import DTYPE_BYTES, dtype_name, reset_peak_memory
from crosslens.core.errors import StorageError, storage_error
from crosslens.core.hooks import hook_problem, hook_width
from crosslens.core.launch import is_main_process, local_rank_device
from crosslens.core.paths import RUN_CONFIG_NAME
from crosslens.training.model_sizes import spec_from_hf_config
from crosslens.training.recipes import load_recipe


@dataclass
class HarvestFlags:
    out: str = field(metadata={"flag": "--out"})
    """Store folder."""
    recipe: str | None = None
    """A shipped recipe (crosslens plan --list-recipes): its suite, hook, token budget, context and dataset
    become the defaults."""
    hook: list[str] | None = field(default=None, metadata={"action": "append"})
    """Hook name; repeat for several."""
    store_dtype: str | None = None
    """dtype the store is written in (default: the recipe's store dtype with --recipe, else --dtype)."""
    overwrite: bool = False
    """Discard whatever store --out holds, and its OUT-heldout, and harvest afresh."""


def harvest(args: argparse.Namespace) -> int:
    from crosslens.cli.inputs import check_output_folder

    recipe = load_recipe(args.recipe) if args.recipe else None
    hooks = args.hook or ([recipe.hook] if recipe is not None else None)
    if not hooks:
        raise CLIError("harvest needs --hook NAME (e.g. --hook blocks.0.hook_resid_post), or a --recipe")
    device, model_dtype = device_and_dtype(args, produces_activations=True)
    suite = selected_suite(args, recipe)
    check_hooks(suite, hooks)  # before any model loads or anything is written
    check_output_folder(args.out, holds="the activation store")
    if (Path(args.out) / RUN_CONFIG_NAME).is_file():  # --overwrite replaces a store, never a run's files
        raise CLIError(
            f"--out {args.out} is a training run's folder (it holds {RUN_CONFIG_NAME}); harvest into another folder"
        )
    source = token_source(args, recipe)
    device = local_rank_device(device)
    reset_peak_memory(device)
    with torchrun_job():
        store, heldout = harvest_stores(args, suite, hooks, recipe, source, device, model_dtype)
        if is_main_process():
            print(f"activation store: {store.path} ({store.n_tokens} tokens x {store.n_snapshots} snapshots)")
            if heldout is not None:
                print(f"held-out store: {heldout.path} ({heldout.n_tokens} tokens; `crosslens train` reports on it)")
        print_peak_memory(device)
    return 0


def selected_suite(args: argparse.Namespace, recipe):
    """The suite of ``--suite`` (default: the recipe's, else pico), narrowed by ``--steps`` or ``--n-snapshots``."""
    if recipe is not None and args.suite is None:
        return select_snapshots(recipe_suite(recipe), args.steps, args.n_snapshots, recipe.model, recipe=recipe.name)
    return resolve_suite(args.suite or "pico", args.steps, args.n_snapshots)


def check_hooks(suite, hooks: list[str]) -> None:
    from crosslens.cli.inputs import suite_n_layers

    n_layers = suite_n_layers(suite)
    for hook in hooks:
        problem = hook_problem(hook, n_layers)
        if problem:
            raise CLIError(f"--hook {problem}")


def check_context(suite, seq_len: int) -> None:
    """Refuse a --seq-len beyond the longest sequence ``suite``'s models read (when its config says)."""
    from crosslens.cli.inputs import suite_context

    context = suite_context(suite)
    if context is not None and seq_len > context:
        raise CLIError(
            f"--seq-len {seq_len} is longer than the model's context of {context} tokens (its config.json); "
            f"pass --seq-len {context} or less"
        )


def token_source(args: argparse.Namespace, recipe) -> tuple[str, object]:
    """Where harvest's tokens come from: ("text", [paths]), ("dataset", "NAME:COLUMN") or ("pico", None)."""
    from crosslens.activations.tokens import record_builder

    if args.text and args.dataset:
        raise CLIError("--text and --dataset name two token sources; pass one of them")
    if args.text:
        missing = [t for t in args.text if not Path(t).exists()]
        if missing:
            raise CLIError(f"--text {missing[0]}: no such file or folder")
        records = [t for t in args.text if record_builder(t)]
        if records:
            raise CLIError(
                f"--text {records[0]}: a {Path(records[0]).suffix} file holds records, not text; pass "
                f"--dataset {records[0]}:COLUMN, its text column (e.g. --dataset {records[0]}:text)"
            )
        return "text", list(args.text)
    dataset = args.dataset or (recipe.dataset if recipe is not None else None)
    if recipe is not None and not dataset:
        raise CLIError(f"recipe {recipe.name} records no dataset; pass --dataset NAME:COLUMN or --text FILE")
    if dataset:
        dataset = dataset.removeprefix("dataset:")
        if record_builder(dataset):
            return "dataset", dataset  # records: their "text" column (FILE:COLUMN names another)
        if Path(dataset).is_file() or (Path(dataset).is_dir() and not (Path(dataset) / "dataset_info.json").exists()):
            return "text", [dataset]  # a text file or a folder of .txt files given as --dataset
        return "dataset", dataset
    return "pico", None


def harvest_stores(args, suite, hooks, recipe, source, device, model_dtype):
    """The store ``harvest`` writes (flags win over the recipe's values), and its held-out store."""
    from crosslens.activations import harvest_activations
    from crosslens.activations.partners import heldout_store_path, pair_heldout

    budget = token_budget(args, recipe)
    store_dtype = dtype_name(args.store_dtype or (recipe.store_dtype if recipe is not None else model_dtype))
    heldout_path = heldout_store_path(args.out)
    n_rows = budget.n_rows + budget.heldout_rows
    needed = check_sizes(suite, hooks, budget.seq_len, n_rows * budget.seq_len, store_dtype, [args.out, heldout_path])
    train_NL, heldout_NL = token_tables(args, recipe, source, suite.tokenizer())
    common = dict(dtype=store_dtype, overwrite=args.overwrite, device=device, model_dtype=model_dtype)
    try:
        store = harvest_activations(suite, hooks, train_NL, args.out, **common)
        heldout = None
        if len(heldout_NL):
            heldout = harvest_activations(suite, hooks, heldout_NL, heldout_path, **common)
            if is_main_process():
                pair_heldout(store, heldout)
        elif args.overwrite and heldout_path.exists() and is_main_process():
            shutil.rmtree(heldout_path)  # it was split from the store just replaced
    except StorageError as error:
        cause = error.__cause__
        if error.needed is not None or needed is None or cause is None:
            raise
        # the library cannot size a store before its first snapshot has run; this command can
        raise storage_error(
            cause, error.folder, "the activation store", needed=needed, fix="harvest into another folder (--out)"
        ) from cause
    return store, heldout


def token_budget(args: argparse.Namespace, recipe) -> TokenBudget:
    """The :class:`~crosslens.activations.budget.TokenBudget` of the flags, else of the recipe's
    values, else of the defaults."""
    return TokenBudget.resolve(recipe, n_tokens=args.n_tokens, seq_len=args.seq_len, heldout_tokens=args.heldout_tokens)


def token_tables(args: argparse.Namespace, recipe, source: tuple[str, object], tokenizer):
    """The token rows of ``--n-tokens``/``--seq-len`` (flags win over the recipe's values) from
    ``source``, split into training rows and the seeded held-out rows of ``--heldout-tokens``."""
    from crosslens.cli.inputs import split_rows

    budget = token_budget(args, recipe)
    seq_len, held_tokens = budget.seq_len, budget.heldout
    if held_tokens and not budget.heldout_rows and is_main_process():
        given = (
            f"--heldout-tokens {held_tokens}"
            if args.heldout_tokens is not None
            else (f"the default held-out share ({held_tokens} tokens, a tenth of --n-tokens)")
        )
        print(
            f"no held-out tokens: {given} is less than one row of --seq-len {seq_len}; pass "
            f"--heldout-tokens {seq_len} or more for a held-out store"
        )
    tokens = _token_table(
        tokenizer, source, seq_len, budget.n_rows + budget.heldout_rows, budget.n_tokens, held_tokens, args
    )
    return split_rows(tokens, budget.heldout_rows, seed=0)


def check_sizes(suite, hooks: list[str], seq_len: int, n_tokens: int, store_dtype: str, outs: list) -> int | None:
    """Refuse, before anything is allocated or written, a --seq-len beyond the model's context and
    a harvest whose token table or stores do not fit; returns the stores' bytes when known."""
    from crosslens.cli.inputs import check_harvest_fits, suite_config

    check_context(suite, seq_len)
    config = suite_config(suite)
    widths = None
    try:
        spec = spec_from_hf_config(config, str(getattr(suite, "model_id", "")), "config.json") if config else None
    except (TypeError, ValueError):  # a config without the usual size fields: the disk check is skipped
        spec = None
    if spec is not None:
        widths = [hook_width(hook, spec.d_model, spec.d_mlp) for hook in hooks]
    return check_harvest_fits(n_tokens, len(suite.snapshots), widths, DTYPE_BYTES[store_dtype], outs)


def _token_table(tokenizer, source, seq_len: int, n_rows: int, n_tokens: int, held_tokens: int, args):
    """The token table of ``n_rows`` rows from ``source``; text that is not what it claims is refused."""
    from crosslens.activations import tokens_from_dataset, tokens_from_pico
    from crosslens.activations.tokens import tokenize_texts
    from crosslens.cli.inputs import check_known_tokens, text_documents

    kind, value = source
    try:
        if kind == "text":
            documents = text_documents(value, encoding=args.encoding, tokenizer=tokenizer)
            return tokenize_texts(tokenizer, documents, seq_len, n_seqs=n_rows)
        if kind == "dataset":
            name, _, column = str(value).partition(":")
            tokens = tokens_from_dataset(tokenizer, name, seq_len, n_rows, column=column or "text")
            check_known_tokens(tokenizer, tokens[:, 1:], f"--dataset {value}")
            return tokens
        return tokens_from_pico(tokenizer, seq_len, n_rows, seed=0)
    except ValueError as error:
        if "rows of seq_len" not in str(error):
            raise
        raise CLIError(
            f"--n-tokens {n_tokens} (+ --heldout-tokens {held_tokens}) is more than the text holds at --seq-len "
            f"{seq_len}; lower --n-tokens, or give more text ({' '.join(str(error).split())})"
        ) from None


COMMAND = Subcommand(
    ("harvest",),
    "harvest activations at hooks across snapshots, to disk",
    (SuiteFlags, HarvestFlags, TokenBudgetFlags, TokenFlags, DeviceFlags),
    harvest,
)
