"""``crosslens plan``: a run sized offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from crosslens.commands.common import CLIError, load_recipe_arg, missing_path_error, select_snapshots
from crosslens.core.paths import looks_like_path


def plan(args: argparse.Namespace) -> int:
    from crosslens.plan import PlanConfig, format_plan, known_models, make_plan, model_spec_for
    from crosslens.plan import plan_config_from_recipe, plan_to_json, stream_prediction

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
    recipe = load_recipe_arg(args.recipe) if args.recipe else None
    n_snapshots = len(args.steps) if args.steps else args.n_snapshots
    if n_snapshots is None and recipe is not None:
        n_snapshots = recipe.n_snapshots
    listed = listed_suite(args, recipe)
    if listed is None and recipe is not None and args.suite is None:
        _check_recipe_choice(recipe, args.steps, args.n_snapshots)
    if listed is not None:  # the snapshots harvest and train --stream would read (all, without a choice)
        from_recipe = recipe.name if recipe is not None and args.suite is None else None
        n_snapshots = len(select_snapshots(listed, args.steps, args.n_snapshots, args.suite or "pico", from_recipe))
    if n_snapshots is None:
        raise CLIError(
            f"plan cannot list the snapshots of {args.suite} here (offline); pass --n-snapshots N, --steps A,B,... "
            "or --recipe NAME"
        )
    settings = {  # the flags given; the rest come from the recipe, else from PlanConfig's defaults (train's)
        "hook": args.hook, "n_tokens": args.n_tokens, "seq_len": args.seq_len, "heldout_tokens": args.heldout_tokens,
        "d_sae": args.d_sae, "architecture": args.architecture, "k": args.k, "batch_size": args.batch_size,
        "n_steps": args.n_steps, "micro_batches": args.micro_batches, "autocast": args.autocast,
        "checkpoint_every": args.checkpoint_every, "keep_checkpoints": args.keep_checkpoints,
    }  # fmt: skip
    if recipe is None and args.hook is None:
        raise CLIError("plan needs --hook NAME (or --recipe NAME)")
    batch = args.batch_size or (recipe.batch_size if recipe is not None else PlanConfig.batch_size)
    data, snap = _mesh(args, n_snapshots, batch)
    common = dict(
        n_snapshots=n_snapshots, data_parallel=data, snapshot_parallel=snap, device=device, tflops=args.tflops,
        link_gbps=args.link_gbps, model_dtype=model_dtype, gpu=args.gpu,
    )  # fmt: skip
    if recipe is not None:
        if args.suite is not None:
            settings["model"] = model_spec_for(args.suite)
        cfg = plan_config_from_recipe(recipe, **common, **settings)
    else:
        given = {name: value for name, value in settings.items() if value is not None}
        cfg = PlanConfig(model=model_spec_for(args.suite or "pico"), name=args.suite or "pico", **common, **given)
    plan = make_plan(cfg)
    predict = args.stream and device.startswith("cuda") and plan["inputs"]["autocast"] == "bfloat16"
    if predict:
        plan["stream_prediction"] = stream_prediction(plan, args.gpu)
    print(plan_to_json(plan) if args.json else format_plan(plan))
    if not args.json and (hint := _wider_snapshot_axis(args, cfg, plan)) is not None:
        print(hint)
    if predict and not args.json:
        print(format_stream_prediction(plan["stream_prediction"]))
    elif args.stream and not args.json:
        why = f"for a GPU: --device cuda, not {device}" if not device.startswith("cuda") else (
            "for the crosscoder step under bfloat16 autocast, as measured; not for --autocast none")
        print(f"\n(train --stream's end-to-end time is predicted {why})")
    return 0


def _mesh(args: argparse.Namespace, n_snapshots: int, batch: int) -> tuple[int, int]:
    """``(data, snapshot)`` of ``--mesh``, else what ``torchrun`` over ``--world-size`` ranks gives
    ``train --snapshot-parallel``: that many ranks on the snapshot axis, the rest splitting each batch."""
    from crosslens.plan import PlanConfig

    world = args.world_size
    if args.mesh:
        try:
            data, snap = (int(x) for x in args.mesh.lower().split("x"))
        except ValueError:
            raise CLIError(f"--mesh {args.mesh!r} is not DATAxSNAPSHOT, e.g. --mesh 2x4") from None
        if world is not None and world != data * snap:
            raise CLIError(f"--mesh {args.mesh} has {data * snap} ranks but --world-size is {world}; drop one")
        if args.snapshot_parallel is not None and args.snapshot_parallel != snap:
            raise CLIError(f"--mesh {args.mesh} has {snap} snapshot ranks but --snapshot-parallel is {args.snapshot_parallel}; drop one")
        return data, snap
    snap = args.snapshot_parallel or PlanConfig.snapshot_parallel
    world = world or snap
    if world % snap:
        raise CLIError(f"--snapshot-parallel {snap} does not divide --world-size {world}; pick a divisor, as train under torchrun needs")
    data = world // snap
    if batch % data:
        fits = [p for p in range(snap, min(world, n_snapshots) + 1) if world % p == 0 and batch % (world // p) == 0]
        fixes = ([f"--snapshot-parallel {fits[0]}"] if fits else []) + [f"--batch-size {batch // data * data or data}"]
        raise CLIError(
            f"--world-size {world} with --snapshot-parallel {snap}: train splits each batch evenly over the {data} data "
            f"ranks, and {batch} tokens (--batch-size) do not split over {data}; pass {' or '.join(fixes)}"
        )
    return data, snap


def _wider_snapshot_axis(args: argparse.Namespace, cfg, plan: dict) -> str | None:
    """For ``--world-size`` ranks left on train's default snapshot axis, the mesh of those ranks
    that holds the least per rank, as one line, where it is another; else None."""
    import dataclasses

    from crosslens.core.units import format_bytes
    from crosslens.plan import default_mesh, make_plan

    if args.mesh or args.snapshot_parallel is not None or cfg.world_size == 1:
        return None
    data, snap = default_mesh(cfg.world_size, cfg.n_snapshots, cfg.batch_size)
    if snap == cfg.snapshot_parallel:
        return None
    other = make_plan(dataclasses.replace(cfg, data_parallel=data, snapshot_parallel=snap))["memory_bytes"]["total_training"]
    return (
        f"(--snapshot-parallel {snap}, a {data}x{snap} mesh of the same {cfg.world_size} ranks, holds "
        f"{format_bytes(other)} per rank for training against {format_bytes(plan['memory_bytes']['total_training'])})"
    )


def _check_recipe_choice(recipe, steps: list[int] | None, n_snapshots: int | None) -> None:
    """Refuse ``--steps``/``--n-snapshots`` that a recipe whose suite only the hub can list
    (OLMo, BLOOM) does not hold, from its own snapshot labels, as harvest would refuse them."""
    from crosslens.checkpoints.snapshot import parse_step

    labels = recipe.snapshot_labels()
    count = len(steps) if steps else None
    if n_snapshots is not None and n_snapshots > (count or len(labels)):
        among = f"--steps picks {count}" if count else f"recipe {recipe.name} lists {len(labels)}"
        raise CLIError(f"--n-snapshots {n_snapshots}: {among} snapshots; pass --n-snapshots {count or len(labels)} or fewer")
    known = {parse_step(label) for label in labels if label != "main"}
    unknown = [step for step in steps or [] if step not in known]
    mains = labels.count("main")  # "main" is the last revision, whose step only the hub says
    if len(unknown) > mains:
        listed = ", ".join(str(parse_step(label)) if label != "main" else "main" for label in labels)
        main_may = f"; at most {mains} of them can be main's" if mains else ""
        raise CLIError(
            f"--steps: {', '.join(map(str, unknown))} {'is' if len(unknown) == 1 else 'are'} not among the {len(labels)} "
            f"snapshots of recipe {recipe.name} ({listed}){main_may}"
        )


def listed_suite(args: argparse.Namespace, recipe):
    """The suite harvest would select ``--steps``/``--n-snapshots`` from, where it is known offline
    without loading or downloading anything: pico (built or not), a local folder, a Pythia repo
    (crosslens knows its steps), a Pythia recipe's steps. None where only the hub could list it
    (OLMo, BLOOM): then the count is taken as given."""
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.commands.common import pico_listing

    if recipe is not None and args.suite is None:
        return recipe.suite() if recipe.family == "pythia" else None
    spec = args.suite or "pico"
    if spec == "pico":
        return pico_listing()[0]
    folder = Path(spec).expanduser()
    if folder.exists():
        try:
            return CheckpointSuite.local(folder)
        except ValueError:  # one checkpoint folder, not a suite of them: sized from its config as given
            return None
    if looks_like_path(spec):
        raise missing_path_error(spec)
    if "pythia" in spec.lower():
        return CheckpointSuite.pythia(spec)
    return None


def format_stream_prediction(p: dict) -> str:
    bound = "at most " if p["forward_bound"] else ""
    at_least = "at least " if p["forward_bound"] else ""  # the hours, where the tokens/s are a ceiling
    forward = (
        f"float32 snapshot forwards, {p['forward_fraction'] * p['peak_tflops']:g} TFLOP/s peak"
        if p["forward_bound"] else f"snapshot forwards at {p['forward_fraction']:.1%} of peak"
    )  # fmt: skip
    rows = [
        (forward, f"{bound}{p['forward_tokens_per_second']:,.0f} tokens/s"),
        (f"crosscoder step at {p['crosscoder_fraction']:.1%} of peak", f"{p['crosscoder_tokens_per_second']:,.0f} tokens/s"),
        ("together (one GPU per rank)", f"{bound}{p['tokens_per_second']:,.0f} tokens/s: {at_least}{p['hours']:.1f} h"),
    ]
    slower_fresh = p["fresh_tokens_per_second"] < p["tokens_per_second"]
    if slower_fresh:  # JumpReLU: its first steps run dense until fewer than 1/32 of the entries are open
        rows.append((
            f"  with a fresh crosscoder's step at {p['fresh_crosscoder_fraction']:.1%}",
            f"{bound}{p['fresh_tokens_per_second']:,.0f} tokens/s: {at_least}{p['fresh_hours']:.1f} h if every step ran so",
        ))  # fmt: skip
    title = f"[train --stream end to end on {p['gpu']} ({p['peak_tflops']:g} TFLOP/s bf16 peak), utilisation as measured on {p['measured_on']}]"
    lines = ["", title, *(f"{label:<44}{value}" for label, value in rows)]
    if slower_fresh:
        lines.append("a run's first steps, until its code is sparse, take the fresh step; its L0 curve shows how many")
    if p["forward_bound"]:
        lines.append("float32 models run off the tensor cores; --dtype bfloat16 runs them at the measured share")
    return "\n".join(lines)
