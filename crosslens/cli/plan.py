"""``crosslens plan``: memory, disk, FLOPs, communication and time of a run, before running it,
as a table for the terminal (the figures are :mod:`crosslens.training.sizing`'s).

The settings ``plan`` shares with ``harvest`` and ``train`` are their flags, with their names and
their defaults (``default_from`` the configs those commands build), so a plan of a command's flags
sizes the run that command makes."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from crosslens.activations.budget import chunk_tokens_for
from crosslens.architectures import ARCHITECTURE_NAMES
from crosslens.cli.common import CLIError, missing_path_error, pico_listing, select_snapshots
from crosslens.cli.flags import Subcommand
from crosslens.cli.options import DEFAULT_SUITE, DeviceFlags, SuiteFlags, TokenBudgetFlags
from crosslens.core.devices import DTYPE_BYTES, model_dtype
from crosslens.core.paths import looks_like_path
from crosslens.core.units import format_bytes
from crosslens.training.config import AUTOCAST_CHOICES, ArchitectureConfig, CrosscoderRunnerConfig
from crosslens.training.model_sizes import known_models, model_shape_for
from crosslens.training.recipes import list_recipes, load_recipe
from crosslens.training.sizing import PlanConfig, default_mesh, make_plan, plan_config_from_recipe, stream_prediction

RUNNER = CrosscoderRunnerConfig


@dataclass
class PlanFlags:
    recipe: str | None = None
    """A shipped recipe: its values take the place of the defaults below, and other flags override them."""
    list_recipes: bool = False
    """List the shipped recipes and exit."""
    list_models: bool = False
    """List the models whose sizes crosslens knows."""
    hook: str | None = None
    """Hook the crosscoder reads."""
    architecture: str | None = field(
        default=None,
        metadata={
            "flag": "--arch",
            "choices": ARCHITECTURE_NAMES,
            "default_from": (ArchitectureConfig, "architecture"),
        },
    )
    """Crosscoder architecture, as train --arch."""
    d_sae: int | None = field(default=None, metadata={"default_from": (ArchitectureConfig, "d_sae")})
    """Shared features, as train --d-sae."""
    k: int | None = field(default=None, metadata={"default_from": (ArchitectureConfig, "k")})
    """k of (batch)top-k, as train --k."""
    n_steps: int | None = field(default=None, metadata={"default_from": (RUNNER, "n_steps")})
    """Optimizer steps, as train --n-steps (a --recipe's: its token budget at --batch-size)."""
    checkpoint_every: int | None = field(default=None, metadata={"min": 0})
    """Steps between checkpoints, as train --checkpoint-every (default: about {training.config.CHECKPOINTS_PER_RUN} a run, at least
    {training.config.MIN_CHECKPOINT_STEPS} steps apart)."""
    keep_checkpoints: int | None = field(
        default=None, metadata={"min": 0, "default_from": (RUNNER, "keep_checkpoints")}
    )
    """Newest checkpoints kept, as train --keep-checkpoints (0: every one)."""
    batch_size: int | None = field(
        default=None, metadata={"flag": "--batch-size", "default_from": (RUNNER, "train_batch_size_tokens")}
    )
    """Global tokens per step, as train --batch-size."""
    micro_batches: int | None = field(default=None, metadata={"default_from": (RUNNER, "micro_batches")})
    """Micro-batches each rank's batch is trained in, as train --micro-batches: the activations counted
    are one micro-batch's."""
    autocast: str | None = field(
        default=None, metadata={"choices": AUTOCAST_CHOICES, "default_from": (RUNNER, "autocast_dtype")}
    )
    """Precision of the crosscoder step, as train --autocast ("auto": bfloat16 on cuda); bfloat16 adds its weight
    copies to the memory."""
    world_size: int | None = field(default=None, metadata={"min": 1})
    """Ranks of the torchrun job (default: --snapshot-parallel)."""
    snapshot_parallel: int | None = field(default=None, metadata={"default_from": (RUNNER, "snapshot_parallel")})
    """Ranks on the snapshot axis, as train --snapshot-parallel; the rest of --world-size split each batch."""
    mesh: str | None = None
    """DATAxSNAPSHOT mesh, e.g. 2x4: --world-size and --snapshot-parallel in one."""
    tflops: float | None = None
    """Sustained TFLOP/s per rank (default: cuda 100, mps 5, cpu 0.5)."""
    link_gbps: float | None = None
    """All-reduce bandwidth per rank, GB/s (default: cuda 50, mps 10, cpu 1)."""
    json: bool = False
    """Print the plan as JSON."""
    device: str | None = None
    """Device kind the run will use: cpu, cuda, cuda:N or mps (default cuda; nothing is checked here)."""
    stream: bool = False
    """Also predict `crosslens train --stream` end to end on one GPU per rank, from the shares of the --gpu's peak
    that the snapshot models' forward and each architecture's step sustained there (the A100's: an H100's), at a
    trained crosscoder's sparsity and, where it is slower, a fresh one's."""
    gpu: str | None = field(default=None, metadata={"default_from": (PlanConfig, "gpu")})
    """GPU (h100, h200 or a100) the --stream prediction and, on cuda, the fewest fitting --micro-batches are for."""


def plan(args: argparse.Namespace) -> int:
    if args.list_recipes:
        for name in list_recipes():
            print(f"{name:28s} {load_recipe(name).title}")
        return 0
    if args.list_models:
        print("\n".join(known_models()))
        return 0
    device, suite = args.device or PlanConfig.device, args.suite or DEFAULT_SUITE
    # the snapshot models' dtype as harvest and train --stream would take it on this device
    snapshot_dtype = model_dtype(device, args.dtype)
    recipe = load_recipe(args.recipe) if args.recipe else None
    n_snapshots = len(args.steps) if args.steps else args.n_snapshots
    if n_snapshots is None and recipe is not None:
        n_snapshots = recipe.n_snapshots
    listed = listed_suite(args, recipe)
    if listed is None and recipe is not None and args.suite is None:
        _check_recipe_choice(recipe, args.steps, args.n_snapshots)
    if listed is not None:  # the snapshots harvest and train --stream would read (all, without a choice)
        from_recipe = recipe.name if recipe is not None and args.suite is None else None
        n_snapshots = len(select_snapshots(listed, args.steps, args.n_snapshots, suite, from_recipe))
    if n_snapshots is None:
        raise CLIError(
            f"plan cannot list the snapshots of {args.suite} here (offline); pass --n-snapshots N, --steps A,B,... "
            "or --recipe NAME"
        )
    settings = {  # the flags given; the rest come from the recipe, else from PlanConfig's defaults (train's)
        "hook": args.hook,
        "n_tokens": args.n_tokens,
        "seq_len": args.seq_len,
        "heldout_tokens": args.heldout_tokens,
        "d_sae": args.d_sae,
        "architecture": args.architecture,
        "k": args.k,
        "batch_size": args.batch_size,
        "n_steps": args.n_steps,
        "micro_batches": args.micro_batches,
        "autocast": args.autocast,
        "checkpoint_every": args.checkpoint_every,
        "keep_checkpoints": args.keep_checkpoints,
    }
    if recipe is None and args.hook is None:
        raise CLIError("plan needs --hook NAME (or --recipe NAME)")
    batch = args.batch_size or (recipe.batch_size if recipe is not None else PlanConfig.batch_size)
    data, snap = _mesh(args, n_snapshots, batch)
    common = dict(
        n_snapshots=n_snapshots,
        data_parallel=data,
        snapshot_parallel=snap,
        device=device,
        tflops=args.tflops,
        link_gbps=args.link_gbps,
        model_dtype=snapshot_dtype,
        **({} if args.gpu is None else {"gpu": args.gpu}),
    )
    if recipe is not None:
        if args.suite is not None:
            settings["model"] = model_shape_for(args.suite)
        cfg = plan_config_from_recipe(recipe, **common, **settings)
    else:
        given = {name: value for name, value in settings.items() if value is not None}
        cfg = PlanConfig(model=model_shape_for(suite), name=suite, **common, **given)
    plan = make_plan(cfg)
    predict = args.stream and device.startswith("cuda") and plan["inputs"]["autocast"] == "bfloat16"
    if predict:
        plan["stream_prediction"] = stream_prediction(plan, cfg.gpu)
    print(plan_to_json(plan) if args.json else format_plan(plan))
    if not args.json and (hint := _wider_snapshot_axis(args, cfg, plan)) is not None:
        print(hint)
    if predict and not args.json:
        print(format_stream_prediction(plan["stream_prediction"]))
    elif args.stream and not args.json:
        why = (
            f"for a GPU: --device cuda, not {device}"
            if not device.startswith("cuda")
            else ("for the crosscoder step under bfloat16 autocast, as measured; not for --autocast none")
        )
        print(f"\n(train --stream's end-to-end time is predicted {why})")
    return 0


def _mesh(args: argparse.Namespace, n_snapshots: int, batch: int) -> tuple[int, int]:
    """``(data, snapshot)`` of ``--mesh``, else what ``torchrun`` over ``--world-size`` ranks gives
    ``train --snapshot-parallel``: that many ranks on the snapshot axis, the rest splitting each batch."""
    world = args.world_size
    if args.mesh:
        try:
            data, snap = (int(x) for x in args.mesh.lower().split("x"))
        except ValueError:
            raise CLIError(f"--mesh {args.mesh!r} is not DATAxSNAPSHOT, e.g. --mesh 2x4") from None
        if world is not None and world != data * snap:
            raise CLIError(f"--mesh {args.mesh} has {data * snap} ranks but --world-size is {world}; drop one")
        if args.snapshot_parallel is not None and args.snapshot_parallel != snap:
            raise CLIError(
                f"--mesh {args.mesh} has {snap} snapshot ranks but --snapshot-parallel is {args.snapshot_parallel}; drop one"
            )
        return data, snap
    snap = args.snapshot_parallel or PlanConfig.snapshot_parallel
    world = world or snap
    if world % snap:
        raise CLIError(
            f"--snapshot-parallel {snap} does not divide --world-size {world}; pick a divisor, as train under torchrun needs"
        )
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
    if args.mesh or args.snapshot_parallel is not None or cfg.world_size == 1:
        return None
    data, snap = default_mesh(cfg.world_size, cfg.n_snapshots, cfg.batch_size)
    if snap == cfg.snapshot_parallel:
        return None
    other = make_plan(replace(cfg, data_parallel=data, snapshot_parallel=snap))["memory_bytes"]["total_training"]
    return (
        f"(--snapshot-parallel {snap}, a {data}x{snap} mesh of the same {cfg.world_size} ranks, holds "
        f"{format_bytes(other)} per rank for training against {format_bytes(plan['memory_bytes']['total_training'])})"
    )


def _check_recipe_choice(recipe, steps: list[int] | None, n_snapshots: int | None) -> None:
    """Refuse ``--steps``/``--n-snapshots`` that a recipe whose suite only the hub can list
    (OLMo, BLOOM) does not hold, from its own snapshot labels, as harvest would refuse them."""
    from crosslens.checkpoints.snapshot import parse_step  # the checkpoints stage imports torch

    labels = recipe.snapshot_labels()
    count = len(steps) if steps else None
    if n_snapshots is not None and n_snapshots > (count or len(labels)):
        among = f"--steps picks {count}" if count else f"recipe {recipe.name} lists {len(labels)}"
        raise CLIError(
            f"--n-snapshots {n_snapshots}: {among} snapshots; pass --n-snapshots {count or len(labels)} or fewer"
        )
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
    from crosslens.checkpoints import CheckpointSuite  # the checkpoints stage imports torch

    if recipe is not None and args.suite is None:
        return recipe.suite() if recipe.family == "pythia" else None
    spec = args.suite or DEFAULT_SUITE
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
        if p["forward_bound"]
        else f"snapshot forwards at {p['forward_fraction']:.1%} of peak"
    )
    rows = [
        (forward, f"{bound}{p['forward_tokens_per_second']:,.0f} tokens/s"),
        (
            f"crosscoder step at {p['crosscoder_fraction']:.1%} of peak",
            f"{p['crosscoder_tokens_per_second']:,.0f} tokens/s",
        ),
        ("together (one GPU per rank)", f"{bound}{p['tokens_per_second']:,.0f} tokens/s: {at_least}{p['hours']:.1f} h"),
    ]
    slower_fresh = p["fresh_tokens_per_second"] < p["tokens_per_second"]
    if slower_fresh:  # JumpReLU: its first steps run dense until fewer than 1/32 of the entries are open
        rows.append(
            (
                f"  with a fresh crosscoder's step at {p['fresh_crosscoder_fraction']:.1%}",
                f"{bound}{p['fresh_tokens_per_second']:,.0f} tokens/s: {at_least}{p['fresh_hours']:.1f} h if every step ran so",
            )
        )
    title = f"[train --stream end to end on {p['gpu']} ({p['peak_tflops']:g} TFLOP/s bf16 peak), utilisation as measured on {p['measured_on']}]"
    lines = ["", title, *(f"{label:<44}{value}" for label, value in rows)]
    if slower_fresh:
        lines.append("a run's first steps, until its code is sparse, take the fresh step; its L0 curve shows how many")
    if p["forward_bound"]:
        lines.append(
            "float32 models run off the tensor cores; bfloat16 (the default on CUDA) runs them at the measured share"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- the table
Rows = list[tuple[str, str]]


def _count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _flops(n: float) -> str:
    return _count(n) if abs(n) < 1e15 else f"{n:.3g}".replace("e+", "e")


def _bytes(n: float) -> str:
    return format_bytes(n)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _section(title: str) -> Rows:
    return [("", ""), (f"[{title}]", "")]


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a readable two-column table."""
    rows = _run_rows(plan) + _memory_rows(plan) + _disk_rows(plan) + _flop_rows(plan)
    rows += _communication_rows(plan) + _time_rows(plan)
    width = max(len(label) for label, value in rows if value and label)
    return "\n".join(f"{label:<{width}}  {value}".rstrip() if value else label for label, value in rows)


def _run_rows(plan: dict[str, Any]) -> Rows:
    """What is planned: the model, the crosscoder, the data and the mesh."""
    i, mesh, params = plan["inputs"], plan["mesh"], plan["parameters"]
    epochs = i["training_tokens"] / i["harvested_tokens"]
    held = f" + {_count(i['heldout_tokens'])} held out" if i["heldout_tokens"] else ""
    return [
        (f"plan: {plan['name']}", ""),
        (
            "model",
            f"{i['model']}: d_model {i['d_model']}, {i['n_layers']} layers, vocab {i['vocab']}, "
            f"{_count(i['n_params'])} params ({i['model_source']})",
        ),
        (
            "crosscoder",
            f"{i['architecture']} at {i['hook']}: S={i['n_snapshots']} snapshots x d_in {i['d_in']} "
            f"-> d_sae {i['d_sae']} ({_count(params['whole_crosscoder'])} params)",
        ),
        (
            "data",
            f"{_count(i['harvested_tokens'])} tokens harvested{held} (rows of {i['seq_len']}); {i['n_steps']} steps x batch "
            f"{i['batch_size']} = {_count(i['training_tokens'])} training tokens ({epochs:.3g} epoch{'' if f'{epochs:.3g}' == '1' else 's'})",
        ),
        (
            "mesh",
            f"{mesh['data']} data x {mesh['snapshot']} snapshot = {mesh['world_size']} rank(s) on "
            f"{i['device']}; per rank {mesh['snapshots_per_rank']} snapshots, batch {mesh['batch_per_rank']}",
        ),
    ]


def _memory_rows(plan: dict[str, Any]) -> Rows:
    """Memory per rank: training state, a batch's activations, resident models and stream buffers."""
    i, mesh, mem, params = plan["inputs"], plan["mesh"], plan["memory_bytes"], plan["parameters"]
    rows = _section("memory per rank")
    rows.append(
        (
            "parameters (float32)",
            f"{_bytes(mem['parameters'])}  ({_count(params['per_rank_total'])}: "
            + ", ".join(f"{k} {_count(v)}" for k, v in params["per_rank"].items())
            + ")",
        )
    )
    rows.append(("gradients", _bytes(mem["gradients"])))
    rows.append(("Adam state (2 copies)", _bytes(mem["adam_state"])))
    rows.append(("training state", _bytes(mem["training_state"])))
    rows.append(
        (
            f"activations per batch{f' in {n} micro-batches' if (n := mem['micro_batches']) > 1 else ''} (est.)",
            f"{_bytes(mem['activations_per_batch'])}  ("
            + ", ".join(f"{k} {_bytes(v)}" for k, v in mem["activations_breakdown"].items())
            + ")",
        )
    )
    if mem["autocast_copies"]:
        rows.append(
            (
                "bfloat16 autocast (--autocast)",
                f"{_bytes(mem['autocast_copies'])}  (bfloat16 copies of W_enc and W_dec)",
            )
        )
    rows.append(("total, training from a store", _bytes(mem["total_training"])))
    for option, held in mem["optimizer_state_options"].items():
        rows.append((f"  peak with {option} Adam state", _bytes(held["peak"])))
    if fewest := mem.get("fewest_micro_batches"):
        rows.append(
            (
                f"  fewest --micro-batches under {fewest['headroom']:.0%} of {fewest['gpu']}",
                ", ".join(f"{option} {n or 'none'}" for option, n in fewest["per_option"].items())
                + f" ({_bytes(fewest['device_bytes'])} GPU)",
            )
        )
    rows.append(
        (
            f"resident models ({i['model_dtype']})",
            f"{_bytes(mem['resident_models_full'])} whole, "
            f"{_bytes(mem['resident_models_truncated'])} cut after the hooked block",
        )
    )
    rows.append(
        (
            "stream chunk buffers (2)",
            f"{_bytes(mem['stream_chunks'])}  ({chunk_tokens_for(i['seq_len']):,} "
            f"tokens x {mesh['snapshots_per_rank']} snapshots x d_in, {i['model_dtype']})",
        )
    )
    rows.append(("total, streaming", _bytes(mem["total_streaming"])))
    return rows


def _disk_rows(plan: dict[str, Any]) -> Rows:
    """Disk for the store and its held-out split, and for the run's checkpoints."""
    disk, ckpt = plan["disk_bytes"], plan["checkpoints"]
    rows = _section("disk for an activation store and its held-out split (tokens x S x d_in)")
    for name in DTYPE_BYTES:
        rows.append((name, _bytes(disk[name])))
    rows.append(("float16, one snapshot", _bytes(disk["per_snapshot_float16"])))
    rows += _section("checkpoints (the whole crosscoder and Adam's moments)")
    if ckpt["count"]:
        each = ckpt["bytes_each"]
        rows.append(("written", f"{ckpt['count']:,}, every {ckpt['every']:,} steps (--checkpoint-every)"))
        rows.append(
            ("each", f"{_bytes(each['float32'])} with float32 Adam state, {_bytes(each['bfloat16'])} with bfloat16")
        )
        rows.append(
            (
                "on disk at once",
                f"{_bytes(ckpt['at_once'] * each['float32'])}: {ckpt['at_once']:,} checkpoints "
                f"({ckpt['kept']:,} kept, --keep-checkpoints), float32 Adam state",
            )
        )
    else:
        rows.append(("written", "none (--checkpoint-every 0, or fewer steps than one interval)"))
    return rows


def _flop_rows(plan: dict[str, Any]) -> Rows:
    flops = plan["flops"]
    rows = _section("FLOPs")
    rows.append(
        ("crosscoder step, per token", f"{_count(flops['crosscoder_train_per_token'])}  (10 S D F: fwd 4SDF, bwd 6SDF)")
    )
    if "crosscoder_train_per_token_sparse_decode" in flops:
        rows.append(
            (
                "  with a sparse top-k decode",
                f"{_count(flops['crosscoder_train_per_token_sparse_decode'])}  (4 S D F + 6 k S D: only the k active features decoded)",
            )
        )
    rows.append(
        (
            "snapshot models to the hook, per token",
            f"{_count(flops['snapshot_models_forward_per_token'])}  (all S snapshots)",
        )
    )
    rows.append(("crosscoder training, total", _flops(flops["crosscoder_train_total"])))
    rows.append(("snapshot forwards, harvest", _flops(flops["snapshot_models_forward_harvest"])))
    rows.append(("snapshot forwards, streaming", _flops(flops["snapshot_models_forward_streaming"])))
    return rows


def _communication_rows(plan: dict[str, Any]) -> Rows:
    comm = plan["communication_bytes"]
    rows = _section("communication per step, per rank (ring all-reduce)")
    rows.append(
        (
            "snapshot axis",
            f"{_bytes(comm['snapshot_axis_sent_per_rank'])} sent "
            f"(payload {_bytes(comm['snapshot_axis_payload'])}: [B_rank, d_sae] float32 fwd + bwd, and [d_sae] terms)",
        )
    )
    rows.append(
        (
            "data axis",
            f"{_bytes(comm['data_axis_sent_per_rank'])} sent "
            f"(payload {_bytes(comm['data_axis_payload'])}: the rank's gradient shard)",
        )
    )
    rows.append(("whole run", _bytes(comm["sent_per_rank_total"])))
    return rows


def _time_rows(plan: dict[str, Any]) -> Rows:
    i, secs = plan["inputs"], plan["seconds"]
    assumed = " (assumed; --tflops)" if i["tflops_assumed"] else ""
    rows = _section(f"wall time at {i['tflops']:g} TFLOP/s per rank{assumed}")
    rows.append(("train from a store", _duration(secs["train_from_store"])))
    rows.append(("harvest the store first", _duration(secs["harvest"])))
    rows.append(("train streaming", _duration(secs["train_streaming"])))
    link_assumed = " (assumed; --link-gbps)" if i["link_gbps_assumed"] else ""
    rows.append((f"+ communication at {i['link_gbps']:g} GB/s{link_assumed}", _duration(secs["communication"])))
    rows.append(("", "compute and communication, not overlapped; excludes disk reads and idle time"))
    return rows


def plan_to_json(plan: dict[str, Any]) -> str:
    return json.dumps(plan, indent=2, sort_keys=False)


COMMAND = Subcommand(
    ("plan",),
    "memory, disk, FLOPs, communication and time of a crosscoder run, before running it",
    (PlanFlags, SuiteFlags, TokenBudgetFlags, DeviceFlags),
    plan,
    description="Size a crosscoder run offline: per-rank parameter, optimizer and activation memory, "
    "resident snapshot models, store disk, FLOPs per token, communication per step, wall time. "
    "The flags harvest and train share with it mean what they mean there, with their defaults.",
)
