"""The ``crosslens`` command line.

Every subcommand is a thin wrapper over a library function, imported lazily so
``crosslens --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=None,
        help="comma-separated training steps to use (default: all, or --n-snapshots spaced)",
    )
    parser.add_argument(
        "--n-snapshots",
        type=int,
        default=None,
        help="pick this many snapshots, dense early and sparse late (log spacing)",
    )


def resolve_suite(spec: str, steps: list[int] | None = None, n_snapshots: int | None = None):
    """Turn a ``--suite`` string into a :class:`CheckpointSuite`, then select snapshots."""
    from crosslens.checkpoints import CheckpointSuite

    if spec == "pico":
        from crosslens.pico import pico_suite

        suite = pico_suite()
    elif Path(spec).exists():
        suite = CheckpointSuite.local(spec)
    else:
        spec, _, ingredient = spec.partition("@ingredient")  # OLMo-2/3: one stage-2 ingredient
        lowered = spec.lower()
        if ingredient and ("olmo" not in lowered or not ingredient.isdigit()):
            raise SystemExit(f"crosslens: --suite {spec}@ingredient{ingredient}: pass an OLMo-2/3 repo and a number, e.g. @ingredient1")
        if "pythia" in lowered:
            suite = CheckpointSuite.pythia(spec)
        elif "olmo" in lowered:
            from crosslens.checkpoints import MixedIngredientsError

            try:
                suite = CheckpointSuite.olmo(spec, ingredient=int(ingredient) if ingredient else None)
            except MixedIngredientsError as error:
                print(f"crosslens: {error}", file=sys.stderr)
                raise SystemExit(2) from None
        elif "bloom" in lowered:
            suite = CheckpointSuite.bloom(spec)
        else:
            raise SystemExit(
                f"crosslens: cannot tell which family {spec!r} is. Use 'pico', a local folder "
                "of checkpoints, or a model id naming pythia, OLMo or bloom."
            )
    if steps is not None:
        suite = suite.select(steps=steps)
    if n_snapshots is not None:
        suite = suite.select(n=n_snapshots, spacing="log")
    return suite


# ---------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------
def _cmd_suite_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from crosslens.pico import PicoConfig, build_pico_suite, default_root, format_eval_table, format_targets, is_built

    config = PicoConfig.small() if args.small else PicoConfig.long() if args.long else PicoConfig()
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    root = Path(args.root) if args.root else default_root(config)
    cached = not args.force and is_built(root, config)
    root = build_pico_suite(config, root=root, force=args.force, progress=True)
    if cached:  # a fresh build already printed its table row by row
        manifest = json.loads((Path(root) / "suite.json").read_text())
        print(format_eval_table(manifest["evals"]))
        if manifest.get("targets"):
            print(format_targets(manifest["targets"]))
        print("(cached build; --force rebuilds)")
    print(f"\npico suite: {root}")
    return 0


def _cmd_suite_list(args: argparse.Namespace) -> int:
    from crosslens.checkpoints import group_by_stage, list_revisions

    for heading, revisions in group_by_stage(list_revisions(args.model)):
        if heading:  # staged runs (OLMo-2/3): one block per stage and ingredient
            print(f"# {heading}: {len(revisions)} revisions")
        for revision in revisions:
            print(revision)
    return 0


def _cmd_harvest(args: argparse.Namespace) -> int:
    from crosslens.demo import harvest_stage

    suite = resolve_suite(args.suite, args.steps, args.n_snapshots)
    store = harvest_stage(
        suite,
        hooks=args.hook,
        n_tokens=args.n_tokens,
        seq_len=args.seq_len,
        out_dir=args.out,
        dtype=args.dtype,
        dataset=args.dataset,
        overwrite=args.overwrite,
    )
    print(f"activation store: {store.path} ({store.n_tokens} tokens x {store.n_snapshots} snapshots)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from crosslens.training.runner import CrosscoderRunnerConfig, CrosscoderTrainingRunner

    config = CrosscoderRunnerConfig(
        store_path=args.store,
        hook=args.hook,
        architecture=args.arch,
        d_sae=args.d_sae,
        k=args.k,
        sparsity_coefficient=args.sparsity,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        out_dir=args.out,
        seed=args.seed,
        log_to_wandb=args.wandb,
        wandb_project=args.wandb_project,
        wandb_run_name=args.wandb_run_name,
        checkpoint_every=args.checkpoint_every,
    )
    runner = CrosscoderTrainingRunner(config)
    runner.run(resume=args.resume)
    print(f"crosscoder saved to {runner.final_path}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from crosslens.demo import analyze_stage

    path, analysis, _ = analyze_stage(args.crosscoder, store_path=args.store, out=args.out)
    print("feature classes: " + ", ".join(f"{name} {n}" for name, n in analysis.class_counts().items()))
    print(f"report: {path}")
    return 0


def _cmd_attribute(args: argparse.Namespace) -> int:
    from crosslens.causal.demo import causal_out_dir
    from crosslens.demo import attribute_stage

    steps = args.steps
    if steps is None and args.n_snapshots is None:  # the snapshots the crosscoder was trained on
        cfg = json.loads((Path(args.crosscoder) / "cfg.json").read_text())
        recorded = (cfg.get("metadata", {}).get("suite") or {}).get("snapshots") or []
        steps = [int(entry["step"]) for entry in recorded] or None
    suite = resolve_suite(args.suite, steps, args.n_snapshots)
    from crosslens.tasks import load_multilingual_blimp, multilingual_tasks

    tasks: list = multilingual_tasks(args.task) if args.task_file is None else []
    if args.task_file is not None:
        tasks = list(load_multilingual_blimp(args.task_file).values())
    if not tasks:
        raise SystemExit("crosslens: --task names no task; pass e.g. --task agreement_pp")
    if len(tasks) > 1:  # several languages: run together, RelIE per language side by side
        from crosslens.causal.demo import language_attribution_sections

        sections = language_attribution_sections(
            suite, args.crosscoder, tasks, n_examples=args.n_examples, out=args.out
        )
        report = Path(args.out).with_suffix(".html")
        sections[0].write(report)
        print(f"report: {report}")
        return 0
    task = tasks[0] if isinstance(tasks[0], str) else tasks[0].name
    sections = attribute_stage(suite, args.crosscoder, task=task, n_examples=args.n_examples, out=args.out)
    report = Path(args.out).with_suffix(".html")
    sections[0].write(report)
    print(f"IE table: {args.out}")
    print(f"plots and tables: {causal_out_dir(args.out, task)}")
    print(f"report: {report}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from crosslens.demo import run_demo

    run_demo(out_dir=args.out, fast=args.fast, force=args.force)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crosslens",
        description="Multi-snapshot crosscoders: how features form, change and die during pre-training.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole pipeline on the embedded pico suite")
    demo.add_argument("--out", default=None, help="output folder (default: $CROSSLENS_HOME/demo)")
    demo.add_argument("--fast", action="store_true", help="small settings, for a quick look")
    demo.add_argument("--force", action="store_true", help="recompute every stage")
    demo.set_defaults(func=_cmd_demo)

    suite = sub.add_parser("suite", help="model suites with training checkpoints")
    suite_sub = suite.add_subparsers(dest="suite_command", required=True)
    build = suite_sub.add_parser("build", help="train the embedded pico suite (cached)")
    build.add_argument("--small", action="store_true", help="the small, fast configuration used by tests")
    build.add_argument("--long", action="store_true", help="a longer build (1536 steps) that also learns IOI")
    build.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    build.add_argument("--seed", type=int, default=None)
    build.add_argument("--root", default=None, help="where to write the suite")
    build.set_defaults(func=_cmd_suite_build)
    lst = suite_sub.add_parser("list", help="list the revisions of a model (hub id or local folder)")
    lst.add_argument("model")
    lst.set_defaults(func=_cmd_suite_list)

    harvest = sub.add_parser("harvest", help="harvest activations at hooks across snapshots, to disk")
    _add_suite_args(harvest)
    harvest.add_argument("--hook", action="append", required=True, help="hook name; repeat for several")
    harvest.add_argument("--n-tokens", type=int, default=200_000, help="token budget (before exclusions)")
    harvest.add_argument("--seq-len", type=int, default=64)
    harvest.add_argument("--out", required=True, help="store folder")
    harvest.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    harvest.add_argument("--dataset", default=None, help="NAME:COLUMN of a datasets dataset (default: pico corpus)")
    harvest.add_argument("--overwrite", action="store_true", help="replace a store built for other inputs")
    harvest.set_defaults(func=_cmd_harvest)

    train = sub.add_parser("train", help="train a crosscoder on an activation store")
    train.add_argument("--store", required=True)
    train.add_argument("--hook", default=None, help="hook in the store (default: its only hook)")
    train.add_argument(
        "--arch",
        default="jumprelu_crosscoder",
        choices=["crosscoder", "jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder"],
    )
    train.add_argument("--d-sae", type=int, default=1024)
    train.add_argument("--k", type=int, default=32, help="k for (batch)top-k")
    train.add_argument("--sparsity", type=float, default=None, help="sparsity coefficient lambda")
    train.add_argument("--n-steps", type=int, default=3000)
    train.add_argument("--batch-size", type=int, default=1024)
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True)
    train.add_argument("--checkpoint-every", type=int, default=500)
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    train.add_argument("--wandb", action="store_true", help="log to Weights & Biases")
    train.add_argument("--wandb-project", default="crosslens")
    train.add_argument("--wandb-run-name", default=None)
    train.set_defaults(func=_cmd_train)

    analyze = sub.add_parser("analyze", help="feature evolution report from a trained crosscoder")
    analyze.add_argument("--crosscoder", required=True, help="folder written by crosslens train")
    analyze.add_argument("--store", default=None, help="activation store (for top contexts and probes)")
    analyze.add_argument("--out", default="report.html")
    analyze.set_defaults(func=_cmd_analyze)

    attribute = sub.add_parser("attribute", help="integrated-gradient attribution of crosscoder features")
    _add_suite_args(attribute)
    attribute.add_argument("--crosscoder", required=True)
    attribute.add_argument(
        "--task",
        default="agreement_pp",
        help="task name (see crosslens.tasks); several, comma-separated, run together, one per language "
        "(agreement_multilingual = its en, fr and es tasks), with RelIE per language side by side",
    )
    attribute.add_argument(
        "--task-file",
        default=None,
        help="a MultiBLiMP-style JSONL file (sentence_good, sentence_bad, language): one task per language",
    )
    attribute.add_argument("--n-examples", type=int, default=64)
    attribute.add_argument("--out", default="attribution.json")
    attribute.set_defaults(func=_cmd_attribute)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
