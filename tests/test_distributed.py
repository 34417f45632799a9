"""Distributed crosscoder training equals the single-process run, for every architecture.

Each test launches ``torchrun`` on CPU (gloo) with tests/distributed_worker.py, which
trains the four architectures on the same seeded batches as :func:`reference` below, and
compares every saved parameter with the single-process result to 1e-5.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as worker  # noqa: E402

from crosslens.distributed import MeshLayout, shard_batches, snapshot_blocks  # noqa: E402
from crosslens.training.trainer import CrosscoderTrainer, latest_checkpoint  # noqa: E402

WORKER = Path(__file__).with_name("distributed_worker.py")
ATOL = 1e-5


def torchrun(nproc: int, *args: str, timeout: float = 300) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CROSSLENS_DIST_TIMEOUT": "120"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", str(WORKER), *args,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Single-process runs of every architecture, uninterrupted."""
    root = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(1)
    for arch in worker.ARCHS:
        trainer = CrosscoderTrainer(worker.make_crosscoder(arch), worker.trainer_config(root / arch, 6))
        trainer.fit(worker.global_batches)
    return root


def assert_same_weights(run: Path, reference: Path) -> None:
    for arch in worker.ARCHS:
        got = load_file(run / arch / "final" / "sae_weights.safetensors")
        want = load_file(reference / arch / "final" / "sae_weights.safetensors")
        assert got.keys() == want.keys(), arch
        for name in want:
            assert got[name].shape == want[name].shape, (arch, name)
            diff = (got[name].double() - want[name].double()).abs().max().item()
            assert diff <= ATOL, f"{arch}.{name} differs from the single-process run by {diff:.2e}"


def test_weights_actually_trained(reference):
    """Guard for the comparisons below: training moved every architecture's decoder."""
    for arch in worker.ARCHS:
        start = worker.make_crosscoder(arch).W_dec.detach()
        end = load_file(reference / arch / "final" / "sae_weights.safetensors")["W_dec"]
        assert (end - start).abs().max() > 1e-3, arch


@pytest.fixture(scope="module")
def mesh_2x2_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mesh_2x2")
    torchrun(4, "--out", str(out), "--snapshot-parallel", "2")
    return out


@pytest.mark.parametrize(
    "nproc,snapshot_parallel", [(2, 1), (2, 2)], ids=["data-parallel-2", "snapshot-parallel-2"]
)
def test_two_process_training_equals_single_process(tmp_path, reference, nproc, snapshot_parallel):
    torchrun(nproc, "--out", str(tmp_path), "--snapshot-parallel", str(snapshot_parallel))
    assert_same_weights(tmp_path, reference)


def test_2x2_mesh_training_equals_single_process(mesh_2x2_run, reference):
    assert_same_weights(mesh_2x2_run, reference)
    # checkpoints hold the whole crosscoder, in the single-process layout
    ckpt = load_file(mesh_2x2_run / "crosscoder" / "step_00000003" / "sae_weights.safetensors")
    assert ckpt["W_dec"].shape == (worker.F, worker.S, worker.D)


def test_resume_across_world_sizes(tmp_path, mesh_2x2_run, reference):
    """The 2x2 mesh's step-3 checkpoint, resumed with 2 processes and with 1: both end
    where an uninterrupted run ends."""
    runs = {n: tmp_path / f"resumed_on_{n}" for n in (1, 2)}
    for run in runs.values():
        for arch in worker.ARCHS:
            shutil.copytree(mesh_2x2_run / arch / "step_00000003", run / arch / "step_00000003")

    torchrun(2, "--out", str(runs[2]), "--snapshot-parallel", "2", "--resume")
    assert_same_weights(runs[2], reference)

    for arch in worker.ARCHS:
        cfg = worker.trainer_config(runs[1] / arch, 6)
        trainer = CrosscoderTrainer.from_checkpoint(latest_checkpoint(runs[1] / arch), cfg)
        trainer.fit(worker.global_batches)
    assert_same_weights(runs[1], reference)


def test_interrupted_mesh_run_leaves_a_resumable_checkpoint(tmp_path):
    torchrun(2, "--out", str(tmp_path), "--snapshot-parallel", "2", "--interrupt-at", "4")
    for arch in worker.ARCHS:
        assert latest_checkpoint(tmp_path / arch).name == "step_00000003"
        assert not (tmp_path / arch / "final").exists()


def test_snapshot_blocks_cover_every_snapshot_once():
    assert [list(b) for b in snapshot_blocks(5, 2)] == [[0, 1, 2], [3, 4]]
    assert [len(b) for b in snapshot_blocks(32, 8)] == [4] * 8
    with pytest.raises(ValueError, match="--snapshot-parallel <= 3"):
        snapshot_blocks(3, 4)


def test_shard_batches_splits_rows_and_snapshots():
    batch = torch.arange(4 * 5 * 2).reshape(4, 5, 2)
    layout = MeshLayout(data_size=2, snapshot_size=2, rank=3, n_snapshots=5)
    (part,) = list(shard_batches([batch], layout))
    assert torch.equal(part, batch[2:4, 3:5])
    with pytest.raises(ValueError, match="--batch-size divisible by 2"):
        list(shard_batches([batch[:3]], layout))
