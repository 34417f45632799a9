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
        "or a hub model id: EleutherAI/pythia-*, allenai/OLMo-*-hf, bigscience/bloom-*-intermediate",
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
        lowered = spec.lower()
        if "pythia" in lowered:
            suite = CheckpointSuite.pythia(spec)
        elif "olmo" in lowered:
            suite = CheckpointSuite.olmo(spec)
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
    from crosslens.checkpoints import list_revisions

    for revision in list_revisions(args.model):
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
        wandb_entity=args.wandb_entity,
        checkpoint_every=args.checkpoint_every,
    )
    runner = CrosscoderTrainingRunner(config)
    runner.run(resume=args.resume)
    print(f"crosscoder saved to {runner.final_path}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from crosslens.demo import analyze_stage

    args.crosscoder = _resolve_crosscoder_arg(args.crosscoder)
    path, analysis, _ = analyze_stage(args.crosscoder, store_path=args.store, out=args.out)
    print("feature classes: " + ", ".join(f"{name} {n}" for name, n in analysis.class_counts().items()))
    print(f"report: {path}")
    return 0


def _cmd_attribute(args: argparse.Namespace) -> int:
    from crosslens.causal.demo import causal_out_dir
    from crosslens.demo import attribute_stage

    args.crosscoder = _resolve_crosscoder_arg(args.crosscoder)
    steps = args.steps
    if steps is None and args.n_snapshots is None:  # the snapshots the crosscoder was trained on
        cfg = json.loads((Path(args.crosscoder) / "cfg.json").read_text())
        recorded = (cfg.get("metadata", {}).get("suite") or {}).get("snapshots") or []
        steps = [int(entry["step"]) for entry in recorded] or None
    suite = resolve_suite(args.suite, steps, args.n_snapshots)
    sections = attribute_stage(suite, args.crosscoder, task=args.task, n_examples=args.n_examples, out=args.out)
    report = Path(args.out).with_suffix(".html")
    sections[0].write(report)
    print(f"IE table: {args.out}")
    print(f"plots and tables: {causal_out_dir(args.out, args.task)}")
    print(f"report: {report}")
    return 0


def _fail(flag: str, message: str) -> None:
    """One line naming the flag to change, exit status 2, no traceback."""
    print(f"crosslens: error: {flag}: {message}", file=sys.stderr)
    raise SystemExit(2)


def _resolve_crosscoder_arg(value: str, flag: str = "--crosscoder") -> str:
    """A crosscoder folder, or RELEASE/ID of a registered release (fetched into the HF cache)."""
    if Path(value).exists():
        return value
    from crosslens.pretrained import resolve_crosscoder_path

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
    from crosslens.pretrained import get_release

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
    train.add_argument("--wandb-entity", default=None, help="W&B user or team (default: yours)")
    train.set_defaults(func=_cmd_train)

    analyze = sub.add_parser("analyze", help="feature evolution report from a trained crosscoder")
    analyze.add_argument("--crosscoder", required=True, help="folder written by crosslens train, or RELEASE/ID")
    analyze.add_argument("--store", default=None, help="activation store (for top contexts and probes)")
    analyze.add_argument("--out", default="report.html")
    analyze.set_defaults(func=_cmd_analyze)

    attribute = sub.add_parser("attribute", help="integrated-gradient attribution of crosscoder features")
    _add_suite_args(attribute)
    attribute.add_argument("--crosscoder", required=True, help="crosscoder folder, or RELEASE/ID of a pretrained release")
    attribute.add_argument("--task", default="agreement_pp", help="task name (see crosslens.tasks)")
    attribute.add_argument("--n-examples", type=int, default=64)
    attribute.add_argument("--out", default="attribution.json")
    attribute.set_defaults(func=_cmd_attribute)

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
