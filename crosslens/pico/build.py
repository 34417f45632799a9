"""Build (train, evaluate, save) the pico suite, cached on disk and resumable.

Layout (docs/DESIGN.md): ``<root>/step{N}/`` full Hugging Face checkpoints (weights and
tokenizer), then ``<root>/suite.json``. ``suite.json`` is written last and atomically, so
its presence is the completion marker. While building, ``<root>/_build/state.pt`` holds
the weights, optimizer state and eval rows of the last saved checkpoint; an interrupted
build restarts from there. A forced rebuild of an existing suite is built in a scratch
folder beside it and swapped in once complete, so a refused or failed rebuild leaves the
old suite as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from crosslens.checkpoints.local import SUITE_FILE
from crosslens.core.errors import CrosslensError
from crosslens.core.locks import exclusive_lock
from crosslens.core.sealed import write_json_atomically
from crosslens.core.staging import staged_folder
from crosslens.pico.config import (
    FORMAT_VERSION,
    MODEL_ID,
    STATE_DIR,
    PicoConfig,
    default_root,
    foreign_folder,
    is_built,
    pico_manifest,
)
from crosslens.pico.corpus import GrammarCorpus, TextCorpus, read_user_corpus
from crosslens.pico.evals import PicoEvaluator, check_targets, format_eval_table, format_targets
from crosslens.pico.tokenizer import END_OF_TEXT, train_tokenizer, word_level_tokenizer
from crosslens.pico.train import make_model, make_optimizer, train
from crosslens.tasks.blimp import load_task_file
from crosslens.tasks.grammar import PicoGrammar

if TYPE_CHECKING:
    from crosslens.checkpoints import CheckpointSuite


def _check_root(root: Path, config: PicoConfig, force: bool) -> None:
    if foreign_folder(root):
        raise CrosslensError(
            f"--root {root} holds files but no pico suite (a {SUITE_FILE} that no pico build wrote, or other "
            "files, and no interrupted build); the build writes only into an empty or new folder or a pico "
            "suite's, and force=True (the CLI's --force) deletes no other folder: choose another --root (root=)"
        )
    manifest = pico_manifest(root)
    if manifest is not None and not force:
        built = manifest["build"]["config_hash"]
        if built != config.config_hash():
            raise CrosslensError(
                f"{root} holds a pico suite built from another config (hash {built}, this one "
                f"{config.config_hash()}); pass force=True (the CLI's --force) to rebuild it there, "
                "or choose another root (--root)"
            )


def _save_tokenizer(tokenizer: Any, folder: Path) -> None:
    tokenizer.save_pretrained(folder)
    # Older transformers (4.x) know the fast tokenizer by this name and read the special tokens map.
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tokenizer_config, indent=2))
    special = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "pad_token": END_OF_TEXT}
    if tokenizer.unk_token is not None:
        special["unk_token"] = tokenizer.unk_token
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


@contextmanager
def _transformers_bars_off() -> Iterator[None]:
    """Silence transformers' own per-save progress bars (ours already shows progress)."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _save_checkpoint(model: torch.nn.Module, tokenizer: Any, folder: Path) -> None:
    with staged_folder(folder) as partial, _transformers_bars_off():
        model.save_pretrained(partial)
        _save_tokenizer(tokenizer, partial)


def _prepare_data(config: PicoConfig) -> tuple[Any, GrammarCorpus | TextCorpus]:
    if config.corpus is None:
        grammar = PicoGrammar()
        tokenizer = word_level_tokenizer(grammar.vocabulary())
        corpus = GrammarCorpus(
            grammar, tokenizer, seq_len=config.seq_len, batch_size=config.batch_size, seed=config.seed
        )
        return tokenizer, corpus
    documents = read_user_corpus(config.corpus)
    tokenizer = train_tokenizer(documents, config.bpe_vocab_size)
    corpus = TextCorpus(
        documents,
        tokenizer,
        seq_len=config.seq_len,
        batch_size=config.batch_size,
        seed=config.seed,
        n_heldout_rows=config.n_eval_sequences,
    )
    return tokenizer, corpus


@dataclass(frozen=True)
class _Inputs:
    """What a build reads before it writes anything: a corpus, tokenizer or pairs file that is
    refused is refused while the root is untouched."""

    tokenizer: Any
    corpus: GrammarCorpus | TextCorpus
    evaluator: PicoEvaluator
    started: float
    """``time.perf_counter()`` when the build began (its wall time is recorded)."""


def _read_inputs(config: PicoConfig) -> _Inputs:
    started = time.perf_counter()
    tokenizer, corpus = _prepare_data(config)
    evaluator = PicoEvaluator(
        tokenizer,
        corpus.heldout(config.n_eval_sequences),
        n_pairs=config.n_eval_pairs,
        seed=config.seed,
        extra_tasks=_eval_tasks(config.eval_pairs),
        max_tokens=config.model_context,
    )
    return _Inputs(tokenizer, corpus, evaluator, started)


def _torch_threads(n: int) -> ExitStack:
    """``n`` torch threads until the returned context exits, then the previous count again."""
    restore = ExitStack()
    restore.callback(torch.set_num_threads, torch.get_num_threads())
    torch.set_num_threads(n)
    return restore


def build_pico_suite(
    config: PicoConfig = PicoConfig(),
    root: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    *,
    threads: int = 1,
) -> Path:
    """Train the pico suite from scratch and save its checkpoints; return its folder.

    Returns at once when ``root`` already holds a complete build of ``config``;
    ``force=True`` rebuilds it, replacing the pico suite there only once the new one is
    complete. A non-empty ``root`` that holds no pico suite is refused, forced or not. An
    interrupted build resumes from its last saved checkpoint. With ``progress``, prints a
    progress bar, one eval row per checkpoint and whether the learning targets were met.

    ``threads`` is torch's CPU thread count during the build. One is the default: the
    model is so small that a step is mostly overhead, a second thread gains little when
    the machine is idle and costs many times over when other processes share the cores, and a
    fixed count keeps the weights bitwise reproducible across machines.
    """
    root = Path(root) if root is not None else default_root(config)
    if not force and is_built(root, config):
        return root
    if threads < 1:
        raise ValueError(f"threads={threads} must be >= 1")
    # A root or an input refused is refused before the lock, whose file beside root would outlive
    # the refusal; a build waiting for another one has read its inputs for nothing, at worst.
    _check_root(root, config, force)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # torch owns the cores
    with _torch_threads(threads):
        inputs = _read_inputs(config)
        with _exclusive(root, progress):
            if not force and is_built(root, config):
                return root  # another process built it while we waited
            _check_root(root, config, force)  # what another process wrote there while we waited
            if force and root.is_dir() and any(root.iterdir()):
                # until the new suite is complete, the old one stays whole at root
                with staged_folder(root) as scratch:
                    _build(config, scratch, inputs, progress, shown=root)
            else:
                root.mkdir(parents=True, exist_ok=True)
                _build(config, root, inputs, progress)
    return root


@contextmanager
def _exclusive(root: Path, progress: bool) -> Iterator[None]:
    """Hold a lock beside ``root`` so concurrent builds of one suite wait for each other.

    The OS drops the lock when its holder exits, so a crashed build never blocks the next.
    """

    def on_busy(holder: str) -> None:
        if progress:
            tqdm.write(f"pico: {holder} is building {root}; waiting for it")

    with exclusive_lock(root.parent / f".{root.name}.lock", on_busy=on_busy):
        yield


def _eval_tasks(path: str | None) -> dict[str, Any]:
    """The user's minimal pairs scored at every checkpoint (one task per language for MultiBLiMP-style files)."""
    if path is None:
        return {}
    return load_task_file(path)


def _build(config: PicoConfig, root: Path, inputs: _Inputs, progress: bool, shown: Path | None = None) -> None:
    """Train and save the suite into ``root``; ``shown`` is the folder named in the progress lines
    (the suite's own root, when ``root`` is a scratch folder swapped in afterwards)."""
    tokenizer, corpus, evaluator = inputs.tokenizer, inputs.corpus, inputs.evaluator
    shown = root if shown is None else shown
    model = make_model(config, vocab_size=len(tokenizer))
    optimizer = make_optimizer(config, model)
    rows: list[dict[str, Any]] = []
    state_path = root / STATE_DIR / "state.pt"
    # made before the first checkpoint: a build under way is then never a foreign folder to
    # another build's check, which runs before it waits for the lock
    state_path.parent.mkdir(exist_ok=True)
    start_step = 0
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        if state["config_hash"] == config.config_hash():
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            rows, start_step = state["rows"], state["step"]
    if progress:
        for note in evaluator.notes:
            tqdm.write(f"pico: {note}")
        tqdm.write(f"pico: building {shown} ({len(config.checkpoint_steps)} checkpoints)")
        if start_step:
            tqdm.write(f"pico: resuming at step {start_step}")
        tqdm.write(format_eval_table(rows, evaluator.extra_columns, grammar=config.corpus is None))

    def on_checkpoint(step: int) -> None:
        if rows and rows[-1]["step"] >= step:
            return  # saved before the interruption we resume from
        rows.append(evaluator(model, step, step * config.tokens_per_step))
        if progress:
            tqdm.write(
                format_eval_table(rows[-1:], evaluator.extra_columns, grammar=config.corpus is None).splitlines()[-1]
            )
        _save_checkpoint(model, tokenizer, root / f"step{step}")
        state_path.parent.mkdir(exist_ok=True)
        partial = state_path.with_name("state.pt.partial")
        state = {"config_hash": config.config_hash(), "step": step, "rows": rows}
        torch.save({**state, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, partial)
        os.replace(partial, state_path)

    train(config, model, optimizer, corpus.batch, on_checkpoint, start_step=start_step, progress=progress)

    targets = check_targets(rows) if config.corpus is None else None
    manifest = {
        "family": "local",
        "model_id": MODEL_ID,
        "snapshots": [
            {"revision": f"step{row['step']}", "step": row["step"], "tokens_seen": row["tokens_seen"]} for row in rows
        ],
        "build": {
            "config": config.to_dict(),
            "config_hash": config.config_hash(),
            "format_version": FORMAT_VERSION,
            "vocab_size": len(tokenizer),
            "wall_time_s": round(time.perf_counter() - inputs.started, 1),
            "resumed_from_step": start_step,
            "torch_threads": torch.get_num_threads(),
            "notes": evaluator.notes,
        },
        "evals": rows,
        "targets": targets,
    }
    write_json_atomically(root / SUITE_FILE, manifest, indent=2, tmp=root / (SUITE_FILE + ".partial"))
    shutil.rmtree(root / STATE_DIR, ignore_errors=True)
    if progress:
        if targets is not None:
            tqdm.write(format_targets(targets))
        tqdm.write(f"pico: built {shown} in {manifest['build']['wall_time_s']} s")


def pico_suite(
    config: PicoConfig | None = None, root: str | Path | None = None, build_if_missing: bool = True
) -> "CheckpointSuite":
    """The pico suite as a :class:`crosslens.checkpoints.CheckpointSuite` (built first if needed).

    With ``root`` and no ``config``, any complete pico suite at ``root`` is used as it is
    (whatever config built it); a missing one is built from the default config.
    """
    if config is None and root is not None and is_built(root):
        from crosslens.checkpoints import CheckpointSuite  # lazy: the checkpoints stage imports heavier modules

        return CheckpointSuite.local(root)
    config = config if config is not None else PicoConfig()
    root = Path(root) if root is not None else default_root(config)
    if not is_built(root, config):
        if is_built(root) and not build_if_missing:
            raise FileNotFoundError(
                f"{root} holds a complete pico suite, but built from another config than the one passed; "
                "call pico_suite(root=...) without a config to use it as it is"
            )
        if not build_if_missing:
            raise FileNotFoundError(
                f"no complete pico suite for this config at {root}; run `crosslens suite build` "
                "or pass build_if_missing=True"
            )
        build_pico_suite(config, root)
    from crosslens.checkpoints import CheckpointSuite  # lazy: the checkpoints stage imports heavier modules

    return CheckpointSuite.local(root)
