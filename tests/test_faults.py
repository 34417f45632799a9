"""Fault injection, as storage systems test themselves: kill, tear and corrupt, then check.

1. Kills. A forked child harvests (or trains) and SIGKILLs itself at a point drawn from a
   seeded generator: during a forward pass, mid-way through writing a shard, between a
   shard's rename and the manifest recording it, mid-way through a manifest write; for
   training, before an optimizer step, mid-way through a checkpoint file, before a
   checkpoint is sealed, before the final crosscoder is sealed. The parent then resumes
   and the result must be byte-identical to an uninterrupted run.
2. Damage. Each kind of file in a store (shard, manifest, tokens) and in a run folder
   (checkpoint weights, trainer state, cfg.json, the checkpoint's seal, run.json, the
   final crosscoder) is bit-flipped, truncated or deleted. Training must refuse a damaged
   store with an error naming the file; re-running the harvest must rebuild it; a
   damaged checkpoint must never be resumed from, and resuming must still end at the
   uninterrupted run's bytes.

Set CROSSLENS_FAULT_TABLE=path to also write the summary table of cases and outcomes
(it is printed at the end of the module either way; pytest -s shows it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from trust_fixtures import HOOK, copy_tree, harvest, run_config, train, tree_bytes, write_suite

from crosslens.activations import harvest as harvest_module
from crosslens.activations.store import LOCK_NAME, MANIFEST_NAME, TOKENS_NAME, shard_relpath
from crosslens.core.errors import CrosslensError
from crosslens.training import runner as runner_module
from crosslens.training.records import RECORD_NAME, record_problem
from crosslens.training.runner import CrosscoderTrainingRunner

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills run in forked children (POSIX)")

SEEDS = range(8)
N_STEPS, EVERY = 40, 10
RESULTS: list[tuple[str, str, str]] = []


# --------------------------------------------------------------------------- shared state
@pytest.fixture(scope="module", autouse=True)
def _summary():
    yield
    table = format_table(RESULTS)
    print("\n" + table)
    if os.environ.get("CROSSLENS_FAULT_TABLE"):
        Path(os.environ["CROSSLENS_FAULT_TABLE"]).write_text(table + "\n")


def format_table(rows: list[tuple[str, str, str]]) -> str:
    header = ("case", "fault", "outcome")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return write_suite(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def reference_store(suite, tmp_path_factory) -> Path:
    return harvest(suite, tmp_path_factory.mktemp("store")).path


@pytest.fixture(scope="module")
def reference_run(reference_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(reference_store, out, n_steps=N_STEPS, checkpoint_every=EVERY)
    return out


def store_files(root: Path) -> dict[str, bytes]:
    return tree_bytes(root, skip=(LOCK_NAME,))


def final_files(run: Path) -> dict[str, bytes]:
    """The final crosscoder's files (its seal names the run folder, so it is checked, not compared)."""
    assert record_problem(run / "final") is None
    return tree_bytes(run / "final", skip=(RECORD_NAME,))


# --------------------------------------------------------------------------- kills
def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def in_killed_child(job: Callable[[], None], arm: Callable[[], None]) -> str:
    """Run ``job`` in a forked child after ``arm()`` sets its kill point; how it ended."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            arm()
            job()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    assert os.WEXITSTATUS(status) == 0, "the child failed before its kill point"
    return "finished before the kill point"


def on_nth_call(owner, name: str, n: int, action: Callable) -> None:
    """Make the n-th call of ``owner.name`` run ``action(real, *args, **kwargs)`` instead."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            return action(real, *args, **kwargs)
        return real(*args, **kwargs)

    setattr(owner, name, wrapped)


def tear(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def harvest_kill_point(seed: int) -> tuple[str, Callable[[], None]]:
    rng = random.Random(f"harvest-{seed}")
    kinds = [
        "during a forward pass",
        "mid-way through a shard",
        "after a shard's rename",
        "mid-way through the manifest",
    ]
    kind = kinds[seed % 4]
    if kind == "during a forward pass":
        n = rng.randint(1, 15)
        return f"{kind} (#{n})", lambda: on_nth_call(harvest_module, "harvest_rows", n, lambda real, *a, **k: die())

    target = MANIFEST_NAME if kind.endswith("manifest") else ".npy"
    n = rng.randint(2, 12)
    real_replace = os.replace
    calls = {"n": 0}

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(target):
            calls["n"] += 1
            if calls["n"] == n:
                if kind.startswith("mid-way"):
                    tear(Path(src))  # the write was cut short: the temporary file is half written
                    die()
                real_replace(src, dst, *args, **kwargs)
                die()
        return real_replace(src, dst, *args, **kwargs)

    def arm() -> None:
        os.replace = replace

    return f"{kind} (#{n})", arm


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_harvest_resumes_to_a_byte_identical_store(seed, suite, reference_store, tmp_path):
    where, arm = harvest_kill_point(seed)
    out = tmp_path / "store"
    ended = in_killed_child(lambda: harvest(suite, out), arm)
    harvest(suite, out)
    assert store_files(out) == store_files(reference_store)
    RESULTS.append((f"harvest, seed {seed}", f"SIGKILL {where}", f"{ended}; resumed store byte-identical"))


def train_kill_point(seed: int) -> tuple[str, Callable[[], None]]:
    rng = random.Random(f"train-{seed}")
    from crosslens.training.trainer import CrosscoderTrainer

    kind = [
        "before an optimizer step",
        "mid-way through a checkpoint file",
        "before a checkpoint's seal",
        "before the final crosscoder's seal",
    ][seed % 4]
    if kind == "before an optimizer step":
        n = rng.randint(1, N_STEPS)
        arm = lambda: on_nth_call(CrosscoderTrainer, "step", n, lambda real, *a, **k: die())  # noqa: E731
    elif kind == "mid-way through a checkpoint file":
        n = rng.randint(1, N_STEPS // EVERY)

        def torn_save(real, obj, path, *args, **kwargs):
            real(obj, path, *args, **kwargs)
            tear(Path(path))
            die()

        arm = lambda: on_nth_call(torch, "save", n, torn_save)  # noqa: E731
    else:
        n = rng.randint(1, N_STEPS // EVERY) if kind == "before a checkpoint's seal" else N_STEPS // EVERY + 1
        arm = lambda: on_nth_call(runner_module, "write_record", n, lambda real, *a, **k: die())  # noqa: E731
    return f"{kind} (#{n})", arm


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_training_resumes_to_a_byte_identical_crosscoder(seed, reference_store, reference_run, tmp_path):
    where, arm = train_kill_point(seed)
    out = tmp_path / "run"
    ended = in_killed_child(lambda: train(reference_store, out, n_steps=N_STEPS, checkpoint_every=EVERY), arm)
    train(reference_store, out, n_steps=N_STEPS, checkpoint_every=EVERY, resume=True)
    assert final_files(out) == final_files(reference_run)
    last = f"step_{N_STEPS:08d}/sae_weights.safetensors"
    assert (out / last).read_bytes() == (reference_run / last).read_bytes()
    RESULTS.append((f"train, seed {seed}", f"SIGKILL {where}", f"{ended}; resumed crosscoder byte-identical"))


# --------------------------------------------------------------------------- damage
def damage(path: Path, how: str, rng: random.Random) -> None:
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        tear(path)
    else:
        data = bytearray(path.read_bytes())
        data[rng.randrange(len(data))] ^= 0xFF
        path.write_bytes(bytes(data))


DAMAGES = ["flip a byte", "truncate", "delete"]
STORE_FILES = {"shard": shard_relpath(HOOK, 1, 3), "manifest": MANIFEST_NAME, "tokens": TOKENS_NAME}


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", list(STORE_FILES))
def test_a_damaged_store_file_is_refused_for_training_and_rebuilt_by_harvest(
    kind, how, suite, reference_store, tmp_path
):
    store = copy_tree(reference_store, tmp_path / "store")
    rel = STORE_FILES[kind]
    damage(store / rel, how, random.Random(f"{kind}-{how}"))

    with pytest.raises((CrosslensError, FileNotFoundError)) as refused:
        CrosscoderTrainingRunner(run_config(store, tmp_path / "run"))
    assert Path(rel).name in str(refused.value)  # the error names the damaged file
    assert not (tmp_path / "run").exists()  # nothing was trained

    try:
        harvest(suite, store)
        repair = "re-running harvest rebuilt it"
    except CrosslensError as error:  # a damaged manifest: nothing in the store can be trusted
        assert "--overwrite" in str(error)
        harvest(suite, store, overwrite=True)
        repair = "harvest --overwrite rebuilt it"
    assert store_files(store) == store_files(reference_store)
    RESULTS.append((f"store {kind}", how, f"train refused: {type(refused.value).__name__}; {repair} byte-identical"))


RUN_FILES = {
    "checkpoint weights": f"step_{N_STEPS:08d}/sae_weights.safetensors",
    "trainer state": f"step_{N_STEPS:08d}/trainer_state.pt",
    "checkpoint cfg.json": f"step_{N_STEPS:08d}/cfg.json",
    "checkpoint seal": f"step_{N_STEPS:08d}/{RECORD_NAME}",
    "run.json": "run.json",
    "final cfg.json": "final/cfg.json",
    "final weights": "final/sae_weights.safetensors",
}


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", list(RUN_FILES))
def test_a_damaged_run_file_is_never_resumed_from(kind, how, reference_store, reference_run, tmp_path):
    run = copy_tree(reference_run, tmp_path / "run")
    rel = RUN_FILES[kind]
    damage(run / rel, how, random.Random(f"{kind}-{how}"))

    runner = CrosscoderTrainingRunner(run_config(reference_store, run, n_steps=N_STEPS, checkpoint_every=EVERY))
    resumes_from = runner.verified_checkpoint()
    if rel.startswith("step_"):
        assert resumes_from is not None and resumes_from.name == f"step_{N_STEPS - EVERY:08d}"
        detected = f"checkpoint skipped, resumed from {resumes_from.name}"
    elif rel.startswith("final/"):
        assert record_problem(run / "final") is not None  # a reuser (the demo) sees the damage
        detected = "final/ fails its seal; rewritten from the last checkpoint"
    else:
        detected = "rewritten from the checkpoint's sealed record"
    runner.run(resume=True)
    assert final_files(run) == final_files(reference_run)
    assert json.loads((run / "run.json").read_text())["sae"]["d_sae"] == runner.config.sae.d_sae
    RESULTS.append((f"run {kind}", how, f"{detected}; crosscoder byte-identical"))
