"""Artifacts handed over with the wrong partner are refused before anything is computed.

A crosscoder meets a store of other revisions, other weights or another hook; attribute
meets other steps; a run folder's store is read from another working directory or was
replaced; a held-out store is tampered with or left over from a store harvested again;
and a crosscoder's cfg.json must not depend on the order its dicts were filled in.
Each case runs the command a user would run and checks the one-line refusal names both
sides, or checks the exact bytes.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from hf_cache import make_word_tokenizer, tiny_neox, write_local_suite
from trust_fixtures import HOOK, OTHER_HOOK, harvest, token_table, train, write_suite

from crosslens.activations import ActivationStore
from crosslens.activations.partners import HELDOUT_OF, STORE_SEAL_KEY, open_heldout, pair_heldout, store_seal
from crosslens.activations.store import CorruptShardError, shard_relpath
from crosslens.cli import main
from crosslens.cli.quality import print_quality
from crosslens.core.errors import PartnerMismatchError
from crosslens.training.runfolder import run_store


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A suite (steps 0, 10, 20), its store and paired held-out store, and a run trained on it."""
    root = tmp_path_factory.mktemp("world")
    suite = write_suite(root / "suite")
    store = harvest(suite, root / "store")
    heldout = harvest(suite, root / "store-heldout", tokens=token_table(8, seed=1))
    pair_heldout(store, heldout)
    train(store.path, root / "run", n_steps=10, checkpoint_every=0)
    return {"root": root, "suite": suite, "store": store.path, "heldout": heldout.path, "run": root / "run"}


def refusal(argv: list[str], capsys) -> str:
    """Run the CLI expecting a one-line error (exit 2, no traceback); return it."""
    capsys.readouterr()  # what building the fixtures printed
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_matching_partners_are_accepted(world, capsys):
    assert main(["evaluate", str(world["run"]), "--store", str(world["heldout"]), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    ev_rows = [line.split()[0] for line in out.splitlines() if re.fullmatch(r"\S+ +-?\d+\.\d%", line)]
    assert ev_rows == ["step0", "step10", "step20"]  # one row per snapshot, named by the suite's revisions
    assert open_heldout(world["store"]).path == world["heldout"]


def test_a_store_of_other_revisions_is_refused_by_evaluate_and_analyze(world, tmp_path, capsys):
    models = {"step0": tiny_neox(seed=0), "step10": tiny_neox(seed=1), "step30": tiny_neox(seed=2)}
    other = harvest(write_local_suite(tmp_path / "suite", models, make_word_tokenizer()), tmp_path / "store").path
    err = refusal(["evaluate", str(world["run"]), "--store", str(other), "--device", "cpu"], capsys)
    assert str(world["run"] / "final") in err and str(other) in err
    assert "[step0, step10, step20] vs [step0, step10, step30]" in err
    assert (
        f"(`crosslens harvest --suite {world['suite']} --steps 0,10,20 --hook {HOOK}`)" in err
    )  # the crosscoder's suite
    err = refusal(
        ["analyze", "--crosscoder", str(world["run"]), "--store", str(other), "--out", str(tmp_path / "r.html")], capsys
    )
    assert "[step0, step10, step20] vs [step0, step10, step30]" in err
    assert not (tmp_path / "r.html").exists()


def test_the_library_refuses_a_store_or_hook_that_is_not_the_crosscoders_partner(world, tmp_path):
    from crosslens.analysis import analyze_crosscoder
    from crosslens.crosscoders.saved import load_crosscoder_folder
    from crosslens.training.metrics import evaluate_crosscoder

    crosscoder = load_crosscoder_folder(world["run"] / "final")
    models = {"step0": tiny_neox(seed=0), "step10": tiny_neox(seed=1), "step30": tiny_neox(seed=2)}
    other = harvest(write_local_suite(tmp_path / "suite", models, make_word_tokenizer()), tmp_path / "store")
    for function in (evaluate_crosscoder, analyze_crosscoder):
        call = (
            (lambda function=function, **kw: function(crosscoder, **kw))
            if function is analyze_crosscoder
            else (lambda store, hook=None, function=function: function(crosscoder, store, hook))
        )
        with pytest.raises(
            PartnerMismatchError,
            match=rf"given to {function.__name__} and the store {other.path} do not "
            r"match: .*\[step0, step10, step20\] vs \[step0, step10, step30\]",
        ):
            call(store=other)
        with pytest.raises(PartnerMismatchError, match=rf"^the crosscoder reads {HOOK}, not hook '{OTHER_HOOK}'"):
            call(store=ActivationStore.open(world["heldout"]), hook=OTHER_HOOK)
    crosscoder.cfg.metadata.suite = {}  # a record of the hook alone still refuses another hook
    with pytest.raises(PartnerMismatchError, match=rf"^the crosscoder reads {HOOK}, not hook '{OTHER_HOOK}'"):
        evaluate_crosscoder(crosscoder, ActivationStore.open(world["heldout"]), OTHER_HOOK)
    assert len(evaluate_crosscoder(crosscoder, ActivationStore.open(world["heldout"]))["explained_variance"]) == 3


def test_a_crosscoder_that_records_nothing_is_held_to_its_shape_and_a_path_is_not_a_store(world):
    """A crosscoder built in memory records no suite: a store of another snapshot count or width is
    refused by its shape (it reached a broadcasting error inside). A store's path, a NumPy array or
    a tensor, where a store is read, is refused naming the call that opens one (the path was read as
    an iterable of characters, the tensor as a store without hooks)."""
    from tiny_crosscoders import random_crosscoder

    from crosslens.activations import ActivationProvider
    from crosslens.analysis import (
        analyze_crosscoder,
        firing_frequency,
        latent_scaling,
        probe_validation,
        top_activating_contexts,
    )
    from crosslens.training.metrics import evaluate_crosscoder

    store = ActivationStore.open(world["heldout"])
    width = store.d_in_of(HOOK)
    two = random_crosscoder(n_snapshots=2, d_in=width, d_sae=8, hook=HOOK)
    two.cfg.metadata.hook_name = None  # records nothing at all
    with pytest.raises(
        PartnerMismatchError,
        match=r"^evaluate_crosscoder: the crosscoder reads 2 snapshots, the store .* holds 3; pass a store harvested",
    ):
        evaluate_crosscoder(two, store)
    narrow = random_crosscoder(n_snapshots=3, d_in=width - 1, d_sae=8, hook=HOOK)
    narrow.cfg.metadata.hook_name = None
    with pytest.raises(
        PartnerMismatchError,
        match=rf"^latent_scaling: the crosscoder reads width {width - 1}, the store .* holds {width} at {HOOK}",
    ):
        latent_scaling(narrow, store)
    fits = random_crosscoder(n_snapshots=3, d_in=width, d_sae=8, hook=HOOK)
    opens = r"crosslens\.ActivationStore\.open\(path\)"
    for function in (evaluate_crosscoder, latent_scaling):
        with pytest.raises(
            TypeError,
            match=rf"^{function.__name__} was given the path '{world['heldout']}' where an activation store is read; "
            rf"open it first: {opens}$",
        ):
            function(fits, str(world["heldout"]))
        with pytest.raises(
            TypeError, match=r"was given a NumPy array where activations are read; pass torch\.as_tensor\(array\)$"
        ):
            function(fits, torch.zeros(4, 3, width).numpy())
    for function in (firing_frequency, probe_validation):  # a tensor of activations or a store
        with pytest.raises(
            TypeError, match=rf"^the path '.*' was given where an activation store is read; open it first: {opens}$"
        ):
            function(str(world["heldout"]), fits)
        with pytest.raises(
            TypeError, match=r"^a NumPy array was given where activations are read; pass torch\.as_tensor\(array\)$"
        ):
            function(torch.zeros(4, 3, width).numpy(), fits)
    with pytest.raises(TypeError, match=r"^analyze_crosscoder was given the path"):
        analyze_crosscoder(fits, store=world["heldout"])
    with pytest.raises(TypeError, match=rf"^ActivationProvider was given the path .* open it first: {opens}$"):
        ActivationProvider(str(world["heldout"]), HOOK, batch_size=4)
    with pytest.raises(
        TypeError, match=rf"^ActivationProvider was given a Tensor where an activation store is read; pass {opens}$"
    ):
        ActivationProvider(torch.zeros(4, 3, width), HOOK, batch_size=4)
    with pytest.raises(
        TypeError, match=rf"^evaluate_crosscoder was given a list where an activation store is read; pass {opens}$"
    ):
        evaluate_crosscoder(fits, [torch.zeros(4, 3, width)])
    with pytest.raises(TypeError, match=rf"^a Tensor was given where an activation store is read; pass {opens}$"):
        top_activating_contexts(torch.zeros(4, 3, width), fits, [0])
    with pytest.raises(ValueError, match=r"^n_tokens=0, batch_size=8: both are at least 1$"):
        evaluate_crosscoder(fits, store, n_tokens=0, batch_size=8)
    assert len(evaluate_crosscoder(fits, store)["explained_variance"]) == 3  # its shape is the store's


def test_the_causal_stage_refuses_a_model_or_hook_that_is_not_the_crosscoders(world):
    """A loaded snapshot model says which checkpoint it is; spliced in as another of the
    crosscoder's snapshots, or at another hook than the crosscoder's, it is refused."""
    from crosslens.causal import splice, spliced_loss
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.crosscoders.saved import load_crosscoder_folder

    crosscoder = load_crosscoder_folder(world["run"] / "final")
    suite = CheckpointSuite.local(world["suite"])
    models = [suite.load(i) for i in range(3)]
    with pytest.raises(
        PartnerMismatchError,
        match=r"the model given as snapshot 0 is step20, but the crosscoder's "
        r"snapshot 0 is step0; pass that snapshot's model",
    ):
        with splice(models[2], crosscoder, snapshot=0):
            pass
    tokens = torch.randint(4, 20, (2, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(PartnerMismatchError, match="the model given as snapshot 0 is step20"):
        spliced_loss(models[::-1], crosscoder, tokens)
    moved = CheckpointSuite.local(shutil.copytree(world["suite"], world["root"] / "suite-copy", dirs_exist_ok=True))
    with splice(moved.load(0), crosscoder, snapshot=0):  # the same checkpoints in another folder
        pass
    with pytest.raises(PartnerMismatchError, match=rf"the crosscoder reads {HOOK}, not hook '{OTHER_HOOK}'"):
        with splice(models[0], crosscoder, snapshot=0, hook=OTHER_HOOK):
            pass
    # the rows are named by the crosscoder's snapshots, as the models say they are
    named = [row["snapshot"] for row in spliced_loss(models, crosscoder, tokens)]
    assert named == [m.crosslens_snapshot.to_dict()["revision"] for m in models] and named[0] == "step0"
    with splice(models[1], crosscoder, snapshot=1) as state:
        models[1](tokens)
    assert state.n_calls == 1


def test_analyze_of_a_checkpoint_writes_its_own_report_beside_the_runs(world, tmp_path, capsys):
    run = tmp_path / "run"
    train(world["store"], run, n_steps=4, checkpoint_every=2)
    assert main(["analyze", "--crosscoder", str(run), "--device", "cpu"]) == 0
    report = (run / "report.html").read_bytes()
    checkpoint = next(p for p in sorted(run.iterdir()) if p.name.startswith("step_"))
    assert main(["analyze", "--crosscoder", str(checkpoint), "--device", "cpu"]) == 0
    assert f"report: {run / f'report-{checkpoint.name}.html'}" in capsys.readouterr().out
    assert (run / "report.html").read_bytes() == report  # the finished run's report is not overwritten
    err = refusal(["analyze", "--crosscoder", str(run), "--out", str(tmp_path / "r.json")], capsys)
    assert (
        err
        == f"crosslens analyze: error: --out {tmp_path / 'r.json'}: the report is an HTML page; pass e.g. --out {tmp_path / 'r.html'}"
    )


def test_a_checkpoint_s_report_leaves_out_the_sections_saved_for_the_final_crosscoder(world, tmp_path, capsys):
    from crosslens.htmlreport import Report
    from crosslens.training.runfolder import save_section

    run = tmp_path / "run"
    train(world["store"], run, n_steps=4, checkpoint_every=2)
    save_section(Report("").add_heading("Saved for the final crosscoder"), run, "attribution-final")
    checkpoint = next(p for p in sorted(run.iterdir()) if p.name.startswith("step_"))
    assert main(["analyze", "--crosscoder", str(checkpoint), "--device", "cpu"]) == 0
    assert "saved section" not in capsys.readouterr().out
    assert "Saved for the final crosscoder" not in (run / f"report-{checkpoint.name}.html").read_text()
    assert main(["analyze", "--crosscoder", str(run), "--device", "cpu"]) == 0
    assert f"with 1 saved section(s) from {run / 'sections'}" in capsys.readouterr().out
    assert "Saved for the final crosscoder" in (run / "report.html").read_text()


def test_a_damaged_saved_section_is_named_with_its_fix(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    (run / "sections").mkdir()
    section = run / "sections" / "attribution-pairs.json"
    argv = ["analyze", "--crosscoder", str(run), "--device", "cpu", "--out", str(tmp_path / "r.html")]
    for damaged in ('{"title": "", "blocks": [{"kind": "head', "{}", "[]"):
        section.write_text(damaged)
        err = refusal(argv, capsys)
        assert err.startswith(f"crosslens analyze: error: {section} is not a section `crosslens attribute` wrote (")
        assert err.endswith("); run attribute again or delete it")
    assert not (tmp_path / "r.html").exists()


def test_a_section_write_cut_short_leaves_the_saved_one_whole(world, tmp_path, monkeypatch):
    from crosslens.htmlreport import Report
    from crosslens.training.runfolder import save_section

    saved = save_section(Report("").add_heading("First"), tmp_path, "attribution-pairs")
    before = saved.read_bytes()

    def cut_short(path, text, *args, **kwargs):
        with open(path, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_text", cut_short)
    with pytest.raises(OSError, match="No space left"):
        save_section(Report("").add_heading("Second"), tmp_path, "attribution-pairs")
    assert saved.read_bytes() == before
    assert Report.from_dict(json.loads(before)).to_dict()["blocks"][0]["title"] == "First"


def test_loading_a_run_folder_as_a_crosscoder_names_its_final_folder(world):
    from crosslens import load_crosscoder

    with pytest.raises(
        FileNotFoundError,
        match=rf"^{world['run']} is a `crosslens train` run folder, not a crosscoder "
        rf"folder; pass its crosscoder, {world['run'] / 'final'}$",
    ):
        load_crosscoder(world["run"])
    assert load_crosscoder(world["run"] / "final").cfg.n_snapshots == 3


def test_a_folded_crosscoder_evaluates_as_its_unfolded_self(world):
    from crosslens.crosscoders.saved import load_crosscoder_folder
    from crosslens.training.metrics import evaluate_crosscoder

    crosscoder = load_crosscoder_folder(world["run"] / "final")
    stores = [ActivationStore.open(world[name]) for name in ("store", "heldout")]  # the heldout's factors are its own
    assert not torch.equal(stores[0].norm_factors(HOOK), stores[1].norm_factors(HOOK))
    unfolded = [evaluate_crosscoder(crosscoder, store) for store in stores]
    crosscoder.fold_activation_norm_scaling_factors()
    for store, before in zip(stores, unfolded):
        folded = evaluate_crosscoder(crosscoder, store)
        assert (
            folded["l0"] == pytest.approx(before["l0"], rel=1e-5) and folded["dead_features"] == before["dead_features"]
        )
        for key in ("explained_variance", "mse"):
            assert folded[key] == pytest.approx(before[key], rel=1e-4, abs=1e-6), key
        assert min(before["explained_variance"]) > -1  # a trained crosscoder, not a degenerate one


def test_a_store_of_the_same_checkpoints_harvested_in_another_dtype_is_the_crosscoders_partner(world, tmp_path, capsys):
    """The weights' hash depends on the dtype they were loaded in; the files' digest decides."""
    from crosslens.crosscoders.saved import load_crosscoder_folder
    from crosslens.training.metrics import evaluate_crosscoder

    bf16 = harvest(world["suite"], tmp_path / "store", model_dtype="bfloat16")
    crosscoder = load_crosscoder_folder(world["run"] / "final")
    recorded = crosscoder.cfg.metadata.suite["snapshots"][0]["weights_sha256"]
    assert bf16.snapshots[0]["weights_sha256"] != recorded  # the weights hash differs; the files digest decides
    assert len(evaluate_crosscoder(crosscoder, bf16)["explained_variance"]) == 3
    assert main(["evaluate", str(world["run"]), "--store", str(bf16.path), "--device", "cpu"]) == 0


def test_a_store_of_the_same_revisions_with_other_weights_is_refused(world, tmp_path, capsys):
    other = harvest(write_suite(tmp_path / "suite", seeds=(0, 1, 3)), tmp_path / "store").path
    err = refusal(["evaluate", str(world["run"]), "--store", str(other), "--device", "cpu"], capsys)
    assert "snapshot step20 has other weights" in err and str(other) in err


def test_a_store_at_another_hook_is_refused(world, tmp_path, capsys):
    other = harvest(world["suite"], tmp_path / "store", hooks=OTHER_HOOK).path
    err = refusal(["evaluate", str(world["run"]), "--store", str(other), "--device", "cpu"], capsys)
    assert f"the crosscoder reads {HOOK}, the store holds {OTHER_HOOK}" in err and f"--hook {HOOK}" in err


def test_a_crosscoder_without_its_record_is_refused_not_trusted(world, tmp_path, capsys):
    legacy = tmp_path / "legacy"
    shutil.copytree(world["run"] / "final", legacy)
    cfg = json.loads((legacy / "cfg.json").read_text())
    del cfg["metadata"]["suite"]
    (legacy / "cfg.json").write_text(json.dumps(cfg))
    err = refusal(["evaluate", str(legacy), "--store", str(world["heldout"]), "--device", "cpu"], capsys)
    assert "records no snapshots" in err and "retrain" in err and str(world["heldout"]) in err


def test_attribute_refuses_steps_other_than_the_crosscoders(world, capsys):
    err = refusal(
        [
            "attribute",
            "--crosscoder",
            str(world["run"]),
            "--suite",
            str(world["suite"]),
            "--steps",
            "0,10",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert "[step0, step10, step20] vs [step0, step10]" in err and "--steps 0,10,20" in err
    assert not (world["run"] / "sections").exists()


def test_attribute_refuses_a_suite_with_other_weights_under_the_same_steps(world, tmp_path, capsys):
    other = write_suite(tmp_path / "suite", seeds=(0, 1, 3))
    err = refusal(["attribute", "--crosscoder", str(world["run"]), "--suite", str(other), "--device", "cpu"], capsys)
    assert "snapshot step20 has other weights" in err


def test_attribute_on_a_suite_without_the_crosscoders_steps_names_the_suite_not_a_flag_never_given(
    world, tmp_path, capsys
):
    models = {"step0": tiny_neox(seed=0), "step10": tiny_neox(seed=1), "step30": tiny_neox(seed=2)}
    other = write_local_suite(tmp_path / "suite", models, make_word_tokenizer())
    err = refusal(["attribute", "--crosscoder", str(world["run"]), "--suite", str(other), "--device", "cpu"], capsys)
    assert err.startswith(
        f"crosslens attribute: error: --suite {other} does not hold the crosscoder's snapshots "
        "(steps 0,10,20): step20 is not among"
    ), err
    assert err.endswith("; pass the suite it was trained on")


def test_a_suite_without_the_recorded_steps_is_refused_by_evaluate_and_dashboards_in_their_own_flags(
    world, tmp_path, capsys
):
    """``evaluate --spliced-loss`` (no --suite, no --steps) and ``dashboards --stream`` without --steps
    refused the steps a store or crosscoder records as ``--steps: ...``, a flag never given."""
    suite = tmp_path / "suite"
    shutil.copytree(world["suite"], suite)
    store = harvest(suite, tmp_path / "store").path
    train(store, tmp_path / "run", n_steps=10, checkpoint_every=0)
    other = tmp_path / "other"  # the suite without its step10
    other.mkdir()
    for step in ("step0", "step20"):
        (other / step).symlink_to(suite / step)
    err = refusal(["dashboards", str(tmp_path / "run"), "--stream", "--suite", str(other), "--device", "cpu"], capsys)
    assert err == (
        f"crosslens dashboards: error: --suite {other}: the suite has no step10, which the crosscoder was trained "
        f"on; nearest: step0, step20; `crosslens suite list {other}` lists them"
    )
    shutil.move(suite / "step10", tmp_path / "step10")  # the recorded suite loses a snapshot
    err = refusal(["dashboards", str(tmp_path / "run"), "--stream", "--device", "cpu"], capsys)
    assert err == (
        f"crosslens dashboards: error: the suite the crosscoder records, {suite}, has no step10, which the "
        f"crosscoder was trained on; nearest: step0, step20; `crosslens suite list {suite}` lists them"
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # the quality table prints before the spliced loss is refused
        main(["evaluate", str(tmp_path / "run"), "--store", str(store), "--spliced-loss", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err == (
        f"crosslens evaluate: error: --store {store}: the suite it was harvested from, {suite}, has no step10, "
        f"which the store holds; nearest: step0, step20; `crosslens suite list {suite}` lists them"
    )


def test_run_json_store_is_absolute_and_checked_by_seal(world, tmp_path, monkeypatch, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    monkeypatch.chdir(first)
    harvest(world["suite"], Path("store"))
    train(Path("store"), Path("run"), n_steps=10, checkpoint_every=0)
    recorded = json.loads((first / "run" / "run.json").read_text())
    assert recorded["store_path"] == str((first / "store").resolve())
    assert recorded["store_seal"] == store_seal(ActivationStore.open(first / "store", verify="none"))

    # from another folder holding another store under the same relative name, the run's own store is found
    monkeypatch.chdir(second)
    harvest(world["suite"], Path("store"), tokens=token_table(seed=5))
    assert run_store(first / "run") == str((first / "store").resolve())

    # a store harvested again in place is not the one trained on: refused, not read
    harvest(world["suite"], first / "store", tokens=token_table(seed=6), overwrite=True)
    with pytest.raises(PartnerMismatchError, match="is not the one the run"):
        run_store(first / "run")
    err = refusal(["report", str(first / "run"), "--out", str(tmp_path / "r.html")], capsys)
    assert str((first / "store").resolve()) in err and "pass --store" in err


def test_a_tampered_heldout_shard_of_the_same_size_is_refused(world, tmp_path, capsys):
    store = shutil.copytree(world["store"], tmp_path / "store")
    heldout = shutil.copytree(world["heldout"], tmp_path / "store-heldout")
    shard = heldout / shard_relpath(HOOK, 1, 0)
    data = bytearray(shard.read_bytes())
    position = random.Random(0).randrange(len(data) - 64, len(data))
    data[position] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match="sha256 differs"):
        print_quality(world["run"] / "final", str(store), None, "cpu", save_to=tmp_path / "quality.json")
    assert not (tmp_path / "quality.json").exists()
    err = refusal(["evaluate", str(world["run"]), "--store", str(heldout), "--device", "cpu"], capsys)
    assert "sha256 differs" in err


def test_a_heldout_store_left_from_an_earlier_harvest_is_refused(world, tmp_path, capsys):
    store = harvest(world["suite"], tmp_path / "store")
    heldout = harvest(world["suite"], tmp_path / "store-heldout", tokens=token_table(8, seed=1))
    pair_heldout(store, heldout)
    assert ActivationStore.open(heldout.path).manifest[HELDOUT_OF] == store_seal(store)
    harvest(world["suite"], tmp_path / "store", tokens=token_table(seed=7), overwrite=True)
    with pytest.raises(PartnerMismatchError, match="split from another store"):
        open_heldout(tmp_path / "store")
    # refused by train before it trains, not by its quality table after
    err = refusal(
        ["train", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "run"), "--device", "cpu"], capsys
    )
    assert "split from another store" in err and "or pass --eval-store" in err and not (tmp_path / "run").exists()
    (tmp_path / "lonely").mkdir()
    unpaired = harvest(world["suite"], tmp_path / "lonely-heldout", tokens=token_table(8, seed=1))
    harvest(world["suite"], tmp_path / "lonely")
    with pytest.raises(PartnerMismatchError, match="does not record which store"):
        open_heldout(tmp_path / "lonely")
    assert unpaired.path.exists()


def test_harvest_overwrite_replaces_or_removes_the_heldout_store(world, tmp_path, capsys):
    out = tmp_path / "store"
    common = [
        "harvest",
        "--suite",
        str(world["suite"]),
        "--hook",
        HOOK,
        "--n-tokens",
        "256",
        "--seq-len",
        "16",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main([*common, "--heldout-tokens", "64"]) == 0
    heldout = open_heldout(out)
    assert heldout is not None
    assert heldout.sequences.shape == (64 // 16, 16)  # --heldout-tokens 64: 4 rows of --seq-len 16
    # less each row's BOS and the EOS between documents (harvest's default exclusions: pad, BOS, EOS)
    words = make_word_tokenizer()
    excluded = torch.tensor([words.pad_token_id, words.bos_token_id, words.eos_token_id])
    kept = int((~torch.isin(heldout.sequences[:, 1:], excluded)).sum())
    assert heldout.n_tokens == kept == 58
    assert heldout.manifest[HELDOUT_OF] == store_seal(ActivationStore.open(out, verify="none"))
    assert main([*common, "--n-tokens", "240", "--heldout-tokens", "48", "--overwrite"]) == 0
    heldout = open_heldout(out)  # replaced and paired with the new store
    assert heldout.sequences.shape == (48 // 16, 16)
    assert heldout.manifest[HELDOUT_OF] == store_seal(ActivationStore.open(out, verify="none"))
    assert main([*common, "--heldout-tokens", "0", "--overwrite"]) == 0
    assert not (tmp_path / "store-heldout").exists()
    capsys.readouterr()


def test_cfg_json_bytes_do_not_depend_on_dict_order(world, tmp_path):
    from sae_lens import SAE

    import crosslens.crosscoders  # noqa: F401  (registers the architectures)

    crosscoder = SAE.load_from_disk(str(world["run"] / "final"))
    saved = (world["run"] / "final" / "cfg.json").read_text()
    assert saved == json.dumps(json.loads(saved), sort_keys=True)
    assert json.loads(saved)["metadata"][STORE_SEAL_KEY] == store_seal(
        ActivationStore.open(world["store"], verify="none")
    )
    crosscoder.save_model(tmp_path / "a")
    metadata = crosscoder.cfg.metadata
    keys = [k for k in vars(metadata) if not k.startswith("_")]
    values = {k: getattr(metadata, k) for k in keys}
    for key in keys:
        delattr(metadata, key)
    for key in reversed(keys):  # the same metadata, filled in the opposite order
        setattr(metadata, key, values[key])
    crosscoder.save_model(tmp_path / "b")
    assert (tmp_path / "a" / "cfg.json").read_bytes() == (tmp_path / "b" / "cfg.json").read_bytes()
    assert (tmp_path / "a" / "cfg.json").read_text() == saved  # the inference save and a re-save agree too


def test_push_refuses_a_store_the_crosscoder_was_not_trained_on(world, tmp_path):
    """The model card states per-snapshot figures measured on the store: a store of other
    snapshots is refused before anything is measured or uploaded."""
    from crosslens.pretrained.push import push_to_hub

    models = {"step0": tiny_neox(seed=0), "step10": tiny_neox(seed=1), "step30": tiny_neox(seed=2)}
    other = harvest(write_local_suite(tmp_path / "suite", models, make_word_tokenizer()), tmp_path / "store").path

    class NoUpload:
        def __getattr__(self, name):
            raise AssertionError(f"nothing may be uploaded, but HfApi.{name} was called")

    with pytest.raises(PartnerMismatchError, match=r"\[step0, step10, step20\] vs \[step0, step10, step30\]"):
        push_to_hub(world["run"], "org/name", store_path=other, api=NoUpload())
