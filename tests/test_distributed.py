"""Distributed crosscoder training equals the single-process run, for every architecture.

The tests start ranks on CPU (gloo) with tests/distributed_worker.py, which trains the four
architectures on the same seeded batches as :func:`reference` below, and compare every saved
parameter with the single-process result to 1e-5. The ranks are forked with torchrun's
environment from one process that imported the worker (tests/forked_ranks.py), since a rank's
own import of torch and SAELens would be most of a launch's time, and the runs on two snapshot
ranks share one launch. What torchrun itself does is tested with torchrun: a rank that dies,
and ``crosslens train`` under it.
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
import distributed_worker as worker

from crosslens.distributed import MeshLayout, shard_batches
from crosslens.distributed.mesh import snapshot_blocks
from crosslens.training import CrosscoderTrainer, latest_checkpoint

WORKER = Path(__file__).with_name("distributed_worker.py")
ATOL = 1e-5


FORKED_RANKS = Path(__file__).with_name("forked_ranks.py")


def start_ranks(nproc: int, script: Path, *args: str | Path, timeout: float = 300) -> str:
    """What ``nproc`` ranks of the worker ``script``, given ``args``, printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CROSSLENS_DIST_TIMEOUT": "120"}
    cmd = [sys.executable, str(FORKED_RANKS), str(nproc), str(script), *map(str, args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done.stdout


def train_on_ranks(nproc: int, *args: str) -> str:
    """What ``nproc`` ranks of tests/distributed_worker.py, given ``args``, printed."""
    return start_ranks(nproc, WORKER, *args)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Single-process runs of every architecture, uninterrupted."""
    root = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(1)
    for arch in worker.ARCHS:
        trainer = CrosscoderTrainer(worker.make_crosscoder(arch), worker.trainer_config(root / arch, 6))
        trainer.fit(worker.global_batches)
    return root


def assert_same_weights(run: Path, reference: Path, archs: tuple[str, ...] = worker.ARCHS) -> None:
    for arch in archs:
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
    train_on_ranks(4, "--out", str(out), "--snapshot-parallel", "2")
    return out / "plain"


@pytest.fixture(scope="module")
def snapshot_mesh_runs(tmp_path_factory, mesh_2x2_run) -> tuple[Path, str]:
    """Every run of the worker on two snapshot ranks, in one launch: its folder and what it printed.
    The resumed run starts from the 2x2 mesh's step-3 checkpoint."""
    root = tmp_path_factory.mktemp("snapshot_mesh")
    for arch in worker.ARCHS:
        shutil.copytree(mesh_2x2_run / arch / "step_00000003", root / "resumed" / arch / "step_00000003")
    printed = train_on_ranks(2, "--out", str(root), "--snapshot-parallel", "2", "--runs", *worker.RUNS)
    return root, printed


def test_two_data_ranks_train_the_single_process_crosscoder(tmp_path, reference):
    train_on_ranks(2, "--out", str(tmp_path), "--snapshot-parallel", "1")
    assert_same_weights(tmp_path / "plain", reference)


def test_two_snapshot_ranks_train_the_single_process_crosscoder(snapshot_mesh_runs, reference):
    assert_same_weights(snapshot_mesh_runs[0] / "plain", reference)


def test_the_pairs_path_on_a_snapshot_mesh_equals_single_process(snapshot_mesh_runs, reference):
    """The sparse steps' CUDA path (the decode's node differentiating the norms, whose snapshot
    sums are then taken twice; JumpReLU from its pairs), run with the eager sums on two
    snapshot ranks, ends where the single-process run of the CPU path ends."""
    assert_same_weights(snapshot_mesh_runs[0] / "pairs", reference, worker.PAIRS_ARCHS)


def test_the_split_step_on_a_snapshot_mesh_equals_single_process(snapshot_mesh_runs, reference):
    """JumpReLU's split step on two snapshot ranks (each splits its own snapshots' entries, the
    gates open anywhere joined across ranks) ends where the single-process run ends."""
    root, printed = snapshot_mesh_runs
    assert_same_weights(root / "split", reference, ("jumprelu_crosscoder",))
    assert sorted(line for line in printed.splitlines() if "split passes" in line) == [
        f"rank {rank}: 6 split passes" for rank in (0, 1)
    ]


def test_2x2_mesh_training_equals_single_process(mesh_2x2_run, reference):
    assert_same_weights(mesh_2x2_run, reference)
    # checkpoints hold the whole crosscoder, in the single-process layout
    ckpt = load_file(mesh_2x2_run / "crosscoder" / "step_00000003" / "sae_weights.safetensors")
    assert ckpt["W_dec"].shape == (worker.F, worker.S, worker.D)


def test_resume_across_world_sizes(tmp_path, mesh_2x2_run, snapshot_mesh_runs, reference):
    """The 2x2 mesh's step-3 checkpoint, resumed with 2 processes and with 1: both end
    where an uninterrupted run ends."""
    assert_same_weights(snapshot_mesh_runs[0] / "resumed", reference)

    for arch in worker.ARCHS:
        shutil.copytree(mesh_2x2_run / arch / "step_00000003", tmp_path / arch / "step_00000003")
        cfg = worker.trainer_config(tmp_path / arch, 6)
        trainer = CrosscoderTrainer.from_checkpoint(latest_checkpoint(tmp_path / arch), cfg)
        trainer.fit(worker.global_batches)
    assert_same_weights(tmp_path, reference)


def test_a_rank_that_dies_takes_the_job_down(tmp_path):
    """No peer waits forever on a collective: the job ends (within subprocess.run's timeout,
    which fails the test if it hangs), failed, naming the error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CROSSLENS_DIST_TIMEOUT": "20"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        "--out",
        str(tmp_path),
        "--snapshot-parallel",
        "2",
        "--fail-rank",
        "1",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert "rank died on purpose" in done.stderr
    assert not (tmp_path / "plain" / "crosscoder" / "final").exists()


def test_interrupted_mesh_run_leaves_a_resumable_checkpoint(snapshot_mesh_runs):
    for arch in worker.ARCHS:
        run = snapshot_mesh_runs[0] / "interrupted" / arch
        assert latest_checkpoint(run).name == "step_00000003"
        assert not (run / "final").exists()


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


# ------------------------------------------------------------------ parallel harvest
HARVEST_WORKER = Path(__file__).with_name("distributed_harvest_worker.py")


def _store_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "acts").rglob("*.npy"))}


@pytest.fixture(scope="module")
def harvests(tmp_path_factory) -> Path:
    """A three-snapshot suite, its store harvested by one process (``single``), and, in one launch
    of two ranks, a fresh store (``team``) and the resume of a partial copy of the single one
    (``partial``): one snapshot's last shard never recorded, as a job killed mid-way leaves it."""
    from test_activations import HOOKS, N_SEQS, SEQ_LEN, SHARD_TOKENS, _open_suite, _texts, _write_suite

    from crosslens.activations import harvest_activations, tokenize_texts
    from crosslens.activations.store import read_manifest, write_manifest

    root = tmp_path_factory.mktemp("harvests")
    suite_dir = _write_suite(root / "suite", seeds=[0, 1, 2])
    suite = _open_suite(suite_dir)
    tokens = tokenize_texts(suite.tokenizer(), _texts(200), SEQ_LEN, n_seqs=N_SEQS)
    harvest_activations(suite, HOOKS, tokens, root / "single", shard_tokens=SHARD_TOKENS, batch_size=4, progress=False)
    shutil.copytree(root / "single", root / "partial")
    manifest = read_manifest(root / "partial")
    lost = sorted(rel for rel in manifest["files"] if "snap002_shard0004" in rel)
    assert lost
    for rel in lost:
        del manifest["files"][rel]
        (root / "partial" / rel).unlink()
    manifest["complete"] = False
    write_manifest(root / "partial", manifest)
    start_ranks(2, HARVEST_WORKER, suite_dir, root / "team", root / "partial")
    return root


def _same_store(team_dir: Path, single_dir: Path) -> None:
    from crosslens.activations import ActivationStore

    team = ActivationStore.open(team_dir, verify="full")  # one consistent, complete manifest
    single = ActivationStore.open(single_dir, verify="full")
    assert _store_files(team_dir) == _store_files(single_dir)
    assert team.manifest["files"] == single.manifest["files"]
    assert team.manifest["snapshots"] == single.manifest["snapshots"]
    assert team.manifest["norm_factors"] == single.manifest["norm_factors"]


def test_two_ranks_harvest_the_single_process_store(harvests):
    _same_store(harvests / "team", harvests / "single")


def test_four_ranks_split_shards_and_harvest_the_single_process_store(tmp_path, harvests):
    start_ranks(4, HARVEST_WORKER, harvests / "suite", tmp_path / "team")
    _same_store(tmp_path / "team", harvests / "single")


def test_parallel_harvest_resumes_a_partial_store(harvests):
    from crosslens.activations import ActivationStore

    assert _store_files(harvests / "partial") == _store_files(harvests / "single")
    assert ActivationStore.open(harvests / "partial", verify="full").manifest["complete"]


def test_torchrun_crosslens_train_matches_a_plain_run(tmp_path):
    """The command line under torchrun (2 snapshot ranks) ends where a plain `crosslens train` ends."""
    from test_activations import HOOK, N_SEQS, SEQ_LEN, SHARD_TOKENS, _open_suite, _texts, _write_suite

    from crosslens.activations import harvest_activations, tokenize_texts
    from crosslens.cli import main

    suite = _open_suite(_write_suite(tmp_path / "suite", seeds=[0, 1, 2]))
    tokens = tokenize_texts(suite.tokenizer(), _texts(200), SEQ_LEN, n_seqs=N_SEQS)
    store = harvest_activations(suite, [HOOK], tokens, tmp_path / "store", shard_tokens=SHARD_TOKENS, progress=False)
    flags = [
        "--store",
        str(store.path),
        "--n-steps",
        "4",
        "--batch-size",
        "32",
        "--d-sae",
        "64",
        "--arch",
        "jumprelu_crosscoder",
        "--checkpoint-every",
        "2",
        "--device",
        "cpu",
        "--wandb",
        "--wandb-log-frequency",
        "2",
    ]
    assert main(["train", *flags, "--out", str(tmp_path / "plain")]) == 0
    import wandb

    wandb.teardown()  # flushes the offline run file
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CROSSLENS_DIST_TIMEOUT": "120", "WANDB_MODE": "offline"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "crosslens",
        "train",
        *flags,
        "--out",
        str(tmp_path / "mesh"),
        "--snapshot-parallel",
        "2",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-6000:]
    assert done.stdout.count("crosscoder saved to") == 1  # rank 0 speaks for the job
    got = load_file(tmp_path / "mesh" / "final" / "sae_weights.safetensors")
    want = load_file(tmp_path / "plain" / "final" / "sae_weights.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert (got[name] - want[name]).abs().max() <= ATOL, name
    # the mesh logs the job's loss and each of its terms, not rank 0's share of them
    logged = {run: _logged_losses(tmp_path / run) for run in ("plain", "mesh")}
    assert len(logged["plain"]) == 2 and {"losses/overall_loss", "losses/mse_loss"} <= set(logged["plain"][0])
    for plain, mesh in zip(logged["plain"], logged["mesh"], strict=True):
        assert mesh.keys() == plain.keys()
        assert all(mesh[k] == pytest.approx(plain[k], rel=1e-4, abs=1e-6) for k in plain), (mesh, plain)


def test_a_run_resumed_by_more_processes_says_its_bytes_differ_and_ends_where_the_plain_run_does(tmp_path, capsys):
    """A plain run resumed under torchrun as two data ranks goes on (the batch split in two
    rounds otherwise) and says so; run.json keeps the process count it started with."""
    import json

    from test_activations import HOOK, N_SEQS, SEQ_LEN, SHARD_TOKENS, _open_suite, _texts, _write_suite

    from crosslens.activations import harvest_activations, tokenize_texts
    from crosslens.cli import main

    suite = _open_suite(_write_suite(tmp_path / "suite", seeds=[0, 1]))
    tokens = tokenize_texts(suite.tokenizer(), _texts(200), SEQ_LEN, n_seqs=N_SEQS)
    store = harvest_activations(suite, [HOOK], tokens, tmp_path / "store", shard_tokens=SHARD_TOKENS, progress=False)
    flags = [
        "--store",
        str(store.path),
        "--n-steps",
        "4",
        "--batch-size",
        "32",
        "--d-sae",
        "64",
        "--arch",
        "crosscoder",
        "--checkpoint-every",
        "2",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(["train", *flags]) == 0
    want = load_file(tmp_path / "run" / "final" / "sae_weights.safetensors")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["world_size"] == 1
    shutil.rmtree(tmp_path / "run" / "final")
    shutil.rmtree(tmp_path / "run" / "step_00000004")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CROSSLENS_DIST_TIMEOUT": "120"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "crosslens",
        "train",
        *flags,
        "--resume",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-6000:]
    assert (
        "--resume: world_size 2 (the run started with 1): the same training to float rounding, not the bytes "
        "an uninterrupted run would end in"
    ) in done.stdout
    assert json.loads((tmp_path / "run" / "run.json").read_text())["world_size"] == 1
    got = load_file(tmp_path / "run" / "final" / "sae_weights.safetensors")
    for name in want:
        assert (got[name] - want[name]).abs().max() <= ATOL, name


def _logged_losses(run_dir: Path) -> list[dict[str, float]]:
    """The ``losses/*`` of each history record an offline W&B run of ``run_dir`` wrote."""
    import json

    from wandb_files import item_values, wandb_records

    # training's run, and the same run reopened to add the spliced loss to its summary: in time order
    records = [r for f in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")) for r in wandb_records(f)]
    history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    return [{k: json.loads(v) for k, v in item_values(h.item).items() if k.startswith("losses/")} for h in history]


# ---------------------------------------------------------- streaming, no disk
STREAM_WORKER = Path(__file__).with_name("distributed_stream_worker.py")


def stream_setup(suite_dir):
    from test_activations import N_SEQS, SEQ_LEN, _open_suite, _texts

    from crosslens.activations import tokenize_texts

    suite = _open_suite(suite_dir)
    return suite, tokenize_texts(suite.tokenizer(), _texts(200), SEQ_LEN, n_seqs=N_SEQS)


def stream_provider(suite, tokens, **kw):
    from test_activations import HOOK

    from crosslens.activations.streaming import ResidentSnapshotProvider

    return ResidentSnapshotProvider(suite, HOOK, tokens, 32, chunk_seqs=6, drop_last=True, **kw)


def stream_trainer_parts(provider, out_dir):
    from crosslens.training.config import CrosscoderTrainerConfig

    torch.manual_seed(7)
    sae = worker.build_training_crosscoder(
        "jumprelu_crosscoder",
        d_in=provider.d_in,
        n_snapshots=len(provider.suite),
        d_sae=48,
        sparsity_coefficient=0.3,
        sparsity_warm_up_steps=2,
    )
    cfg = CrosscoderTrainerConfig(total_steps=5, lr=1e-3, checkpoint_dir=str(out_dir), seed=0)
    return sae, cfg


def test_snapshot_parallel_streaming_training_equals_one_process(tmp_path):
    """Two ranks, each with only its snapshots' models resident and nothing on disk, train
    the crosscoder one process trains from all the models."""
    from test_activations import _write_suite

    suite_dir = _write_suite(tmp_path / "suite", seeds=[0, 1, 2])
    suite, tokens = stream_setup(suite_dir)
    provider = stream_provider(suite, tokens)
    sae, cfg = stream_trainer_parts(provider, tmp_path / "one")
    CrosscoderTrainer(sae, cfg).fit(provider.batches)

    start_ranks(2, STREAM_WORKER, suite_dir, tmp_path / "two", "2")
    assert not list((tmp_path / "two").rglob("*.npy"))  # no activation ever touched the disk
    got = load_file(tmp_path / "two" / "final" / "sae_weights.safetensors")
    want = load_file(tmp_path / "one" / "final" / "sae_weights.safetensors")
    for name in want:
        assert (got[name] - want[name]).abs().max() <= ATOL, name


def test_a_torchrun_job_leaves_with_the_others_when_it_succeeds_and_at_once_when_it_raises(monkeypatch):
    """A worker that raises must not wait at the closing barrier: the others may be waiting in a
    collective it will never join, and would hold it there for the whole timeout."""
    import crosslens.core.launch as launch
    import crosslens.distributed as distributed
    from crosslens.cli.common import torchrun_job

    left: list[bool] = []
    monkeypatch.setattr(distributed, "shutdown", lambda wait=True: left.append(wait))
    monkeypatch.setattr(launch, "launched_by_torchrun", lambda: True)
    with torchrun_job():
        pass
    with pytest.raises(RuntimeError, match="out of memory"), torchrun_job():
        raise RuntimeError("CUDA out of memory")
    assert left == [True, False]
    monkeypatch.setattr(launch, "launched_by_torchrun", lambda: False)
    with torchrun_job():
        pass
    assert left == [True, False]


def test_snapshot_sums_add_bfloat16_shares_in_float32(monkeypatch):
    """Three ranks' partial pre-activations under autocast: summed in bfloat16 they would round
    at each addition (1 + 2^-8 + 2^-8 gives 1), in float32 once (1 + 2^-7, which bfloat16 holds)."""
    from crosslens.crosscoders import collectives as module
    from crosslens.crosscoders.collectives import MeshCollectives

    others = [torch.full((2, 3), 2.0**-8), torch.full((2, 3), 2.0**-8)]  # the two other ranks' shares
    seen: list[torch.dtype] = []

    def all_reduce(tensor, op=None, group=None):
        seen.append(tensor.dtype)
        for share in others:
            tensor += share.to(tensor.dtype)

    monkeypatch.setattr(module.dist, "all_reduce", all_reduce)
    mesh = MeshCollectives(data_group=None, snapshot_group=None, data_size=1, snapshot_size=3, n_snapshots_total=3)
    h = torch.ones(2, 3, dtype=torch.bfloat16, requires_grad=True)
    out = mesh.snapshot_sum(h)
    assert out.dtype == torch.bfloat16 and torch.equal(out, torch.full((2, 3), 1 + 2.0**-7, dtype=torch.bfloat16))
    out.backward(torch.ones_like(out))
    assert h.grad.dtype == torch.bfloat16 and torch.equal(h.grad, out.detach())
    assert seen == [torch.float32, torch.float32]


def test_a_rank_reads_its_block_of_a_saved_crosscoder_alone(tmp_path):
    """What a resuming mesh rank reads from the checkpoint's weights file is what slicing the
    whole file gives, for every block of an uneven split."""
    from safetensors.torch import load_file, save_file

    from crosslens.crosscoders.base import SNAPSHOT_AXES
    from crosslens.distributed.sharding import read_state_block, slice_state_dict

    g = torch.Generator().manual_seed(0)
    state = {
        "W_enc": torch.randn(5, 4, 6, generator=g),
        "W_dec": torch.randn(6, 5, 4, generator=g),
        "b_dec": torch.randn(5, 4, generator=g),
        "b_enc": torch.randn(6, generator=g),
        "threshold": torch.rand(6, generator=g),
    }
    assert {"W_enc", "W_dec", "b_dec"} <= set(SNAPSHOT_AXES)
    save_file(state, tmp_path / "w.safetensors")
    whole = load_file(tmp_path / "w.safetensors")
    for block in snapshot_blocks(5, 2) + [range(0, 5)]:
        got, want = read_state_block(tmp_path / "w.safetensors", block), slice_state_dict(whole, block)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), block
        assert got["W_dec"].shape == (6, len(block), 4)


def test_every_rank_of_a_snapshot_group_clips_by_one_norm_whatever_its_place(monkeypatch):
    """The snapshot blocks' squared norms are added in rank order on every rank, so each rank of
    the group, and each data replica's group, takes the same norm to the bit. The shares here
    are ones whose float32 sum depends on its order."""
    from torch import nn

    from crosslens.crosscoders.collectives import MeshCollectives
    from crosslens.distributed import sharding

    shares = [1.0, 2.0**-24, 2.0**-24]  # (1 + e) + e == 1, but 1 + (e + e) > 1
    assert (torch.tensor(1.0) + shares[1]) + shares[2] != torch.tensor(1.0) + (torch.tensor(shares[1]) + shares[2])
    norms = []
    for rank, share in enumerate(shares):

        def all_gather(out, tensor, group=None, rank=rank):
            assert group == "snapshot" and float(tensor) == shares[rank]
            for i, value in enumerate(shares):
                out[i].fill_(value)

        monkeypatch.setattr(sharding.dist, "all_gather", all_gather)
        module = nn.Module()
        module.W_dec = nn.Parameter(torch.zeros(1, 1, 1))
        module.b_enc = nn.Parameter(torch.zeros(1))
        module.W_dec.grad, module.b_enc.grad = torch.full((1, 1, 1), share**0.5), torch.full((1,), 0.5)
        mesh = MeshCollectives(
            data_group="data", snapshot_group="snapshot", data_size=2, snapshot_size=3, n_snapshots_total=3
        )
        norms.append(sharding.grad_norm(module, mesh))
    in_rank_order = (torch.tensor(shares[0]) + shares[1]) + shares[2]
    assert all(torch.equal(n, (in_rank_order + 0.25).sqrt()) for n in norms), norms
