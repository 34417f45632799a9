"""crosslens.core.devices (device/dtype resolution, peak memory), --device/--dtype on the CLI,
``python -m crosslens`` and a light ``crosslens --help``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trust_fixtures import one_line_exit_2

from crosslens.checkpoints.on_device import on_device
from crosslens.cli import main
from crosslens.core import devices
from crosslens.core.devices import (
    DeviceError,
    default_device,
    dtype_name,
    peak_memory,
    resolve_device,
    resolve_dtype,
)

REPO = Path(__file__).resolve().parents[1]


def _no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


def test_default_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    _no_accelerators(monkeypatch)
    assert default_device() == "cpu"
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert default_device() == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cuda"


def test_resolve_device_accepts_cpu_and_defaults(monkeypatch):
    _no_accelerators(monkeypatch)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")


def test_resolve_device_refuses_what_this_machine_lacks(monkeypatch):
    _no_accelerators(monkeypatch)
    with pytest.raises(DeviceError, match="no CUDA GPU is available here; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="MPS is not available here; use --device cpu"):
        resolve_device("mps")
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(DeviceError, match="unknown device 'meta'; use one of cpu, cuda, cuda:N or mps"):
        resolve_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"only 2 CUDA GPU\(s\).*cuda:0..cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.parametrize(
    "spelling, expected",
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        ("FP16", torch.float16),
        ("torch.bfloat16", torch.bfloat16),
        (torch.float16, torch.float16),
        (None, torch.float32),
    ],
)
def test_resolve_dtype_spellings(spelling, expected):
    assert resolve_dtype(spelling) is expected


def test_resolve_dtype_refuses_the_rest():
    for bad in ("int8", "float64", "fp8", torch.int32):
        with pytest.raises(DeviceError, match="unsupported dtype.*--dtype"):
            resolve_dtype(bad)
    assert dtype_name("bf16") == "bfloat16"


def test_peak_memory_none_on_cpu_and_cuda_counter_on_cuda(monkeypatch):
    assert peak_memory("cpu") is None
    assert devices.peak_memory_line("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
    assert peak_memory("cuda:0") == 3 * 2**30
    assert devices.peak_memory_line("cuda:0") == "peak accelerator memory on cuda:0: 3.00 GiB"


def test_format_bytes_uses_binary_units():
    from crosslens.core.units import format_bytes

    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(40 * 2**40) == "40.00 TiB"


class _RecordingSuite:
    snapshots = ("a", "b")

    def __init__(self):
        self.calls = []

    def load(self, snapshot, *, device="cpu", dtype=torch.float32):
        self.calls.append((snapshot, device, dtype))
        return snapshot

    def tokenizer(self):
        return "tok"

    def __len__(self):
        return 2


def test_on_device_binds_device_and_dtype_to_suite_loads():
    suite = _RecordingSuite()
    assert on_device(suite, "cpu", "float32") is suite
    placed = on_device(suite, "meta", "bf16")
    placed.load(1)
    placed.load(0, dtype=torch.float16)  # an explicit argument still wins
    assert suite.calls == [(1, torch.device("meta"), torch.bfloat16), (0, torch.device("meta"), torch.float16)]
    assert len(placed) == 2 and placed.tokenizer() == "tok" and placed.snapshots == ("a", "b")


# --------------------------------------------------------------------------- CLI


def test_cli_refuses_an_absent_device_in_one_line(monkeypatch, capsys, tmp_path):
    _no_accelerators(monkeypatch)
    err = one_line_exit_2(["train", "--store", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cuda"], capsys)
    assert "--device cpu" in err and err.startswith("crosslens train: error:")
    err = one_line_exit_2(
        ["harvest", "--hook", "blocks.0.hook_resid_post", "--out", str(tmp_path), "--dtype", "int8"], capsys
    )
    assert "--dtype" in err
    err = one_line_exit_2(["suite", "build", "--dtype", "bf16"], capsys)
    assert "float32" in err


@pytest.mark.parametrize(
    "words", [["demo"], ["suite", "build"], ["harvest"], ["train"], ["analyze"], ["attribute"], ["plan"]]
)
def test_every_computing_subcommand_takes_device_and_dtype(words, capsys):
    with pytest.raises(SystemExit):
        main([*words, "--help"])
    out = capsys.readouterr().out
    assert "--device DEVICE" in out and "--dtype DTYPE" in out


def _run(code: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)


def test_help_imports_neither_transformer_lens_nor_sae_lens():
    code = (
        "import sys\n"
        "from crosslens.cli import main\n"
        "for words in [[], ['demo'], ['suite', 'build'], ['harvest'], ['train'], ['analyze'], ['attribute'], ['plan']]:\n"
        "    try:\n"
        "        main([*words, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('LOADED', sorted(m for m in ('sae_lens', 'transformer_lens', 'torch') if m in sys.modules))\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout


def test_python_dash_m_crosslens_help():
    result = subprocess.run(
        [sys.executable, "-m", "crosslens", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: crosslens") and "plan" in result.stdout


def test_importing_crosslens_crosscoders_registers_the_architectures():
    result = _run(
        "import sys, crosslens\n"
        "assert 'sae_lens' not in sys.modules\n"
        "import crosslens.crosscoders\n"
        "from sae_lens.registry import SAE_CLASS_REGISTRY\n"
        "print(sorted(a for a in SAE_CLASS_REGISTRY if a.endswith('crosscoder')))\n"
    )
    assert result.returncode == 0, result.stderr
    assert "['batchtopk_crosscoder', 'crosscoder', 'jumprelu_crosscoder', 'topk_crosscoder']" in result.stdout


# --------------------------------------------------------------------------- harvest in another dtype


def test_harvest_in_bfloat16_records_the_model_dtype_and_refuses_a_float32_resume(tmp_path):
    from hf_cache import make_word_tokenizer, tiny_neox, write_local_suite

    from crosslens.activations import ActivationStore, harvest_activations
    from crosslens.activations.store import StoreMismatchError
    from crosslens.checkpoints import CheckpointSuite

    tokenizer = make_word_tokenizer()
    root = write_local_suite(tmp_path / "suite", {"step0": tiny_neox(seed=0), "step10": tiny_neox(seed=1)}, tokenizer)
    suite = CheckpointSuite.local(root)
    tokens = torch.randint(3, len(tokenizer), (4, 8), generator=torch.Generator().manual_seed(0))
    hook = "blocks.0.hook_resid_post"
    full = harvest_activations(suite, hook, tokens, tmp_path / "f32", progress=False)
    half = harvest_activations(suite, hook, tokens, tmp_path / "bf16", model_dtype="bfloat16", progress=False)
    assert "model_dtype" not in full.manifest["spec"]  # float32 stores keep their fingerprint
    assert half.manifest["spec"]["model_dtype"] == "bfloat16"
    idx = torch.arange(full.n_tokens)
    x32, x16 = full.read(hook, idx, normalize=False), half.read(hook, idx, normalize=False)
    assert not torch.equal(x32, x16)  # the models really ran in bfloat16 ...
    assert torch.allclose(x32, x16, rtol=0.05, atol=0.05)  # ... on the same inputs
    with pytest.raises(
        StoreMismatchError, match=r"--dtype: bfloat16 there, float32 now\); pass --dtype bfloat16 to resume"
    ):
        harvest_activations(suite, hook, tokens, tmp_path / "bf16", progress=False)
    assert ActivationStore.open(tmp_path / "bf16").manifest["spec"]["model_dtype"] == "bfloat16"


def test_release_model_returns_the_freed_heap_to_the_system(monkeypatch):
    """After moving the model to meta, glibc's malloc_trim(0) runs, so the next snapshot model does
    not land on fragmented heap (benchmarks/harvest.py: peak RSS 16 / 4 snapshots)."""
    import platform

    import torch

    calls = []
    monkeypatch.setattr(devices, "_malloc_trim", lambda: calls.append)
    heap = devices.HeapTrim()  # no trim yet
    model = torch.nn.Linear(8, 8)
    devices.release_model(model, heap=heap)
    assert model.weight.device.type == "meta" and calls == [0]
    monkeypatch.setattr(devices, "_malloc_trim", lambda: None)  # no glibc: nothing to call
    devices.release_model(torch.nn.Linear(2, 2), heap=heap)
    if platform.libc_ver()[0] == "glibc":
        monkeypatch.undo()
        assert devices._malloc_trim() is not None  # this machine's C library has it


def test_a_device_misspelt_is_refused_where_the_config_is_built_not_by_torch():
    from crosslens.checkpoints import ModelShape
    from crosslens.core.devices import device_spelling
    from crosslens.training import PlanConfig
    from crosslens.training.config import CrosscoderRunnerConfig

    given = ("cpu", "cuda", "cuda:3", "cpu:0", "MPS", " cuda ")
    assert [device_spelling(d) for d in given] == ["cpu", "cuda", "cuda:3", "cpu:0", "mps", "cuda"]
    for wrong in ("gpu", "cuda:x", "meta", "cuda:"):
        with pytest.raises(
            DeviceError, match=rf"^unknown device {wrong!r}; use one of cpu, cuda, cuda:N or mps \(--device\)$"
        ):
            device_spelling(wrong)
    with pytest.raises(ValueError, match=r"^unknown device 'gpu'; use one of cpu, cuda, cuda:N or mps \(--device\)$"):
        CrosscoderRunnerConfig(store_path="s", out_dir="o", device="gpu")
    assert CrosscoderRunnerConfig(store_path="s", out_dir="o", device=" CUDA:1").device == "cuda:1"  # not resolved here
    tiny = ModelShape(name="tiny", d_model=8, n_layers=2, d_mlp=32, vocab=100, n_params=2000)
    assert PlanConfig(model=tiny, n_snapshots=2, hook="blocks.1.hook_resid_post", device="CUDA").device == "cuda"
