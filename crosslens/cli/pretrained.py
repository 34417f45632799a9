"""``crosslens pretrained list|show`` and ``crosslens push``: sharing crosscoders."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from crosslens.cli.common import CLIError, fail
from crosslens.cli.flags import Subcommand
from crosslens.cli.inputs import check_output_folder
from crosslens.core.errors import PartnerMismatchError
from crosslens.core.metadata import saved_metadata
from crosslens.core.paths import FINAL_DIRNAME


@dataclass
class NoFlags:
    pass


@dataclass
class ShowFlags:
    release: str = field(metadata={"positional": True})
    """A release name (crosslens pretrained list)."""


@dataclass
class RunFlags:
    release: str = field(metadata={"positional": True, "metavar": "RELEASE[/ID]"})
    """A release (crosslens pretrained list), with the crosscoder's id where it holds several."""
    out: str = field(metadata={"flag": "--out"})
    """The run folder to make (for crosslens dashboards, browse, export, analyze)."""
    overwrite: bool = False
    """Replace the folder if it exists."""
    store: str | None = None
    """An activation store of the release's models (crosslens harvest --models), to measure on it the
    activation scaling its source did not save (Kissane's releases); the run records it."""


@dataclass
class PushFlags:
    run_dir: str = field(metadata={"positional": True, "metavar": "RUN_DIR"})
    """The --out folder of crosslens train (or a crosscoder folder)."""
    repo: str = field(metadata={"flag": "--repo"})
    """Hub repo ORG/NAME (created if missing)."""
    private: bool = False
    """Create the repo private."""
    id: str | None = None
    """Crosscoder id / folder in the repo (default: its hook name)."""
    release: str | None = None
    """Release name for the registry entry (default: repo NAME)."""
    store: str | None = None
    """Activation store for the card's numbers (default: the run's)."""
    no_fold: bool = False
    """Upload with normalisation unfolded (reads normalised inputs)."""


def pretrained_list(args: argparse.Namespace) -> int:
    from crosslens.pretrained.registry import PRETRAINED_ENV, pretrained_directory  # reads YAML

    directory = pretrained_directory()  # a broken registry file: its error names the file and CROSSLENS_PRETRAINED
    if not directory:
        print(f"no pretrained crosscoder releases; add YAML files with {PRETRAINED_ENV}=a.yaml:b.yaml")
        return 0
    width = max(len(name) for name in directory)
    for name, release in sorted(directory.items()):
        ids = ", ".join(release.entries)
        print(f"{name:<{width}}  {release.repo_id}  {release.format or 'sae_lens'}  {_reads(release)}  [{ids}]")
    return 0


def _reads(release) -> str:
    """``google/gemma-2-2b vs google/gemma-2-2b-it`` (models), or ``MODEL  N snapshots``."""
    models = release.suite.get("models")
    if models:
        return " vs ".join(str(m["model_id"]) + (f"@{m['revision']}" if m.get("revision") else "") for m in models)
    return f"{release.model}  {release.n_snapshots} snapshots"


def pretrained_show(args: argparse.Namespace) -> int:
    from crosslens.pretrained.registry import get_release  # reads YAML

    try:
        release = get_release(args.release)
    except ValueError as exc:  # unknown release (nearest names listed) or a malformed registry
        fail("RELEASE", str(exc))
    suite = release.suite
    print(f"release   {release.release}  (from {release.source})")
    print(f"repo_id   {release.repo_id}")
    print(f"format    {release.format or 'sae_lens'}")
    print(
        f"licence   {release.license or 'none stated by the source'}"
        + (f" ({release.license_note})" if release.license_note else "")
    )
    for label, value in (("paper", release.paper), ("code", release.code), ("confirmed", release.confirmed_by)):
        if value:
            print(f"{label:<9} {value}")
    if suite.get("models"):
        print(
            "models    "
            + ", ".join(f"{m['model_id']} ({label})" for m, label in zip(suite["models"], release.revisions))
        )
    else:
        print(f"model     {release.model}  ({suite.get('family', '?')} suite)")
        steps = list(suite.get("steps") or [None] * release.n_snapshots)
        print("snapshots " + ", ".join(f"{r} (step {st})" for r, st in zip(release.revisions, steps)))
    for entry in release.entries.values():
        print(
            f"\n  {entry.id}  path={entry.path}  hook={entry.hook_name}  arch={entry.architecture}"
            f"  normalisation folded={entry.normalization_folded}"
        )
        ablation = f" ({entry.spliced_ablation}-ablation floor)" if entry.spliced_ablation else ""
        rows = (
            ("variance_explained", entry.variance_explained, ""),
            ("l0", entry.l0, ""),
            ("ce_loss_score", entry.ce_loss_score, ablation),
            ("kl_div_with_sae", entry.kl_div_with_sae, ""),
        )
        for name, values, note in rows:
            if values is not None:
                print(f"    {name:<18} " + " ".join(f"{v:.3g}" for v in values) + note)
        if entry.wandb_run:
            print(f"    wandb              {entry.wandb_run}")
    return 0


def pretrained_run(args: argparse.Namespace) -> int:
    from crosslens.activations.store import ActivationStore
    from crosslens.pretrained.run_folder import release_run
    from crosslens.training.runfolder import norm_factors_problem

    check_output_folder(args.out, holds="the run")
    if Path(args.out).expanduser().exists() and not args.overwrite:  # said of --out, not of RELEASE below
        raise CLIError(f"--out {args.out} exists; pick another folder, or pass --overwrite to replace it")
    release, _, crosscoder_id = args.release.partition("/")
    store = None
    if args.store is not None:
        try:
            store = ActivationStore.open(args.store)
        except (ValueError, OSError) as exc:
            fail("--store", str(exc))
    try:
        run = release_run(release, crosscoder_id or None, args.out, store=store, overwrite=args.overwrite)
    except PartnerMismatchError as exc:  # a store of other models, or one the release has no use for
        fail("--store", str(exc))
    except ValueError as exc:  # unknown release, models not here, bad files: one line naming the fix
        fail("RELEASE", str(exc))
    print(f"run folder: {run}")
    factors = saved_metadata(run / FINAL_DIRNAME).get("activation_norm_factors")
    if store is not None:
        print(f"activation scaling measured on {store.path}: {', '.join(f'{c:.4g}' for c in factors)} (recorded)")
    if norm_factors_problem(run) is not None:
        print(
            f"next: its source did not save the activation scaling it reads; measure it on a store of its models "
            f"(crosslens harvest --models ...): crosslens pretrained run {args.release} --out {run} --store STORE "
            "--overwrite; until then dashboards, export and the live panels refuse it"
        )
        return 0
    print(f"next: crosslens dashboards {run} --stream (the tokens flags say which), then crosslens browse {run}")
    return 0


def push(args: argparse.Namespace) -> int:
    from crosslens.pretrained.push import push_to_hub

    if not Path(args.run_dir).is_dir():
        fail("RUN_DIR", f"{args.run_dir} is not a folder; pass the --out folder of `crosslens train`.")
    if args.repo.count("/") != 1 or not all(args.repo.split("/")):
        fail("--repo", f"must be ORG/NAME, got {args.repo!r}.")
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
        fail("RUN_DIR", str(exc))
    print(f"uploaded {result.crosscoder_id} to https://huggingface.co/{result.repo_id}")
    print(
        "registry entry (paste into a file named by CROSSLENS_PRETRAINED, or crosslens/data/pretrained_crosscoders.yaml):\n"
    )
    print(result.registry_yaml)
    return 0


LIST = Subcommand(
    ("pretrained", "list"),
    "list the releases (packaged and CROSSLENS_PRETRAINED files)",
    (NoFlags,),
    pretrained_list,
)
SHOW = Subcommand(
    ("pretrained", "show"),
    "one release: repo, suite revisions, crosscoders and their quality",
    (ShowFlags,),
    pretrained_show,
)
RUN = Subcommand(
    ("pretrained", "run"),
    "a release's crosscoder (converted once) as a run folder, for dashboards, browse, export and analyze",
    (RunFlags,),
    pretrained_run,
)
PUSH = Subcommand(
    ("push",),
    "upload a trained crosscoder to the Hugging Face hub with a model card",
    (PushFlags,),
    push,
)
