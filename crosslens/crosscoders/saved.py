"""Loading a crosscoder saved in SAELens's layout (``cfg.json`` + ``sae_weights.safetensors``).

:func:`load_crosscoder_folder` is the one way crosslens reads a saved crosscoder (a run's
``final/``, a checkpoint, a downloaded release). Before SAELens's ``SAE.load_from_disk``
runs, the two files are checked so that a damaged folder is refused with an error naming
the file and what is wrong with it, instead of a raw safetensors, JSON or size-mismatch
error: a weights file cut short (or with a garbage header), a cfg.json that is not a JSON
object or names no crosscoder architecture, and a cfg.json whose sizes (``d_in``,
``d_sae``, ``n_snapshots``) disagree with the tensors in the weights file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from crosslens.core.errors import DamagedCrosscoderError
from crosslens.core.metadata import CFG_NAME, WEIGHTS_NAME
from crosslens.core.paths import FINAL_DIRNAME
from crosslens.core.weightfiles import UnreadableHeaderError, safetensors_header, tensor_shapes

FIX = "restore the folder from a copy or retrain the crosscoder"


def load_crosscoder_folder(folder: str | os.PathLike, *, device: str = "cpu", dtype: str | None = None) -> Any:
    """The crosscoder saved in ``folder``, as its SAELens ``SAE`` subclass, on ``device``
    (in ``dtype`` when given, else the dtype in its cfg.json).

    Raises ``FileNotFoundError`` when ``folder`` holds no cfg.json, and
    :class:`~crosslens.core.errors.DamagedCrosscoderError` naming the file at fault when
    the cfg.json or the weights file is damaged or the two disagree.
    """
    from sae_lens import SAE

    folder = Path(folder)
    check_crosscoder_folder(folder)
    try:
        return SAE.load_from_disk(str(folder), device=device, dtype=dtype)
    except (RuntimeError, TypeError, KeyError, ValueError) as error:  # what the checks cannot foresee
        detail = " ".join(str(error).split())[:300]
        raise DamagedCrosscoderError(
            f"{folder / CFG_NAME} and {folder / WEIGHTS_NAME} do not load as a crosscoder "
            f"({type(error).__name__}: {detail}); {FIX}"
        ) from error


def check_crosscoder_folder(folder: str | os.PathLike, *, fix: str | None = None) -> None:
    """Refuse a crosscoder folder whose cfg.json or weights file is damaged, or whose
    cfg.json sizes disagree with its tensors, naming the file; ``fix`` replaces the
    advice at the end of the message."""
    folder = Path(folder)
    cfg_path, weights_path = folder / CFG_NAME, folder / WEIGHTS_NAME
    if not cfg_path.is_file():
        if (folder / FINAL_DIRNAME / CFG_NAME).is_file():
            raise FileNotFoundError(
                f"{folder} is a `crosslens train` run folder, not a crosscoder folder; pass its crosscoder, "
                f"{folder / FINAL_DIRNAME}"
            )
        raise FileNotFoundError(f"{folder} holds no {CFG_NAME}; pass the folder a crosscoder was saved to")
    fix = fix or FIX
    cfg = _read_cfg(cfg_path, fix)
    shapes = _read_shapes(weights_path, fix)
    _check_sizes(cfg, shapes, cfg_path, weights_path, fix)


def _read_cfg(cfg_path: Path, fix: str) -> dict[str, Any]:
    """cfg.json as a dict naming one of crosslens's architectures."""
    from crosslens.crosscoders import ARCHITECTURES  # (importing it registers them with SAELens)

    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DamagedCrosscoderError(f"{cfg_path} is not text (damaged?); {fix}") from None
    except json.JSONDecodeError as error:
        raise DamagedCrosscoderError(
            f"{cfg_path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); {fix}"
        ) from None
    if not isinstance(cfg, dict):
        raise DamagedCrosscoderError(f"{cfg_path} holds a JSON {type(cfg).__name__}, not the config object; {fix}")
    architecture = cfg.get("architecture")
    if architecture not in ARCHITECTURES:
        raise DamagedCrosscoderError(
            f"{cfg_path} names architecture {architecture!r}, not a crosscoder (one of {', '.join(ARCHITECTURES)}); "
            f"{fix}, or load a plain SAE with sae_lens.SAE.load_from_disk"
        )
    return cfg


def _read_shapes(weights_path: Path, fix: str) -> dict[str, tuple[int, ...]]:
    if not weights_path.is_file():
        raise DamagedCrosscoderError(f"{weights_path} is missing; {fix}")
    try:
        return tensor_shapes(safetensors_header(weights_path))
    except UnreadableHeaderError as error:
        raise DamagedCrosscoderError(f"{weights_path} is damaged ({error}); {fix}") from None


def _check_sizes(
    cfg: dict[str, Any], shapes: dict[str, tuple[int, ...]], cfg_path: Path, weights_path: Path, fix: str
) -> None:
    """Every crosscoder's decoder is ``[d_sae, n_snapshots, d_in]`` and its encoder
    ``[n_snapshots, d_in, d_sae]``: compare those with the sizes cfg.json gives."""
    sizes = {name: cfg.get(name) for name in ("d_sae", "n_snapshots", "d_in")}
    if not all(isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in sizes.values()):
        raise DamagedCrosscoderError(
            f"{cfg_path} gives d_sae, n_snapshots, d_in = {', '.join(repr(v) for v in sizes.values())}; "
            f"each must be a positive integer; {fix}"
        )
    d_sae, n_snapshots, d_in = sizes.values()
    expected = {"W_dec": (d_sae, n_snapshots, d_in), "W_enc": (n_snapshots, d_in, d_sae)}
    for name, shape in expected.items():
        if name not in shapes:
            raise DamagedCrosscoderError(
                f"{weights_path} holds no {name} tensor (it holds {', '.join(sorted(shapes)) or 'none'}); {fix}"
            )
        if shapes[name] != shape:
            raise DamagedCrosscoderError(
                f"{cfg_path} does not match {weights_path}: {name} is {list(shapes[name])} in the weights but "
                f"d_sae={d_sae}, n_snapshots={n_snapshots}, d_in={d_in} in cfg.json make it {list(shape)} "
                f"(was cfg.json edited?); {fix}"
            )
