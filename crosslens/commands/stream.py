"""``crosslens train --stream``: a crosscoder trained on activations harvested as training goes
from snapshot models kept in memory; nothing is written but the run folder.

The suite, snapshot and token flags are ``harvest``'s and mean the same (the same tokens, the
same held-out rows); the training flags are ``train``'s. Before any model loads the command
prints what the resident models need against what the device has, and refuses a run that
cannot fit. After training it reports the quality table on the held-out rows, harvested from
the same resident models.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crosslens.commands.common import CLIError

DATA_FLAGS = {
    "suite": "--suite", "steps": "--steps", "n_snapshots": "--n-snapshots", "text": "--text",
    "n_tokens": "--n-tokens", "seq_len": "--seq-len", "heldout_tokens": "--heldout-tokens",
}  # fmt: skip
"""Flags that say what ``--stream`` harvests (``--dataset`` too); a ``--recipe`` without ``--store``
harvests a store first, and they say what goes into it."""

MEMORY_FRACTION = 0.9
"""Share of the free memory the resident models may take (the provider's own check uses it too)."""


def check_stream_flags(args: argparse.Namespace) -> None:
    """Refuse, in one line, the flag combinations that make no sense with or without ``--stream``."""
    if args.stream:
        if args.store_path is not None:
            raise CLIError("--stream trains without a store: drop --store (or drop --stream to train on the store)")
        return
    if args.recipe is not None and args.store_path is None:  # they choose what the recipe's store holds
        return
    given = [flag for name, flag in DATA_FLAGS.items() if getattr(args, name) is not None]
    if args.dataset is not None:
        given.append("--dataset")
    if given:
        raise CLIError(
            f"{', '.join(given)} choose the tokens and snapshots --stream (or a --recipe without --store) harvests; "
            f"add --stream, or drop {'it' if len(given) == 1 else 'them'} (a store already holds its tokens)"
        )


def resident_memory(
    suite, hook: str, model_dtype: str, n_models: int, seq_len: int | None = None
) -> tuple[int, str] | None:
    """Bytes ``n_models`` resident snapshot models of ``suite`` need (kept up to ``hook``'s block),
    and with ``seq_len`` the two chunk buffers they fill (served and prefetched, in the models'
    dtype), and how that was counted; None when the model's sizes are unknown here."""
    from crosslens.activations.budget import chunk_buffer_bytes, chunk_tokens_for
    from crosslens.activations.forward import stop_layer_for
    from crosslens.core.devices import DTYPE_BYTES
    from crosslens.core.hooks import hook_width
    from crosslens.core.units import format_bytes
    from crosslens.plan import PlanError, model_spec_for

    try:
        spec = model_spec_for(str(suite.root) if suite.root is not None else suite.model_id)
    except PlanError:
        return None
    stop = stop_layer_for([hook])
    n_blocks = spec.n_layers if stop is None else min(spec.n_layers, max(1, stop))
    params = spec.params_through_layer(n_blocks - 1) if n_blocks < spec.n_layers else spec.n_params
    how = f"{n_models} x {params:,} parameters (blocks 0-{n_blocks - 1} of {spec.n_layers}, {model_dtype})"
    need = n_models * params * DTYPE_BYTES[model_dtype]
    if seq_len is not None:
        d_in = hook_width(hook, spec.d_model, spec.d_mlp)
        rows = chunk_tokens_for(seq_len)
        chunks = chunk_buffer_bytes(rows, n_models, d_in, DTYPE_BYTES[model_dtype])
        how += f" + 2 chunks of {rows:,} tokens x {n_models} snapshots x d {d_in} ({format_bytes(chunks)})"
        need += chunks
    return need, how


def check_memory(
    suite, hook: str, model_dtype: str, device: str, snapshot_parallel: int, seq_len: int | None = None
) -> None:
    """Print the resident models' need (and their chunk buffers') against the free memory, and refuse
    when they do not fit."""
    import math

    import torch

    from crosslens.activations import streaming
    from crosslens.core.launch import is_main_process, local_world_size
    from crosslens.core.units import format_bytes

    n_models = math.ceil(len(suite) / snapshot_parallel)
    counted = resident_memory(suite, hook, model_dtype, n_models, seq_len)
    free = streaming.available_memory(torch.device(device))
    # processes on one machine share its RAM; on an accelerator each has its own device
    sharers = local_world_size() if torch.device(device).type == "cpu" else 1
    if counted is None:
        if is_main_process():
            print(f"resident snapshot models: sizes of {suite.model_id} unknown here; checked as the first one loads")
        return
    need, how = counted
    budget = None if free is None else int(free * MEMORY_FRACTION) // sharers
    fits = budget is None or need <= budget
    where = f"{format_bytes(budget)} of {device} available per process" if budget is not None else f"free memory of {device} unknown"
    line = f"resident snapshot models: {how} = {format_bytes(need)} per process; {where}: {'they fit' if fits else 'they do NOT fit'}"
    if not fits:
        raise CLIError(
            f"{line}; hold fewer snapshots per process (torchrun ... --snapshot-parallel P), run them in "
            "--dtype bfloat16, pick fewer --n-snapshots, or harvest a store (crosslens harvest)"
        )
    if is_main_process():
        print(line)


def check_stream_eval_store(path: str, hook: str, suite) -> None:
    """Refuse, before any model loads, an --eval-store that cannot serve the streamed crosscoder: missing,
    without its hook, or of other steps. Its snapshots' weights are compared after training, against the
    identities the loaded models record."""
    from crosslens.activations import ActivationStore

    if not Path(path).exists():
        raise CLIError(f"--eval-store {path}: the path does not exist; pass a store written by `crosslens harvest`")
    store = ActivationStore.open(path, verify="none")
    steps = [ref.step for ref in suite.snapshots]
    if hook not in store.hooks:
        raise CLIError(f"--eval-store {path} holds {', '.join(store.hooks)}, not {hook}; pass a store harvested with --hook {hook}")
    if [entry.get("step") for entry in store.snapshots] != steps:
        raise CLIError(
            f"--eval-store {path} holds other snapshots than the streamed ones; pass a store harvested with "
            f"--steps {','.join(map(str, steps))} --hook {hook}"
        )


def slow_forward_hint(model_dtype: str, device: str) -> str | None:
    """The line saying that float32 snapshot models on a GPU forego its tensor cores, or None."""
    if model_dtype != "float32" or not device.startswith("cuda"):
        return None
    return (
        "the snapshot models run in float32, off the tensor cores: --dtype bfloat16 runs their forward several "
        "times faster (crosslens plan --stream shows both)"
    )


def stream_record(suite, hook: str, source: tuple[str, object], budget, model_dtype: str, encoding: str = "utf-8") -> dict:
    """What run.json says the run streamed, in place of a store path: the token source with its
    local paths absolute (so that a resume from another folder, or the harvest ``analyze`` names,
    reads the same files) and, for text read in another encoding than UTF-8, that encoding."""
    from crosslens.training.streaming import suite_record

    kind, value = source
    tokens: dict = {"kind": kind, "source": value}
    if kind == "text":
        tokens["source"] = [str(Path(v).resolve()) for v in value]  # type: ignore[attr-defined]
        if encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
            tokens["encoding"] = encoding
    elif kind == "dataset":
        name, colon, column = str(value).partition(":")
        if Path(name).exists():  # a local text file or folder
            tokens["source"] = str(Path(name).resolve()) + colon + column
    return {
        "suite": suite_record(suite), "hook": hook, "tokens": tokens, "n_tokens": budget.n_tokens, "seq_len": budget.seq_len,
        "heldout_tokens": budget.heldout, "model_dtype": model_dtype,
    }  # fmt: skip


def train_stream(args: argparse.Namespace, recipe, config, model_dtype: str) -> int:
    """``train --stream``: check everything, say whether the models fit, train, report held-out quality.
    ``config`` is the runner config ``train`` made of the flags (with no store)."""
    import torch

    from crosslens.activations.streaming import ModelsDoNotFitError
    from crosslens.commands.common import print_peak_memory, reset_peak_memory, torchrun_job
    from crosslens.commands.harvest import check_context, check_hooks, selected_suite, token_budget, token_source, token_tables
    from crosslens.commands.inputs import check_token_table_fits
    from crosslens.commands.runs import kept_quality_table
    from crosslens.core.launch import is_main_process, local_rank_device
    from crosslens.training.runfolder import owned_run_folder
    from crosslens.training.streaming import StreamingTrainingRunner

    device = config.device
    if not config.hook_name:
        raise CLIError("train --stream needs --hook NAME (e.g. --hook blocks.0.hook_resid_post), or a --recipe")
    suite = selected_suite(args, recipe)
    check_hooks(suite, [config.hook_name])
    if args.eval_store is not None:
        check_stream_eval_store(args.eval_store, config.hook_name, suite)
    source = token_source(args, recipe)
    budget = token_budget(args, recipe)
    check_context(suite, budget.seq_len)
    check_token_table_fits(budget.table_tokens + budget.heldout_table_tokens)
    check_memory(suite, config.hook_name, model_dtype, local_rank_device(device), config.snapshot_parallel, budget.seq_len)
    hint = slow_forward_hint(model_dtype, device)
    if hint is not None and is_main_process():
        print(hint)
    train_NL, heldout_NL = token_tables(args, recipe, source, suite.tokenizer())
    record = stream_record(suite, config.hook_name, source, budget, model_dtype, args.encoding)
    runner = StreamingTrainingRunner(config, suite, train_NL, heldout_NL, record, model_dtype=getattr(torch, model_dtype))
    reset_peak_memory(device)
    # held across training and the quality table, so no other run writes between them
    with owned_run_folder(runner.out_dir, enabled=is_main_process()):
        with torchrun_job():
            try:
                runner.run(resume=args.resume, overwrite=args.overwrite)
                kept = kept_quality_table(runner, args.eval_store)
                if runner.mesh is not None:  # rank 0's answer: whether every rank takes part in the harvest
                    import torch.distributed as dist

                    box = [kept]
                    dist.broadcast_object_list(box, src=0)
                    kept = box[0]
                heldout = None if kept is not None else runner.heldout_activations()
            except ModelsDoNotFitError as error:  # the estimate above fitted, the loaded models did not
                raise CLIError(str(error)) from None
            finally:
                runner.close()
        if runner.is_main and kept is not None:
            print(f"its quality table: {kept}")
        elif runner.is_main:  # the other workers have left: the table takes as long as it takes
            print(f"crosscoder saved to {runner.final_path}")
            report_quality(runner, heldout, args, model_dtype)
    print_peak_memory(runner.device)
    return 0


def report_quality(runner, heldout, args: argparse.Namespace, model_dtype: str) -> None:
    """Print and save (OUT/quality.json) the quality table on --eval-store, else on the held-out rows,
    with the spliced-model loss on the first --spliced-seqs of those rows (the snapshot models loaded
    whole, one at a time, once the resident ones are gone)."""
    import json

    from crosslens.commands.evaluate import format_quality, print_quality, quality_rows
    from crosslens.commands.spliced import log_run_spliced
    from crosslens.core.paths import QUALITY_NAME
    from crosslens.crosscoders.saved import load_crosscoder_folder
    from crosslens.training.runfolder import seal_run

    save_to = Path(runner.out_dir) / QUALITY_NAME
    if args.eval_store is not None:
        spliced = print_quality(
            runner.final_path, "", args.eval_store, runner.device, save_to=save_to, spliced_seqs=args.spliced_seqs,
            spliced_ablation=args.spliced_ablation, model_dtype=model_dtype, trained_on=runner.train_NL,
        )  # fmt: skip
        seal_run(runner.out_dir)
        log_run_spliced(runner, spliced)
        return
    if heldout is None:
        seq_len = int(runner.train_NL.shape[1])
        print(f"no held-out tokens: no quality table; pass --heldout-tokens {seq_len} or more (a row of --seq-len), "
              "or --eval-store STORE, for one")  # fmt: skip
        return
    where = f"{heldout.n_tokens} held-out tokens harvested from the resident models"
    crosscoder = load_crosscoder_folder(runner.final_path, device=str(runner.device))
    rows, result = quality_rows(crosscoder, heldout)
    print(format_quality(rows, result, "held-out tokens (harvested from the resident models)"))
    record = {"measured_on": where, "rows": rows, "dead_features": result["dead_features"]}
    spliced = _heldout_spliced(runner, crosscoder, args, model_dtype)
    if spliced is not None:
        record["spliced_loss"] = spliced
    save_to.write_text(json.dumps(record, indent=1))
    seal_run(runner.out_dir)  # the table joins the run's seal, as `crosslens train`'s does
    log_run_spliced(runner, spliced)


def _heldout_spliced(runner, crosscoder, args: argparse.Namespace, model_dtype: str) -> dict | None:
    """The spliced-loss record on the first ``--spliced-seqs`` held-out rows; None for 0."""
    from crosslens.causal.spliced_loss import format_spliced_loss, tokens_spliced_record
    from crosslens.checkpoints.on_device import on_device
    from crosslens.commands.spliced import spliced_heading

    n_seqs = min(args.spliced_seqs, len(runner.heldout_NL))
    if n_seqs <= 0:
        return None
    suite = on_device(runner.suite, str(runner.device), model_dtype)
    snapshots = [ref.to_dict() for ref in suite.snapshots]
    spliced = tokens_spliced_record(
        suite, crosscoder, runner.heldout_NL[:n_seqs], snapshots, "held-out rows of the streamed tokens",
        args.spliced_ablation,
    )  # fmt: skip
    print(spliced_heading(spliced))
    print(format_spliced_loss(spliced["crosscoder"]))
    return spliced
