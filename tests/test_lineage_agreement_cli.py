"""``crosslens analyze --lineage-against OTHER``: the lineage events another run's crosscoder, trained
on the same store and analysed with it, makes too; and what is refused before any work.

Two tiny runs (a JumpReLU and a ReLU crosscoder, 3 snapshots, 32 latents) on one store; the
printed counts must equal :func:`~crosslens.analysis.agreement` computed by hand from the
records ``analyze`` saved.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil

import pytest
import trust_fixtures as tf
from test_cli import one_line_error
from test_emergence_surfaces import LOOSE

from crosslens.activations import ActivationStore
from crosslens.activations.partners import store_seal
from crosslens.analysis import EvolutionAnalysis, analyze_crosscoder, lineage_agreement
from crosslens.analysis.agreement import (
    AGREEMENT_LINE,
    agreement_record,
    agreement_text,
    check_agreement_run,
    run_lineage_agreement,
)
from crosslens.analysis.emergence_record import (
    EmergenceRecordError,
    read_emergence,
    save_run_emergence,
)
from crosslens.analysis.lineage_events import LineageEvent
from crosslens.cli import main
from crosslens.core.hashing import AGREEMENT_READING, crosscoder_sha256
from crosslens.crosscoders.saved import load_crosscoder_folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs on one store, each analysed with lines loose enough for the tiny runs to have events."""
    root = tmp_path_factory.mktemp("agreement")
    tf.write_suite(root / "suite")
    tf.harvest(root / "suite", root / "store")
    store = ActivationStore.open(root / "store")
    for name, architecture in (("jumprelu", "jumprelu_crosscoder"), ("relu", "crosscoder")):
        tf.train(root / "store", root / name, architecture=architecture)
        crosscoder = load_crosscoder_folder(root / name / "final", device="cpu")
        analysis, _ = analyze_crosscoder(crosscoder, store=store, progress=False, **LOOSE)
        save_run_emergence(root / name, analysis.emergence, store)
    return root


def analysed(run_dir):
    return EvolutionAnalysis.from_crosscoder(load_crosscoder_folder(run_dir / "final", device="cpu"))


def test_another_run_s_saved_check_is_read_as_lineage_agreement_reads_it(runs):
    mine, other = read_emergence(runs / "jumprelu"), read_emergence(runs / "relu")
    assert len(mine.lineage.events) >= 3
    jumprelu = analysed(runs / "jumprelu")
    got = run_lineage_agreement(
        mine.lineage, jumprelu, mine.check.present, runs / "relu", ActivationStore.open(runs / "store")
    )
    want = lineage_agreement(mine.lineage, jumprelu, analysed(runs / "relu"), mine.check.present, other.check.present)
    read = lambda values: [None if math.isnan(a) else a for a in values]  # noqa: E731  (NaN: no latent held beside it)
    assert read(got) == read(want) and len({a for a in read(got) if a is not None}) > 1
    assert all(-1.0 <= a <= 1.0 for a in read(got) if a is not None)
    # a store's path reads as the store; a folder without a final crosscoder says so
    assert check_agreement_run(runs / "relu", str(runs / "store")).lineage.events == other.lineage.events
    with pytest.raises(EmergenceRecordError, match=r"holds no final crosscoder \(final/sae_weights.safetensors\)"):
        check_agreement_run(runs / "suite")
    alone = lineage_agreement(mine.lineage, jumprelu, analysed(runs / "relu"))  # without latent scaling's presence
    assert not any(math.isnan(a) for a in alone) and read(alone) != read(want)


def test_analyze_counts_the_events_the_other_run_makes_too(runs, capsys, tmp_path):
    for name in ("jumprelu", "relu"):  # analyze saves its check in the run: leave the fixture's as they are
        shutil.copytree(runs / name, tmp_path / name)
    runs, store = tmp_path, str(runs / "store")
    main(["analyze", "--crosscoder", str(runs / "relu"), "--store", store, "--out", str(tmp_path / "relu.html")])
    capsys.readouterr()
    main(
        ["analyze", "--crosscoder", str(runs / "jumprelu"), "--store", store, "--lineage-against", str(runs / "relu")]
        + ["--out", str(tmp_path / "jumprelu.html")]
    )
    printed = capsys.readouterr().out
    (line,) = [x for x in printed.splitlines() if x.startswith("lineage events ")]

    mine, other = read_emergence(runs / "jumprelu"), read_emergence(runs / "relu")
    agreement = lineage_agreement(
        mine.lineage, analysed(runs / "jumprelu"), analysed(runs / "relu"), mine.check.present, other.check.present
    )
    assert line == (
        f"lineage events {runs / 'relu'}'s crosscoder makes too (agreement >= {AGREEMENT_LINE}): "
        + agreement_text(mine.lineage.events, agreement)
    )
    saved = mine.agreement  # kept in the run's emergence record, for the feature database
    assert saved.against == str(runs / "relu") and saved.line == AGREEMENT_LINE
    assert saved.crosscoder_sha256 == crosscoder_sha256(runs / "relu")
    assert [None if math.isnan(a) else a for a in saved.agreement] == [None if math.isnan(a) else a for a in agreement]
    page = (tmp_path / "jumprelu.html").read_text()
    assert f"Lineage checked against {runs / 'relu'}" in page and "Lineage events and their agreement" in page
    counts = re.findall(r"(\d+) of (\d+) (split|merge|handoff)", line)
    assert [(int(n), kind) for _, n, kind in counts] == [
        (sum(e.kind == k for e in mine.lineage.events), k) for k in ("split", "merge", "handoff")
    ]


def test_a_saved_agreement_is_kept_while_it_describes_the_events(runs, capsys, tmp_path, monkeypatch):
    """Analysed again, or its report rebuilt, without the flag, a run keeps the agreement its record
    holds, with its section and line, while the lineage has the same events and the other run the
    same crosscoder; else it is dropped, with a note naming the command that measures it again."""
    for name in ("jumprelu", "relu"):
        shutil.copytree(runs / name, tmp_path / name)
    store, run, other = str(runs / "store"), tmp_path / "jumprelu", tmp_path / "relu"
    monkeypatch.chdir(tmp_path)  # the other run named relative to here: the record names it absolute
    main(["analyze", "--crosscoder", str(run), "--store", store, "--lineage-against", "relu"])
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("lineage events ")]
    measured = read_emergence(run)
    assert measured.agreement.against == str(other.resolve())
    monkeypatch.chdir(runs)
    main(["report", str(run), "--store", store])
    printed = capsys.readouterr().out
    assert line in printed.splitlines() and "note:" not in printed
    assert _same(read_emergence(run).agreement, measured.agreement)
    assert f"Lineage checked against {other}" in (run / "report.html").read_text()

    # the record's events are not the ones the analysis finds now: the agreement was of others
    more = dataclasses.replace(
        measured.lineage, events=[*measured.lineage.events, LineageEvent("split", 1, (0, 1), (0, 1), 0.3, "divergence")]
    )
    kept = dataclasses.replace(measured.agreement, agreement=[*measured.agreement.agreement, 0.9])
    save_run_emergence(run, dataclasses.replace(measured, lineage=more, agreement=kept), ActivationStore.open(store))
    main(["report", str(run), "--store", store])
    printed = capsys.readouterr().out
    assert f"note: the lineage agreement with {other} was of other lineage events; `crosslens analyze" in printed
    assert f"--lineage-against {other}` measures it again" in printed and "lineage events " not in printed
    assert read_emergence(run).agreement is None and "Lineage checked against" not in (run / "report.html").read_text()

    # the other run's crosscoder is not the one it was measured with
    retrained = dataclasses.replace(measured.agreement, crosscoder_sha256="0" * 64)
    save_run_emergence(run, dataclasses.replace(measured, agreement=retrained), ActivationStore.open(store))
    main(["analyze", "--crosscoder", str(run), "--store", store])
    assert (
        f"note: {other}'s crosscoder was trained again since the lineage was checked against it"
        in capsys.readouterr().out
    )
    assert read_emergence(run).agreement is None

    # the other run is gone: nothing to hold the agreement to
    save_run_emergence(run, measured, ActivationStore.open(store))
    shutil.move(other, tmp_path / "moved")
    main(["report", str(run), "--store", store])
    printed = capsys.readouterr().out
    assert f"note: {other}, which the lineage was checked against, holds no crosscoder now" in printed
    assert "--lineage-against OTHER (a finished run: the one named holds no crosscoder)` measures it again" in printed
    assert read_emergence(run).agreement is None


def test_a_saved_agreement_of_the_same_events_is_read_back_whole(runs, tmp_path):
    """The fixture's records have events (loose lines): saved with an agreement, the record gives it
    back for an analysis of those events, and none for an analysis of others."""
    from crosslens.cli.analyze import _saved_agreement

    run = tmp_path / "jumprelu"
    shutil.copytree(runs / "jumprelu", run)
    result = read_emergence(run)
    assert len(result.lineage.events) >= 3
    store = ActivationStore.open(runs / "store")
    agreement = agreement_record(runs / "relu", [0.1 * k for k in range(len(result.lineage.events))], store)
    save_run_emergence(run, dataclasses.replace(result, agreement=agreement), store)
    assert _saved_agreement(run / "final", run, result, store_seal(store)) == (agreement, None)
    assert _saved_agreement(run / sorted(p.name for p in run.glob("step_*"))[0], run, result) == (None, None)
    other = dataclasses.replace(result, lineage=dataclasses.replace(result.lineage, events=result.lineage.events[1:]))
    kept, note = _saved_agreement(run / "final", run, other, store_seal(store))
    assert kept is None and note.startswith(f"note: the lineage agreement with {runs / 'relu'} was of other lineage")


def test_a_saved_agreement_measured_on_another_store_is_dropped(runs, tmp_path, capsys):
    """Measured with the store both runs read, the agreement does not join a record of the same events
    read on another store (each side's presence is latent scaling's on its store), nor one that names
    no store."""
    for name in ("jumprelu", "relu"):
        shutil.copytree(runs / name, tmp_path / name)
    run, other = tmp_path / "jumprelu", tmp_path / "relu"
    main(["analyze", "--crosscoder", str(run), "--store", str(runs / "store"), "--lineage-against", str(other)])
    measured = read_emergence(run)
    copied = tmp_path / "store-copy"  # the same tokens in another folder: the same store
    shutil.copytree(runs / "store", copied)
    capsys.readouterr()
    main(["report", str(run), "--store", str(copied)])
    assert "note:" not in capsys.readouterr().out and _same(read_emergence(run).agreement, measured.agreement)

    other_tokens = tmp_path / "other-tokens"  # the same snapshots and hook, other tokens
    tf.harvest(runs / "suite", other_tokens, tokens=tf.token_table(seed=1))
    capsys.readouterr()
    main(["analyze", "--crosscoder", str(run), "--store", str(other_tokens), "--out", str(tmp_path / "r.html")])
    printed = capsys.readouterr().out
    assert f"note: the lineage agreement with {other} was measured on another store than this analysis reads" in printed
    assert "lineage events " not in printed and read_emergence(run).agreement is None
    assert measured.agreement.store == store_seal(ActivationStore.open(runs / "store"))

    unnamed = dataclasses.replace(measured.agreement, store=None)  # saved by a crosslens that named none
    save_run_emergence(run, dataclasses.replace(measured, agreement=unnamed), ActivationStore.open(runs / "store"))
    main(["report", str(run), "--store", str(runs / "store")])
    assert f"note: the lineage agreement with {other} names no store it was measured on" in capsys.readouterr().out


def test_a_saved_agreement_of_an_earlier_reading_is_measured_again_not_shown(runs, tmp_path, capsys):
    """An agreement saved under an earlier reading of an event's latents (one that scored a latent
    present at no snapshot as a move not made, whose record names no reading, or one that read a
    turn's turned latent by its move) is no longer this crosslens's number for those events: the
    report and the feature database leave it out, saying why, and analyze measures it again."""
    from crosslens.analysis.agreement import holding_agreement

    for name in ("jumprelu", "relu"):
        shutil.copytree(runs / name, tmp_path / name)
    run, other = tmp_path / "jumprelu", tmp_path / "relu"
    main(["analyze", "--crosscoder", str(run), "--store", str(runs / "store"), "--lineage-against", str(other)])
    measured = read_emergence(run)
    assert measured.agreement.reading == AGREEMENT_READING
    why = f"the lineage agreement with {other} was measured under an earlier reading of an event's latents"
    for reading in (None, "latents present at some snapshot, each at its nearest present snapshot on its side"):
        earlier = dataclasses.replace(measured.agreement, reading=reading)
        store = ActivationStore.open(runs / "store")
        save_run_emergence(run, dataclasses.replace(measured, agreement=earlier), store)
        assert read_emergence(run).agreement.reading == reading  # read back as saved
        held, dropped = holding_agreement(read_emergence(run), run, "the feature database")
        assert held.agreement is None and dropped.startswith(why)
        capsys.readouterr()
        main(["report", str(run), "--store", str(runs / "store")])
        printed = capsys.readouterr().out
        assert f"note: {why}" in printed and "lineage events " not in printed
        main(["analyze", "--crosscoder", str(run), "--store", str(runs / "store"), "--lineage-against", str(other)])
        assert _same(read_emergence(run).agreement, measured.agreement)


def _same(a, b) -> bool:
    """Two agreements alike, NaN equal to NaN."""
    values = lambda x: [None if math.isnan(v) else v for v in x.agreement]  # noqa: E731
    return (a.against, a.crosscoder_sha256, a.line, values(a)) == (b.against, b.crosscoder_sha256, b.line, values(b))


def test_what_lineage_against_cannot_read_is_refused_in_one_line(runs, capsys, tmp_path, monkeypatch):
    store = str(runs / "store")
    shutil.copytree(runs / "jumprelu", tmp_path / "jumprelu")
    base = ["analyze", "--crosscoder", str(tmp_path / "jumprelu"), "--out", str(tmp_path / "r.html")]
    err = one_line_error([*base, "--store", store, "--lineage-against", str(tmp_path / "jumprelu")], capsys)
    assert "is this run: pass another run trained on the same store" in err

    (checkpoint,) = sorted((runs / "relu").glob("step_*"))[-1:]
    err = one_line_error([*base, "--store", store, "--lineage-against", str(checkpoint)], capsys)
    assert "is a checkpoint: the check is read from a run's final crosscoder" in err
    assert f"pass the run folder {runs / 'relu'}" in err

    unanalysed = tmp_path / "unanalysed"
    shutil.copytree(runs / "relu", unanalysed, ignore=shutil.ignore_patterns("emergence.*"))
    err = one_line_error([*base, "--store", store, "--lineage-against", str(unanalysed)], capsys)
    assert f"has no emergence check (emergence.json): run `crosslens analyze --crosscoder {unanalysed}`" in err

    other_tokens = tmp_path / "other-tokens"  # the same snapshots and hook, other tokens
    tf.harvest(runs / "suite", other_tokens, tokens=tf.token_table(seed=1))
    read_elsewhere = tmp_path / "read-elsewhere"
    shutil.copytree(runs / "relu", read_elsewhere, ignore=shutil.ignore_patterns("emergence.*"))
    main(
        [
            "analyze",
            "--crosscoder",
            str(read_elsewhere),
            "--store",
            str(other_tokens),
            "--out",
            str(tmp_path / "o.html"),
        ]
    )
    capsys.readouterr()
    err = one_line_error([*base, "--store", store, "--lineage-against", str(read_elsewhere)], capsys)
    assert f"{read_elsewhere}'s emergence check read another store than {store}: run `crosslens analyze" in err

    two_hooks = tmp_path / "two-hooks"  # one store, two hooks of one width: the seal alone cannot tell them
    tf.harvest(runs / "suite", two_hooks, hooks=[tf.HOOK, tf.OTHER_HOOK])
    for name, hook in (("on-hook-0", tf.HOOK), ("on-hook-1", tf.OTHER_HOOK)):
        tf.train(two_hooks, tmp_path / name, hook_name=hook)
        main(
            [
                "analyze",
                "--crosscoder",
                str(tmp_path / name),
                "--store",
                str(two_hooks),
                "--out",
                str(tmp_path / "h.html"),
            ]
        )
    capsys.readouterr()
    on_hook = ["analyze", "--crosscoder", str(tmp_path / "on-hook-0"), "--store", str(two_hooks)]
    err = one_line_error(
        [*on_hook, "--lineage-against", str(tmp_path / "on-hook-1"), "--out", str(tmp_path / "x.html")], capsys
    )
    assert f"'s crosscoder reads {tf.OTHER_HOOK}, this one {tf.HOOK}: pass a run trained on the same hook" in err

    damaged = tmp_path / "damaged"  # its tables gone: refused before the analysis, not after it
    shutil.copytree(runs / "relu", damaged)
    (damaged / "emergence.safetensors").unlink()
    err = one_line_error([*base, "--store", store, "--lineage-against", str(damaged)], capsys)
    assert "emergence.safetensors is missing or altered" in err  # one line: no progress bar of an analysis
    assert not (tmp_path / "r.html").exists()

    relative = [
        "analyze",
        "--crosscoder",
        "jumprelu",
        "--store",
        store,
        "--out",
        "r2.html",
    ]  # the same run, two spellings
    monkeypatch.chdir(tmp_path)
    err = one_line_error([*relative, "--lineage-against", str(tmp_path / "jumprelu")], capsys)
    assert "is this run: pass another run trained on the same store" in err

    moved = tmp_path / "moved-store"  # the same tokens in another folder are the same store
    shutil.copytree(runs / "store", moved)
    assert ActivationStore.open(moved).content_sha256 == ActivationStore.open(store).content_sha256
    main([*base, "--store", str(moved), "--lineage-against", str(runs / "relu")])
    assert "lineage events " in capsys.readouterr().out


def test_a_run_of_another_hook_or_store_is_refused_before_its_check_is_read(runs, capsys, tmp_path):
    """Neither run has an emergence check: the refusal names the hook or store it was trained on,
    not a missing check that analysing it would only turn into another refusal."""
    base = ["analyze", "--crosscoder", str(runs / "jumprelu"), "--store", str(runs / "store")]
    base += ["--out", str(tmp_path / "r.html")]
    other_tokens = tmp_path / "other-tokens"
    tf.harvest(runs / "suite", other_tokens, tokens=tf.token_table(seed=1))
    tf.train(other_tokens, tmp_path / "elsewhere")
    capsys.readouterr()
    err = one_line_error([*base, "--lineage-against", str(tmp_path / "elsewhere")], capsys)
    assert err.endswith(
        f"{tmp_path / 'elsewhere'} was trained on another store than {runs / 'store'}: "
        f"pass a run trained on {runs / 'store'}"
    )
    other_hook = tmp_path / "other-hook"
    tf.harvest(runs / "suite", other_hook, hooks=[tf.OTHER_HOOK])
    tf.train(other_hook, tmp_path / "on-hook-1", hook_name=tf.OTHER_HOOK)
    capsys.readouterr()
    err = one_line_error([*base, "--lineage-against", str(tmp_path / "on-hook-1")], capsys)
    assert f"on-hook-1's crosscoder reads {tf.OTHER_HOOK}, this one {tf.HOOK}: pass a run trained on" in err
    assert not (tmp_path / "r.html").exists()
