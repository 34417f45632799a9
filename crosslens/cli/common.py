"""What several commands share: the CLIError they raise, the device and dtype flags resolved,
the suite a ``--suite`` names, recipes and their weights, the tokens a harvest reads (the flags
over a recipe's values), crosscoder folders, torchrun jobs.

Torch-free at import, as every module the parser reads: the stages that load torch are imported
inside the helpers that need them.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import crosslens.core.launch as launch
from crosslens.activations.budget import TokenBudget
from crosslens.activations.config import TokenSource
from crosslens.cli.flags import build, explicit
from crosslens.cli.options import DEFAULT_SUITE, TokenBudgetFlags
from crosslens.core.devices import model_dtype, peak_memory_line, resolve_device
from crosslens.core.errors import UnknownRevisionError
from crosslens.core.model_specs import is_models_spec, models_spec, parse_models
from crosslens.core.paths import looks_like_path
from crosslens.pico.config import MODEL_ID, PicoConfig, default_root, is_built
from crosslens.training.recipes import Recipe


class CLIError(Exception):
    """Bad command-line input: printed as one line, exit status 2, no traceback."""


def device_and_dtype(args: argparse.Namespace, produces_activations: bool = False) -> tuple[str, str]:
    """The checked ``(device, dtype)`` strings of ``--device``/``--dtype`` (e.g. ``("cuda:0", "bfloat16")``).

    Without ``--dtype``, snapshot models whose activations a command harvests or streams run in
    bfloat16 on CUDA (:func:`~crosslens.core.devices.default_model_dtype`; README, "bf16 snapshot
    models"); everywhere else, and on a CPU, in float32."""
    device = str(resolve_device(args.device))
    return device, model_dtype(device, args.dtype, produces_activations)


def print_peak_memory(device: str) -> None:
    line = peak_memory_line(device)
    if line is not None:
        print(line)


def missing_path_error(spec: str, flag: str | None = "--suite") -> CLIError:
    where = f"{flag} {spec}" if flag else spec
    return CLIError(
        f"{where}: the path does not exist; pass a folder of checkpoints (e.g. one `crosslens suite build --root` wrote)"
    )


def pico_listing():
    """``(suite, built)``: the suite ``--suite pico`` means. Built, the suite itself; not yet built,
    the snapshots its default config will have (steps and folders, never loaded), so the steps
    can be listed and checked without the build."""
    from crosslens.checkpoints import CheckpointSuite, SnapshotRef

    config = PicoConfig()
    root = default_root(config)
    if is_built(root, config):
        return CheckpointSuite.local(root), True
    refs = [SnapshotRef(i, f"step{s}", s, None) for i, s in enumerate(config.checkpoint_steps)]
    folders = {ref.revision: root / ref.revision for ref in refs}
    return CheckpointSuite("local", MODEL_ID, refs, folders=folders, root=root), False


def suite_from_models(args: argparse.Namespace) -> None:
    """``--models A,B`` is ``--suite A,B``: every command reads the suite it names from ``args.suite``.
    A suite of models is two models, whole: distinct models have no training order, so model
    diffing compares two, and there is nothing for ``--steps`` or ``--n-snapshots`` to choose."""
    models, suite = getattr(args, "models", None), getattr(args, "suite", None)
    if models is not None and suite is not None:
        raise CLIError("--models and --suite both name the suite; pass one of them")
    flag, spec = ("--models", models) if models is not None else ("--suite", suite)
    if spec is None or (flag == "--suite" and not is_models_spec(spec)):
        return
    try:
        specs = parse_models(spec)
    except ValueError as error:
        raise CLIError(f"{flag}: {error}") from None
    if len(specs) != 2:
        listed = "one model" if len(specs) == 1 else f"{len(specs)} models"
        raise CLIError(
            f"{flag} lists {listed}; model diffing compares two, in no training order: pass two, e.g. "
            f"{flag} BASE,CHAT (one model's checkpoints: --suite)"
        )
    given = [
        f
        for f, name in (("--steps", "steps"), ("--n-snapshots", "n_snapshots"))
        if getattr(args, name, None) is not None
    ]
    if given:
        raise CLIError(
            f"{given[0]}: {flag} names two models, in no training order, so there are no snapshots to choose "
            f"among them; drop {given[0]}"
        )
    check_model_folders(specs, flag)
    if models is not None:
        args.suite = models_spec(specs)


def check_model_folders(specs, flag: str) -> None:
    """Refuse a model of a diffing suite that is written as a folder but is none: read as a hub id
    it would be sent to the hub's download advice."""
    for spec in specs:
        if looks_like_path(spec.model_id) and not Path(spec.model_id).expanduser().is_dir():
            what = "is a file, not a folder" if Path(spec.model_id).expanduser().exists() else "does not exist"
            raise CLIError(
                f"{flag}: {spec.model_id} {what}; pass a model's folder (one holding its config.json) or a hub id ORG/NAME"
            )


def resolve_suite(
    spec: str,
    steps: list[int] | None = None,
    n_snapshots: int | None = None,
    flag: str = "--suite",
    processing: dict | None = None,
    steps_from: str | None = None,
    named: str | None = None,
):
    """Turn a ``--suite`` string into a :class:`CheckpointSuite`, then select snapshots. A list of
    models (``A,B``) is a diffing suite, loaded with ``processing`` where a record gives one.
    ``steps_from`` says whose ``steps`` are, where no ``--steps`` gave them, and ``named`` how that
    refusal names the suite (:func:`select_snapshots`)."""
    from crosslens.checkpoints import CheckpointSuite, MixedIngredientsError
    from crosslens.checkpoints.models import chosen_processing
    from crosslens.pico.build import pico_suite

    given = spec
    if is_models_spec(spec):
        check_model_folders(parse_models(spec), flag)
        suite = CheckpointSuite.models(spec, processing=chosen_processing(processing))
    elif spec == "pico":
        listed, built = pico_listing()
        if not built:  # a bad --steps/--n-snapshots is refused before the build, not after it
            select_snapshots(listed, steps, n_snapshots, given, steps_from=steps_from, named=named)
        suite = pico_suite()
    elif Path(spec).expanduser().exists():
        suite = CheckpointSuite.local(Path(spec).expanduser())
    elif looks_like_path(spec):
        raise missing_path_error(spec, flag)
    else:
        spec, _, ingredient = spec.partition("@ingredient")  # OLMo-2/3: one stage-2 ingredient
        lowered = spec.lower()
        if ingredient and ("olmo" not in lowered or not ingredient.isdigit()):
            raise CLIError(
                f"{flag} {spec}@ingredient{ingredient}: pass an OLMo-2/3 repo and a number, e.g. @ingredient1"
            )
        if "pythia" in lowered:
            suite = CheckpointSuite.pythia(spec)
        elif "olmo" in lowered:
            try:
                suite = CheckpointSuite.olmo(spec, ingredient=int(ingredient) if ingredient else None)
            except MixedIngredientsError as error:  # its message names the --suite NAME@ingredientK to pass
                raise CLIError(str(error)) from None
        elif "bloom" in lowered:
            suite = CheckpointSuite.bloom(spec)
        else:
            raise CLIError(
                f"{flag} {spec}: no such local folder, and cannot tell which family {spec!r} is; pass 'pico', "
                "a local folder of checkpoints, or a hub id naming pythia, OLMo or bloom"
            )
    return select_snapshots(suite, steps, n_snapshots, given, steps_from=steps_from, named=named)


def selected_suite(args: argparse.Namespace, recipe: Recipe | None, processing: dict | None = None):
    """The suite of ``--suite`` (default: the recipe's, else pico), narrowed by ``--steps`` or
    ``--n-snapshots``; a suite of models loads with ``processing`` where given."""
    if recipe is not None and args.suite is None:
        return select_snapshots(recipe_suite(recipe), args.steps, args.n_snapshots, recipe.model, recipe=recipe.name)
    return resolve_suite(args.suite or DEFAULT_SUITE, args.steps, args.n_snapshots, processing=processing)


def chosen_processing_flag(args: argparse.Namespace) -> dict | None:
    """The weight processing ``--no-center-writing-weights`` chooses for the suite of models the
    command loads (None: the suite's own), refused for any other suite, whose processing is its
    architecture's; before the pico suite is built."""
    if getattr(args, "center_writing_weights", None) is None:
        return None
    if not is_models_spec(args.suite or ""):
        raise CLIError(
            "--no-center-writing-weights chooses how a suite of models loads (--models A,B); any other suite "
            "loads with its architecture's processing: drop --no-center-writing-weights, or pass --models"
        )
    return {"center_writing_weights": args.center_writing_weights}


def check_suite_processing(args: argparse.Namespace, record: dict, suite, crosscoder) -> None:
    """Refuse the suite ``--suite``/``--models`` names where its models load with other weight
    processing than the ``record`` of the crosscoder says it was trained on (where it changes a
    hook's activations): the crosscoder would read other activations. Before any model loads. A
    suite of models, the recorded one or one a flag names, is built with the recorded processing
    (:func:`resolve_suite`), so only another suite (a folder of the same models) can differ."""
    from crosslens.checkpoints.models import processing_difference

    if not args.suite:
        return
    difference = processing_difference(record, {"processing": suite.processing()})
    if difference is None:
        return
    flag = "--models" if getattr(args, "models", None) is not None else "--suite"
    raise CLIError(
        f"{flag} {args.suite}: its models load with the weight processing {difference[1]}, but the crosscoder "
        f"{crosscoder} was trained on them loaded with {difference[0]}; drop {flag}: the suite recorded with "
        "the crosscoder loads them so"
    )


def harvest_layers(recipe: Recipe | None, flags: dict) -> list[dict]:
    """The layers of settings a harvest is built from, later ones winning: the recipe's values
    (:meth:`~crosslens.training.recipes.Recipe.harvest_settings`), then the ``flags`` given. A
    token source given by a flag replaces the recipe's dataset; a recipe that records none needs one."""
    if recipe is None:
        return [flags]
    settings = recipe.harvest_settings()
    given = flags.get("tokens", {})
    if given.get("text") or given.get("dataset"):
        settings.pop("tokens", None)
    elif "tokens" not in settings:
        raise CLIError(f"recipe {recipe.name} records no dataset; pass --dataset NAME:COLUMN or --text FILE")
    return [settings, flags]


def token_layers(args: argparse.Namespace, recipe: Recipe | None) -> list[dict]:
    """The layers of a harvest's tokens (``tokens``) and budget (``budget``) that the token flags
    of ``train`` and ``dashboards`` (:class:`TokenSource`, :class:`TokenBudgetFlags`) and a recipe give."""
    flags = {"tokens": explicit(args, TokenSource), "budget": explicit(args, TokenBudgetFlags)}
    return harvest_layers(recipe, flags)


def tokens_of(args: argparse.Namespace, recipe: Recipe | None) -> tuple[TokenSource, TokenBudget]:
    """The :class:`TokenSource` and :class:`TokenBudget` of the token flags, over a recipe's values."""
    layers = token_layers(args, recipe)
    tokens = build(TokenSource, *(layer.get("tokens", {}) for layer in layers))
    return tokens, build(TokenBudget, *(layer.get("budget", {}) for layer in layers))


def select_snapshots(
    suite,
    steps: list[int] | None,
    n_snapshots: int | None,
    spec: str,
    recipe: str | None = None,
    steps_from: str | None = None,
    named: str | None = None,
):
    """``suite`` narrowed to ``--steps``, then to ``--n-snapshots`` log-spaced ones. A step the
    suite does not list, or more snapshots than it holds, is refused, naming the suite: ``spec``
    (what ``--suite`` said, whose `crosslens suite list` shows the snapshots; a suite of models
    names its models' steps itself), or the ``recipe`` whose steps the suite is. Steps that no
    ``--steps`` gave but a record, ``steps_from`` (e.g. "the crosscoder was trained on"), are the
    suite's to hold: a step it lacks is refused as the suite's, for a command that may have no
    ``--steps``, the suite named as ``named`` says (default ``--suite SPEC: the suite``; a command
    without ``--suite`` names where the suite came from, e.g. ``--store S: the suite it was
    harvested from, SPEC,``)."""
    name = f"recipe {recipe}" if recipe else spec
    listing = "" if recipe else f"; `crosslens suite list {spec}` lists them"
    models = is_models_spec(spec)
    if models:  # `suite list` lists one model's revisions: a suite of models says its own, every one
        listing = "; its models are at steps " + ", ".join(f"{ref.step} ({ref.revision})" for ref in suite.snapshots)
    if steps is not None:
        try:
            suite = suite.select(steps=steps)
        except UnknownRevisionError as error:
            nearest = f"; nearest: {', '.join(error.nearest)}" if error.nearest and not models else ""
            if steps_from is not None:
                named = named or f"--suite {spec}: the suite"
                raise CLIError(f"{named} has no {error.requested}, which {steps_from}{nearest}{listing}") from None
            raise CLIError(
                f"--steps: {error.requested} is not among the {len(suite)} snapshots of {name}{nearest}{listing}"
            ) from None
        except ValueError as error:
            raise CLIError(f"--steps: {error}") from None
    if n_snapshots is not None:
        if n_snapshots > len(suite):
            among = (
                f"--steps picks {len(suite)} snapshots" if steps is not None else f"{name} lists {len(suite)} snapshots"
            )
            raise CLIError(f"--n-snapshots {n_snapshots}: {among}; pass --n-snapshots {len(suite)} or fewer{listing}")
        try:
            suite = suite.select(n=n_snapshots, spacing="log")
        except ValueError as error:
            raise CLIError(f"--n-snapshots: {error}") from None
    return suite


@contextlib.contextmanager
def torchrun_job():
    """Under torchrun: leave the process group when the block ends (a process that exits with a
    live mesh aborts at teardown), with the other workers where it succeeded, at once where it
    raised; elsewhere nothing. Work one worker does alone after the others are done (rank 0's
    quality table) goes after the block: the others would wait for it at the barrier, which
    times out."""
    import crosslens.distributed as distributed

    try:
        yield
    except BaseException:
        if launch.launched_by_torchrun():
            distributed.shutdown(wait=False)
        raise
    if launch.launched_by_torchrun():
        distributed.shutdown()


def fail(flag: str, message: str) -> None:
    """One line naming the flag to change, exit status 2, no traceback (see main)."""
    raise CLIError(f"{flag}: {message}")


def resolve_crosscoder_arg(value: str, flag: str = "--crosscoder") -> str:
    """A crosscoder folder, or RELEASE/ID of a registered release (fetched into the HF cache)."""
    from crosslens.pretrained.releases import resolve_crosscoder_path  # reads the registry's YAML

    if Path(value).exists():
        return value
    try:
        return resolve_crosscoder_path(value)
    except (ValueError, OSError) as exc:  # unknown release/id, or not downloadable
        fail(flag, str(exc))
    raise AssertionError("unreachable")


def crosscoder_folder_arg(value: str, flag: str) -> Path:
    """A crosscoder folder from a run folder, its final/ folder, or RELEASE/ID; one-line errors naming ``flag``."""
    from crosslens.training.runfolder import crosscoder_folder

    if not Path(value).exists():
        if value.startswith(("/", "./", "../", "~")) or value.count("/") != 1:
            raise CLIError(f"{flag} {value}: the path does not exist; pass the --out folder of `crosslens train`")
        value = resolve_crosscoder_arg(value, flag)
    try:
        return crosscoder_folder(value)
    except FileNotFoundError as error:
        raise CLIError(f"{flag}: {error}") from None


def recipe_suite(recipe: Recipe):
    """The recipe's suite, after checking (offline) that its weights are in the HF cache."""
    missing = missing_weights(recipe)
    if missing:
        raise CLIError(missing)
    return recipe.suite()


def missing_weights(recipe: Recipe) -> str | None:
    """One line naming the recipe's snapshots whose weights cannot be reached, or None.

    Online, the hub is assumed reachable (loading reports its own errors). Offline
    (``HF_HUB_OFFLINE=1``), each revision's config.json and weights file (or its index) must be in
    the Hugging Face cache: a revision without one would be found only as its model loads, after
    the tokens are read.
    """
    from crosslens.checkpoints.hub import hub_offline

    if not hub_offline():
        return None
    from huggingface_hub import constants, try_to_load_from_cache

    from crosslens.checkpoints.identity import fully_cached

    labels = [label for label in recipe.snapshot_labels() if label != "main"]
    if recipe.family == "pythia":
        labels = [f"step{s}" for s in recipe.steps]

    def cached(revision: str) -> bool:  # its config, and a weights file as the loader looks for one
        config = try_to_load_from_cache(recipe.model, "config.json", revision=revision)
        return isinstance(config, str) and fully_cached(recipe.model, revision)

    absent = [r for r in labels if not cached(r)]
    if not absent:
        return None
    more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
    return (
        f"recipe {recipe.name} needs the weights of {recipe.model} at {absent[0]}{more}, which are not in the "
        f"Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids downloading them; "
        "go online, or harvest where the weights are and train on that store (`crosslens train --store`)"
    )
