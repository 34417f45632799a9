"""The ``crosslens`` command line.

Every subcommand is a thin wrapper over a library function, imported lazily so
``crosslens --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from crosslens.core.launch import is_main_process, launched_by_torchrun, local_rank_device
from crosslens.core.paths import QUALITY_NAME

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---------------------------------------------------------------------------
# Argument checking: every size is checked where it is parsed, so a bad value is
# reported in one line naming its flag (exit status 2) instead of failing later.
# ---------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are two lines: what is wrong, and where help is."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists the options)\n")


def _number_at_least(minimum: float, kind: type = int, *, strictly: bool = False):
    """An argparse ``type`` accepting numbers of ``kind`` >= ``minimum`` (> with ``strictly``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value < minimum or (strictly and value == minimum) or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"must be {'>' if strictly else '>='} {minimum}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _step_list(text: str) -> list[int]:
    try:
        steps = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated steps such as 0,1000,2000, got {text!r}") from None
    if not steps or min(steps) < 0:
        raise argparse.ArgumentTypeError(f"expected one or more steps >= 0, got {text!r}")
    return steps


# ---------------------------------------------------------------------------
# Suite specifications shared by several subcommands
# ---------------------------------------------------------------------------
def _add_suite_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--suite",
        default="pico",
        help="'pico' (the embedded suite, built if missing), a local folder of checkpoints, "
        "or a hub model id: EleutherAI/pythia-*, allenai/OLMo-*-hf, allenai/OLMo-2-*, allenai/Olmo-3-*, "
        "bigscience/bloom-*-intermediate; for OLMo-2/3 add @ingredientK to pick one stage-2 ingredient",
    )
    parser.add_argument(
        "--steps",
        type=_step_list,
        default=None,
        help="comma-separated training steps to use (default: all, or --n-snapshots spaced)",
    )
    parser.add_argument(
        "--n-snapshots",
        type=_number_at_least(1),
        default=None,
        help="pick this many snapshots, dense early and sparse late (log spacing)",
    )


class CLIError(Exception):
    """Bad command-line input: printed as one line, exit status 2, no traceback."""


def _add_device_args(
    parser: argparse.ArgumentParser, *, dtype_help: str | None = None, device_help: str | None = None
) -> None:
    """``--device`` and ``--dtype``, shared by every subcommand that computes (both default
    to None: the command resolves them, so ``--help`` never imports torch)."""
    parser.add_argument(
        "--device",
        default=None,
        help=device_help or "cpu, cuda, cuda:N or mps (default: cuda if available, else mps, else cpu)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        help=dtype_help
        or "dtype of the snapshot models: float32/fp32 (default), bfloat16/bf16, float16/fp16; "
        "crosscoder parameters stay float32",
    )


def _device_and_dtype(args: argparse.Namespace) -> tuple[str, str]:
    """The checked ``(device, dtype)`` strings of ``--device``/``--dtype`` (e.g. ``("cuda:0", "bfloat16")``)."""
    from crosslens.core.devices import dtype_name, resolve_device

    return str(resolve_device(args.device)), dtype_name(args.dtype or "float32")


def _print_peak_memory(device: str) -> None:
    from crosslens.core.devices import peak_memory_line

    line = peak_memory_line(device)
    if line is not None:
        print(line)


def _reset_peak_memory(device: str) -> None:
    from crosslens.core.devices import reset_peak_memory

    reset_peak_memory(device)


def resolve_suite(spec: str, steps: list[int] | None = None, n_snapshots: int | None = None, flag: str = "--suite"):
    """Turn a ``--suite`` string into a :class:`CheckpointSuite`, then select snapshots."""
    from crosslens.checkpoints import CheckpointSuite

    if spec == "pico":
        from crosslens.pico import pico_suite

        suite = pico_suite()
    elif Path(spec).expanduser().exists():
        suite = CheckpointSuite.local(Path(spec).expanduser())
    elif spec.startswith(("/", "./", "../", "~")) or spec.endswith(("/", "\\")):
        raise CLIError(f"{flag} {spec}: the path does not exist; pass a folder of checkpoints (e.g. one `crosslens suite build --root` wrote)")
    else:
        spec, _, ingredient = spec.partition("@ingredient")  # OLMo-2/3: one stage-2 ingredient
        lowered = spec.lower()
        if ingredient and ("olmo" not in lowered or not ingredient.isdigit()):
            raise CLIError(f"{flag} {spec}@ingredient{ingredient}: pass an OLMo-2/3 repo and a number, e.g. @ingredient1")
        if "pythia" in lowered:
            suite = CheckpointSuite.pythia(spec)
        elif "olmo" in lowered:
            from crosslens.checkpoints import MixedIngredientsError

            try:
                suite = CheckpointSuite.olmo(spec, ingredient=int(ingredient) if ingredient else None)
            except MixedIngredientsError as error:  # its message names the --suite NAME@ingredientK to pass
                print(f"crosslens: {error}", file=sys.stderr)
                raise SystemExit(2) from None
        elif "bloom" in lowered:
            suite = CheckpointSuite.bloom(spec)
        else:
            raise CLIError(
                f"{flag} {spec}: no such local folder, and cannot tell which family {spec!r} is; pass 'pico', "
                "a local folder of checkpoints, or a hub id naming pythia, OLMo or bloom"
            )
    try:
        if steps is not None:
            suite = suite.select(steps=steps)
        if n_snapshots is not None:
            suite = suite.select(n=n_snapshots, spacing="log")
    except ValueError as error:
        raise CLIError(f"--steps/--n-snapshots: {error}") from None
    return suite


# ---------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------
# suite build flag -> PicoConfig field
BUILD_FLAGS = {
    "n_layers": "n_layers", "d_model": "d_model", "n_heads": "n_heads", "train_steps": "n_steps",
    "seq_len": "seq_len", "batch_size": "batch_size", "bpe_vocab": "bpe_vocab_size", "seed": "seed",
}  # fmt: skip


def checkpoint_schedule(n_steps: int, n_checkpoints: int) -> tuple[int, int]:
    """``(log_checkpoints_until, checkpoint_every)`` giving the Pythia-shaped schedule (powers of
    two, then evenly spaced) with the checkpoint count closest to ``n_checkpoints``, more preferred."""
    from crosslens.pico.train import pythia_like_schedule

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
    from dataclasses import replace

    from crosslens.pico import PicoConfig

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
        changes["eval_pairs"] = str(Path(args.eval).resolve())
    n_steps = changes.get("n_steps", base.n_steps)
    if args.checkpoints is not None:
        if args.checkpoints > n_steps + 1:
            raise CLIError(f"--checkpoints {args.checkpoints} exceeds the {n_steps} training steps + 1; raise --train-steps")
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


def _corpus_spec(values: list[str]):
    """``--corpus`` values as PicoConfig.corpus: text files (folders expanded) or one dataset:NAME:COLUMN."""
    from crosslens.pico.corpus import DATASET_PREFIX, text_files

    datasets = [v for v in values if v.startswith(DATASET_PREFIX)]
    if datasets:
        if len(values) > 1:
            raise CLIError("--corpus takes either text files and folders, or one dataset:NAME:COLUMN, not both")
        return datasets[0]
    try:
        return tuple(str(path.resolve()) for path in text_files(values))
    except ValueError as error:
        raise CLIError(f"--corpus: {error}") from None


def _cmd_suite_build(args: argparse.Namespace) -> int:
    if args.device not in (None, "cpu") or (args.dtype or "float32").lower() not in ("float32", "fp32"):
        raise CLIError(
            "the pico suite trains on the CPU in float32, so its checkpoints are bitwise reproducible; "
            "drop --device/--dtype (or pass --device cpu --dtype float32)"
        )

    from crosslens.pico import PicoConfig, build_pico_suite, format_eval_table
    from crosslens.pico.build import default_root, is_built
    from crosslens.pico.evals import format_targets

    config, configured = _build_config(args)
    root = Path(args.root) if args.root else default_root(config)
    if args.root and is_built(root) and not configured:  # a suite built earlier, maybe with other flags: use it
        recorded = json.loads((root / "suite.json").read_text())["build"]["config"]
        config = PicoConfig(**recorded)
    if (root / "suite.json").is_file() and not is_built(root, config) and not args.force:
        raise CLIError(
            f"--root {root} holds a pico suite built with other settings; add --force to rebuild it there "
            "with these flags, drop the flags to use it as it is, or choose another --root"
        )
    cached = not args.force and is_built(root, config)
    root = build_pico_suite(config, root=root, force=args.force, progress=True)
    manifest = json.loads((Path(root) / "suite.json").read_text())
    if cached:  # a fresh build already printed its table row by row
        extra = list(dict.fromkeys(n for row in manifest["evals"] for n in row.get("extra", {})))
        print(format_eval_table(manifest["evals"], extra))
        if manifest.get("targets"):
            print(format_targets(manifest["targets"]))
        print("(cached build; --force rebuilds)")
    for note in manifest["build"].get("notes") or []:
        print(f"note: {note}")
    if config.eval_pairs:
        print("pairs columns: share of pairs whose correct continuation has the higher summed log-probability (chance 50)")
    print(f"\npico suite: {root}")
    return 0


def _cmd_suite_list(args: argparse.Namespace) -> int:
    from crosslens.checkpoints.trajectory import group_by_stage
    from crosslens.checkpoints import list_revisions

    for heading, revisions in group_by_stage(list_revisions(args.model)):
        if heading:  # staged runs (OLMo-2/3): one block per stage and ingredient
            print(f"# {heading}: {len(revisions)} revisions")
        for revision in revisions:
            print(revision)
    return 0


def _cmd_harvest(args: argparse.Namespace) -> int:
    recipe = _load_recipe(args.recipe) if args.recipe else None
    hooks = args.hook or ([recipe.hook] if recipe is not None else None)
    if not hooks:
        raise CLIError("harvest needs --hook NAME (e.g. --hook blocks.0.hook_resid_post), or a --recipe")
    device, model_dtype = _device_and_dtype(args)
    if recipe is not None and args.suite is None:
        suite = _recipe_suite(recipe)
        if args.steps is not None or args.n_snapshots is not None:
            suite = suite.select(steps=args.steps) if args.steps is not None else suite.select(n=args.n_snapshots)
    else:
        suite = resolve_suite(args.suite or "pico", args.steps, args.n_snapshots)
    _check_hooks(suite, hooks)  # before any model loads or anything is written
    source = _token_source(args, recipe)
    device = local_rank_device(device)
    _reset_peak_memory(device)
    with _torchrun_job():
        store, heldout = _harvest(args, suite, hooks, recipe, source, device, model_dtype)
        if is_main_process():
            print(f"activation store: {store.path} ({store.n_tokens} tokens x {store.n_snapshots} snapshots)")
            if heldout is not None:
                print(f"held-out store: {heldout.path} ({heldout.n_tokens} tokens; `crosslens train` reports on it)")
        _print_peak_memory(device)
    return 0


def _check_hooks(suite, hooks: list[str]) -> None:
    from crosslens.commands import suite_n_layers
    from crosslens.core.hooks import hook_problem

    n_layers = suite_n_layers(suite)
    for hook in hooks:
        problem = hook_problem(hook, n_layers)
        if problem:
            raise CLIError(f"--hook {problem}")


def _token_source(args: argparse.Namespace, recipe) -> tuple[str, object]:
    """Where harvest's tokens come from: ("text", [paths]), ("dataset", "NAME:COLUMN") or ("pico", None)."""
    if args.text:
        missing = [t for t in args.text if not Path(t).exists()]
        if missing:
            raise CLIError(f"--text {missing[0]}: no such file or folder")
        return "text", list(args.text)
    dataset = args.dataset or (recipe.dataset if recipe is not None else None)
    if recipe is not None and not dataset:
        raise CLIError(f"recipe {recipe.name} records no dataset; pass --dataset NAME:COLUMN or --text FILE")
    if dataset:
        dataset = dataset.removeprefix("dataset:")
        if Path(dataset).is_file() or (Path(dataset).is_dir() and not (Path(dataset) / "dataset_info.json").exists()):
            return "text", [dataset]  # a text file or a folder of .txt files given as --dataset
        return "dataset", dataset
    return "pico", None


def _harvest(args, suite, hooks, recipe, source, device, model_dtype):
    """The store ``harvest`` writes (flags win over the recipe's values), and its held-out store."""
    from crosslens.activations import harvest_activations, tokens_from_dataset, tokens_from_pico
    from crosslens.activations.tokens import tokenize_texts
    from crosslens.commands import heldout_store_path, split_rows, text_documents
    from crosslens.core.devices import dtype_name

    n_tokens = args.n_tokens or (recipe.n_tokens if recipe is not None else 200_000)
    seq_len = args.seq_len or (recipe.context if recipe is not None else 64)
    n_seqs = max(1, n_tokens // seq_len)
    held_tokens = args.heldout_tokens if args.heldout_tokens is not None else min(16_384, n_tokens // 10)
    n_held = held_tokens // seq_len
    tokenizer = suite.tokenizer()
    kind, value = source
    try:
        if kind == "text":
            tokens = tokenize_texts(tokenizer, text_documents(value), seq_len, n_seqs=n_seqs + n_held)
        elif kind == "dataset":
            name, _, column = str(value).partition(":")
            tokens = tokens_from_dataset(tokenizer, name, seq_len, n_seqs + n_held, column=column or "text")
        else:
            tokens = tokens_from_pico(tokenizer, seq_len, n_seqs + n_held, seed=0)
    except ValueError as error:
        if "rows of seq_len" not in str(error):
            raise
        raise CLIError(
            f"--n-tokens {n_tokens} (+ --heldout-tokens {held_tokens}) is more than the text holds at --seq-len "
            f"{seq_len}; lower --n-tokens, or give more text ({' '.join(str(error).split())})"
        ) from None
    train_NL, heldout_NL = split_rows(tokens, n_held, seed=0)
    store_dtype = dtype_name(args.store_dtype or (recipe.store_dtype if recipe is not None else model_dtype))
    common = dict(dtype=store_dtype, overwrite=args.overwrite, device=device, model_dtype=model_dtype)
    store = harvest_activations(suite, hooks, train_NL, args.out, **common)
    heldout = None
    if len(heldout_NL):
        heldout = harvest_activations(suite, hooks, heldout_NL, heldout_store_path(args.out), **common)
    return store, heldout


# ---------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------
def _load_recipe(name: str):
    from crosslens.recipes import load_recipe

    return load_recipe(name)


def _recipe_suite(recipe):
    """The recipe's suite, after checking (offline) that its weights are in the HF cache."""
    missing = _missing_weights(recipe)
    if missing:
        raise CLIError(missing)
    return recipe.suite()


def _missing_weights(recipe) -> str | None:
    """One line naming the recipe's snapshots whose weights cannot be reached, or None.

    Online, the hub is assumed reachable (loading reports its own errors). Offline
    (``HF_HUB_OFFLINE=1``), each revision's config.json must be in the Hugging Face cache.
    """
    from crosslens.checkpoints.hub import hub_offline

    if not hub_offline():
        return None
    from huggingface_hub import constants, try_to_load_from_cache

    labels = [label for label in recipe.snapshot_labels() if label != "main"]
    if recipe.family == "pythia":
        labels = [f"step{s}" for s in recipe.steps]
    absent = [r for r in labels if not isinstance(try_to_load_from_cache(recipe.model, "config.json", revision=r), str)]
    if not absent:
        return None
    more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
    return (
        f"recipe {recipe.name} needs the weights of {recipe.model} at {absent[0]}{more}, which are not in the "
        f"Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids downloading them; "
        "go online, or pass --store with activations harvested elsewhere"
    )


# train flag -> (CrosscoderRunnerConfig field, default without a recipe)
TRAIN_FLAGS = {
    "hook": ("hook", None),
    "arch": ("architecture", "jumprelu_crosscoder"),
    "d_sae": ("d_sae", 1024),
    "k": ("k", 32),
    "sparsity": ("sparsity_coefficient", None),
    "n_steps": ("n_steps", 3000),
    "batch_size": ("batch_size", 1024),
    "lr": ("lr", None),
}


def train_settings(args: argparse.Namespace, recipe=None) -> dict:
    """``CrosscoderRunnerConfig`` keyword arguments from the train flags: an explicit flag
    wins, then the recipe's value, then the built-in default. ``store_path`` is left to
    the caller; ``device`` is the resolved ``--device``."""
    from_recipe: dict = {}
    if recipe is not None:
        from_recipe = {
            "hook": recipe.hook, "architecture": recipe.architecture, "d_sae": recipe.d_sae, "k": recipe.k,
            "sparsity_coefficient": recipe.sparsity, "batch_size": recipe.batch_size, "lr": recipe.lr,
            "sparsity_warm_up_fraction": recipe.sparsity_warm_up_fraction,
            "lr_decay_fraction": recipe.lr_decay_fraction, "decoder_init_norm": recipe.decoder_init_norm,
        }  # fmt: skip
    settings = {field: default for field, default in TRAIN_FLAGS.values()}
    settings.update({k: v for k, v in from_recipe.items() if v is not None})
    for flag, (field, _) in TRAIN_FLAGS.items():
        if getattr(args, flag) is not None:
            settings[field] = getattr(args, flag)
    if recipe is not None and args.n_steps is None:  # the recipe's token budget at this batch size
        settings["n_steps"] = max(1, recipe.n_tokens // settings["batch_size"])
    settings.update(
        out_dir=args.out,
        seed=args.seed,
        log_to_wandb=args.wandb,
        wandb_project=args.wandb_project,
        wandb_run_name=args.wandb_run_name,
        wandb_entity=args.wandb_entity,
        checkpoint_every=args.checkpoint_every,
        verify_store=not args.no_verify,
        snapshot_parallel=args.snapshot_parallel,
        autocast_dtype=args.autocast,
    )
    return settings


def _check_store_matches_recipe(store_path: str, recipe) -> None:
    from crosslens.activations import ActivationStore

    store = ActivationStore.open(store_path, verify="none")
    model = str(store.manifest["spec"]["suite"].get("model_id", ""))
    revisions = [str(entry.get("revision")) for entry in store.manifest["snapshots"]]
    wanted = recipe.snapshot_labels()
    same = model.lower() == recipe.model.lower() and len(revisions) == len(wanted) and all(
        w == "main" or w == r for w, r in zip(wanted, revisions)
    )
    if not same:
        raise CLIError(
            f"the store {store_path} holds {model} at {len(revisions)} snapshots, not recipe {recipe.name}'s "
            f"{recipe.model} at {len(wanted)}; harvest it with `crosslens harvest --recipe {recipe.name}` or drop --recipe"
        )


def _harvest_for_recipe(args: argparse.Namespace, recipe, settings: dict, device: str, model_dtype: str) -> str:
    """Harvest the recipe's activations into ``<out>/activations`` (resumable) and return
    the store path, after checking weights, dataset and disk space."""
    import shutil

    from crosslens.core.devices import DTYPE_BYTES, dtype_name, format_bytes
    from crosslens.plan import hook_width, known_model, model_spec_for

    problems = [p for p in [_missing_weights(recipe)] if p]
    dataset = args.dataset or recipe.dataset
    if not dataset:
        problems.append(f"recipe {recipe.name} records no dataset: pass --dataset NAME:COLUMN")
    if problems:
        raise CLIError("; ".join(problems))
    store_dtype = dtype_name(recipe.store_dtype)
    n_tokens = settings["n_steps"] * settings["batch_size"]
    spec = known_model(recipe.model) or model_spec_for(recipe.model)
    need = n_tokens * recipe.n_snapshots * hook_width(spec, settings["hook"]) * DTYPE_BYTES[store_dtype]
    out = Path(args.out) / "activations"
    probe = next(p for p in [out, *out.parents] if p.exists())
    free = shutil.disk_usage(probe).free
    if need > free:
        raise CLIError(
            f"recipe {recipe.name}'s activation store needs {format_bytes(need)} ({n_tokens} tokens x "
            f"{recipe.n_snapshots} snapshots, {store_dtype}) but {probe} has {format_bytes(free)} free; "
            "lower --n-steps, or pass --store DIR on a larger disk (see `crosslens plan --recipe NAME`)"
        )
    from crosslens.activations import harvest_activations, tokens_from_dataset

    suite = _recipe_suite(recipe)
    name, _, column = dataset.partition(":")
    tokens = tokens_from_dataset(suite.tokenizer(), name, recipe.context, max(1, n_tokens // recipe.context), column=column or "text")
    store = harvest_activations(
        suite, [settings["hook"]], tokens, out, dtype=store_dtype, device=device, model_dtype=model_dtype
    )
    return str(store.path)


def _cmd_train(args: argparse.Namespace) -> int:
    from crosslens.training.runner import CrosscoderRunnerConfig, CrosscoderTrainingRunner

    device, model_dtype = _device_and_dtype(args)
    recipe = _load_recipe(args.recipe) if args.recipe else None
    if args.store is None and recipe is None:
        raise CLIError("train needs --store DIR (an activation store) or --recipe NAME")
    settings = train_settings(args, recipe)
    _reset_peak_memory(device)
    if args.store is not None:
        if recipe is not None:
            _check_store_matches_recipe(args.store, recipe)
        store_path = args.store
    else:
        store_path = _harvest_for_recipe(args, recipe, settings, device, model_dtype)
    config = CrosscoderRunnerConfig(store_path=store_path, device=device, **settings)
    runner = CrosscoderTrainingRunner(config)
    with _torchrun_job():
        runner.run(resume=args.resume)
        if runner.is_main:
            print(f"crosscoder saved to {runner.final_path}")
            _print_quality(runner.final_path, store_path, args.eval_store, device, save_to=Path(args.out) / QUALITY_NAME)
        _print_peak_memory(runner.device)
    return 0


def _print_quality(
    crosscoder_path, store_path: str, eval_store: str | None, device: str, save_to: Path | None = None,
    eval_flag: str = "--eval-store",
) -> None:
    """The quality table of a saved crosscoder: held-out explained variance per snapshot, L0, dead features."""
    from sae_lens import SAE

    import crosslens.crosscoders  # noqa: F401  (registers the architectures)
    from crosslens.activations import ActivationStore
    from crosslens.commands import format_quality, heldout_store_path, quality_rows

    if eval_store is not None:
        path, where = eval_store, f"{eval_flag} {eval_store}"
    elif heldout_store_path(store_path).exists():
        path, where = str(heldout_store_path(store_path)), f"held-out tokens ({heldout_store_path(store_path)})"
    else:
        path, where = store_path, "the TRAINING tokens (no held-out store: pass --eval-store, or harvest with --heldout-tokens)"
    crosscoder = SAE.load_from_disk(str(crosscoder_path), device=device)
    rows, result = quality_rows(crosscoder, ActivationStore.open(path, verify="none"))
    print(format_quality(rows, result, where))
    if save_to is not None:
        save_to.write_text(json.dumps({"measured_on": path, "rows": rows, "dead_features": result["dead_features"]}, indent=1))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from crosslens.commands import crosscoder_folder

    device, _ = _device_and_dtype(args)
    folder = _crosscoder_folder_arg(args.crosscoder, "CROSSCODER")
    if not Path(args.store).exists():
        raise CLIError(f"--store {args.store}: the path does not exist; pass an activation store written by `crosslens harvest`")
    _print_quality(crosscoder_folder(folder), args.store, args.store, device, eval_flag="--store")
    return 0


def _crosscoder_folder_arg(value: str, flag: str) -> Path:
    """A crosscoder folder from a run folder, its final/ folder, or RELEASE/ID; one-line errors naming ``flag``."""
    from crosslens.commands import crosscoder_folder

    if not Path(value).exists():
        if value.startswith(("/", "./", "../", "~")) or value.count("/") != 1:
            raise CLIError(f"{flag} {value}: the path does not exist; pass the --out folder of `crosslens train`")
        value = _resolve_crosscoder_arg(value, flag)
    try:
        return crosscoder_folder(value)
    except FileNotFoundError as error:
        raise CLIError(f"{flag}: {error}") from None


@contextlib.contextmanager
def _torchrun_job():
    """Under torchrun: leave the process group cleanly when the command ends (a process that
    exits with a live mesh aborts at teardown); elsewhere nothing."""
    try:
        yield
    finally:
        from crosslens.distributed import shutdown

        if launched_by_torchrun():
            shutdown()


def _cmd_analyze(args: argparse.Namespace) -> int:
    folder = _crosscoder_folder_arg(args.crosscoder, "--crosscoder")
    return _write_report(folder, args.store, args.out, args)


def _cmd_report(args: argparse.Namespace) -> int:
    folder = _crosscoder_folder_arg(args.run_dir, "RUN_DIR")
    return _write_report(folder, args.store, args.out, args)


def _write_report(folder: Path, store: str | None, out: str | None, args: argparse.Namespace) -> int:
    """Analyse the crosscoder in ``folder`` and write report.html, with the sections other commands
    saved in its run folder (``crosslens attribute``)."""
    from sae_lens import SAE

    import crosslens.crosscoders  # noqa: F401  (registers the architectures)
    from crosslens.activations import ActivationStore
    from crosslens.analysis import analyze_crosscoder
    from crosslens.commands import crosscoder_suite_record, run_folder, run_store, saved_sections, suite_title, suite_tokenizer
    from crosslens.core.devices import dtype_name
    from crosslens.core.hooks import recorded_hook

    device, _ = _device_and_dtype(args)
    run_dir = run_folder(folder)
    if store is not None and not Path(store).exists():
        raise CLIError(f"--store {store}: the path does not exist; pass the store `crosslens harvest --out` wrote")
    store = store or run_store(run_dir)
    out_path = Path(out) if out else (run_dir or Path(".")) / "report.html"
    record = crosscoder_suite_record(folder)
    dtype = dtype_name(args.dtype) if args.dtype else None
    crosscoder = SAE.load_from_disk(str(folder), device=device, dtype=dtype)
    hook = recorded_hook(crosscoder)
    tokenizer = suite_tokenizer(record) if store else None
    analysis, report = analyze_crosscoder(
        crosscoder, store=ActivationStore.open(store) if store else None, tokenizer=tokenizer,
        title=suite_title(record, hook), device=device,
    )  # fmt: skip
    sections = saved_sections(run_dir)
    for section in sections:
        report.extend(section)
    report.write(out_path)
    print("feature classes: " + ", ".join(f"{name} {n}" for name, n in analysis.class_counts().items()))
    if store is None:
        print("no activation store (--store): the report has no firing frequencies, probes or top contexts")
    if sections:
        print(f"with {len(sections)} saved section(s) from {run_dir / 'sections'}")
    print(f"report: {out_path}")
    return 0


def _cmd_attribute(args: argparse.Namespace) -> int:
    from crosslens.causal.demo import attribution_sections, causal_out_dir
    from crosslens.commands import crosscoder_suite_record, run_folder, save_section

    folder = _crosscoder_folder_arg(args.crosscoder, "--crosscoder")
    device, dtype = _device_and_dtype(args)
    steps = args.steps
    record = crosscoder_suite_record(folder)
    if steps is None and args.n_snapshots is None:  # the snapshots the crosscoder was trained on
        steps = [int(entry["step"]) for entry in record.get("snapshots") or []] or None
    tasks = _tasks_from_args(args)  # before any model loads
    suite_spec = args.suite or record.get("root") or record.get("model_id") or "pico"
    if args.suite is None and suite_spec != "pico":
        print(f"suite: {suite_spec} (recorded with the crosscoder; --suite overrides)")
    suite = resolve_suite(suite_spec, steps, args.n_snapshots)
    if len(tasks) > 1:  # several languages: run together, RelIE per language side by side
        from crosslens.causal.demo import language_attribution_sections
        from crosslens.checkpoints.on_device import on_device

        with _task_flag_errors(args):
            sections = language_attribution_sections(
                on_device(suite, device, dtype), str(folder), tasks, n_examples=args.n_examples, out=args.out
            )
        report = Path(args.out).with_suffix(".html")
        sections[0].write(report)
        print(f"report: {report}")
        return 0
    task = tasks[0]
    print(METRIC_SIGN)
    summaries: list = []
    with _task_flag_errors(args):
        sections = attribution_sections(
            suite, str(folder), task=task, n_examples=args.n_examples, out=args.out, device=device, dtype=dtype,
            summaries=summaries,
        )  # fmt: skip
    report = Path(args.out).with_suffix(".html")
    sections[0].write(report)
    name = task if isinstance(task, str) else task.name
    if not isinstance(task, str):
        summary = summaries[0]
        print(
            f"pairs: {summary.n_examples} of the {len(task)} in the file scored (--n-examples caps it), "
            f"{summary.n_multi_token} of them with multi-token continuations"
        )
    print(f"IE table: {args.out}")
    print(f"plots and tables: {causal_out_dir(args.out, name)}")
    print(f"report: {report}")
    run_dir = run_folder(folder)
    if run_dir is not None:
        saved = save_section(sections[0], run_dir, f"attribution-{name}")
        print(f"section saved to {saved}; `crosslens report {run_dir}` puts it into report.html")
    return 0


METRIC_SIGN = (
    "metric = logit[wrong] - logit[correct] at the prompt's last position for one-token continuations, "
    "log p(wrong) - log p(correct) summed over the tokens of longer ones: negative means the model prefers "
    "the correct continuation (more negative = more confident); an effect (IE) is the change in that metric"
)


@contextlib.contextmanager
def _task_flag_errors(args: argparse.Namespace):
    """A task the suite's tokenizer cannot score is an error in the --task (or --task-file) flag."""
    from crosslens.tasks import TaskTokenizationError

    try:
        yield
    except TaskTokenizationError as error:
        flag = f"--task-file {args.task_file}" if args.task_file else f"--task {args.task}"
        raise CLIError(f"{flag}: {error}") from None


def _tasks_from_args(args: argparse.Namespace) -> list:
    """Task names, or tasks loaded from files: --task takes names and pairs files (BLiMP, CLAMS or
    crosslens JSONL; a MultiBLiMP-style file gives one task per language), --task-file a file."""
    from crosslens.tasks import multilingual_tasks
    from crosslens.tasks.blimp import load_task_file

    tasks: list = []
    files = [args.task_file] if args.task_file else []
    for part in ([] if args.task_file and args.task == TASK_DEFAULT else multilingual_tasks(args.task)):
        looks_like_file = Path(part).suffix.lower() in (".jsonl", ".json", ".txt", ".tsv") or "/" in part
        if looks_like_file or Path(part).is_file():
            files.append(part)
        else:
            tasks.append(part)
    for path in files:
        if not Path(path).is_file():
            raise CLIError(f"--task {path}: no such file; pass a task name (e.g. agreement_pp) or a pairs file")
        try:
            tasks.extend(load_task_file(path).values())
        except ValueError as error:
            raise CLIError(f"--task {path}: {error}") from None
    if not tasks:
        raise CLIError("--task names no task; pass e.g. --task agreement_pp or --task PAIRS.jsonl")
    from crosslens.tasks import list_tasks

    unknown = [t for t in tasks if isinstance(t, str) and t not in list_tasks()]
    if unknown:
        raise CLIError(f"--task {unknown[0]}: unknown task; choose one of {', '.join(list_tasks())}, or pass a pairs file")
    return tasks


def _fail(flag: str, message: str) -> None:
    """One line naming the flag to change, exit status 2, no traceback (see main)."""
    raise CLIError(f"{flag}: {message}")


def _resolve_crosscoder_arg(value: str, flag: str = "--crosscoder") -> str:
    """A crosscoder folder, or RELEASE/ID of a registered release (fetched into the HF cache)."""
    if Path(value).exists():
        return value
    from crosslens.pretrained.load import resolve_crosscoder_path

    try:
        return resolve_crosscoder_path(value)
    except (ValueError, OSError) as exc:  # unknown release/id, or not downloadable
        _fail(flag, str(exc))
    raise AssertionError("unreachable")


def _cmd_pretrained_list(args: argparse.Namespace) -> int:
    from crosslens.pretrained import PRETRAINED_ENV, PretrainedRegistryError, pretrained_directory

    try:
        directory = pretrained_directory()
    except PretrainedRegistryError as exc:
        _fail(PRETRAINED_ENV, str(exc))
    if not directory:
        print(f"no pretrained crosscoder releases; add YAML files with {PRETRAINED_ENV}=a.yaml:b.yaml")
        return 0
    width = max(len(name) for name in directory)
    for name, release in sorted(directory.items()):
        ids = ", ".join(release.entries)
        print(f"{name:<{width}}  {release.repo_id}  {release.model}  {release.n_snapshots} snapshots  [{ids}]")
    return 0


def _cmd_pretrained_show(args: argparse.Namespace) -> int:
    from crosslens.pretrained.registry import get_release

    try:
        release = get_release(args.release)
    except ValueError as exc:  # unknown release (nearest names listed) or a malformed registry
        _fail("RELEASE", str(exc))
    suite = release.suite
    print(f"release   {release.release}  (from {release.source})")
    print(f"repo_id   {release.repo_id}")
    print(f"model     {release.model}  ({suite.get('family', '?')} suite)")
    steps = list(suite.get("steps") or [None] * release.n_snapshots)
    print("snapshots " + ", ".join(f"{r} (step {st})" for r, st in zip(release.revisions, steps)))
    for entry in release.entries.values():
        print(f"\n  {entry.id}  path={entry.path}  hook={entry.hook_name}  arch={entry.architecture}"
              f"  normalisation folded={entry.normalization_folded}")  # fmt: skip
        for name, values in (("variance_explained", entry.variance_explained), ("l0", entry.l0)):
            if values is not None:
                print(f"    {name:<18} " + " ".join(f"{v:.3g}" for v in values))
        if entry.wandb_run:
            print(f"    wandb              {entry.wandb_run}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from crosslens.pretrained.push import push_to_hub

    if not Path(args.run_dir).is_dir():
        _fail("RUN_DIR", f"{args.run_dir} is not a folder; pass the --out folder of `crosslens train`.")
    if args.repo.count("/") != 1 or not all(args.repo.split("/")):
        _fail("--repo", f"must be ORG/NAME, got {args.repo!r}.")
    try:
        result = push_to_hub(
            args.run_dir,
            args.repo,
            private=args.private,
            crosscoder_id=args.id,
            release=args.release,
            store_path=args.store,
            fold_normalization=not args.no_fold,
        )
    except FileNotFoundError as exc:
        _fail("RUN_DIR", str(exc))
    print(f"uploaded {result.crosscoder_id} to https://huggingface.co/{result.repo_id}")
    print("registry entry (paste into a file named by CROSSLENS_PRETRAINED, or crosslens/data/pretrained_crosscoders.yaml):\n")
    print(result.registry_yaml)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from crosslens.demo import run_demo

    device, dtype = _device_and_dtype(args)
    run_demo(out_dir=args.out, fast=args.fast, force=args.force, device=device, dtype=dtype)
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from crosslens.plan import PlanConfig, default_mesh, format_plan, known_models, make_plan, model_spec_for
    from crosslens.plan import plan_config_from_recipe, plan_to_json

    if args.list_recipes:
        from crosslens.recipes import list_recipes, load_recipe

        for name in list_recipes():
            print(f"{name:28s} {load_recipe(name).title}")
        return 0
    if args.list_models:
        print("\n".join(known_models()))
        return 0
    from crosslens.core.devices import dtype_name

    device = args.device or "cuda"
    model_dtype = dtype_name(args.dtype or "float32")
    recipe = _load_recipe(args.recipe) if args.recipe else None
    n_snapshots = len(args.steps) if args.steps else args.n_snapshots
    if n_snapshots is None and recipe is not None:
        n_snapshots = recipe.n_snapshots
    if n_snapshots is None:
        raise CLIError("plan needs the snapshot count: --n-snapshots N, --steps A,B,... or --recipe NAME")
    world = args.world_size
    if args.mesh:
        try:
            data, snap = (int(x) for x in args.mesh.lower().split("x"))
        except ValueError:
            raise CLIError(f"--mesh {args.mesh!r} is not DATAxSNAPSHOT, e.g. --mesh 2x4") from None
        if world is not None and world != data * snap:
            raise CLIError(f"--mesh {args.mesh} has {data * snap} ranks but --world-size is {world}; drop one")
    else:
        data, snap = default_mesh(world or 1, n_snapshots)
    common = dict(
        n_snapshots=n_snapshots, data_parallel=data, snapshot_parallel=snap, device=device, tflops=args.tflops,
        link_gbps=args.link_gbps, model_dtype=model_dtype,
    )  # fmt: skip
    if recipe is not None:
        overrides = dict(
            hook=args.hook, n_tokens=args.n_tokens, d_sae=args.d_sae, architecture=args.arch, k=args.k,
            batch_size=args.batch_size, context=args.context,
        )  # fmt: skip
        if args.suite is not None:
            overrides["model"] = model_spec_for(args.suite)
        cfg = plan_config_from_recipe(recipe, **common, **overrides)
    else:
        if args.hook is None:
            raise CLIError("plan needs --hook NAME (or --recipe NAME)")
        cfg = PlanConfig(
            model=model_spec_for(args.suite or "pico"), hook=args.hook, n_tokens=args.n_tokens or 100_000_000,
            d_sae=args.d_sae or 16384, architecture=args.arch or "jumprelu_crosscoder", k=args.k or 32,
            batch_size=args.batch_size or 4096, context=args.context or 2048, name=args.suite or "pico", **common,
        )  # fmt: skip
    plan = make_plan(cfg)
    print(plan_to_json(plan) if args.json else format_plan(plan))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crosslens",
        description="Multi-snapshot crosscoders: how features form, change and die during pre-training.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole pipeline on the embedded pico suite")
    demo.add_argument("--out", default=None, help="output folder (default: $CROSSLENS_HOME/demo)")
    demo.add_argument("--fast", action="store_true", help="small settings, for a quick look")
    demo.add_argument("--force", action="store_true", help="recompute every stage")
    _add_device_args(demo)
    demo.set_defaults(func=_cmd_demo)

    suite = sub.add_parser("suite", help="model suites with training checkpoints")
    suite_sub = suite.add_subparsers(dest="suite_command", required=True)
    build = suite_sub.add_parser(
        "build",
        help="train a pico suite (a tiny Pythia-architecture model, checkpoints saved) on the grammar or your text",
    )
    build.add_argument("--corpus", nargs="+", default=None, metavar="FILE|DIR|dataset:NAME:COLUMN",
                       help="train on your text: text files, folders of .txt files, or dataset:NAME:COLUMN "
                       "(a datasets dataset available offline); a BPE tokenizer is trained on it (default: "
                       "crosslens's generated grammar)")  # fmt: skip
    build.add_argument("--eval", default=None, metavar="PAIRS",
                       help="minimal pairs (BLiMP or crosslens JSONL, or CLAMS text) scored at every checkpoint "
                       "by summed log-probability of each continuation")  # fmt: skip
    build.add_argument("--n-layers", type=_number_at_least(1), default=None, help="transformer blocks (default 2)")
    build.add_argument("--d-model", type=_number_at_least(1), default=None,
                       help="residual width (default 128; the MLP is 4x this)")  # fmt: skip
    build.add_argument("--n-heads", type=_number_at_least(1), default=None, help="attention heads (default 4)")
    build.add_argument("--train-steps", type=_number_at_least(1), default=None, help="optimizer steps (default 640)")
    build.add_argument("--checkpoints", type=_number_at_least(16), default=None,
                       help="about how many checkpoints to save, log-spaced early then even (>= 16; default 21)")  # fmt: skip
    build.add_argument("--seq-len", type=_number_at_least(8), default=None, help="tokens per training row (default 64)")
    build.add_argument("--batch-size", type=_number_at_least(1), default=None, help="rows per step (default 32)")
    build.add_argument("--bpe-vocab", type=_number_at_least(2), default=None,
                       help="vocabulary of the BPE tokenizer trained on --corpus (default 4096)")  # fmt: skip
    build.add_argument("--small", action="store_true", help="the small, fast configuration used by tests")
    build.add_argument("--long", action="store_true", help="a longer build (1536 steps) that also learns IOI")
    build.add_argument("--force", action="store_true", help="rebuild even if a cached build exists (at --root, with these flags)")
    build.add_argument("--seed", type=int, default=None)
    build.add_argument("--root", default=None, help="where to write the suite (default: $CROSSLENS_HOME/suites/pico-HASH); "
                       "a complete suite there is used as it is unless flags or --force say otherwise")  # fmt: skip
    _add_device_args(build, dtype_help="float32 only: pico trains on the CPU in float32 (bitwise reproducible)")
    build.set_defaults(func=_cmd_suite_build)
    lst = suite_sub.add_parser("list", help="list the revisions of a model (hub id or local folder)")
    lst.add_argument("model")
    lst.set_defaults(func=_cmd_suite_list)

    harvest = sub.add_parser("harvest", help="harvest activations at hooks across snapshots, to disk")
    _add_suite_args(harvest)
    harvest.set_defaults(suite=None)  # 'pico' unless --recipe names one
    harvest.add_argument("--recipe", default=None, help="a shipped recipe (crosslens plan --list-recipes): its suite, "
                         "hook, token budget, context and dataset become the defaults")  # fmt: skip
    harvest.add_argument("--hook", action="append", default=None, help="hook name; repeat for several")
    harvest.add_argument("--n-tokens", type=_number_at_least(1), default=None, help="token budget (before exclusions; default 200000)")
    harvest.add_argument("--seq-len", type=_number_at_least(2), default=None, help="tokens per sequence (default 64)")
    harvest.add_argument("--out", required=True, help="store folder")
    _add_device_args(harvest)
    harvest.add_argument(
        "--store-dtype", default=None, help="dtype the store is written in (default: --dtype, or the recipe's)"
    )
    harvest.add_argument("--text", nargs="+", default=None, metavar="FILE|DIR",
                         help="harvest on your text: text files or folders of .txt files (split into documents "
                         "at blank lines, or every ~2000 characters)")  # fmt: skip
    harvest.add_argument("--dataset", default=None,
                         help="NAME:COLUMN of a datasets dataset (a text file or folder also works; default: the pico grammar)")  # fmt: skip
    harvest.add_argument("--heldout-tokens", type=_number_at_least(0), default=None,
                         help="tokens (a seeded random sample of rows) harvested into OUT-heldout instead, for "
                         "train's held-out quality table (default: 10%% of --n-tokens, at most 16384; 0: none)")  # fmt: skip
    harvest.add_argument(
        "--overwrite", action="store_true", help="discard whatever store --out holds and harvest afresh"
    )
    harvest.set_defaults(func=_cmd_harvest)

    train = sub.add_parser("train", help="train a crosscoder on an activation store")
    train.add_argument("--store", default=None, help="activation store (required unless --recipe harvests one)")
    train.add_argument(
        "--recipe",
        default=None,
        help="a shipped recipe (crosslens plan --list-recipes): its settings are the defaults, explicit flags "
        "win; without --store its activations are harvested into OUT/activations first",
    )
    train.add_argument("--dataset", default=None, help="NAME:COLUMN of the tokens a --recipe harvests")
    train.add_argument("--hook", default=None, help="hook in the store (default: its only hook)")
    train.add_argument(
        "--arch",
        default=None,
        choices=["crosscoder", "jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder"],
        help="default jumprelu_crosscoder",
    )
    train.add_argument("--d-sae", type=_number_at_least(1), default=None, help="default 1024")
    train.add_argument("--k", type=_number_at_least(1), default=None, help="k for (batch)top-k (default 32)")
    train.add_argument("--sparsity", type=_number_at_least(0, float), default=None, help="sparsity coefficient lambda")
    train.add_argument("--n-steps", type=_number_at_least(1), default=None, help="default 3000, or a recipe's tokens / batch size")
    train.add_argument("--batch-size", type=_number_at_least(1), default=None, help="default 1024")
    train.add_argument("--lr", type=_number_at_least(0, float, strictly=True), default=None)
    train.add_argument("--eval-store", default=None,
                       help="store for the final quality table (default: STORE-heldout written by harvest, else the training store)")  # fmt: skip
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True)
    train.add_argument(
        "--checkpoint-every", type=_number_at_least(0), default=500, help="steps between checkpoints (0: none)"
    )
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    train.add_argument(
        "--snapshot-parallel",
        type=_number_at_least(1),
        default=1,
        help="under torchrun: processes that split the snapshots (the rest split each batch); "
        "see docs/DISTRIBUTED.md",
    )
    train.add_argument(
        "--autocast",
        choices=["bfloat16"],
        default=None,
        help="run the crosscoder step in bfloat16 autocast (parameters and Adam stay float32)",
    )
    train.add_argument(
        "--no-verify",
        action="store_true",
        help="skip re-hashing the store's files against its manifest (sizes are still checked)",
    )
    train.add_argument("--wandb", action="store_true", help="log to Weights & Biases")
    train.add_argument("--wandb-project", default="crosslens")
    train.add_argument("--wandb-run-name", default=None)
    train.add_argument("--wandb-entity", default=None, help="W&B user or team (default: yours)")
    _add_device_args(
        train,
        dtype_help="dtype of the snapshot models when a --recipe harvests (float32, bfloat16, float16); "
        "crosscoder parameters stay float32",
    )
    train.set_defaults(func=_cmd_train)

    analyze = sub.add_parser("analyze", help="feature evolution report from a trained crosscoder")
    analyze.add_argument("--crosscoder", required=True,
                         help="the --out folder of crosslens train (RUN_DIR or RUN_DIR/final), or RELEASE/ID")  # fmt: skip
    analyze.add_argument("--store", default=None,
                         help="activation store, for firing frequencies, probes and top contexts (default: the one the run trained on)")  # fmt: skip
    analyze.add_argument("--out", default=None, help="report file (default: RUN_DIR/report.html, else report.html)")
    _add_device_args(analyze, dtype_help="dtype the crosscoder is loaded in (default: its saved dtype)")
    analyze.set_defaults(func=_cmd_analyze)

    report = sub.add_parser("report", help="rebuild RUN_DIR/report.html from what is on disk (with attribute's sections)")
    report.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of crosslens train")
    report.add_argument("--store", default=None, help="activation store (default: the one the run trained on)")
    report.add_argument("--out", default=None, help="report file (default: RUN_DIR/report.html)")
    _add_device_args(report, dtype_help="dtype the crosscoder is loaded in (default: its saved dtype)")
    report.set_defaults(func=_cmd_report)

    evaluate = sub.add_parser("evaluate", help="explained variance per snapshot, L0 and dead features of a crosscoder on a store")
    evaluate.add_argument("crosscoder", metavar="CROSSCODER", help="RUN_DIR, RUN_DIR/final or RELEASE/ID")
    evaluate.add_argument("--store", required=True, help="activation store to measure on (best: tokens it was not trained on)")
    _add_device_args(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)

    attribute = sub.add_parser("attribute", help="integrated-gradient attribution of crosscoder features")
    _add_suite_args(attribute)
    attribute.add_argument("--crosscoder", required=True,
                           help="RUN_DIR of crosslens train (its final/ folder also works), or RELEASE/ID of a pretrained release")  # fmt: skip
    attribute.set_defaults(suite=None)  # the suite recorded with the crosscoder
    attribute.add_argument(
        "--task",
        default=TASK_DEFAULT,
        help="task name (see crosslens.tasks) or a pairs file (BLiMP or crosslens JSONL, CLAMS text); several, "
        "comma-separated, run together, one per language (agreement_multilingual = its en, fr and es tasks), "
        "with RelIE per language side by side",
    )
    attribute.add_argument(
        "--task-file",
        default=None,
        help="a MultiBLiMP-style JSONL file (sentence_good, sentence_bad, language): one task per language",
    )
    attribute.add_argument("--n-examples", type=_number_at_least(1), default=64)
    attribute.add_argument("--out", default="attribution.json")
    _add_device_args(attribute)
    attribute.set_defaults(func=_cmd_attribute)

    plan = sub.add_parser(
        "plan",
        help="memory, disk, FLOPs, communication and time of a crosscoder run, before running it",
        description="Size a crosscoder run offline: per-rank parameter, optimizer and activation memory, "
        "resident snapshot models, store disk, FLOPs per token, communication per step, wall time.",
    )
    plan.add_argument("--recipe", default=None, help="a shipped recipe; other flags override its values")
    plan.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")
    plan.add_argument("--list-models", action="store_true", help="list the models whose sizes crosslens knows")
    plan.add_argument("--suite", default=None, help="'pico', a local suite folder or a hub model id")
    plan.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",") if x], default=None,
                      help="comma-separated steps (their count is the snapshot count)")  # fmt: skip
    plan.add_argument("--n-snapshots", type=int, default=None)
    plan.add_argument("--hook", default=None)
    plan.add_argument("--n-tokens", type=int, default=None, help="training tokens (default 1e8)")
    plan.add_argument("--d-sae", type=int, default=None, help="default 16384")
    plan.add_argument("--arch", default=None,
                      choices=["crosscoder", "jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder"])  # fmt: skip
    plan.add_argument("--k", type=int, default=None, help="k of (batch)top-k (default 32)")
    plan.add_argument("--batch-size", type=int, default=None, help="global tokens per step (default 4096)")
    plan.add_argument("--context", type=int, default=None, help="tokens per sequence of the snapshot models (default 2048)")
    plan.add_argument("--world-size", type=int, default=None, help="ranks (default 1)")
    plan.add_argument("--mesh", default=None, help="DATAxSNAPSHOT mesh, e.g. 2x4 (default: the largest snapshot "
                      "axis dividing both the world size and the snapshot count)")  # fmt: skip
    plan.add_argument("--tflops", type=float, default=None,
                      help="sustained TFLOP/s per rank (default: cuda 100, mps 5, cpu 0.5)")  # fmt: skip
    plan.add_argument("--link-gbps", type=float, default=None,
                      help="all-reduce bandwidth per rank, GB/s (default: cuda 50, mps 10, cpu 1)")  # fmt: skip
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    _add_device_args(
        plan,
        dtype_help="dtype of resident snapshot models (default float32)",
        device_help="device kind the run will use: cpu, cuda, cuda:N or mps (default cuda; nothing is checked here)",
    )
    plan.set_defaults(func=_cmd_plan)

    pretrained = sub.add_parser("pretrained", help="registered pretrained crosscoder releases")
    pretrained_sub = pretrained.add_subparsers(dest="pretrained_command", required=True)
    plist = pretrained_sub.add_parser("list", help="list the releases (packaged and CROSSLENS_PRETRAINED files)")
    plist.set_defaults(func=_cmd_pretrained_list)
    pshow = pretrained_sub.add_parser("show", help="one release: repo, suite revisions, crosscoders and their quality")
    pshow.add_argument("release")
    pshow.set_defaults(func=_cmd_pretrained_show)

    push = sub.add_parser("push", help="upload a trained crosscoder to the Hugging Face hub with a model card")
    push.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of crosslens train (or a crosscoder folder)")
    push.add_argument("--repo", required=True, help="hub repo ORG/NAME (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--id", default=None, help="crosscoder id / folder in the repo (default: its hook name)")
    push.add_argument("--release", default=None, help="release name for the registry entry (default: repo NAME)")
    push.add_argument("--store", default=None, help="activation store for the card's numbers (default: the run's)")
    push.add_argument("--no-fold", action="store_true", help="upload with normalisation unfolded (reads normalised inputs)")
    push.set_defaults(func=_cmd_push)
    return parser


def _check_together(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks that involve two flags."""
    if (
        getattr(args, "command", None) == "train"
        and (args.arch or "").endswith("topk_crosscoder")
        and None not in (args.k, args.d_sae)
        and args.k > args.d_sae
    ):
        parser.error(f"--k {args.k} exceeds --d-sae {args.d_sae}; a top-k crosscoder keeps at most d_sae features")


TASK_DEFAULT = "agreement_pp"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("CROSSLENS_DEBUG") == "1"
    if "--debug" in argv:  # accepted anywhere on the line, not only before the subcommand
        argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_together(parser, args)
    import warnings

    formatwarning = warnings.formatwarning
    if not debug:  # warnings as one line each, without the source line that raised them
        warnings.formatwarning = lambda message, category, *_, **__: f"crosslens: warning: {message}\n"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"crosslens {args.command}: interrupted (finished work is kept; run the same command to resume)", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit as exit_:
        if debug or exit_.code in (None, 0) or isinstance(exit_.code, int):
            raise
        _one_line_error(_command_name(args), str(exit_.code).removeprefix("crosslens: "), None)
    except Exception as err:  # noqa: BLE001 - every error is one line; --debug shows the traceback
        if debug:
            raise
        _one_line_error(_command_name(args), str(err), err)
    finally:
        warnings.formatwarning = formatwarning
    return 2


def _command_name(args: argparse.Namespace) -> str:
    """``suite list``, ``harvest``, ...: the words of the command that failed."""
    words = [args.command, getattr(args, "suite_command", None), getattr(args, "pretrained_command", None)]
    return " ".join(w for w in words if w)


def _one_line_error(command: str, message: str, err: BaseException | None) -> None:
    """Print an error as one or two lines and exit with status 2 (see --debug for the traceback)."""
    from crosslens.core.errors import CrosslensError  # a ValueError; named for the reader

    message = " ".join(message.split()) or type(err).__name__
    expected = err is None or isinstance(err, (CLIError, CrosslensError, ValueError, FileNotFoundError))
    if not expected:  # not a known input error: name its type, and where to see more
        message = f"{type(err).__name__}: {message}"
    print(f"crosslens {command}: error: {message}", file=sys.stderr)
    if not expected:
        print("(run again with --debug for the traceback)", file=sys.stderr)
    raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
