"""``crosslens train``: a crosscoder from an activation store, from a recipe's suite (harvested
into the run folder first), or ``--stream``ed from snapshot models kept in memory.

Settings come in three layers, later ones winning field by field: the defaults of
:class:`~crosslens.training.config.CrosscoderRunnerConfig` (whose fields are the flags, with its
nested architecture and logging configs), a ``--recipe``'s values, and the flags given.

``--stream`` writes nothing but the run folder. Its suite, snapshot and token flags are
``harvest``'s and mean the same (the same tokens, the same held-out rows); its normalisation factors,
though, are measured on the first 64 training rows where a store's are on all of its tokens, and its
bfloat16 models are processed in float32 before the cast where harvest's are processed in bfloat16
(docs/DISTRIBUTED.md, "Activations at scale"). Before any model loads
the command prints what the resident models need against what the device has, and refuses a run
that cannot fit; after training it reports the quality table on the held-out rows, harvested from
the same resident models.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from crosslens.activations.budget import check_token_table_fits, chunk_buffer_bytes, chunk_tokens_for
from crosslens.activations.config import HarvestConfig, TokenSource
from crosslens.architectures import uses_k
from crosslens.cli.common import (
    CLIError,
    chosen_processing_flag,
    device_and_dtype,
    print_peak_memory,
    selected_suite,
    token_layers,
    tokens_of,
    torchrun_job,
)
from crosslens.cli.flags import Subcommand, build, explicit
from crosslens.cli.inputs import check_output_folder
from crosslens.cli.options import (
    DeviceFlags,
    SplicedLossFlags,
    SuiteFlags,
    TokenBudgetFlags,
    data_flags_given,
    data_flags_refusal,
)
from crosslens.core.devices import (
    DTYPE_BYTES,
    RESIDENT_MEMORY_FRACTION,
    default_model_dtype,
    dtype_name,
    reset_peak_memory,
)
from crosslens.core.errors import run_again
from crosslens.core.launch import is_main_process, local_rank_device, local_world_size
from crosslens.core.paths import QUALITY_NAME, RUN_CONFIG_NAME, TRAIN_LOG_NAME
from crosslens.core.units import format_bytes
from crosslens.training.config import RUN_STREAM, CrosscoderRunnerConfig
from crosslens.training.model_sizes import known_model
from crosslens.training.recipes import load_recipe


@dataclass
class TrainFlags:
    store_path: str | None = field(default=None, metadata={"flag": "--store"})
    """Activation store (required unless --stream, or a --recipe that harvests one)."""
    stream: bool = False
    """Train on activations harvested as training goes from snapshot models kept in memory, no store
    on disk: the suite, snapshot and token flags say what, as for harvest."""
    recipe: str | None = None
    """A shipped recipe (crosslens plan --list-recipes): its settings are the defaults, explicit flags win;
    without --store, what harvest --recipe writes (the token and snapshot flags apply as there) is harvested
    into OUT/activations and OUT/activations-heldout first."""
    eval_store: str | None = None
    """Store for the final quality table (default: STORE-heldout written by harvest, else the training store).
    The store measured on is re-hashed against its manifest (the training store: sizes only), and a
    STORE-heldout is refused unless it was split from STORE."""
    resume: bool = False
    """Continue from the last checkpoint in --out (a run there that finished with these settings is
    reported, not trained again)."""
    overwrite: bool = False
    """Remove another run's results from --out (run.json, final/, checkpoints, quality.json, report
    sections) and train anew; without it, train refuses a folder holding them."""
    center_writing_weights: bool | None = field(
        default=None,
        metadata={"flag": "--no-center-writing-weights", "default_from": (HarvestConfig, "center_writing_weights")},
    )
    dtype: str | None = None
    """dtype of the snapshot models (float32, bfloat16, float16; default: bfloat16 on CUDA when a --recipe
    harvests or --stream keeps them resident, else float32; a streamed run's --resume takes the dtype the run
    recorded); crosscoder parameters stay float32."""


def train_config(args: argparse.Namespace, recipe=None, **fixed) -> CrosscoderRunnerConfig:
    """The runner config of a ``train`` command line: the config's defaults, then the recipe's
    values, then the flags given; ``fixed`` (the resolved store path and device) last. A recipe
    without ``--n-steps`` sees its token budget (``--n-tokens`` where given) once, at the batch
    size in force."""
    flags = explicit(args, CrosscoderRunnerConfig)
    layers = [recipe.training_settings() if recipe is not None else {}, flags]
    if recipe is not None and "n_steps" not in flags:
        batch = flags.get("train_batch_size_tokens") or recipe.batch_size
        layers.append({"n_steps": recipe.steps_at(batch, getattr(args, "n_tokens", None))})
    fixed.setdefault("store_path", args.store_path or "")
    config = build(CrosscoderRunnerConfig, *layers, fixed)
    if "k" in flags.get("sae", {}) and not uses_k(config.sae.architecture):
        raise CLIError(
            f"--k {flags['sae']['k']}: {config.sae.architecture} keeps no fixed count of active latents (only the "
            "topk and batchtopk crosscoders do); drop --k, and set its sparsity with --sparsity"
        )
    return config


def train(args: argparse.Namespace) -> int:
    from crosslens.training.run_log import append_record
    from crosslens.training.runfolder import check_not_being_written, check_run_start, owned_run_folder
    from crosslens.training.runner import CrosscoderTrainingRunner

    check_stream_flags(args)
    check_output_folder(args.out_dir, holds="the run")
    recipe = load_recipe(args.recipe) if args.recipe else None
    harvests = args.stream or (recipe is not None and args.store_path is None)
    device, model_dtype = device_and_dtype(args, produces_activations=harvests)
    if args.stream:
        model_dtype = resumed_model_dtype(args, model_dtype)
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
    elif not (args.resume and (Path(config.out_dir) / QUALITY_NAME).is_file()):  # a finished run keeps its table
        _check_heldout_beside(config.store_path)
    runner = CrosscoderTrainingRunner(config)
    # held across training and the quality table, so no other run writes between them
    with owned_run_folder(runner.out_dir, enabled=is_main_process()):
        with torchrun_job():
            runner.join_mesh()
            runner.run(resume=args.resume, overwrite=args.overwrite)
        if runner.is_main:  # the other workers have left: the table takes as long as it takes
            evaluation = time.perf_counter()
            if _save_quality(runner, args, device, model_dtype):
                append_record(runner.out_dir, "evaluation", seconds=round(time.perf_counter() - evaluation, 4))
    print_peak_memory(runner.device)
    return 0


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


def _harvest_for_recipe(
    args: argparse.Namespace, recipe, config: CrosscoderRunnerConfig, device: str, model_dtype: str
) -> str:
    """Harvest into ``<out>/activations`` (resumable) what ``harvest --recipe NAME --out
    <out>/activations`` with the same token flags writes, its held-out split beside it, and return
    the store path. So ``crosslens plan --recipe NAME`` sizes it, and the quality table is held out."""
    from crosslens.activations import StoreMismatchError
    from crosslens.activations.harvest_job import harvest_stores

    out = Path(args.out_dir) / "activations"
    fixed = {"out_dir": str(out), "hook_names": [config.hook_name]}
    fixed.update(device=local_rank_device(device), model_dtype=model_dtype)
    harvest = build(HarvestConfig, *token_layers(args, recipe), fixed)
    suite = selected_suite(args, recipe)  # refuses, in one line, weights not in the cache offline
    try:
        store, _ = harvest_stores(harvest, suite)
    except StoreMismatchError as error:  # train's --overwrite keeps the store by design: say what to do here
        if not error.differs:
            raise
        raise CLIError(_store_differs(error, args, out)) from None
    return str(store.path)


def _store_differs(error, args: argparse.Namespace, out: Path) -> str:
    """What to do about the store in ``out`` that ``error`` says was harvested with other flags:
    the flags that give its values first (not --store-dtype: train writes the recipe's)."""
    fixes = [fix for flag, fix in error.fixes.items() if flag != "--store-dtype"]
    others = "the flags it was harvested with"
    if fixes:
        others = " and ".join([" ".join(fixes)] + ([] if len(fixes) == len(error.differs) else [f"the other {others}"]))
    replace = (
        "the run there trained on it, so replacing it ends that run's --resume"
        if args.resume
        else f"to replace it, run `crosslens harvest --recipe {args.recipe} --out {out} --overwrite` "
        "with these flags, then train with --overwrite"
    )
    return (
        f"{out} holds a store harvested with other flags (differs in: {'; '.join(error.differs)}): pass {others} "
        "(--n-tokens, --seq-len, --heldout-tokens, --text, --dataset, --steps, --n-snapshots, --suite, --dtype, "
        f"whose default --device sets: {default_model_dtype('cuda')} on CUDA, else {default_model_dtype('cpu')}), "
        f"or train in another --out; {replace}"
    )


def _check_eval_store(store_path: str, eval_store: str, hook: str) -> None:
    """Refuse an --eval-store that cannot serve the crosscoder before training it, not after."""
    from crosslens.activations import ActivationStore
    from crosslens.activations.partners import check_eval_store

    training = ActivationStore.open(store_path, verify="none")
    if not Path(eval_store).exists():
        raise CLIError(
            f"--eval-store {eval_store}: the path does not exist; pass a store written by `crosslens harvest`"
        )
    check_eval_store(training, ActivationStore.open(eval_store, verify="none"), training.resolve_hook(hook or None))


def _check_heldout_beside(store_path: str) -> None:
    """Refuse, before training, a held-out store beside the store that the quality table after it
    would refuse as not split from that store (from their manifests; it is hashed when read)."""
    from crosslens.activations import ActivationStore
    from crosslens.activations.partners import check_heldout, heldout_store_path

    heldout = heldout_store_path(store_path)
    if heldout.exists():
        check_heldout(ActivationStore.open(store_path, verify="none"), ActivationStore.open(heldout, verify="none"))


def saved_line(runner) -> str:
    """Where a finished run's crosscoder and its training log are."""
    return f"crosscoder saved to {runner.final_path}; its training log: {runner.out_dir / TRAIN_LOG_NAME}"


def _save_quality(runner, args: argparse.Namespace, device: str, model_dtype: str | None) -> bool:
    """Print the quality table and seal it into the run (a finished run found by --resume keeps its
    own, unless --eval-store names where to measure it again); the spliced-loss figures also go to
    the W&B run's summary when training logged to W&B. Whether it measured the table."""
    from crosslens.cli.quality import log_run_spliced, print_quality
    from crosslens.training.runfolder import kept_quality_table, seal_run

    kept = kept_quality_table(runner, args.eval_store)
    if kept is not None:
        print(f"its quality table: {kept}")
        return False
    quality = runner.out_dir / QUALITY_NAME
    print(saved_line(runner))
    spliced = print_quality(
        runner.final_path,
        runner.config.store_path,
        args.eval_store,
        device,
        save_to=quality,
        spliced_seqs=args.spliced_seqs,
        spliced_ablation=args.spliced_ablation,
        model_dtype=model_dtype,
        trained_on=runner.store.sequences,
    )
    seal_run(runner.out_dir)
    log_run_spliced(runner, spliced)
    return True


# --------------------------------------------------------------------------- --stream
def check_stream_flags(args: argparse.Namespace) -> None:
    """Refuse, in one line, the flag combinations that make no sense with or without ``--stream``."""
    if args.stream:
        if args.store_path is not None:
            raise CLIError("--stream trains without a store: drop --store (or drop --stream to train on the store)")
        return
    if args.center_writing_weights is not None:  # a store holds what its harvest loaded
        raise CLIError("--no-center-writing-weights chooses how --stream loads a suite of models: add --stream")
    if args.recipe is not None and args.store_path is None:  # they choose what the recipe's store holds
        return
    given = data_flags_given(args)
    if given:
        raise CLIError(data_flags_refusal(given, "--stream (or a --recipe without --store)", "a store"))


def resident_memory(
    suite, hook: str, model_dtype: str, n_models: int, seq_len: int | None = None
) -> tuple[int, str] | None:
    """Bytes ``n_models`` resident snapshot models of ``suite`` need (kept up to ``hook``'s block),
    and with ``seq_len`` the two chunk buffers they fill (served and prefetched, in the models'
    dtype), and how that was counted; None when the model's sizes are unknown here."""
    from crosslens.activations.forward import stop_layer_for

    shape = suite.shape() or known_model(suite.model_id)  # a hub model in crosslens's table, not yet cached
    if shape is None:
        return None
    stop = stop_layer_for([hook])
    n_blocks = shape.n_layers if stop is None else min(shape.n_layers, max(1, stop))
    params = shape.params_in_blocks(n_blocks)
    how = f"{n_models} x {params:,} parameters (blocks 0-{n_blocks - 1} of {shape.n_layers}, {model_dtype})"
    need = n_models * shape.weight_bytes(model_dtype, n_blocks)
    if seq_len is not None:
        d_in = shape.hook_width(hook)
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
    import torch

    from crosslens.activations import streaming

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
    budget = None if free is None else int(free * RESIDENT_MEMORY_FRACTION) // sharers
    fits = budget is None or need <= budget
    where = (
        f"{format_bytes(budget)} of {device} available per process"
        if budget is not None
        else f"free memory of {device} unknown"
    )
    line = f"resident snapshot models: {how} = {format_bytes(need)} per process; {where}: {'they fit' if fits else 'they do NOT fit'}"
    if not fits:
        raise CLIError(
            f"{line}; hold fewer snapshots per process (torchrun ... --snapshot-parallel P), run them in "
            "--dtype bfloat16, pick fewer --n-snapshots, or harvest a store (crosslens harvest)"
        )
    if is_main_process():
        print(line)


def check_stream_eval_store(path: str, hook: str, suite, identities: list[dict | None]) -> None:
    """Refuse, before any model loads, an --eval-store that cannot serve the streamed crosscoder: missing,
    without its hook, or of other snapshots (revisions, steps and the files' ``identities``, read from the
    suite's files as the store's manifest records them; the model id where a snapshot's files cannot tell). A
    snapshot whose files cannot be identified before loading is compared by its weights after training."""
    from crosslens.activations import ActivationStore
    from crosslens.activations.partners import (
        harvest_command,
        processing_problem,
        snapshot_problem,
        store_suite,
        unverifiable_snapshots,
    )
    from crosslens.checkpoints.identity import identified
    from crosslens.training.streaming import suite_record

    if not Path(path).exists():
        raise CLIError(f"--eval-store {path}: the path does not exist; pass a store written by `crosslens harvest`")
    store = ActivationStore.open(path, verify="none")
    if hook not in store.hooks:
        raise CLIError(
            f"--eval-store {path} holds {', '.join(store.hooks)}, not {hook}; pass a store harvested with --hook {hook}"
        )
    streamed = [identified(ref, identity) for ref, identity in zip(suite.snapshots, identities)]
    problem = snapshot_problem(streamed, store.snapshots, require_identity=False)
    model = str((store.manifest.get("spec", {}).get("suite") or {}).get("model_id"))
    if problem is None and unverifiable_snapshots(streamed, store.snapshots) and model != suite.model_id:
        problem = f"model {suite.model_id} vs {model}"
    if problem is not None:
        raise CLIError(
            f"--eval-store {path} holds other snapshots than the streamed ones ({problem}); pass a store harvested "
            f"from them (`{harvest_command(suite_record(suite), streamed, hook)}`)"
        )
    problem = processing_problem({"processing": suite.processing()}, store_suite(store), "the streamed models", "its")
    if problem is not None:
        raise CLIError(
            f"--eval-store {path} holds other activations of the streamed snapshots ({problem}); pass a store "
            f"harvested from them (`{harvest_command(suite_record(suite), streamed, hook)}`)"
        )


def resumed_model_dtype(args: argparse.Namespace, model_dtype: str) -> str:
    """The snapshot models' dtype of ``train --stream``: ``model_dtype`` (--dtype, else the device's
    default), but on --resume without --dtype the dtype the run in --out recorded, as --autocast left
    at auto takes the run's (a run started on a GPU goes on in bfloat16 on a CPU: another dtype
    halfway would be other activations). An explicit --dtype other than the run's is refused."""
    if not args.resume:
        return model_dtype
    try:
        recorded = json.loads((Path(args.out_dir) / RUN_CONFIG_NAME).read_text())[RUN_STREAM]["model_dtype"]
    except (OSError, ValueError, KeyError, TypeError):  # no streamed run there: the runner says what is
        return model_dtype
    if recorded not in DTYPE_BYTES:
        return model_dtype
    if args.dtype is None:
        if recorded != model_dtype and is_main_process():
            print(
                f"--resume: the snapshot models run in {recorded}, as the run in {args.out_dir} did (--dtype {recorded})"
            )
        return str(recorded)
    # the runner refuses it too, but as a setting of the stream's record and once the token tables
    # are built: here the flag and its fix are named before anything is read
    if recorded != model_dtype:
        raise CLIError(
            f"--dtype {args.dtype}: the run in {args.out_dir} ran its snapshot models in {recorded}; resume with "
            f"--dtype {recorded} (or without --dtype), or start a new run in another --out"
        )
    return model_dtype


def slow_forward_hint(asked: str | None, device: str) -> str | None:
    """The line saying that snapshot models asked for in float32 (``asked``: the --dtype given, None
    without it) forego the tensor cores of a GPU, or None."""
    if asked is None or dtype_name(asked) != "float32" or not device.startswith("cuda"):
        return None
    return (
        "the snapshot models run in float32 (--dtype float32), off the tensor cores: without the flag they run "
        "in bfloat16, their forward several times faster (crosslens plan --stream shows both)"
    )


def stream_record(suite, hook: str, tokens: TokenSource, budget, model_dtype: str) -> dict:
    """What run.json says the run streamed, in place of a store path: the suite, the hook, the
    tokens as :meth:`TokenSource.record` records them (local paths absolute, so that a resume from
    another folder, or the harvest ``analyze`` names, reads the same files) and their budget."""
    from crosslens.training.streaming import suite_record

    return {
        "suite": suite_record(suite),
        "hook": hook,
        "tokens": tokens.record(),
        "n_tokens": budget.n_tokens,
        "seq_len": budget.seq_len,
        "heldout_tokens": budget.heldout,
        "model_dtype": model_dtype,
    }


def train_stream(args: argparse.Namespace, recipe, config, model_dtype: str) -> int:
    """``train --stream``: check everything, say whether the models fit, train, report held-out quality.
    ``config`` is the runner config ``train`` made of the flags (with no store)."""
    import torch
    import torch.distributed as dist

    from crosslens.activations.harvest_job import check_context, check_hooks
    from crosslens.activations.snapshots import suite_identities
    from crosslens.activations.streaming import ModelsDoNotFitError
    from crosslens.activations.tokens import token_tables
    from crosslens.training.run_log import append_record
    from crosslens.training.runfolder import kept_quality_table, owned_run_folder
    from crosslens.training.streaming import StreamingTrainingRunner

    device = config.device
    if not config.hook_name:
        raise CLIError("train --stream needs --hook NAME (e.g. --hook blocks.0.hook_resid_post), or a --recipe")
    suite = selected_suite(args, recipe, processing=chosen_processing_flag(args))
    check_hooks(suite.shape(), [config.hook_name])
    identities = None  # read here for an --eval-store, else as the models load
    if args.eval_store is not None:
        identities = suite_identities(suite)
        check_stream_eval_store(args.eval_store, config.hook_name, suite, identities)
    tokens, budget = tokens_of(args, recipe)
    check_context(suite.shape(), budget.seq_len)
    check_token_table_fits(budget.table_tokens + budget.heldout_table_tokens)
    check_memory(
        suite, config.hook_name, model_dtype, local_rank_device(device), config.snapshot_parallel, budget.seq_len
    )
    hint = slow_forward_hint(args.dtype, device)
    if hint is not None and is_main_process():
        print(hint)
    train_NL, heldout_NL = token_tables(tokens, budget, suite.tokenizer())
    record = stream_record(suite, config.hook_name, tokens, budget, model_dtype)
    runner = StreamingTrainingRunner(
        config, suite, train_NL, heldout_NL, record, model_dtype=getattr(torch, model_dtype), identities=identities
    )
    reset_peak_memory(device)
    # held across training and the quality table, so no other run writes between them
    with owned_run_folder(runner.out_dir, enabled=is_main_process()):
        with torchrun_job():
            try:
                runner.run(resume=args.resume, overwrite=args.overwrite)
                evaluation = time.perf_counter()  # the held-out harvest, the table and the spliced loss
                kept = kept_quality_table(runner, args.eval_store)
                if runner.mesh is not None:  # rank 0's answer: whether every rank takes part in the harvest
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
            print(saved_line(runner))
            report_quality(runner, heldout, args, model_dtype)
            append_record(runner.out_dir, "evaluation", seconds=round(time.perf_counter() - evaluation, 4))
    print_peak_memory(runner.device)
    return 0


def report_quality(runner, heldout, args: argparse.Namespace, model_dtype: str) -> None:
    """Print and save (OUT/quality.json) the quality table on --eval-store, else on the held-out rows,
    with the spliced-model loss on the first --spliced-seqs of those rows (the snapshot models loaded
    whole, one at a time, once the resident ones are gone)."""
    from crosslens.cli.quality import format_quality, log_run_spliced, print_quality, quality_rows
    from crosslens.crosscoders.saved import load_crosscoder_folder
    from crosslens.training.runfolder import seal_run

    save_to = Path(runner.out_dir) / QUALITY_NAME
    if args.eval_store is not None:
        spliced = print_quality(
            runner.final_path,
            "",
            args.eval_store,
            runner.device,
            save_to=save_to,
            spliced_seqs=args.spliced_seqs,
            spliced_ablation=args.spliced_ablation,
            model_dtype=model_dtype,
            trained_on=runner.train_NL,
        )
        seal_run(runner.out_dir)
        log_run_spliced(runner, spliced)
        return
    if heldout is None:
        seq_len = int(runner.train_NL.shape[1])
        now = run_again(replacing="--overwrite" if args.overwrite else None, adding="--resume --eval-store STORE")
        print(
            f"no held-out tokens: no quality table; for one, {now} (a store of these snapshots and hook), or start "
            f"a run with --heldout-tokens {seq_len} or more (a row of --seq-len)"
        )
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
    from crosslens.causal.spliced_loss_eval import format_spliced_loss, tokens_spliced_record
    from crosslens.checkpoints.on_device import on_device
    from crosslens.cli.quality import spliced_heading

    n_seqs = min(args.spliced_seqs, len(runner.heldout_NL))
    if n_seqs <= 0:
        return None
    suite = on_device(runner.suite, str(runner.device), model_dtype)
    snapshots = [ref.to_dict() for ref in suite.snapshots]
    spliced = tokens_spliced_record(
        suite,
        crosscoder,
        runner.heldout_NL[:n_seqs],
        snapshots,
        "held-out rows of the streamed tokens",
        args.spliced_ablation,
    )
    print(spliced_heading(spliced))
    print(format_spliced_loss(spliced["crosscoder"]))
    return spliced


COMMAND = Subcommand(
    ("train",),
    "train a crosscoder on an activation store, or streamed from resident snapshot models",
    (TrainFlags, CrosscoderRunnerConfig, SplicedLossFlags, SuiteFlags, TokenBudgetFlags, TokenSource, DeviceFlags),
    train,
)
