"""Which format a crosscoder's files are in, and where those files are.

Each format crosslens reads from another project is a module of this package naming its files
(``LAYOUTS``: config and weights file names, in the folder a release points at), telling its
config from another format's that shares a file name (``recognises``), and converting the two
files to a crosslens crosscoder (``convert``). SAELens's own layout (``cfg.json`` +
``sae_weights.safetensors``, what ``crosslens push`` uploads) needs no conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from crosslens.core.metadata import CFG_NAME, WEIGHTS_NAME
from crosslens.pretrained import dictionary_learning, kissane, llamascopium
from crosslens.pretrained.tensors import FormatError, UnknownFormatError, read_json

SAE_LENS = "sae_lens"
"""SAELens's layout, read as it is (crosslens's own releases)."""
SAE_LENS_LAYOUT = (CFG_NAME, WEIGHTS_NAME)
FORMATS: dict[str, ModuleType] = {module.NAME: module for module in (kissane, dictionary_learning, llamascopium)}
"""Format name -> the module that reads it."""
FORMAT_NAMES = (SAE_LENS, *FORMATS)


@dataclass(frozen=True)
class SourceFiles:
    """A crosscoder's two files on this machine, and the format they are in."""

    format: str
    config: Path
    weights: Path


def layouts(format_name: str) -> tuple[tuple[str, str], ...]:
    """The (config, weights) file names a format may use, checking the name."""
    if format_name == SAE_LENS:
        return (SAE_LENS_LAYOUT,)
    if format_name not in FORMATS:
        raise UnknownFormatError(
            f"format {format_name!r} is not one crosslens reads; use one of {', '.join(FORMAT_NAMES)}"
        )
    return FORMATS[format_name].LAYOUTS


def describe_layouts() -> str:
    """``kissane (cfg.json + cc_weights.pt, ...), ...``: what each format's files are called."""
    parts = []
    for name in FORMAT_NAMES:
        pairs = " or ".join(f"{config} + {weights}" for config, weights in layouts(name))
        parts.append(f"{name} ({pairs})")
    return "; ".join(parts)


def recognised(format_name: str, config: Path) -> bool:
    """Whether ``config`` is a config of ``format_name`` (formats that share a file name differ in its keys)."""
    if format_name == SAE_LENS:
        return True
    try:
        return bool(FORMATS[format_name].recognises(read_json(config)))
    except FormatError:
        return False


def local_files(folder: Path, format_name: str | None = None) -> SourceFiles:
    """The crosscoder files in ``folder``, in ``format_name`` or else whichever format they are in."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass the folder holding the crosscoder's files")
    names = [format_name] if format_name else [*FORMATS, SAE_LENS]
    for name in names:
        for config, weights in layouts(name):
            if (folder / config).is_file() and (folder / weights).is_file() and recognised(name, folder / config):
                return SourceFiles(name, folder / config, folder / weights)
    present = sorted(p.name for p in folder.iterdir())[:12]
    wanted = f"the {format_name} format's files" if format_name else "a crosscoder in any format crosslens reads"
    raise UnknownFormatError(
        f"{folder} holds {wanted} (it holds {', '.join(present) or 'nothing'}); the formats and their files: "
        f"{describe_layouts()}"
    )
