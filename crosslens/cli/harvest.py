"""``crosslens harvest``: activations at hooks across snapshots, to disk: a verified activation
store, and its held-out store beside it. The flags are :class:`~crosslens.activations.config.HarvestConfig`'s
fields, over a ``--recipe``'s values; :func:`~crosslens.activations.harvest_job.harvest_stores` does the work."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from crosslens.activations.config import HarvestConfig
from crosslens.cli.common import (
    CLIError,
    chosen_processing_flag,
    device_and_dtype,
    harvest_layers,
    print_peak_memory,
    selected_suite,
    torchrun_job,
)
from crosslens.cli.flags import Subcommand, build, explicit
from crosslens.cli.inputs import check_output_folder
from crosslens.cli.options import DeviceFlags, SuiteFlags
from crosslens.core.devices import reset_peak_memory
from crosslens.core.launch import is_main_process, local_rank_device
from crosslens.training.recipes import load_recipe


@dataclass
class HarvestFlags:
    recipe: str | None = None
    """A shipped recipe (crosslens plan --list-recipes): its suite, hook, token budget, context and dataset
    become the defaults."""


def harvest_config(args: argparse.Namespace, recipe=None, **fixed) -> HarvestConfig:
    """The harvest config of a ``harvest`` command line: the config's defaults, then the recipe's
    values, then the flags given; ``fixed`` (the resolved device and dtype) last."""
    flags = explicit(args, HarvestConfig)
    if not flags.get("hook_names") and recipe is None:
        raise CLIError("harvest needs --hook NAME (e.g. --hook blocks.0.hook_resid_post), or a --recipe")
    return build(HarvestConfig, *harvest_layers(recipe, flags), fixed)


def harvest(args: argparse.Namespace) -> int:
    from crosslens.activations.harvest_job import harvest_stores

    recipe = load_recipe(args.recipe) if args.recipe else None
    device, model_dtype = device_and_dtype(args, produces_activations=True)
    config = harvest_config(args, recipe, device=local_rank_device(device), model_dtype=model_dtype)
    suite = selected_suite(args, recipe, processing=chosen_processing_flag(args))
    check_output_folder(config.out_dir, holds="the activation store")
    reset_peak_memory(config.device)
    with torchrun_job():
        store, heldout = harvest_stores(config, suite)
        if is_main_process():
            print(f"activation store: {store.path} ({store.n_tokens} tokens x {store.n_snapshots} snapshots)")
            if heldout is not None:
                print(f"held-out store: {heldout.path} ({heldout.n_tokens} tokens; `crosslens train` reports on it)")
        print_peak_memory(config.device)
    return 0


COMMAND = Subcommand(
    ("harvest",),
    "harvest activations at hooks across snapshots, to disk",
    (SuiteFlags, HarvestFlags, HarvestConfig, DeviceFlags),
    harvest,
)
