"""Devices and dtypes: turn ``--device``/``--dtype`` strings into torch objects, once.

Every stage takes ``device=`` and ``dtype=``; this module is where a user's words
("cuda:1", "bf16") become a checked ``torch.device``/``torch.dtype``, with an error that
names the fix when the request cannot be met on this machine.

Dtype semantics across crosslens: ``dtype`` is what the *snapshot models* run in
(harvesting, streaming, attribution; bfloat16/float16 halve their memory). Crosscoder
parameters stay float32.

torch is imported inside the functions that need it, so that parsing the command line
and ``crosslens plan`` (which only needs dtype names and byte formatting) stay instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crosslens.errors import CrosslensError

if TYPE_CHECKING:
    import torch
DEVICE_KINDS = ("cpu", "cuda", "mps")
"""Device types crosslens accepts (``cuda:N`` names one GPU)."""

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
    text = str(device).strip().lower()
    try:
        resolved = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(
            f"unknown device {str(device)!r}; use one of cpu, cuda, cuda:N or mps (--device)"
        ) from None
    if resolved.type not in DEVICE_KINDS:
        raise DeviceError(f"device {str(device)!r} is not supported; use one of cpu, cuda, cuda:N or mps (--device)")
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


def dtype_name(dtype: str | torch.dtype) -> str:
    """Canonical name (``float32``, ``bfloat16``, ``float16``) of a dtype or one of its spellings."""
    name = DTYPE_ALIASES.get(str(dtype).strip().lower().removeprefix("torch."), "")
    if name not in DTYPE_BYTES:
        spellings = ", ".join(sorted(DTYPE_ALIASES))
        raise DeviceError(f"unsupported dtype {str(dtype)!r}; use one of {spellings} (--dtype)")
    return name


def resolve_dtype(dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The ``torch.dtype`` for ``dtype`` (None: float32); accepts float32/fp32,
    bfloat16/bf16 and float16/fp16."""
    import torch
    if dtype is None:
        return torch.float32
    return getattr(torch, dtype_name(dtype))


def is_accelerator(device: str | torch.device) -> bool:
    """Whether ``device`` is a GPU-like device (CUDA or MPS)."""
    import torch
    return torch.device(device).type in ("cuda", "mps")


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


def format_bytes(n: float | int | None) -> str:
    """``n`` bytes as a short human string in binary units (KiB, MiB, GiB, TiB, PiB)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} PiB"


def peak_memory_line(device: str | torch.device) -> str | None:
    """``"peak accelerator memory on cuda:0: 3.21 GiB"``, or None on the CPU."""
    import torch
    peak = peak_memory(device)
    if peak is None:
        return None
    return f"peak accelerator memory on {torch.device(device)}: {format_bytes(peak)}"


class SuiteOnDevice:
    """A checkpoint suite whose ``load``/``iter_models`` default to one device and dtype.

    Stages that receive a suite and call ``suite.load(index)`` (the causal stage) then run
    their models where the user asked without growing device arguments of their own.
    Everything else is the wrapped suite's.
    """

    def __init__(self, suite: Any, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"):
        import torch
        self._suite = suite
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)

    def load(self, snapshot: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("device", self.device)
        kwargs.setdefault("dtype", self.dtype)
        return self._suite.load(snapshot, **kwargs)

    def iter_models(self, **kwargs: Any) -> Any:
        kwargs.setdefault("device", self.device)
        kwargs.setdefault("dtype", self.dtype)
        return self._suite.iter_models(**kwargs)

    def select(self, **kwargs: Any) -> "SuiteOnDevice":
        return SuiteOnDevice(self._suite.select(**kwargs), self.device, self.dtype)

    def __len__(self) -> int:
        return len(self._suite)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._suite, name)


def on_device(suite: Any, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> Any:
    """``suite`` itself on cpu/float32 (the default), else a :class:`SuiteOnDevice` view."""
    import torch
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = resolve_dtype(dtype)
    if device.type == "cpu" and dtype == torch.float32:
        return suite
    return SuiteOnDevice(suite, device, dtype)
