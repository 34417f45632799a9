"""Every setting of a harvest, each in one place, with its default and a docstring:
:class:`HarvestConfig` nests where the tokens come from (:class:`TokenSource`) and how many there
are (:class:`~crosslens.activations.budget.TokenBudget`), as the training runner's config nests
the architecture's. :func:`crosslens.activations.harvest_job.harvest_stores` runs one on a suite.
The ``crosslens harvest`` flags are generated from these dataclasses (each field's docstring is its
``--help``), so a new setting is one field here.

This module imports no torch: ``crosslens --help`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosslens.activations.budget import TokenBudget
from crosslens.core.devices import device_spelling, dtype_name
from crosslens.core.errors import CrosslensError
from crosslens.core.hooks import EXAMPLE_HOOK, hook_problem

RECORD_FILES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
"""Suffixes of local files whose lines or rows are records with a text column, and the
``datasets`` builder that reads each: read as plain text they would be tokenized markup and all."""


def record_builder(path: str | Path) -> str | None:
    """The ``datasets`` builder of a local file of records (:data:`RECORD_FILES`), None for
    anything else (a text file, a folder, a dataset name)."""
    builder = RECORD_FILES.get(Path(path).suffix.lower())
    return builder if builder is not None and Path(path).is_file() else None


@dataclass(frozen=True)
class TokenSource:
    """Where a harvest's text comes from: text files, a ``datasets`` dataset, or (neither given)
    documents sampled from the pico grammar."""

    text: tuple[str, ...] | None = field(default=None, metadata={"nargs": "+", "metavar": "FILE|DIR"})
    """Your text: text files or folders of .txt files (split into documents at blank lines, or every
    ~2000 characters)."""
    encoding: str = "utf-8"
    """Encoding of the --text files (e.g. latin-1, cp1252); a file that does not decode in it is refused."""
    dataset: str | None = None
    """NAME:COLUMN of a datasets dataset (a text file or folder also works; default: the recipe's, else
    the pico grammar)."""

    def __post_init__(self) -> None:
        if isinstance(self.text, (str, Path)):
            object.__setattr__(self, "text", (str(self.text),))
        elif self.text is not None:
            object.__setattr__(self, "text", tuple(map(str, self.text)))
        if self.text and self.dataset:
            raise CrosslensError("--text and --dataset name two token sources; pass one of them")

    def resolve(self) -> tuple[str, Any]:
        """What the tokens are read from, checked: ``("text", [paths])``, ``("dataset",
        "NAME:COLUMN")`` or ``("pico", None)``. A text file or folder given as a dataset is read
        as text; a file of records given as text is refused, naming the dataset that reads it."""
        if self.text:
            missing = [t for t in self.text if not Path(t).exists()]
            if missing:
                raise CrosslensError(f"--text {missing[0]}: no such file or folder")
            records = [t for t in self.text if record_builder(t)]
            if records:
                raise CrosslensError(
                    f"--text {records[0]}: a {Path(records[0]).suffix} file holds records, not text; pass "
                    f"--dataset {records[0]}:COLUMN, its text column (e.g. --dataset {records[0]}:text)"
                )
            return "text", list(self.text)
        if not self.dataset:
            return "pico", None
        dataset = self.dataset.removeprefix("dataset:")
        if record_builder(dataset):
            return "dataset", dataset  # records: their "text" column (FILE:COLUMN names another)
        if Path(dataset).is_file() or (Path(dataset).is_dir() and not (Path(dataset) / "dataset_info.json").exists()):
            return "text", [dataset]  # a text file or a folder of .txt files given as --dataset
        return "dataset", dataset

    def record(self) -> dict[str, Any]:
        """What a run records of these tokens: the source with its local paths absolute (so that a
        resume from another folder reads the same files) and, for text read in another encoding
        than UTF-8, that encoding."""
        kind, value = self.resolve()
        tokens: dict[str, Any] = {"kind": kind, "source": value}
        if kind == "text":
            tokens["source"] = [str(Path(v).resolve()) for v in value]
            if self.encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
                tokens["encoding"] = self.encoding
        elif kind == "dataset":
            name, colon, column = str(value).partition(":")
            if Path(name).exists():  # a local text file or folder
                tokens["source"] = str(Path(name).resolve()) + colon + column
        return tokens


DATASET_PATH_SEPARATOR = ", "
"""What joins several text files' paths into one ``dataset_path``."""


def recorded_dataset_path(tokens: dict[str, Any] | None) -> str | None:
    """SAELens's ``dataset_path`` (one string) of a :meth:`TokenSource.record`: the dataset's
    ``NAME[:COLUMN]``, or the text files' paths joined by ``", "``; None where nothing is recorded."""
    source = (tokens or {}).get("source")
    if source is None or isinstance(source, str):
        return source
    return DATASET_PATH_SEPARATOR.join(str(path) for path in source)


@dataclass
class HarvestConfig:
    """Everything a harvest of one suite needs: which hooks, which tokens and how many, where the
    store goes and in which dtype, where the models run. Its held-out rows go to a second store
    beside it, ``OUT-heldout``."""

    out_dir: str = field(metadata={"flag": "--out"})
    """Store folder."""
    hook_names: list[str] = field(default_factory=list, metadata={"flag": "--hook", "action": "append"})
    """Hook name, e.g. blocks.0.hook_resid_post; repeat for several (default: the recipe's hook)."""
    tokens: TokenSource = field(default_factory=TokenSource)
    """Where the text comes from."""
    budget: TokenBudget = field(default_factory=TokenBudget)
    """How many tokens, in rows of what length, and how many are held out."""
    store_dtype: str | None = None
    """dtype the stores are written in (default: the recipe's store dtype with --recipe, else the
    snapshot models' dtype)."""
    overwrite: bool = False
    """Discard whatever store --out holds, and its OUT-heldout, and harvest afresh."""
    center_writing_weights: bool | None = field(default=None, metadata={"flag": "--no-center-writing-weights"})
    """Load a suite of models (--models) without centring the weights that write to the residual
    stream, so that it holds what Hugging Face computes, as nnsight reads it (the Minder et al.
    releases were trained on that); default: the suite's processing, centred where its architecture
    allows. The store records it."""
    device: str = field(default="cpu", metadata={"cli": False})
    """Where the snapshot models run: cpu, cuda, cuda:N or mps."""
    model_dtype: str = field(default="float32", metadata={"cli": False})
    """dtype the snapshot models run in: float32, bfloat16 or float16."""

    def __post_init__(self) -> None:
        self.hook_names = [self.hook_names] if isinstance(self.hook_names, str) else list(self.hook_names)
        if not self.hook_names:
            raise CrosslensError(f'hook_names is empty: name at least one hook, e.g. ["{EXAMPLE_HOOK}"]')
        for hook in self.hook_names:
            problem = hook_problem(hook, None)
            if problem:
                raise CrosslensError(f"--hook {problem}")
        self.device = device_spelling(self.device)
        self.model_dtype = dtype_name(self.model_dtype)
        if self.store_dtype is not None:
            self.store_dtype = dtype_name(self.store_dtype, "--store-dtype")

    def processing(self) -> dict[str, bool] | None:
        """The weight processing the suite's models are to load with, over their architecture's
        (``CheckpointSuite.models(..., processing=...)``); None: the suite's own."""
        return None if self.center_writing_weights is None else {"center_writing_weights": self.center_writing_weights}


__all__ = ["HarvestConfig", "TokenSource", "record_builder"]
