"""A tiny trained run with its feature database, for the live models' tests (test_live.py,
test_live_browser.py): three random 2-layer GPT-NeoX snapshots (d_model 32) in a local folder, a
40-step ReLU crosscoder with 32 features at ``blocks.0.hook_resid_post``, and its dashboards. About
ten seconds on one CPU core."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import trust_fixtures as tf
from hf_cache import FAKE_WORDS

from crosslens.dashboards import DashboardsConfig, compute_dashboards
from crosslens.live import LiveModels

TEXT = "the old man sees the big dog near the house and the dogs run"
PROMPT = "the cat sees the dog and"


def tiny_run(root: Path) -> Path:
    """``root/run``, trained on ``root/suite``'s snapshots, with its feature database."""
    tf.write_suite(root / "suite")
    tf.harvest(root / "suite", root / "store")
    tf.train(root / "store", root / "run")
    config = DashboardsConfig(top_k=4, n_quantile=3, window=3, reservoir=6, batch_size=48, n_bins=12, n_logits=5)
    compute_dashboards(root / "run", config=config, device="cpu", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The tiny run, once per test module that imports this fixture."""
    return tiny_run(tmp_path_factory.mktemp("live"))


@pytest.fixture(scope="module")
def live(run):
    """:class:`LiveModels` of the tiny run, on the CPU."""
    models = LiveModels(run, device="cpu")
    yield models
    models.close()


def words(n: int) -> str:
    """A text of ``n`` words of the tiny tokenizer."""
    return " ".join(FAKE_WORDS[i % len(FAKE_WORDS)] for i in range(n))


def edited_copy(run: Path, target: Path, edit) -> Path:
    """A copy of ``run`` whose crosscoder's cfg.json metadata ``edit(metadata)`` changed."""
    shutil.copytree(run, target)
    cfg_path = target / "final" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    edit(cfg["metadata"])
    cfg_path.write_text(json.dumps(cfg))
    return target
