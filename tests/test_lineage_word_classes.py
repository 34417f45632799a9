"""``scripts/lineage_word_classes.py``: the pico grammar's word classes it reads events by, and its refusal."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "lineage_word_classes.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("lineage_word_classes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_word_classes_are_the_pico_lexicons_fields(script) -> None:
    classes = script.word_classes()
    assert "names" in classes["alice"] and "names" in classes["peter"]
    assert "copulas" in classes["is"] and "copulas" in classes["were"]  # both forms of a (singular, plural) pair
    assert {"ioi_places", "thing_nouns"} <= classes["park"]
    assert classes["."] == classes[","] == {"punctuation"}
    assert not classes["alice"] & classes["is"]  # words of two classes share none


def test_a_folder_that_is_not_an_analysed_run_is_refused_in_one_line(script, tmp_path, capsys) -> None:
    assert script.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a run folder with its store" in err
