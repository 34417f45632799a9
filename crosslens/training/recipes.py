"""Recipes: published crosscoder set-ups shipped with crosslens (``crosslens/data/recipes``).

A recipe names a model suite (model id + steps or revisions), a hook, a token budget and
the crosscoder's settings. ``crosslens plan --recipe NAME`` sizes it offline;
``crosslens harvest/train --recipe NAME`` use its values as defaults (explicit flags win).

Light to import, for ``crosslens --help``: YAML is read, and the checkpoints stage (torch)
loaded, only when a recipe is loaded or its suite listed.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from crosslens.architectures import ARCHITECTURE_NAMES
from crosslens.core.errors import CrosslensError
from crosslens.core.paths import looks_like_path


class RecipeError(CrosslensError):
    """A recipe is unknown or malformed."""


@dataclass(frozen=True)
class Recipe:
    """One crosscoder set-up: which snapshots, which hook, how much data, which crosscoder."""

    name: str
    """Short name (the file's stem), what ``--recipe`` takes."""
    model: str
    """Hub model id of the suite (``EleutherAI/pythia-160m``, ``allenai/OLMo-1B-0724-hf``...)."""
    hook: str
    """TransformerLens hook the crosscoder reads, e.g. ``blocks.6.hook_resid_post``."""
    n_tokens: int
    """Training tokens (each seen at every snapshot)."""
    architecture: str
    """SAELens architecture name of the crosscoder."""
    d_sae: int
    """Shared features."""
    batch_size: int
    """Tokens per optimizer step."""
    title: str = ""
    """One line saying where the set-up comes from."""
    steps: tuple[int, ...] | None = None
    """Training steps of the snapshots (Pythia, BLOOM); or use ``revisions``."""
    revisions: tuple[str, ...] | None = None
    """Revision names of the snapshots (OLMo, BLOOM); ``main`` means the last one listed."""
    tokenizer: str | None = None
    """Where the tokenizer comes from when not the model repo (informational)."""
    dataset: str | None = None
    """``NAME:COLUMN`` of a datasets dataset the tokens come from; None: not recorded."""
    context: int = 1024
    """Tokens per harvested sequence."""
    k: int | None = None
    """Active features per token for (batch)top-k crosscoders."""
    lr: float | None = None
    """Adam learning rate."""
    sparsity: float | None = None
    """Sparsity coefficient lambda."""
    sparsity_warm_up_fraction: float | None = None
    """Fraction of steps over which lambda warms up."""
    lr_decay_fraction: float | None = None
    """Final fraction of steps with linear learning-rate decay."""
    decoder_init_norm: float | None = None
    """Initial norm of each decoder row."""
    store_dtype: str = "float32"
    """dtype an activation store of this recipe is written in."""
    notes: str = ""
    """What the recipe assumes beyond the papers' stated values."""

    def __post_init__(self) -> None:
        if looks_like_path(self.model):
            raise RecipeError(
                f"recipe {self.name!r}: model {self.model!r} is a folder; a recipe names a hub model id (e.g. "
                "EleutherAI/pythia-160m). For a local suite, pass it to the command with --suite FOLDER"
            )
        if (self.steps is None) == (self.revisions is None):
            raise RecipeError(f"recipe {self.name!r} must give exactly one of steps: or revisions:")
        if self.architecture not in ARCHITECTURE_NAMES:
            raise RecipeError(f"recipe {self.name!r}: architecture must be one of {ARCHITECTURE_NAMES}")
        for name, least in (("n_tokens", 1), ("d_sae", 1), ("batch_size", 1), ("context", 2)):
            if int(getattr(self, name)) < least:
                raise RecipeError(f"recipe {self.name!r}: {name} must be >= {least}")

    @property
    def n_snapshots(self) -> int:
        return len(self.steps if self.steps is not None else self.revisions or ())

    @property
    def n_steps(self) -> int:
        """Optimizer steps to see ``n_tokens`` at ``batch_size``."""
        return self.steps_at(self.batch_size)

    def steps_at(self, batch_size: int, n_tokens: int | None = None) -> int:
        """Optimizer steps to see ``n_tokens`` (default: the recipe's) once at ``batch_size``: what
        ``train --recipe`` runs when ``--n-steps`` is not given."""
        return max(1, (self.n_tokens if n_tokens is None else n_tokens) // batch_size)

    @property
    def family(self) -> str:
        lowered = self.model.lower()
        return (
            "pythia" if "pythia" in lowered else "olmo" if "olmo" in lowered else "bloom" if "bloom" in lowered else "?"
        )

    def snapshot_labels(self) -> list[str]:
        if self.steps is not None:
            prefix = "global_step" if self.family == "bloom" else "step"
            return [f"{prefix}{s}" for s in self.steps]
        return list(self.revisions or ())

    def training_settings(self) -> dict[str, Any]:
        """The recipe's values as :class:`~crosslens.training.config.CrosscoderRunnerConfig`
        fields (nested ``sae`` as a dict); values the recipe leaves out are absent."""
        sae = {
            "architecture": self.architecture,
            "d_sae": self.d_sae,
            "k": self.k,
            "sparsity_coefficient": self.sparsity,
            "sparsity_warm_up_fraction": self.sparsity_warm_up_fraction,
            "decoder_init_norm": self.decoder_init_norm,
        }
        top = {
            "hook_name": self.hook,
            "train_batch_size_tokens": self.batch_size,
            "lr": self.lr,
            "lr_decay_fraction": self.lr_decay_fraction,
        }
        return {
            **{k: v for k, v in top.items() if v is not None},
            "sae": {k: v for k, v in sae.items() if v is not None},
        }

    def harvest_settings(self) -> dict[str, Any]:
        """The recipe's values as :class:`~crosslens.activations.config.HarvestConfig` fields
        (nested ``tokens`` and ``budget`` as dicts): its hook, its token budget in rows of its
        context, its store dtype and, where it records one, its dataset."""
        settings: dict[str, Any] = {
            "hook_names": [self.hook],
            "budget": {"n_tokens": self.n_tokens, "seq_len": self.context},
            "store_dtype": self.store_dtype,
        }
        if self.dataset:
            settings["tokens"] = {"dataset": self.dataset}
        return settings

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        for key in ("steps", "revisions"):
            if record[key] is not None:
                record[key] = list(record[key])
        return record

    def suite(self):
        """The recipe's :class:`CheckpointSuite` (lists revisions: needs the hub or the HF cache,
        except for Pythia, whose steps crosslens knows)."""
        # here, not at the top: the checkpoints stage imports torch, which reading a recipe never needs
        from crosslens.checkpoints import CheckpointSuite, list_revisions
        from crosslens.checkpoints.snapshot import parse_step

        if self.family == "pythia":
            return CheckpointSuite.pythia(self.model, steps=list(self.steps or ()))
        revisions = list(self.snapshot_labels())
        if "main" in revisions:
            listed = list_revisions(self.model)
            if not listed:
                raise RecipeError(f"{self.model} lists no step revisions to stand for 'main'")
            revisions = [listed[-1] if r == "main" else r for r in revisions]
        if self.family == "olmo":
            return CheckpointSuite.olmo(self.model, revisions=revisions)
        if self.family == "bloom":
            return CheckpointSuite.bloom(self.model, steps=[int(parse_step(r)) for r in revisions])
        raise RecipeError(f"recipe {self.name!r}: cannot tell the family of {self.model!r}")


def _recipe_dir():
    return resources.files("crosslens") / "data" / "recipes"


def list_recipes() -> list[str]:
    """Names of the recipes shipped with crosslens."""
    return sorted(p.name[: -len(".yaml")] for p in _recipe_dir().iterdir() if p.name.endswith(".yaml"))


def recipe_from_dict(data: dict[str, Any], name: str | None = None) -> Recipe:
    """A :class:`Recipe` from a parsed YAML mapping."""
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {name!r} is not a mapping of settings")
    known = [f.name for f in fields(Recipe)]
    label = repr(data.get("name") or name or "recipe")
    unknown = [k for k in data if k not in known]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; the keys are {', '.join(known)}"
        raise RecipeError(f"recipe {label}: unknown key {unknown[0]!r}{hint}")
    kwargs = dict(data)
    kwargs.setdefault("name", name or "recipe")
    missing = sorted({"model", "hook", "n_tokens", "architecture", "d_sae", "batch_size"} - set(kwargs))
    if missing:
        raise RecipeError(f"recipe {label} lacks {', '.join(missing)}")
    for key in ("steps", "revisions"):
        if kwargs.get(key) is not None:
            values = kwargs[key] if isinstance(kwargs[key], (list, tuple)) else [kwargs[key]]
            kwargs[key] = tuple(_whole(s, label, key) if key == "steps" else str(s) for s in values)
    for key in ("n_tokens", "d_sae", "batch_size", "context", "k"):
        if kwargs.get(key) is not None:
            kwargs[key] = _whole(kwargs[key], label, key)
    for key in ("lr", "sparsity", "sparsity_warm_up_fraction", "lr_decay_fraction", "decoder_init_norm"):
        if kwargs.get(key) is not None:
            try:
                kwargs[key] = float(kwargs[key])
            except (TypeError, ValueError):
                raise RecipeError(f"recipe {label}: {key} must be a number, got {kwargs[key]!r}") from None
    return Recipe(**kwargs)


def _whole(value: Any, label: str, key: str) -> int:
    """``value`` as an int: YAML reads ``1e6`` as a string, which counts as the number it spells."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer():
        raise RecipeError(f"recipe {label}: {key} must be a whole number, got {value!r}")
    return int(value) if isinstance(value, int) else int(number)


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name (see :func:`list_recipes`), or a recipe YAML file by path."""
    import yaml  # here, not at the top: `crosslens --help` imports this module, and never reads YAML

    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        try:
            text, name, where = path.read_text(encoding="utf-8"), path.stem, path
        except UnicodeDecodeError:
            raise RecipeError(f"recipe file {path} is not a UTF-8 text file; pass the path of a recipe .yaml") from None
    elif path.suffix in (".yaml", ".yml"):  # a file's name: no shipped recipe is named so
        what = "is not a file" if path.exists() else "does not exist"
        raise RecipeError(
            f"recipe file {path} {what}; pass the path of a recipe .yaml, or a shipped recipe's name: "
            f"{', '.join(list_recipes())} (crosslens plan --list-recipes)"
        )
    else:
        resource = _recipe_dir() / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise RecipeError(
                f"unknown recipe {str(name_or_path)!r}; choose one of {', '.join(list_recipes())} "
                "(crosslens plan --list-recipes) or pass a recipe .yaml path"
            )
        text, name, where = resource.read_text(), str(name_or_path), resource
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe file {where} is not valid YAML {_yaml_problem(err)}; correct it there") from None
    return recipe_from_dict(data, name)


def _yaml_problem(err: Exception) -> str:
    """Where and what the YAML parser found wrong, from its marks: ``at line 3, column 3: expected
    ',' or ']', but got ':' (while parsing a flow sequence started at line 2, column 15)``."""
    mark, context_mark = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return f"({problem})"
    said = f"at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context = getattr(err, "context", None)
    if context and context_mark is not None and (context_mark.line, context_mark.column) != (mark.line, mark.column):
        said += f" ({context} started at line {context_mark.line + 1}, column {context_mark.column + 1})"
    return said
