"""From a trained run to pages and exports with the three commands a user types:
``crosslens dashboards RUN``, ``crosslens browse RUN`` (a real server process, stopped with
Ctrl-C) and ``crosslens export RUN --format ...``; and each one's refusal, in one line, of a run
that is not ready for it."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import trust_fixtures as tf

from crosslens.cli import SUBCOMMANDS, main

FLAGS = ["--top-k", "4", "--window", "3", "--batch-size", "48", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 3-snapshot JumpReLU run on the trust fixtures' tiny suite, and its store."""
    root = tmp_path_factory.mktemp("features_cli")
    tf.write_suite(root / "suite")
    tf.harvest(root / "suite", root / "store")
    tf.train(root / "store", root / "run")
    return root / "run"


def test_no_flag_shadows_what_the_parser_sets():
    """The parser stores the command's function as ``run`` and its bookkeeping beside the flags:
    a flag of that name would replace the function (``crosslens browse RUN`` once did)."""
    reserved = {"run", "field_defaults", "explicit"}
    for command in SUBCOMMANDS:
        names = {field.name for flags in command.flags for field in dataclasses.fields(flags)}
        assert not names & reserved, (command.words, names & reserved)


def test_browse_and_export_before_dashboards_say_which_command_to_run(run, tmp_path, capsys):
    err = tf.one_line_exit_2(["browse", str(run), "--port", "0"], capsys)
    assert f"crosslens dashboards {run}" in err
    err = tf.one_line_exit_2(["export", str(run), "--format", "neuronpedia", "--out", str(tmp_path / "np")], capsys)
    assert "crosslens dashboards" in err and not (tmp_path / "np").exists()


def test_dashboards_then_browse_then_export(run, tmp_path, capsys):
    assert main(["dashboards", str(run), *FLAGS]) == 0
    out = capsys.readouterr().out
    assert f"browse it: crosslens browse {run}" in out
    database = run / "dashboards.sqlite"
    assert database.is_file() and f"feature database: {database}" in out

    # the same command again leaves the finished database as it is
    stamp = database.stat().st_mtime_ns
    assert main(["dashboards", str(run), *FLAGS]) == 0
    capsys.readouterr()
    assert database.stat().st_mtime_ns == stamp

    # browse: a server process on 127.0.0.1 that prints its URL and stops on Ctrl-C
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "crosslens", "browse", str(run), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        url, deadline = None, time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            assert line, "browse exited before printing its URL"
            if "http://127.0.0.1:" in line:
                url = line[line.index("http://") :].split()[0]
        assert url is not None and url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "api/run", timeout=30) as response:
            facts = json.load(response)
        assert len(facts["snapshots"]) == 3
        with urllib.request.urlopen(url + "api/feature/0", timeout=30) as response:
            assert json.load(response)["feature"] == 0
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
    finally:
        server.send_signal(signal.SIGINT)
        rest, _ = server.communicate(timeout=30)
    assert server.returncode == 0 and "Traceback" not in rest, rest

    # export: Neuronpedia's batches and SAEBench's SAEs, one source per snapshot
    neuronpedia, bench = tmp_path / "np", tmp_path / "bench"
    assert main(["export", str(run), "--format", "neuronpedia", "--out", str(neuronpedia)]) == 0
    assert main(["export", str(run), "--format", "saebench", "--out", str(bench)]) == 0
    capsys.readouterr()
    sources = sorted(path.parent.name for path in neuronpedia.glob("*/batch-0.json"))
    assert len(sources) == 3, sorted(neuronpedia.rglob("*"))
    assert len([path for path in bench.iterdir() if (path / "cfg.json").is_file()]) == 3

    # a second export into the same folder is refused without --overwrite, in one line
    err = tf.one_line_exit_2(["export", str(run), "--format", "saebench", "--out", str(bench)], capsys)
    assert "--overwrite" in err
