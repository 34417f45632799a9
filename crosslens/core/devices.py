"""Devices, dtypes and accelerator memory: a user's words become torch objects here, once.

Every stage takes ``device=`` and ``dtype=``; this module is where a user's words
("cuda:1", "bf16") become a checked ``torch.device``/``torch.dtype``, with an error that
names the fix when the request cannot be met on this machine. One table of spellings
(:data:`DTYPE_ALIASES`) and one of sizes (:data:`DTYPE_BYTES`) serve every stage that
names a dtype. The memory side: peak-memory counters, byte formatting, and
:func:`release_model`, the one way a stage frees a model it is done with; and
:func:`counted_cuda_syncs`, how often a step waits for the GPU; and :func:`autocast_dtype`, the
dtype a step under autocast rounds its weights to.

Dtype semantics across crosslens: ``dtype`` is what the *snapshot models* run in
(harvesting, streaming, attribution; bfloat16/float16 halve their memory). Crosscoder
parameters stay float32.

torch is imported inside the functions that need it, so that parsing the command line
and ``crosslens plan`` (which only needs dtype names and byte formatting) stay instant.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crosslens.core.errors import CrosslensError
from crosslens.core.units import format_bytes

if TYPE_CHECKING:
    import torch


H100_CROSSCODER_SHARES: dict[str, float] = {
    "crosscoder": 0.335,
    "jumprelu_crosscoder": 0.275,
    "topk_crosscoder": 0.384,
    "batchtopk_crosscoder": 0.386,
}
"""Share of the bf16 peak (counting the dense step's ``10 S D F`` FLOPs per token) each
architecture's bf16 training step sustains on an H100 at Ge et al.'s shape (S 32, d_in 768,
d_sae 24,576, batch 2048) at a trained sparsity, as ``benchmarks/gpu.py`` measures it: JumpReLU
from its active pairs with the window kernel (2.6% of the entries active at L0 100), the path a
trained run takes; TopK and BatchTopK from their pairs at k 64, with 5% of the features dead."""


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model, as ``crosslens plan`` sizes and times a run on it."""

    memory_bytes: int
    """Memory of one GPU as ``nvidia-smi`` reports it."""
    peak_tflops: float
    """NVIDIA's dense bf16 peak, TFLOP/s."""
    float32_tflops: float
    """NVIDIA's float32 peak without the tensor cores, TFLOP/s: the most a float32 matmul gets
    while TF32 is off, torch's default."""
    forward: float
    """Share of the peak the snapshot models' forward to the hook sustains."""
    crosscoder: dict[str, float]
    """Share of the peak each architecture's bf16 crosscoder training step sustains."""
    fresh: dict[str, float]
    """The shares of a freshly initialised crosscoder's step where it runs other kernels than a
    trained one's: a run's first steps, before its code is sparse (a fresh JumpReLU crosscoder
    opens about a third of its entries and takes its dense kernels until fewer than 1/32 are
    open). An architecture missing here runs its first steps at its ``crosscoder`` share."""
    measured_on: str
    """The GPU the shares were timed on (another model's where they are assumed)."""


H200_CROSSCODER_SHARES: dict[str, float] = {
    "crosscoder": 0.397,
    "jumprelu_crosscoder": 0.305,
    "topk_crosscoder": 0.428,
    "batchtopk_crosscoder": 0.416,
}
"""The same shares measured on an H200 by ``benchmarks/gpu.py`` (bf16 rows at a trained
sparsity): JumpReLU from its active pairs with the window kernel, the path its streamed run
takes there (2.6% of the entries active at L0 100); TopK and BatchTopK from their pairs with 5%
of the features dead."""


H100_FRESH_SHARES: dict[str, float] = {"jumprelu_crosscoder": 0.141}
"""The H100's bf16 row of ``benchmarks/gpu.py`` for a fresh JumpReLU crosscoder (35% of its
entries open, through its compiled dense kernels); as on the H200, the other architectures'
fresh rows are no slower than their trained ones."""


H200_FRESH_SHARES: dict[str, float] = {"jumprelu_crosscoder": 0.161}
"""The H200's bf16 row of ``benchmarks/gpu.py`` for a fresh JumpReLU crosscoder: 35% of its
entries open, through its compiled dense kernels. The other architectures' fresh rows were no
slower than their trained ones (TopK and BatchTopK have no dead feature to decode there; benchmarks/README.md,
"Training step on a GPU"), so their trained shares stand for them."""


GPUS = {
    "h100": GpuSpec(
        81559 << 20,
        peak_tflops=989.0,
        float32_tflops=67.0,
        forward=0.456,
        crosscoder=H100_CROSSCODER_SHARES,
        fresh=H100_FRESH_SHARES,
        measured_on="an H100",
    ),
    "h200": GpuSpec(
        143771 << 20,
        peak_tflops=989.0,
        float32_tflops=67.0,
        forward=0.42,
        crosscoder=H200_CROSSCODER_SHARES,
        fresh=H200_FRESH_SHARES,
        measured_on="an H200",
    ),
    "a100": GpuSpec(
        81920 << 20,
        peak_tflops=312.0,
        float32_tflops=19.5,
        forward=0.456,
        crosscoder=H100_CROSSCODER_SHARES,
        fresh=H100_FRESH_SHARES,
        measured_on="an H100, assumed for the A100",
    ),
}
"""The GPUs ``--gpu`` names (H100 SXM 80 GB, H200 141 GB, A100 80 GB). Peaks are NVIDIA's
dense figures. The forward's share is ``benchmarks/stream_gpu.py``'s compiled random-init
Pythia-160M forward to block 6 of 7 at 32 x 1024 tokens with attention through SDPA (the trunk
CUDA takes), each GPU's ``forward``. The crosscoder's shares are
:data:`H100_CROSSCODER_SHARES` and :data:`H200_CROSSCODER_SHARES`, and for a fresh crosscoder
:data:`H100_FRESH_SHARES` and :data:`H200_FRESH_SHARES`. The A100 row assumes the H100's. The
forward's share was measured with bfloat16 models; float32 models are bounded by
``float32_tflops`` instead."""


DEVICE_KINDS = ("cpu", "cuda", "mps")
"""Device types crosslens accepts (``cuda:N`` names one GPU)."""


def device_spelling(device: Any) -> str:
    """``device`` as crosslens spells it (``cpu``, ``cuda``, ``cuda:N``, ``mps``: lower case, no
    spaces), or a :class:`DeviceError` naming the fix; whether this machine has it is
    :func:`resolve_device`'s question."""
    text = str(device).strip().lower()
    kind, colon, index = text.partition(":")
    if kind in DEVICE_KINDS and (not colon or index.isdigit()):
        return text
    raise DeviceError(f"unknown device {str(device)!r}; use one of cpu, cuda, cuda:N or mps (--device)")


DTYPE_ALIASES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}
"""Accepted spellings of a dtype -> its canonical torch name."""

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
"""Bytes per element of each canonical dtype."""

RESIDENT_MEMORY_FRACTION = 0.9
"""Share of a device's free memory the resident snapshot models of a stream may take: more is refused
before they load (the provider, `crosslens train --stream` and a streamed feature database)."""


class DeviceError(CrosslensError):
    """A requested device or dtype is unknown or not usable on this machine."""


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def default_device() -> str:
    """``"cuda"`` when a CUDA GPU is visible, else ``"mps"`` when available, else ``"cpu"``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if _mps_available():
        return "mps"
    return "cpu"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The ``torch.device`` for ``device`` (None: :func:`default_device`), checked usable here.

    Accepts ``cpu``, ``cuda``, ``cuda:N`` and ``mps``. Raises :class:`DeviceError` naming the
    fix when the device is unknown or absent (e.g. ``cuda`` on a machine without a GPU).
    """
    import torch

    if device is None:
        return torch.device(default_device())
    resolved = torch.device(device_spelling(device))
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(device)!r} requested but no CUDA GPU is available here; use --device cpu")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(
                f"device {str(device)!r} requested but only {count} CUDA GPU(s) are visible "
                f"(cuda:0..cuda:{count - 1}); pick another --device"
            )
    if resolved.type == "mps" and not _mps_available():
        raise DeviceError(f"device {str(device)!r} requested but MPS is not available here; use --device cpu")
    return resolved


def dtype_name(dtype: str | torch.dtype, flag: str = "--dtype") -> str:
    """Canonical name (``float32``, ``bfloat16``, ``float16``) of a dtype or one of its spellings;
    ``flag`` is the option the refusal names, the one the dtype was given with."""
    name = DTYPE_ALIASES.get(str(dtype).strip().lower().removeprefix("torch."), "")
    if name not in DTYPE_BYTES:
        spellings = ", ".join(sorted(DTYPE_ALIASES))
        raise DeviceError(f"unsupported dtype {str(dtype)!r}; use one of {spellings} ({flag})")
    return name


def default_model_dtype(device: str, produces_activations: bool = True) -> str:
    """The snapshot models' dtype where none is given: bfloat16 on CUDA where their activations are
    harvested, streamed or read live (float32 keeps their forward off the tensor cores, several times
    slower, and a crosscoder trained on bf16 activations measures the same), float32 everywhere else
    and on a CPU, where bf16 buys no speed."""
    return "bfloat16" if produces_activations and device.startswith("cuda") else "float32"


def model_dtype(device: str, dtype: str | torch.dtype | None = None, produces_activations: bool = True) -> str:
    """The snapshot models' dtype on ``device``: ``dtype`` where given, else
    :func:`default_model_dtype`'s (one rule for the command line, ``plan`` and the live models, so
    that one text gives one set of numbers from the page and from Python)."""
    return dtype_name(dtype) if dtype else default_model_dtype(device, produces_activations)


def resolve_dtype(dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The ``torch.dtype`` for ``dtype`` (None: float32); accepts float32/fp32,
    bfloat16/bf16 and float16/fp16."""
    import torch

    if dtype is None:
        return torch.float32
    return getattr(torch, dtype_name(dtype))


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype as given (any, e.g. float64 for a gradient check); a name as the CLI reads it
    (:func:`resolve_dtype`)."""
    import torch

    return dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype)


def is_accelerator(device: str | torch.device) -> bool:
    """Whether ``device`` is a GPU-like device (CUDA or MPS)."""
    import torch

    return torch.device(device).type in ("cuda", "mps")


def launching_on(tensor: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """Around a Triton launch on ``tensor``'s data: its CUDA device made current, since Triton
    launches on the current device, not on the tensors' (a run on ``cuda:1`` would otherwise
    hand device 1's memory to a kernel on device 0); on a CPU (the interpreter) nothing."""
    import torch

    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in on ``device`` where it is on there, else None: the dtype
    the crosscoder step rounds its weights to."""
    import torch

    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def reset_peak_memory(device: str | torch.device) -> None:
    """Start a fresh peak-memory count on ``device`` (no-op where there is none)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: str | torch.device) -> int | None:
    """Peak bytes allocated by torch on ``device`` since the last reset.

    CUDA: ``torch.cuda.max_memory_allocated``. MPS has no peak counter, so this reports
    its current driver allocation. CPU: None (no accelerator memory to report).
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)) if torch.cuda.is_available() else None
    if device.type == "mps" and _mps_available():
        return int(torch.mps.driver_allocated_memory())
    return None


@contextlib.contextmanager
def counted_cuda_syncs() -> Iterator[list[str]]:
    """The CUDA synchronisations inside the block, one message each (from
    ``torch.cuda.set_sync_debug_mode("warn")``). Each drains the device's queue, so work on
    another stream (a streamed run's prefetched forward) overlaps only between them."""
    import torch

    messages: list[str] = []
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield messages
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    # the debug mode also warns, once a process, that it is a prototype: not a synchronisation
    messages.extend(str(w.message) for w in caught if "called a synchronizing" in str(w.message))


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes a new allocation on ``device`` can take now, if known: CUDA's free device memory;
    on the CPU, Linux's MemAvailable (free pages plus reclaimable cache), else the free pages."""
    import os
    from pathlib import Path

    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def peak_memory_line(device: str | torch.device) -> str | None:
    """``"peak accelerator memory on cuda:0: 3.21 GiB"``, or None on the CPU."""
    import torch

    peak = peak_memory(device)
    if peak is None:
        return None
    return f"peak accelerator memory on {torch.device(device)}: {format_bytes(peak)}"


class HeapTrim:
    """When :func:`release_model` returns glibc's free heap to the system: once the process's
    resident memory is :attr:`growth` above what it was right after the previous return (always
    where resident memory cannot be read). Not on every release: the pages given back fault in
    again (and are zeroed) as soon as the next model and its batches allocate, which costs a few
    percent of a small model's harvest for no memory saved."""

    def __init__(self, growth: float = 0.10) -> None:
        self.growth = growth
        """The fraction of growth that calls for a trim."""
        self.resident_after: int | None = None
        """Resident bytes right after the last trim (None: none yet)."""

    def __call__(self) -> None:
        """``malloc_trim(0)`` where the C library is glibc and the process has grown enough."""
        trim = _malloc_trim()
        if trim is None:
            return
        resident = resident_bytes()
        if resident is not None and self.resident_after is not None:
            if resident <= self.resident_after * (1 + self.growth):
                return
        trim(0)
        self.resident_after = resident_bytes()


_HEAP_TRIM = HeapTrim()
"""The process's one heap: every release counts towards its growth."""


def release_model(model: torch.nn.Module, *, heap: HeapTrim | None = None) -> None:
    """Free a model's tensors now, even while callers still hold the model.

    Its parameters and buffers move to the ``meta`` device (no memory; far cheaper than a
    garbage-collector pass, and it works whatever still references the module), then
    CUDA's cached blocks go back to the driver so the next model has the memory, and, once
    the process has grown enough since the last time (``heap``, the process's
    :class:`HeapTrim` by default), glibc's free heap goes back to the system: models loaded
    after freed ones can land on fragmented heap, so that memory would otherwise grow with the
    number of snapshots.
    """
    import torch

    torch.nn.Module.to(model, device="meta")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    (heap or _HEAP_TRIM)()


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux's ``/proc/self/statm``), or None elsewhere."""
    import os

    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@functools.cache
def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): no malloc_trim to call
        return None
