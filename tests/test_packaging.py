"""The wheel a user installs holds every data file crosslens reads at run time, and its
metadata carries an SPDX licence expression (setuptools warns about the old table form)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # build from a copy, so the checkout gets no build/ or egg-info litter
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "crosslens", src / "crosslens", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (whl,) = out.glob("crosslens-*.whl")
    return whl


def _package_data_files() -> list[str]:
    """Every non-Python file under crosslens/ in the checkout (data, recipes, registry, markers)."""
    root = REPO / "crosslens"
    return sorted(
        p.relative_to(REPO).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts
    )


def test_wheel_holds_every_package_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    data = _package_data_files()
    assert "crosslens/data/models.json" in data  # the walk found the data folder
    missing = [name for name in data if name not in names]
    assert not missing, f"package data left out of the wheel: {missing}; add them to [tool.setuptools.package-data]"
    assert not any(name.startswith(("tests/", "benchmarks/", "scripts/")) for name in names)


def test_wheel_metadata_has_spdx_licence(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (meta_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(meta_name).decode())
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())
    assert meta["License-Expression"] == "MIT"
    assert meta["License"] is None  # the deprecated free-text field is gone
    entry_points = zipfile.ZipFile(wheel).read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    assert "crosslens = crosslens.cli:main" in entry_points


def test_installed_wheel_reads_its_data(wheel: Path, tmp_path: Path) -> None:
    """Install the wheel alone (no checkout on the path) and read every shipped data file
    through the code paths that read them at run time."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = textwrap.dedent(
        """
        import crosslens, pathlib, sys
        assert pathlib.Path(crosslens.__file__).parent.parent == pathlib.Path(sys.argv[1]), crosslens.__file__
        from crosslens.training.recipes import list_recipes, load_recipe
        from crosslens.training.model_sizes import known_models
        from crosslens.pretrained.registry import pretrained_directory
        from crosslens.tasks import multilingual_agreement
        recipes = list_recipes()
        assert len(recipes) >= 4, recipes
        for name in recipes:
            load_recipe(name)
        assert "EleutherAI/pythia-160m" in known_models()
        assert isinstance(pretrained_directory(), dict)
        tasks = multilingual_agreement()
        assert {"en", "fr", "es"} <= set(tasks), sorted(tasks)
        print("ok", len(recipes))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", probe, str(target)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")
