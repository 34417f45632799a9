"""What every published format's loader shares: tensors read a block of rows at a time, the
crosscoder a loader makes of a source's files (:class:`Converted`), and the one writer that puts
it on disk in SAELens's layout.

A released crosscoder of the Gemma release's shape holds 600 MB of weights. A converter that
built a crosslens crosscoder in memory would hold the source's tensors, the new module's freshly
initialised ones and the bytes safetensors serialises, about three copies. Here a source tensor is
a :class:`RowSource`: its shape, dtype and a function reading rows ``[i, j)`` of its first axis
(from a memory-mapped ``.pt`` file or a safetensors slice, permuted or scaled as the format
needs), and :func:`write_safetensors` streams each one to disk a block at a time. Neither torch's
module system nor SAELens is imported: both cost more time and memory than the conversion itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.errors import CrosslensError

BLOCK_BYTES = 1 << 26
"""Bytes of one tensor read and written at a time (64 MiB)."""

_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
}
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}


class FormatError(CrosslensError):
    """A source's files are not what their format says (the message names the file and the fix)."""


class UnknownFormatError(FormatError):
    """A folder or repo holds no crosscoder in any format crosslens reads."""


@dataclass(frozen=True)
class RowSource:
    """A tensor read ``read(i, j)`` rows of its first axis at a time (all of it for a 0-d one)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[int, int], torch.Tensor]

    @classmethod
    def of(cls, tensor: torch.Tensor) -> RowSource:
        """A tensor already at hand (a memory-mapped one is read only where a block asks)."""
        return cls(tuple(tensor.shape), tensor.dtype, lambda i, j: tensor if tensor.ndim == 0 else tensor[i:j])

    def mapped(
        self, fn: Callable[[torch.Tensor, int, int], torch.Tensor], dtype: torch.dtype | None = None
    ) -> RowSource:
        """This tensor with ``fn(rows, i, j)`` applied to each block of rows ``[i, j)``."""
        return RowSource(self.shape, dtype or self.dtype, lambda i, j: fn(self.read(i, j), i, j))

    def whole(self) -> torch.Tensor:
        """All of it (for the small tensors: biases, thresholds, norms)."""
        return self.read(0, self.shape[0] if self.shape else 1)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class Converted:
    """A crosscoder of one of crosslens's architectures, as a loader makes it of a source's files:
    what cfg.json says, and the tensors ``sae_weights.safetensors`` holds, still unread."""

    architecture: str
    d_in: int
    d_sae: int
    n_snapshots: int
    dtype: torch.dtype
    tensors: dict[str, RowSource]
    """crosslens's names: ``W_enc [S, D, F]``, ``b_enc [F]``, ``W_dec [F, S, D]``, ``b_dec [S, D]``,
    ``folded_norm_factors [S]``, and ``threshold [F]`` where the architecture has one."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """What the source records for the crosscoder's ``cfg.metadata`` (hook, k, scaling, ...)."""
    quirks: list[str] = field(default_factory=list)
    """One sentence per quirk of the source and what the loader did with it (the model card lists them)."""

    def cfg_dict(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """cfg.json as SAELens writes it for this architecture (``SAE.load_from_disk`` reads it; it
        takes a config without ``sae_lens_version`` for one older than SAELens 6 and drops its metadata)."""
        from importlib.metadata import version

        saelens = version("sae-lens")
        metadata = {"sae_lens_version": saelens, "sae_lens_training_version": saelens, **metadata}
        return {
            "apply_b_dec_to_input": False,
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "device": "cpu",
            "dtype": DTYPE_NAMES[self.dtype],
            "metadata": dict(metadata),
            "n_snapshots": self.n_snapshots,
            "normalize_activations": "none",
            "reshape_activations": "none",
        }

    def check_shapes(self, where: str) -> None:
        """Refuse tensors whose shapes contradict the sizes the source's config gave."""
        S, D, F = self.n_snapshots, self.d_in, self.d_sae
        expected = {"W_enc": (S, D, F), "b_enc": (F,), "W_dec": (F, S, D), "b_dec": (S, D), "folded_norm_factors": (S,)}
        if "threshold" in self.tensors:
            expected["threshold"] = (F,)
        for name, shape in expected.items():
            if name not in self.tensors:
                raise FormatError(f"{where}: the converted crosscoder has no {name}; report this as a crosslens bug")
            if self.tensors[name].shape != shape:
                raise FormatError(
                    f"{where}: {name} would be {list(self.tensors[name].shape)}, but the config's sizes "
                    f"(n_models={S}, d_in={D}, d_sae={F}) make it {list(shape)}; the config and the weights are "
                    "from different crosscoders: download them again, or fix the config"
                )


def ones(n: int, dtype: torch.dtype = torch.float32) -> RowSource:
    return RowSource.of(torch.ones(n, dtype=dtype))


def load_pt(path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state dict (``state[key]`` where the file wraps it), memory-mapped (no
    tensor is read until a block asks), loaded with ``weights_only``: a pickle that builds anything
    but tensors is refused, not run."""
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise FormatError(f"{path} is not a readable torch checkpoint ({error}); download it again") from None
        state = torch.load(path, map_location="cpu", weights_only=True)  # an old, non-zip checkpoint
    except Exception as error:  # noqa: BLE001 - pickle, zip and EOF errors all mean one thing here
        raise FormatError(
            f"{path} is not a readable torch checkpoint ({type(error).__name__}: {error}); download it again"
        ) from None
    if key is not None and isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
        state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FormatError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return dict(state)


class SafetensorsFile:
    """The tensors of a safetensors file, each read a slice at a time (``get_slice``)."""

    def __init__(self, path: Path) -> None:
        from safetensors import SafetensorError, safe_open

        from crosslens.core.weightfiles import safetensors_problem

        problem = safetensors_problem(path)
        if problem is not None:
            raise FormatError(f"{path} is damaged ({problem}); download it again")
        try:
            self._file = safe_open(str(path), framework="pt")
        except SafetensorError as error:
            raise FormatError(f"{path} is not a readable safetensors file ({error}); download it again") from None
        self.path = path

    def keys(self) -> list[str]:
        return list(self._file.keys())

    def __contains__(self, name: str) -> bool:
        return name in self.keys()

    def source(self, name: str) -> RowSource:
        piece = self._file.get_slice(name)
        shape = tuple(piece.get_shape())
        dtype = _TORCH_DTYPES.get(piece.get_dtype())
        if dtype is None:
            raise FormatError(f"{self.path}: {name} is stored as {piece.get_dtype()}, which crosslens does not read")
        if not shape:
            return RowSource((), dtype, lambda i, j: self._file.get_tensor(name))
        return RowSource(shape, dtype, lambda i, j: piece[i:j])

    def tensor(self, name: str) -> torch.Tensor:
        return self._file.get_tensor(name)

    def slice(self, name: str) -> Any:
        """``name``'s lazy slice: indexing it (``[:, i:j]``) reads only that part of the file."""
        return self._file.get_slice(name)


_TORCH_DTYPES = {name: dtype for dtype, name in _SAFETENSORS_DTYPES.items()}


def _blocks(source: RowSource, block_bytes: int) -> Iterator[torch.Tensor]:
    """``source``'s rows, a block of at most ``block_bytes`` at a time, as contiguous tensors."""
    if not source.shape:
        yield source.read(0, 1).reshape(())
        return
    n_rows = source.shape[0]
    row_bytes = max(1, source.nbytes // max(1, n_rows))
    step = max(1, block_bytes // row_bytes)
    for i in range(0, n_rows, step):
        j = min(n_rows, i + step)
        block = source.read(i, j)
        expected = (j - i, *source.shape[1:])
        if tuple(block.shape) != expected:
            raise FormatError(f"a block of rows {i}..{j} came out {list(block.shape)}, not {list(expected)}")
        yield block.to(source.dtype).contiguous()


def write_safetensors(path: Path, tensors: Mapping[str, RowSource], *, block_bytes: int = BLOCK_BYTES) -> str:
    """Write ``tensors`` to ``path`` in the safetensors format, streaming each a block of rows at a
    time (memory stays near one block, whatever the tensors' size); return the file's sha256."""
    header: dict[str, Any] = {}
    offset = 0
    names = sorted(tensors)
    for name in names:
        source = tensors[name]
        if source.dtype not in _SAFETENSORS_DTYPES:
            raise FormatError(f"{name}: dtype {source.dtype} cannot be written to safetensors")
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[source.dtype],
            "shape": list(source.shape),
            "data_offsets": [offset, offset + source.nbytes],
        }
        offset += source.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for chunk in (struct.pack("<Q", len(encoded)), encoded):
            handle.write(chunk)
            digest.update(chunk)
        for name in names:
            for block in _blocks(tensors[name], block_bytes):
                data = memoryview(block.reshape(-1).view(torch.uint8).numpy())
                handle.write(data)
                digest.update(data)
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


@dataclass(frozen=True)
class ConvertOptions:
    """What a conversion needs to know beyond a source's files (from the registry entry, or the caller)."""

    n_snapshots: int | None = None
    """Models (or checkpoints) the release reads; a source with another number is refused."""
    hook_name: str | None = None
    """The hook the release reads; a source config naming another is refused."""
    norm_factors: tuple[float, ...] | None = None
    """Per-model factors the source multiplied activations by before encoding, where its code
    published them outside the checkpoint (crosscoder-through-time's train.py)."""
    code_normalization: str | None = None
    """dictionary_learning: the code normalisation the crosscoder trained with, where its files do
    not record it (releases saved before the library wrote ``code_normalization_id``)."""


def read_json(path: Path) -> dict[str, Any]:
    """A config file as a JSON object, or a :class:`FormatError` naming the file."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FormatError(f"{path} is not valid JSON ({error}); download it again") from None
    if not isinstance(value, dict):
        raise FormatError(f"{path} holds a JSON {type(value).__name__}, not a config object")
    return value


def positive_int(config: Mapping[str, Any], key: str, where: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FormatError(f"{where}: {key} is {value!r}, not a positive integer; the config is damaged")
    return value


def require(tensors: Mapping[str, Any], names: tuple[str, ...], where: Path) -> None:
    missing = [name for name in names if name not in tensors]
    if missing:
        raise FormatError(
            f"{where} has no {', '.join(missing)} (it holds {', '.join(sorted(tensors)) or 'nothing'}); "
            "it is not a checkpoint of this format, or it is damaged: download it again"
        )


def shape_error(where: Path, name: str, shape: Any, expected: Any, sizes: str) -> FormatError:
    """A tensor whose shape contradicts the sizes the config gives."""
    return FormatError(
        f"{where}: {name} is {list(shape)}, but the config ({sizes}) makes it {list(expected)}; the config and the "
        "weights are from different crosscoders: download them again, or fix the config"
    )
