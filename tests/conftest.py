"""Shared fixtures. Every test runs offline: nothing may reach the Hugging Face hub."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# set before huggingface_hub is imported, which reads it once (a shell's HF_HUB_OFFLINE=0 included)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
# Tests never read or write the user's crosslens cache (suites, weights hashes, demo output):
# a warm cache from an earlier run would change which code paths a test takes.
os.environ["CROSSLENS_HOME"] = tempfile.mkdtemp(prefix="crosslens-test-home-")
atexit.register(shutil.rmtree, os.environ["CROSSLENS_HOME"], ignore_errors=True)
# Nor the user's Hugging Face cache: huggingface_hub reads its cache's path once, at import, so
# the path is fixed here to a link that each test points at its own fake cache
# (hf_cache.offline_hf_home_at), and that names an empty cache between them.
_HF_ROOT = Path(tempfile.mkdtemp(prefix="crosslens-test-hf-"))
atexit.register(shutil.rmtree, _HF_ROOT, ignore_errors=True)
(_HF_ROOT / "empty").mkdir()
(_HF_ROOT / "hub").symlink_to(_HF_ROOT / "empty", target_is_directory=True)
os.environ["HF_HOME"] = str(_HF_ROOT / "home")
os.environ["HF_HUB_CACHE"] = str(_HF_ROOT / "hub")
os.environ.pop("HUGGINGFACE_HUB_CACHE", None)  # an older name that would win over HF_HUB_CACHE
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["CROSSLENS_TEST_EMPTY_HUB"] = str(_HF_ROOT / "empty")
# A shell starts a background job (`make test &`) with SIGINT ignored, and a process started from
# it inherits that: Python then installs no KeyboardInterrupt handler, so the servers the tests
# stop with Ctrl-C would never stop. A handler here is reset to the default in every process
# the tests start, as any caught signal is at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# pytest-xdist's workers share the machine's cores: each worker's torch, and the processes it
# starts, take the worker's share of them. With more threads than that, OpenMP's workers spin
# at each op's barrier while another process holds the cores, and small ops slow down manyfold.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, _CORES // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

from hf_cache import (
    make_word_tokenizer,
    offline_hf_home_at,
    tiny_bloom,
    tiny_neox,
    tiny_olmo,
    write_fake_hub_repo,
)

PYTHIA_REPO = "EleutherAI/pythia-14m"
PYTHIA_DUPLICATED_REPO = "EleutherAI/pythia-70m"
OLMO_REPO = "allenai/OLMo-1B-hf"
BLOOM_REPO = "bigscience/bloom-560m-intermediate"


@dataclass
class FakeHub:
    """Tiny stand-ins for real checkpoint repos, cached under `hf_home`."""

    hf_home: Path
    tokenizer: object
    models: dict[str, dict] = field(default_factory=dict)
    """repo id -> revision -> the HF model written there (for comparing logits)."""


@pytest.fixture(scope="session")
def _fake_hub_files(tmp_path_factory: pytest.TempPathFactory) -> FakeHub:
    hf_home = tmp_path_factory.mktemp("hf_home")
    hub = FakeHub(hf_home=hf_home, tokenizer=make_word_tokenizer())
    repos = {
        # As on the hub, `main` holds Pythia's final step.
        PYTHIA_REPO: ({f"step{s}": tiny_neox(seed=s) for s in (0, 1, 1000, 2000, 143000)}, "step143000"),
        # step3000 and step4000 serve the same weights, as some public Pythia branches do.
        PYTHIA_DUPLICATED_REPO: (
            {"step2000": tiny_neox(seed=7), "step3000": tiny_neox(seed=8), "step4000": tiny_neox(seed=8)},
            "step4000",
        ),
        OLMO_REPO: (
            {f"step{s}-tokens{4 * s // 1000}B": tiny_olmo(seed=s) for s in (1000, 2000, 3000)},
            "step3000-tokens12B",
        ),
        BLOOM_REPO: ({f"global_step{s}": tiny_bloom(seed=s) for s in (1000, 10000)}, None),
    }
    for repo_id, (revisions, main) in repos.items():
        write_fake_hub_repo(hf_home, repo_id, revisions, hub.tokenizer, main=main)
        hub.models[repo_id] = revisions
    return hub


@pytest.fixture
def fake_hub(_fake_hub_files: FakeHub) -> Iterator[FakeHub]:
    """Offline HF cache holding tiny Pythia (pythia-14m, pythia-70m), OLMo (OLMo-1B-hf)
    and BLOOM (bloom-560m-intermediate) checkpoint repos under their real names."""
    with offline_hf_home_at(_fake_hub_files.hf_home):
        yield _fake_hub_files


@pytest.fixture
def offline_hf_home(tmp_path: Path) -> Iterator[Path]:
    """An empty, offline HF cache for this test; write repos into it with
    `hf_cache.write_fake_hub_repo`."""
    with offline_hf_home_at(tmp_path / "hf_home") as hf_home:
        yield hf_home


LONGEST_FIRST = (
    "test_planted_generators.py",
    "test_distributed.py",
    "test_planted_architectures.py",
    "test_tutorials.py",
    "test_forward_to_hook.py",
    "test_train_stream.py",
    "test_triton_interpreted.py",
    "test_pico.py",
    "test_cpu_math.py",
    "test_explain_inputs.py",
    "test_annotations.py",
    "test_trust.py",
)
"""The test files that take longest on 2 cores, longest first. `make test` hands each of its two
workers the next file as it finishes one (``--dist loadfile --no-loadscope-reorder``), so these go
first: a long file handed out last would keep one worker busy while the other sits idle."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [name for name in LONGEST_FIRST if not (Path(__file__).parent / name).exists()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py: LONGEST_FIRST names files that are gone: {missing}")
    place = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: place.get(item.path.name, len(place)))  # stable: the rest keep their order
