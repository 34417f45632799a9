"""``crosslens train``: a crosscoder from an activation store, or from a recipe's suite
(``--stream``, without a store: see :mod:`crosslens.commands.stream`).

Settings come in three layers, later ones winning field by field: the defaults of
:class:`~crosslens.training.config.CrosscoderRunnerConfig`, a ``--recipe``'s values, and the
flags given on the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crosslens.commands.flags import build, explicit
from crosslens.commands.common import (
    CLIError,
    device_and_dtype,
    load_recipe_arg,
    print_peak_memory,
    reset_peak_memory,
    torchrun_job,
)
from crosslens.commands.evaluate import print_quality
from crosslens.core.paths import QUALITY_NAME
from crosslens.training.config import CrosscoderRunnerConfig


def train_config(args: argparse.Namespace, recipe=None, **fixed) -> CrosscoderRunnerConfig:
    """The runner config of a ``train`` command line: the config's defaults, then the recipe's
    values, then the flags given; ``fixed`` (the resolved store path and device) last. A recipe
    without ``--n-steps`` trains on its token budget at the batch size in force."""
    flags = explicit(args, CrosscoderRunnerConfig)
    layers = [recipe.training_settings() if recipe is not None else {}, flags]
    if recipe is not None and "n_steps" not in flags:
        batch = flags.get("train_batch_size_tokens") or recipe.batch_size
        layers.append({"n_steps": recipe.steps_at(batch)})
    fixed.setdefault("store_path", args.store_path or "")
    return build(CrosscoderRunnerConfig, *layers, fixed)

def _check_store_matches_recipe(store_path: str, recipe) -> None:
    from crosslens.activations import ActivationStore

    store = ActivationStore.open(store_path, verify="none")
    model = str(store.manifest["spec"]["suite"].get("model_id", ""))
    revisions = [str(entry.get("revision")) for entry in store.manifest["snapshots"]]
    wanted = recipe.snapshot_labels()
    if model.lower() != recipe.model.lower() or not _in_order_among(revisions, wanted):
        raise CLIError(
            f"the store {store_path} holds {model} at {len(revisions)} snapshots, not recipe {recipe.name}'s "
            f"{recipe.model} at its {len(wanted)} or some of them; harvest it with `crosslens harvest --recipe "
            f"{recipe.name}` (--steps or --n-snapshots pick some) or drop --recipe"
        )


def _in_order_among(revisions: list[str], labels: list[str]) -> bool:
    """Whether ``revisions`` are some of ``labels``, in their order, as ``harvest --recipe`` with
    ``--steps`` or ``--n-snapshots`` selects them; a label "main" stands for any revision."""
    remaining = iter(labels)
    return all(any(label in ("main", revision) for label in remaining) for revision in revisions)


def _harvest_for_recipe(args: argparse.Namespace, recipe, config: CrosscoderRunnerConfig, device: str, model_dtype: str) -> str:
    """Harvest into ``<out>/activations`` (resumable) what ``harvest --recipe NAME --out
    <out>/activations`` with the same token flags writes, its held-out split beside it, and return
    the store path. So ``crosslens plan --recipe NAME`` sizes it, and the quality table is held out."""
    from crosslens.activations import StoreMismatchError
    from crosslens.commands.harvest import check_hooks, harvest_stores, selected_suite, token_source
    from crosslens.core.launch import local_rank_device

    suite = selected_suite(args, recipe)  # refuses, in one line, weights not in the cache offline
    check_hooks(suite, [config.hook_name])
    source = token_source(args, recipe)
    out = Path(args.out_dir) / "activations"
    harvest_args = argparse.Namespace(**{**vars(args), "out": str(out), "store_dtype": None, "overwrite": False})
    try:
        store, _ = harvest_stores(harvest_args, suite, [config.hook_name], recipe, source, local_rank_device(device), model_dtype)
    except StoreMismatchError as error:  # train's --overwrite keeps the store by design: say what to do here
        if not error.differs:
            raise
        replace = (
            "the run there trained on it, so replacing it ends that run's --resume"
            if args.resume else f"to replace it, run `crosslens harvest --recipe {args.recipe} --out {out} --overwrite` "
            "with these flags, then train with --overwrite"
        )  # fmt: skip
        raise CLIError(
            f"{out} holds a store harvested with other token or snapshot flags (differs in: {', '.join(error.differs)}): "
            f"pass the ones it was harvested with (--n-tokens, --seq-len, --heldout-tokens, --text, --dataset, "
            f"--steps, --n-snapshots, --suite), or train in another --out; {replace}"
        ) from None
    return str(store.path)


def train(args: argparse.Namespace) -> int:
    from crosslens.commands.inputs import check_output_folder
    from crosslens.core.launch import is_main_process
    from crosslens.training.runfolder import check_not_being_written, check_run_start, owned_run_folder
    from crosslens.training.runner import CrosscoderTrainingRunner

    from crosslens.commands.stream import check_stream_flags, train_stream

    check_stream_flags(args)
    check_output_folder(args.out_dir, holds="the run")
    device, model_dtype = device_and_dtype(args)
    recipe = load_recipe_arg(args.recipe) if args.recipe else None
    if args.stream:
        return train_stream(args, recipe, train_config(args, recipe, device=device, store_path=""), model_dtype)
    if args.store_path is None and recipe is None:
        raise CLIError("train needs --store DIR (an activation store), --stream (no store), or --recipe NAME")
    config = train_config(args, recipe, device=device)
    reset_peak_memory(device)
    if args.store_path is not None:
        if recipe is not None:
            _check_store_matches_recipe(args.store_path, recipe)
    else:  # refuse a folder that cannot take the run before harvesting into it
        check_not_being_written(config.out_dir)
        check_run_start(config.out_dir, resume=args.resume, overwrite=args.overwrite)
        config.store_path = _harvest_for_recipe(args, recipe, config, device, model_dtype)
    if args.eval_store is not None:
        _check_eval_store(config.store_path, args.eval_store, config.hook_name)
    runner = CrosscoderTrainingRunner(config)
    # held across training and the quality table, so no other run writes between them
    with owned_run_folder(runner.out_dir, enabled=is_main_process()):
        with torchrun_job():
            runner.join_mesh()
            runner.run(resume=args.resume, overwrite=args.overwrite)
        if runner.is_main:  # the other workers have left: the table takes as long as it takes
            _save_quality(runner, args, device, model_dtype)
    print_peak_memory(runner.device)
    return 0


def _check_eval_store(store_path: str, eval_store: str, hook: str) -> None:
    """Refuse an --eval-store that cannot serve the crosscoder before training it, not after."""
    from crosslens.activations import ActivationStore
    from crosslens.activations.partners import check_eval_store

    training = ActivationStore.open(store_path, verify="none")
    if not Path(eval_store).exists():
        raise CLIError(f"--eval-store {eval_store}: the path does not exist; pass a store written by `crosslens harvest`")
    check_eval_store(training, ActivationStore.open(eval_store, verify="none"), training.resolve_hook(hook or None))


def _save_quality(runner, args: argparse.Namespace, device: str, model_dtype: str | None) -> None:
    """Print the quality table and seal it into the run (a finished run found by --resume keeps its
    own, unless --eval-store names where to measure it again); the spliced-loss figures also go to
    the W&B run's summary when training logged to W&B."""
    from crosslens.commands.runs import kept_quality_table
    from crosslens.commands.spliced import log_run_spliced
    from crosslens.training.runfolder import seal_run

    kept = kept_quality_table(runner, args.eval_store)
    if kept is not None:
        print(f"its quality table: {kept}")
        return
    quality = runner.out_dir / QUALITY_NAME
    print(f"crosscoder saved to {runner.final_path}")
    spliced = print_quality(
        runner.final_path, runner.config.store_path, args.eval_store, device, save_to=quality,
        spliced_seqs=args.spliced_seqs, spliced_ablation=args.spliced_ablation, model_dtype=model_dtype,
        trained_on=runner.store.sequences,
    )  # fmt: skip
    seal_run(runner.out_dir)
    log_run_spliced(runner, spliced)
