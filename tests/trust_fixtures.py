"""Tiny suites, stores and runs shared by test_trust.py and test_faults.py.

A suite is three random 2-layer GPT-NeoX checkpoints (d_model 32) in a local folder; a
store is 24 rows of 16 tokens at one hook in 5 shards; a run is a 40-step ReLU
crosscoder with d_sae 32 and a checkpoint every 10 steps. Everything takes about a
second on a CPU core.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch
from hf_cache import FAKE_VOCAB_SIZE, make_word_tokenizer, tiny_neox, write_local_suite

from crosslens.activations import harvest_activations
from crosslens.checkpoints import CheckpointSuite
from crosslens.training.config import ArchitectureConfig
from crosslens.training.runner import CrosscoderRunnerConfig, CrosscoderTrainingRunner

HOOK = "blocks.0.hook_resid_post"
OTHER_HOOK = "blocks.1.hook_resid_post"
SHARD_TOKENS = 80  # 5 rows of 16 per shard -> 5 shards


def one_line_exit_2(argv: list[str], capsys) -> str:
    """The CLI's error for ``argv``: exit status 2 and one line on stderr, which is returned."""
    import pytest

    from crosslens.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def write_suite(root: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> Path:
    write_local_suite(root, {f"step{10 * i}": tiny_neox(seed=s) for i, s in enumerate(seeds)}, make_word_tokenizer())
    return root


def resave_snapshot(root: Path, revision: str, seed: int) -> None:
    """Put other weights under ``revision`` (as a re-pushed branch or an edited folder would)."""
    tiny_neox(seed=seed).save_pretrained(root / revision)


def token_table(n_seqs: int = 24, seq_len: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, FAKE_VOCAB_SIZE, (n_seqs, seq_len), generator=generator)
    tokens[:, 0] = 0  # BOS
    return tokens


def harvest(suite_root: Path, out: Path, *, hooks=HOOK, tokens: torch.Tensor | None = None, **kwargs):
    return harvest_activations(
        CheckpointSuite.local(suite_root),
        hooks,
        token_table() if tokens is None else tokens,
        out,
        shard_tokens=SHARD_TOKENS,
        batch_size=4,
        progress=False,
        **kwargs,
    )


def run_config(store: Path, out: Path, **overrides) -> CrosscoderRunnerConfig:
    settings = dict(
        store_path=str(store),
        out_dir=str(out),
        architecture="crosscoder",
        d_sae=32,
        n_steps=40,
        batch_size=64,
        lr=3e-3,
        sparsity_coefficient=0.01,
        checkpoint_every=10,
        progress=False,
    )
    settings.update(overrides)
    sae = {key: settings.pop(key) for key in SAE_FIELDS if key in settings}
    settings["train_batch_size_tokens"] = settings.pop("batch_size")
    return CrosscoderRunnerConfig(**settings, sae=ArchitectureConfig(**sae))


SAE_FIELDS = ("architecture", "d_sae", "k", "sparsity_coefficient", "sparsity_warm_up_fraction", "decoder_init_norm")


def train(store: Path, out: Path, *, resume: bool = False, **overrides):
    return CrosscoderTrainingRunner(run_config(store, out, **overrides)).run(resume=resume)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_bytes(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), minus names in ``skip``."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file() and p.name not in skip
    }


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
