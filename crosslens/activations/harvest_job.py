"""A :class:`~crosslens.activations.config.HarvestConfig` harvested from a suite, as ``crosslens
harvest`` does it: the suite's model checked against the hooks and the rows' length, and the token
table and the stores checked to fit, before any model loads or anything is written; then the token
table built, split into training and held-out rows, and harvested into a store and its held-out
store, which records the store's seal.

>>> from crosslens.activations import HarvestConfig, TokenBudget, harvest_stores
>>> from crosslens.pico import pico_suite
>>> config = HarvestConfig(out_dir="acts", hook_names=["blocks.0.hook_resid_post"], budget=TokenBudget(20_000, 32))
>>> store, heldout = harvest_stores(config, pico_suite())  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from crosslens.activations.budget import OUT_DIR, TokenBudget, check_harvest_fits
from crosslens.activations.config import HarvestConfig
from crosslens.activations.harvest import harvest_store
from crosslens.activations.harvest_inputs import HarvestInputs
from crosslens.activations.partners import heldout_store_path, pair_heldout
from crosslens.activations.store import ActivationStore
from crosslens.activations.tokens import token_tables
from crosslens.checkpoints.shape import ModelShape
from crosslens.checkpoints.suite import CheckpointSuite
from crosslens.core.devices import DTYPE_BYTES
from crosslens.core.errors import CrosslensError, StorageError, keyword_and_flag, storage_error
from crosslens.core.hooks import hook_problem
from crosslens.core.launch import is_main_process
from crosslens.core.model_specs import MODELS_FAMILY
from crosslens.core.paths import RUN_CONFIG_NAME


def harvest_stores(config: HarvestConfig, suite: CheckpointSuite) -> tuple[ActivationStore, ActivationStore | None]:
    """Harvest ``config`` from ``suite``: the store at ``config.out_dir`` and, when the budget
    holds out a row or more, the held-out store beside it (``OUT-heldout``), paired with the store.
    Re-running with the same settings resumes both; other settings are refused unless
    ``config.overwrite``."""
    out = config.out_dir
    if Path(out).exists() and not Path(out).is_dir():
        raise CrosslensError(f"{OUT_DIR} {out} is a file, not a folder; pass a folder path for the store")
    if (Path(out) / RUN_CONFIG_NAME).is_file():  # overwrite replaces a store, never a run's files
        raise CrosslensError(
            f"{OUT_DIR} {out} is a training run's folder (it holds {RUN_CONFIG_NAME}); harvest into another folder"
        )
    check_processing(config, suite)
    budget, store_dtype = config.budget, config.store_dtype or config.model_dtype
    heldout_path = heldout_store_path(out)
    needed = check_model_fits(suite.shape(), config.hook_names, budget, len(suite), store_dtype, [out, heldout_path])
    train_NL, heldout_NL = token_tables(config.tokens, budget, suite.tokenizer())
    settings = dict(dtype=store_dtype, model_dtype=config.model_dtype, token_source=config.tokens.record())
    splits, identities = [], None
    for path, table_NL in [(out, train_NL), (heldout_path, heldout_NL)]:
        if len(table_NL):  # the held-out rows run on the same snapshots: their identities are read once
            inputs = HarvestInputs.build(suite, config.hook_names, table_NL, **settings, identities=identities)
            splits.append((inputs, path))
            identities = inputs.identities
    try:
        store, *heldout = [
            harvest_store(inputs, path, overwrite=config.overwrite, device=config.device) for inputs, path in splits
        ]
        heldout_store = heldout[0] if heldout else None
        if heldout_store is not None and is_main_process():
            pair_heldout(store, heldout_store)
        elif heldout_store is None and config.overwrite and heldout_path.exists() and is_main_process():
            shutil.rmtree(heldout_path)  # it was split from the store just replaced
    except StorageError as error:
        cause = error.__cause__
        if error.needed is not None or needed is None or cause is None:
            raise
        # the store cannot size itself before its first snapshot has run; the model's shape can
        raise storage_error(
            cause,
            error.folder,
            "the activation store",
            needed=needed,
            fix=f"harvest into another {keyword_and_flag('out_dir', '--out')}",
        ) from cause
    return store, heldout_store


def check_processing(config: HarvestConfig, suite: CheckpointSuite) -> None:
    """Refuse a harvest whose chosen weight processing (``config.center_writing_weights``) the
    suite's models do not load with: the store would hold, and record, the suite's."""
    chosen = config.processing() or {}
    loads = suite.processing()
    differs = [flag for flag, value in chosen.items() if loads.get(flag) != value]
    if not differs:
        return
    words = ", ".join(f"{flag}={chosen[flag]}" for flag in differs)
    if suite.family == MODELS_FAMILY:
        fix = f"build the suite with CheckpointSuite.models({suite.model_id!r}, processing={chosen!r})"
    else:
        fix = "only a suite of models (CheckpointSuite.models) loads with a chosen processing; leave it unset"
    raise CrosslensError(
        f"--no-center-writing-weights ({words}): the suite {suite.model_id} loads its models with "
        f"{', '.join(f'{flag}={loads.get(flag)}' for flag in differs)}; {fix}"
    )


def check_model_fits(
    shape: ModelShape | None,
    hooks: Sequence[str],
    budget: TokenBudget,
    n_snapshots: int,
    store_dtype: str,
    outs: Sequence[str | Path],
) -> int | None:
    """Refuse, before anything is allocated or written, hooks the model does not have, rows longer
    than its context, and a harvest whose token table or stores (``outs``) do not fit; returns
    the stores' bytes when the model's ``shape`` is known."""
    check_hooks(shape, hooks)
    check_context(shape, budget.seq_len)
    widths = None if shape is None else [shape.hook_width(hook) for hook in hooks]
    n_tokens = budget.table_tokens + budget.heldout_table_tokens
    return check_harvest_fits(n_tokens, n_snapshots, widths, DTYPE_BYTES[store_dtype], outs)


def check_hooks(shape: ModelShape | None, hooks: Sequence[str]) -> None:
    """Refuse a hook that is not a hook name, or names a block the model (of ``shape``) lacks."""
    for hook in hooks:
        problem = hook_problem(hook, None if shape is None else shape.n_layers)
        if problem:
            raise CrosslensError(f"--hook {problem}")


def check_context(shape: ModelShape | None, seq_len: int) -> None:
    """Refuse rows of ``seq_len`` beyond the longest sequence the model reads (when its config says)."""
    context = None if shape is None else shape.n_ctx
    if context is not None and seq_len > context:
        raise CrosslensError(
            f"--seq-len {seq_len} is longer than the model's context of {context} tokens (its config.json); "
            f"pass --seq-len {context} or less"
        )


__all__ = ["check_context", "check_hooks", "check_model_fits", "harvest_stores"]
