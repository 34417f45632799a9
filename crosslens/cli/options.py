"""Flags several subcommands share, declared once: the device and dtype, which snapshots, how many
tokens, the dtype a saved crosscoder loads in, and how the spliced-model loss is measured. Which tokens is the harvest's own
:class:`~crosslens.activations.config.TokenSource`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from crosslens.activations.budget import TokenBudget
from crosslens.causal.defaults import SPLICED_ABLATION, SPLICED_ABLATIONS
from crosslens.cli.flags import int_list


@dataclass
class DeviceFlags:
    """Where a command computes."""

    device: str | None = None
    """cpu, cuda, cuda:N or mps (default: cuda if available, else mps, else cpu)."""
    dtype: str | None = None
    """dtype of the snapshot models: float32/fp32, bfloat16/bf16, float16/fp16 (default: bfloat16 on CUDA
    where their activations are harvested or streamed, else float32); crosscoder parameters stay float32."""


DEFAULT_SUITE = "pico"
"""The suite a command reads where neither --suite nor a crosscoder's record names one: the embedded
pico suite."""


@dataclass
class SuiteFlags:
    """Which suite, and which of its snapshots."""

    suite: str | None = None
    """'pico' (the embedded suite, built if missing), a local folder of checkpoints, or a hub model id:
    EleutherAI/pythia-*, allenai/OLMo-*-hf, allenai/OLMo-2-*, allenai/Olmo-3-*, bigscience/bloom-*-intermediate;
    for OLMo-2/3 add @ingredientK to pick one stage-2 ingredient (default: pico)."""
    steps: list[int] | None = field(default=None, metadata={"parse": int_list})
    """Comma-separated training steps to use (default: all, or --n-snapshots spaced)."""
    n_snapshots: int | None = field(default=None, metadata={"min": 1})
    """Pick this many snapshots, dense early and sparse late (log spacing)."""
    models: str | None = None
    """Instead of --suite: the two models to diff, comma-separated, sharing an architecture
    (ORG/NAME[@REVISION] or folders), e.g. google/gemma-2-2b,google/gemma-2-2b-it: a diffing suite,
    one snapshot per model, named by model (no --steps or --n-snapshots: two models in no order)."""


@dataclass
class TokenBudgetFlags:
    """How many tokens, in rows of what length, and how many are held out: the fields of
    :class:`~crosslens.activations.budget.TokenBudget`, whose defaults and docstrings they show,
    left None here so that a command can tell a flag given from a recipe's value."""

    n_tokens: int | None = field(default=None, metadata={"default_from": (TokenBudget, "n_tokens")})
    seq_len: int | None = field(default=None, metadata={"default_from": (TokenBudget, "seq_len")})
    heldout_tokens: int | None = field(default=None, metadata={"default_from": (TokenBudget, "heldout_tokens")})


@dataclass
class SplicedLossFlags:
    """How the spliced-model loss is measured, by ``train`` after training and by ``evaluate
    --spliced-loss``: one default, so that both commands report the same figure for a run."""

    spliced_seqs: int = field(default=64, metadata={"min": 0})
    """Token rows of the measured store on which each snapshot's spliced-model loss is measured (CE
    recovered against the --spliced-ablation floor, KL from the clean model); it loads every snapshot
    model once. train: 0 skips it."""
    spliced_ablation: str = field(default=SPLICED_ABLATION, metadata={"choices": SPLICED_ABLATIONS})
    """The floor of the recovered loss: the activation zeroed, or replaced by its mean over the tokens."""


@dataclass
class LoadedCrosscoderFlags(DeviceFlags):
    """Where a saved crosscoder is loaded, and in which dtype."""

    dtype: str | None = None
    """dtype the crosscoder is loaded in (default: its saved dtype)."""


DATA_FLAGS = {
    "suite": "--suite",
    "models": "--models",
    "steps": "--steps",
    "n_snapshots": "--n-snapshots",
    "text": "--text",
    "dataset": "--dataset",
    "n_tokens": "--n-tokens",
    "seq_len": "--seq-len",
    "heldout_tokens": "--heldout-tokens",
}
"""Flags that say what a command harvests from the snapshot models (``train --stream``, a
``train --recipe`` without ``--store``, ``dashboards --stream``); where the tokens come from a
store instead, they have nothing to choose."""


def data_flags_refusal(given: list[str], harvester: str, store: str) -> str:
    """The one line that refuses data flags ``given`` without ``--stream``: what they choose for
    ``harvester`` (the modes that harvest), and that ``store`` already holds the tokens."""
    one = len(given) == 1
    return (
        f"{', '.join(given)} choose{'s' if one else ''} the tokens and snapshots {harvester} harvests; "
        f"add --stream, or drop {'it' if one else 'them'} ({store} already holds its tokens)"
    )


def data_flags_given(args: argparse.Namespace) -> list[str]:
    """The :data:`DATA_FLAGS` given on the command line (``--models``, not the ``--suite`` it is
    read as)."""
    given = [flag for name, flag in DATA_FLAGS.items() if getattr(args, name, None) is not None]
    return [flag for flag in given if not (flag == "--suite" and "--models" in given)]
