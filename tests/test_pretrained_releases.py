"""The packaged registry's real releases: listed on a fresh clone, and loaded offline by
``from_pretrained`` from a fake Hugging Face cache holding tiny repos laid out file for file as the
real ones, beside tiny models under the real model names; and the bad inputs a user meets there,
each refused in one line with the fix, before anything is downloaded or cached."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from hf_cache import offline_hf_home_at
from huggingface_hub import constants, hf_hub_download
from pretrained_sources import (
    D_MODEL,
    GEMMA_BASE,
    GEMMA_CHAT,
    dictionary_learning_forward,
    kissane_forward,
    write_fake_releases,
)
from tiny_crosscoders import random_crosscoder
from trust_fixtures import one_line_exit_2

import crosslens
from crosslens.activations import HarvestConfig, TokenBudget, harvest_stores
from crosslens.cli import main
from crosslens.core.errors import CrosslensError, SnapshotMismatchError
from crosslens.pretrained import register_release, unregister_release
from crosslens.pretrained.convert import converted_root, source_record
from crosslens.pretrained.registry import PACKAGED_SOURCE, PretrainedRegistryError, pretrained_directory

KISSANE = "gemma-2-2b-crosscoder-kissane"
THROUGH_TIME = "pythia-70m-crosscoder-through-time"
MINDER = "gemma-2-2b-crosscoder-l13-minder"
MINDER_K100 = "gemma-2-2b-crosscoder-l13-k100-minder"
MINDER_SAE_LOSS = "gemma-2-2b-crosscoder-l13-k100-sae-loss-minder"
HOOK_13 = "blocks.13.hook_resid_post"


@pytest.fixture(scope="module")
def _release_files(tmp_path_factory):
    hf_home = tmp_path_factory.mktemp("releases_hf")
    return hf_home, write_fake_releases(hf_home, tmp_path_factory.mktemp("release_files"))


@pytest.fixture
def fake_releases(_release_files):
    """The offline cache holding every packaged release and its models; yields the sources' state dicts."""
    hf_home, states = _release_files
    with offline_hf_home_at(hf_home):
        yield states


def converted_folders() -> set[str]:
    root = converted_root()
    return {p.name for p in root.iterdir() if not p.name.endswith(".lock")} if root.exists() else set()


def test_a_fresh_clone_lists_real_releases(capsys, monkeypatch):
    monkeypatch.delenv("CROSSLENS_PRETRAINED", raising=False)
    packaged = {name: r for name, r in pretrained_directory().items() if r.source == PACKAGED_SOURCE}
    assert len(packaged) >= 3
    for release in packaged.values():
        assert release.confirmed_by and release.format in ("kissane", "dictionary_learning")
    assert main(["pretrained", "list"]) == 0
    out = capsys.readouterr().out
    for name, repo in (
        (KISSANE, "ckkissane/crosscoder-gemma-2-2b-model-diff"),
        (THROUGH_TIME, "tommyp111/pythia-70m-crosscoder-through-time"),
        (MINDER, "Butanium/gemma-2-2b-crosscoder-l13-mu4.1e-02-lr1e-04"),
    ):
        (line,) = [line for line in out.splitlines() if line.startswith(name + " ")]
        assert repo in line
    assert "google/gemma-2-2b vs google/gemma-2-2b-it" in out
    assert main(["pretrained", "show", MINDER]) == 0
    shown = capsys.readouterr().out
    assert "format    dictionary_learning" in shown and "licence   none stated by the source" in shown
    assert "models    google/gemma-2-2b (gemma-2-2b), google/gemma-2-2b-it (gemma-2-2b-it)" in shown


@pytest.mark.parametrize("release", [KISSANE, THROUGH_TIME, MINDER, MINDER_K100, MINDER_SAE_LOSS])
def test_from_pretrained_gives_the_sources_crosscoder_and_its_suite(fake_releases, release):
    crosscoder, suite = crosslens.from_pretrained(release)
    lookup = pretrained_directory()[release]
    entry = next(iter(lookup.entries.values()))
    assert crosscoder.cfg.architecture() == entry.architecture
    assert suite.revisions == tuple(lookup.revisions) and len(suite) == crosscoder.cfg.n_snapshots == 2
    meta = crosscoder.cfg.metadata
    assert meta.hook_name == entry.hook_name and meta.pretrained_release == release
    assert [s["revision"] for s in meta.suite["snapshots"]] == lookup.revisions
    assert all("digest" in s["source"] for s in meta.suite["snapshots"]), "the models' file identities"

    state = fake_releases[release]
    x = torch.randn(128, 2, 32, generator=torch.Generator().manual_seed(3))
    if lookup.format == "kissane":
        if meta.get("activation_norm_factors_unknown"):
            assert meta.activation_norm_factors_folded is False and meta.get("activation_norm_factors") is None
        else:
            assert meta.activation_norm_factors == [1.0066, 1.488]
        code, recon = kissane_forward(state, x)
    else:
        code, recon = dictionary_learning_forward(state, x, code_normalization=entry.code_normalization or "CROSSCODER")
    torch.testing.assert_close(crosscoder.encode(x), code, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(crosscoder(x), recon, atol=1e-5, rtol=1e-5)


def test_suites_read_the_models_as_their_sources_did(fake_releases):
    _, kissane_suite = crosslens.from_pretrained(KISSANE)
    _, minder_suite = crosslens.from_pretrained(MINDER)
    assert kissane_suite.family == minder_suite.family == "models"
    assert kissane_suite.model_id == "google/gemma-2-2b,google/gemma-2-2b-it"
    assert minder_suite.processing()["center_writing_weights"] is False  # nnsight's raw residual stream
    assert kissane_suite.processing()["center_writing_weights"] is True  # TransformerLens's defaults
    _, pythia = crosslens.from_pretrained(THROUGH_TIME)
    assert pythia.family == "pythia" and pythia.steps == (100000, 143000)


def test_the_card_and_source_record_say_where_it_came_from(fake_releases):
    from crosslens.pretrained.releases import pretrained_folder

    folder = pretrained_folder(KISSANE, "blocks.14.hook_resid_pre")
    record = source_record(folder)
    assert record["source"]["repo_id"] == "ckkissane/crosscoder-gemma-2-2b-model-diff"
    assert record["source"]["path"] == "blocks.14.hook_resid_pre" and record["source"]["format"] == "kissane"
    assert re.fullmatch(r"[0-9a-f]{40}", record["source"]["revision"])  # the hub commit the files came from
    for name in ("cfg.json", "cc_weights.pt"):  # the files as the Hugging Face cache holds them, hashed again
        path = hf_hub_download("ckkissane/crosscoder-gemma-2-2b-model-diff", f"blocks.14.hook_resid_pre/{name}")
        assert record["source"]["files"][name]["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    card = (folder / "README.md").read_text()
    assert "Converted from `ckkissane/crosscoder-gemma-2-2b-model-diff`, folder `blocks.14.hook_resid_pre`" in card
    assert "## Licence" in card and "states no licence" in card and "Gemma Terms of Use" in card
    assert "measure them on your tokens" in card  # the quirk: scaling factors it did not save
    assert "| 1 | google/gemma-2-2b-it | main |" in card
    assert json.loads((folder / "cfg.json").read_text())["metadata"]["license"] is None


def test_converted_once(fake_releases, monkeypatch):
    from crosslens.pretrained import dictionary_learning

    crosslens.from_pretrained(MINDER)
    before = converted_folders()
    monkeypatch.setattr(dictionary_learning, "convert", lambda *a, **k: pytest.fail("converted again"))
    crosscoder, _ = crosslens.from_pretrained(MINDER)
    assert converted_folders() == before and crosscoder.cfg.d_sae == 48


def test_cli_reads_a_release_as_its_crosscoder(fake_releases, capsys, tmp_path):
    crosscoder = f"{MINDER}/blocks.13.hook_resid_post"
    assert main(["analyze", "--crosscoder", crosscoder, "--device", "cpu", "--out", str(tmp_path / "report.html")]) == 0
    out = capsys.readouterr().out
    assert "model diffing (gemma-2-2b vs gemma-2-2b-it)" in out and "latent scaling: not measured" in out
    # with a store of both models' activations, latent scaling judges its one-model-only latents
    store = tmp_path / "store"
    harvest = ["--models", f"{GEMMA_BASE},{GEMMA_CHAT}", "--hook", "blocks.13.hook_resid_post", "--out", str(store)]
    assert main(["harvest", *harvest, "--n-tokens", "1024", "--seq-len", "16", "--device", "cpu"]) == 0
    capsys.readouterr()
    report = ["--out", str(tmp_path / "measured.html"), "--device", "cpu"]
    # `crosslens harvest` centres the writing weights; the release read its models without that
    err = one_line_exit_2(["analyze", "--crosscoder", crosscoder, "--store", str(store), *report], capsys)
    assert "the crosscoder's models were loaded with the weight processing center_writing_weights=False" in err
    assert not (tmp_path / "measured.html").exists()
    # the suite the release comes with loads them as the release read them
    _, suite = crosslens.from_pretrained(MINDER)
    budget = TokenBudget(n_tokens=1024, seq_len=16)
    store, _ = harvest_stores(HarvestConfig(str(tmp_path / "raw"), ["blocks.13.hook_resid_post"], budget=budget), suite)
    assert main(["analyze", "--crosscoder", crosscoder, "--store", str(store.path), *report]) == 0
    assert "  latent scaling on 930 tokens, of the latents one model only:" in capsys.readouterr().out


def test_a_store_harvested_with_no_center_writing_weights_is_a_minder_releases_partner(fake_releases, capsys, tmp_path):
    """Minder et al.'s releases read their models without centring the writing weights: a store
    `crosslens harvest --models` writes is refused, naming the harvest whose flag loads them so,
    and the store that command writes records that processing and is accepted."""
    import shlex

    from crosslens.activations import ActivationStore

    crosscoder, models = f"{MINDER}/{HOOK_13}", f"{GEMMA_BASE},{GEMMA_CHAT}"
    sizes = ["--n-tokens", "1024", "--seq-len", "16", "--device", "cpu"]
    centred, raw = tmp_path / "centred", tmp_path / "raw"
    assert main(["harvest", "--models", models, "--hook", HOOK_13, "--out", str(centred), *sizes]) == 0
    capsys.readouterr()
    report = ["--out", str(tmp_path / "measured.html"), "--device", "cpu"]
    err = one_line_exit_2(["analyze", "--crosscoder", crosscoder, "--store", str(centred), *report], capsys)
    command = f"crosslens harvest --suite {models} --hook {HOOK_13} --no-center-writing-weights"
    assert f"pass a store harvested with the crosscoder's processing (`{command}`)" in err
    assert not (tmp_path / "measured.html").exists()

    named = shlex.split(err.split("`")[1])
    assert main([*named[1:], "--out", str(raw), *sizes]) == 0
    store = ActivationStore.open(raw)
    assert store.manifest["spec"]["suite"]["processing"]["center_writing_weights"] is False
    capsys.readouterr()
    assert main(["analyze", "--crosscoder", crosscoder, "--store", str(raw), *report]) == 0
    capsys.readouterr()
    # only a suite of models chooses its processing: anything else is refused before the pico suite is built
    err = one_line_exit_2(
        ["harvest", "--hook", HOOK_13, "--out", str(tmp_path / "never"), "--no-center-writing-weights"], capsys
    )
    assert "--no-center-writing-weights chooses how a suite of models loads (--models A,B)" in err
    assert not (tmp_path / "never").exists()
    # in Python, the config's processing is the suite's to load with: a suite loading otherwise is refused
    from crosslens.checkpoints import CheckpointSuite

    config = HarvestConfig(str(tmp_path / "never"), [HOOK_13], center_writing_weights=False)
    with pytest.raises(CrosslensError) as refused:
        harvest_stores(config, CheckpointSuite.models(models))
    assert str(refused.value) == (
        f"--no-center-writing-weights (center_writing_weights=False): the suite {models} loads its models with "
        f"center_writing_weights=True; build the suite with CheckpointSuite.models('{models}', "
        "processing={'center_writing_weights': False})"
    )
    assert not (tmp_path / "never").exists()


def test_a_release_whose_models_are_not_cached_is_refused_before_anything_is_fetched(tmp_path, capsys):
    with offline_hf_home_at(tmp_path / "empty_hf"):
        before = converted_folders()
        with pytest.raises(CrosslensError) as info:
            crosslens.from_pretrained(MINDER)
        message = str(info.value)
        assert message.startswith(f"release {MINDER} reads {GEMMA_BASE}@main and 1 more")
        assert "`hf download google/gemma-2-2b --revision main`" in message and len(message.splitlines()) == 1
        assert converted_folders() == before
        assert not list((tmp_path / "empty_hf" / "hub").glob("models--Butanium*"))
        with pytest.raises(SystemExit) as exit_info:
            main(["analyze", "--crosscoder", f"{MINDER}/blocks.13.hook_resid_post"])
        assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hf download google/gemma-2-2b" in err and err.startswith("crosslens analyze")


def test_a_hook_the_models_lack_is_refused(fake_releases):
    spec = dict(pretrained_directory()[MINDER].raw)
    spec["saes"] = [{**spec["saes"][0], "id": "deep", "hook_name": "blocks.40.hook_resid_post"}]
    register_release("too-deep", spec)
    before = converted_folders()
    try:
        with pytest.raises(PretrainedRegistryError, match="names block 40, but the model has blocks 0..15") as info:
            crosslens.from_pretrained("too-deep")
        assert len(str(info.value).splitlines()) == 1 and "fix the release's hook_name" in str(info.value)
    finally:
        unregister_release("too-deep")
    assert converted_folders() == before


def test_a_repo_in_an_unknown_format_is_refused(fake_releases):
    from crosslens.pretrained import LocalHubApi
    from crosslens.pretrained.tensors import UnknownFormatError

    with pytest.raises(PretrainedRegistryError, match="someone/absent is not in the Hugging Face cache .* go online"):
        crosslens.from_pretrained("someone/absent", "")
    api = LocalHubApi(constants.HF_HUB_CACHE)
    api.create_repo("someone/mystery", exist_ok=True)
    for name, data in (("config.json", b'{"hidden": 3}'), ("weights.bin", b"\0" * 64)):
        api.upload_file(path_or_fileobj=data, path_in_repo=name, repo_id="someone/mystery")
    before = converted_folders()
    with pytest.raises(UnknownFormatError) as info:
        crosslens.from_pretrained("someone/mystery", "")
    message = str(info.value)
    assert message.startswith(
        "someone/mystery holds no crosscoder in any format crosslens reads (it holds config.json, "
    )
    assert "kissane (cfg.json + cc_weights.pt" in message and len(message.splitlines()) == 1
    register_release("mystery", {**pretrained_directory()[MINDER].raw, "repo_id": "someone/mystery"})
    try:
        with pytest.raises(
            UnknownFormatError, match="the dictionary_learning format .*config.json \\+ model.safetensors"
        ):
            crosslens.from_pretrained("mystery")
    finally:
        unregister_release("mystery")
    assert converted_folders() == before


def test_models_of_different_architectures_are_refused(fake_releases, capsys):
    from crosslens.checkpoints import CheckpointSuite

    with pytest.raises(SnapshotMismatchError, match="model EleutherAI/pythia-70m@step143000 differs in architecture"):
        CheckpointSuite.models([GEMMA_BASE, "EleutherAI/pythia-70m@step143000"])
    argv = [
        "harvest",
        "--models",
        f"{GEMMA_BASE},EleutherAI/pythia-70m@step143000",
        "--hook",
        "blocks.0.hook_resid_post",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", "never"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "list models that share an architecture" in err
    assert not Path("never").exists()


def saved_crosscoder(folder: Path, d_in: int, hook: str | None = HOOK_13) -> Path:
    """A random ReLU crosscoder of the two Gemmas, ``d_in`` wide, in SAELens's layout at ``folder``."""
    crosscoder = random_crosscoder(n_snapshots=2, d_in=d_in, d_sae=8, hook=hook or HOOK_13)
    if hook is None:
        del crosscoder.cfg.metadata.hook_name
    crosscoder.save_model(folder)
    return folder


def test_an_unregistered_folder_is_checked_against_the_suite_and_hook_given(fake_releases, tmp_path):
    """A folder in SAELens's layout is checked as the other formats are: the models given hold
    the hook given, at the crosscoder's width, and the hook given is the one it records."""
    from crosslens.checkpoints import CheckpointSuite

    suite = CheckpointSuite.models([GEMMA_BASE, GEMMA_CHAT])
    narrow = saved_crosscoder(tmp_path / "narrow", 16)
    with pytest.raises(CrosslensError, match=f"reads 16-wide activations but {HOOK_13} of .* is {D_MODEL} wide"):
        crosslens.from_pretrained(narrow, suite=suite)
    fits = saved_crosscoder(tmp_path / "fits", D_MODEL)
    with pytest.raises(CrosslensError, match=f"reads {HOOK_13}, not hook_name='blocks.12.hook_resid_post'") as info:
        crosslens.from_pretrained(fits, suite=suite, hook_name="blocks.12.hook_resid_post")
    assert len(str(info.value).splitlines()) == 1
    hookless = saved_crosscoder(tmp_path / "hookless", D_MODEL, hook=None)
    with pytest.raises(CrosslensError, match="names block 40, but the model has blocks 0..15"):
        crosslens.from_pretrained(hookless, suite=suite, hook_name="blocks.40.hook_resid_post")
    crosscoder, given = crosslens.from_pretrained(hookless, suite=suite, hook_name=HOOK_13)
    assert given is suite and crosscoder.cfg.metadata.hook_name == HOOK_13
    assert crosscoder.cfg.metadata.suite["model_id"] == f"{GEMMA_BASE},{GEMMA_CHAT}"
    cfg = json.loads((fits / "cfg.json").read_text())
    cfg["metadata"]["suite"] = {"family": "pythia", "snapshots": [{"revision": "step0"}, {"revision": "step1"}]}
    (fits / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CrosslensError, match=r"records the snapshots \['step0', 'step1'\], the suite given holds"):
        crosslens.from_pretrained(fits, suite=suite)


def register_saelens_release(name: str, folder: Path, **release) -> None:
    """``folder`` uploaded to the offline cache as ``someone/NAME`` and registered as a release of the
    two Gemmas (with the ``release`` fields given)."""
    from crosslens.pretrained import LocalHubApi

    api = LocalHubApi(constants.HF_HUB_CACHE)
    api.create_repo(f"someone/{name}", exist_ok=True)
    api.upload_folder(folder_path=folder, path_in_repo=HOOK_13, repo_id=f"someone/{name}")
    suite = {"family": "models", "models": [GEMMA_BASE, GEMMA_CHAT]}
    entry = {"id": HOOK_13, "path": HOOK_13, "hook_name": HOOK_13, "architecture": "crosscoder"}
    register_release(
        name, {"repo_id": f"someone/{name}", "model": GEMMA_BASE, "suite": suite, "saes": [entry], **release}
    )


def test_a_release_run_and_release_id_are_checked_as_from_pretrained_checks_them(fake_releases, tmp_path, capsys):
    register_saelens_release("narrow", saved_crosscoder(tmp_path / "narrow", 16))
    register_saelens_release("fits", saved_crosscoder(tmp_path / "fits", D_MODEL))
    try:
        with pytest.raises(CrosslensError, match="16-wide activations"):
            crosslens.from_pretrained("narrow")
        err = one_line_exit_2(["pretrained", "run", "narrow", "--out", str(tmp_path / "run")], capsys)
        assert f"the crosscoder reads 16-wide activations but {HOOK_13}" in err and not (tmp_path / "run").exists()
        report = str(tmp_path / "report.html")
        err = one_line_exit_2(["analyze", "--crosscoder", f"narrow/{HOOK_13}", "--out", report], capsys)
        assert err.startswith("crosslens analyze") and "--crosscoder" in err and "16-wide activations" in err

        run = crosslens.pretrained.release_run("fits", out=tmp_path / "run")
        metadata = json.loads((run / "final" / "cfg.json").read_text())["metadata"]
        assert metadata["pretrained_release"] == "fits" and metadata["pretrained_id"] == HOOK_13
        assert [s["revision"] for s in metadata["suite"]["snapshots"]] == ["gemma-2-2b", "gemma-2-2b-it"]
    finally:
        unregister_release("narrow")
        unregister_release("fits")


def test_norm_factors_are_measured_only_on_a_store_of_the_crosscoders_models(fake_releases, tmp_path):
    """A store of the two models in the other order has as many snapshots at the same hook and width:
    factors measured on it would be saved swapped."""
    from trust_fixtures import token_table

    from crosslens.activations import ActivationStore, harvest_activations
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.core.errors import PartnerMismatchError

    crosscoder, suite = crosslens.from_pretrained(KISSANE)
    hook = crosscoder.cfg.metadata.hook_name
    for name, models in (("swapped", [GEMMA_CHAT, GEMMA_BASE]), ("store", [GEMMA_BASE, GEMMA_CHAT])):
        harvest_activations(CheckpointSuite.models(models), hook, token_table(8), tmp_path / name, progress=False)
    with pytest.raises(PartnerMismatchError, match=r"snapshots \[gemma-2-2b, gemma-2-2b-it\] vs \[gemma-2-2b-it,"):
        crosslens.pretrained.measure_norm_factors(crosscoder, ActivationStore.open(tmp_path / "swapped"))
    assert crosscoder.cfg.metadata.get("activation_norm_factors") is None
    store = ActivationStore.open(tmp_path / "store")
    factors = crosslens.pretrained.measure_norm_factors(crosscoder, store)
    assert factors == store.norm_factors(hook).tolist() and crosscoder.cfg.metadata.activation_norm_factors == factors


def test_a_release_s_config_overrides_hold_wherever_it_is_read(fake_releases, tmp_path):
    """load_pretrained applies a release's config_overrides; its run folder and its RELEASE/ID folder
    carry them too, so all three give the same codes (the hub's cfg.json as it is gives others), and a
    re-pushed release gets a folder of its new weights."""
    from crosslens.crosscoders.saved import load_crosscoder_folder
    from crosslens.pretrained.releases import resolve_crosscoder_path

    overrides = {"apply_b_dec_to_input": True}
    register_saelens_release("overridden", saved_crosscoder(tmp_path / "cc", D_MODEL), config_overrides=overrides)
    try:
        loaded = crosslens.load_pretrained("overridden", HOOK_13)
        run = crosslens.pretrained.release_run("overridden", out=tmp_path / "run")
        folder = Path(resolve_crosscoder_path(f"overridden/{HOOK_13}"))
        hub = Path(hf_hub_download("someone/overridden", f"{HOOK_13}/cfg.json")).parent
        assert json.loads((hub / "cfg.json").read_text())["apply_b_dec_to_input"] is False
        assert loaded.cfg.apply_b_dec_to_input is True
        x = torch.randn(64, 2, D_MODEL, generator=torch.Generator().manual_seed(1)) * 2
        with torch.no_grad():
            codes = loaded.encode(x)
            assert (codes != 0).any() and not torch.equal(load_crosscoder_folder(hub).encode(x), codes)
            for where in (run / "final", folder):
                assert json.loads((where / "cfg.json").read_text())["apply_b_dec_to_input"] is True, where
                torch.testing.assert_close(load_crosscoder_folder(where).encode(x), codes, rtol=0, atol=0)

        changed = load_crosscoder_folder(tmp_path / "cc")
        with torch.no_grad():
            changed.b_dec.add_(1.0)
        changed.save_model(tmp_path / "changed")
        unregister_release("overridden")
        register_saelens_release("overridden", tmp_path / "changed", config_overrides=overrides)
        again = Path(resolve_crosscoder_path(f"overridden/{HOOK_13}"))
        assert again != folder and json.loads((again / "cfg.json").read_text())["apply_b_dec_to_input"] is True
        torch.testing.assert_close(load_crosscoder_folder(again).b_dec, changed.b_dec, rtol=0, atol=0)
    finally:
        unregister_release("overridden")


def test_push_refuses_a_crosscoder_others_published_naming_where_it_is(fake_releases, tmp_path, capsys):
    """A `crosslens pretrained run` folder went up as "A `crosscoder` trained with crosslens", its
    source's licence, credit and repo dropped; it is refused before anything is uploaded."""
    from crosslens.pretrained import LocalHubApi
    from crosslens.pretrained.push import push_to_hub
    from crosslens.pretrained.releases import pretrained_folder

    kissane_id = "blocks.14.hook_resid_pre"
    register_saelens_release("republished", saved_crosscoder(tmp_path / "cc", D_MODEL))
    try:
        runs = [
            (KISSANE, kissane_id, "ckkissane/crosscoder-gemma-2-2b-model-diff"),
            ("republished", HOOK_13, "someone/republished"),
        ]
        api = LocalHubApi(constants.HF_HUB_CACHE)
        for release, crosscoder_id, repo in runs:
            run = crosslens.pretrained.release_run(release, out=tmp_path / release)
            for given in (run, run / "final"):
                with pytest.raises(CrosslensError) as info:
                    push_to_hub(given, "me/again", api=api)
                message = str(info.value)
                assert message.startswith(
                    f"{run / 'final'} holds crosscoder {crosscoder_id!r} of release {release!r}, published at {repo}, "
                    f"not one trained with crosslens: cite it and load it from there "
                    f"(crosslens.from_pretrained({release!r}, {crosscoder_id!r}))"
                )
                assert len(message.splitlines()) == 1
        converted = pretrained_folder(KISSANE, kissane_id)  # the cached conversion itself, without a run
        with pytest.raises(
            CrosslensError, match=rf"holds crosscoder '{kissane_id}' of release '{KISSANE}', published at"
        ):
            push_to_hub(converted, "me/again", api=api)
        err = one_line_exit_2(["push", str(tmp_path / KISSANE), "--repo", "me/again"], capsys)
        assert "published at ckkissane/crosscoder-gemma-2-2b-model-diff, not one trained with crosslens" in err
        assert not api.repo_folder("me/again").exists()
    finally:
        unregister_release("republished")


def test_analyze_on_a_store_of_a_kissane_run_without_its_factors_is_refused_in_one_line(
    fake_releases, tmp_path, capsys
):
    """``analyze --store`` reads the store's activations through the crosscoder, which needs the
    norm factors the release's source did not save: refused in one line naming the command that
    measures them, before anything is written; once measured, the same command runs."""
    from trust_fixtures import token_table

    from crosslens.activations import harvest_activations
    from crosslens.checkpoints import CheckpointSuite

    hook, store, run = "blocks.14.hook_resid_pre", tmp_path / "store", tmp_path / "run"
    harvest_activations(CheckpointSuite.models([GEMMA_BASE, GEMMA_CHAT]), hook, token_table(8), store, progress=False)
    assert main(["pretrained", "run", KISSANE, "--out", str(run)]) == 0
    capsys.readouterr()
    made = sorted(p.name for p in run.iterdir())
    analyze = ["analyze", "--crosscoder", str(run), "--store", str(store), "--device", "cpu"]
    err = one_line_exit_2(analyze, capsys)
    fix = f"crosslens pretrained run {KISSANE}/{hook} --out {run} --store STORE --overwrite"
    assert err.startswith("crosslens analyze: error: ") and fix in err, err
    assert sorted(p.name for p in run.iterdir()) == made

    assert main(["pretrained", "run", KISSANE, "--out", str(run), "--store", str(store), "--overwrite"]) == 0
    assert main(analyze) == 0
    assert (run / "report.html").is_file()


def test_analyze_crosscoder_on_a_store_through_a_kissane_crosscoder_without_its_factors_is_refused(
    fake_releases, tmp_path
):
    """The library's ``analyze_crosscoder(crosscoder, store=...)`` read the store at a scale the
    crosscoder was not trained on, as the command did: refused naming the call that measures the
    factors, after which it runs."""
    from trust_fixtures import token_table

    from crosslens.activations import ActivationStore, harvest_activations
    from crosslens.analysis import analyze_crosscoder
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.core.errors import PartnerMismatchError
    from crosslens.crosscoders.saved import load_crosscoder_folder
    from crosslens.pretrained import measure_norm_factors

    hook, store_dir, run = "blocks.14.hook_resid_pre", tmp_path / "store", tmp_path / "run"
    harvest_activations(
        CheckpointSuite.models([GEMMA_BASE, GEMMA_CHAT]), hook, token_table(8), store_dir, progress=False
    )
    assert main(["pretrained", "run", KISSANE, "--out", str(run)]) == 0
    crosscoder, store = load_crosscoder_folder(run / "final"), ActivationStore.open(store_dir)
    with pytest.raises(PartnerMismatchError, match=r"measure_norm_factors\(crosscoder, store\)"):
        analyze_crosscoder(crosscoder, store=store, device="cpu", progress=False)
    measure_norm_factors(crosscoder, store)
    analysis, _ = analyze_crosscoder(crosscoder, store=store, device="cpu", progress=False)
    assert analysis.frequency is not None


def test_a_kissane_run_records_factors_measured_on_a_store_and_without_them_is_refused_in_one_line(
    fake_releases, tmp_path, capsys
):
    """The run folder of a release whose source did not save its activation scaling was made without
    a word, and dashboards, export and the live models then died with a bare ValueError naming a
    Python call that could not reach the run (dashboards after taking its lock)."""
    from trust_fixtures import token_table

    from crosslens.activations import ActivationStore, harvest_activations
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.core.errors import LiveUnavailableError
    from crosslens.dashboards import DashboardsConfig, DashboardsError, compute_dashboards
    from crosslens.exports import ExportError, export_run
    from crosslens.live import LiveModels

    hook = "blocks.14.hook_resid_pre"
    for name, models in (("swapped", [GEMMA_CHAT, GEMMA_BASE]), ("store", [GEMMA_BASE, GEMMA_CHAT])):
        harvest_activations(CheckpointSuite.models(models), hook, token_table(8), tmp_path / name, progress=False)
    store = ActivationStore.open(tmp_path / "store")
    settings = DashboardsConfig(top_k=2, n_quantile=1, window=2)

    assert main(["pretrained", "run", KISSANE, "--out", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    said = capsys.readouterr().out
    assert f"--out {run} --store STORE --overwrite; until then dashboards, export and the live panels refuse" in said
    live = LiveModels(run, device="cpu")
    refusals = {
        DashboardsError: lambda: compute_dashboards(run, store=store, config=settings, device="cpu", progress=False),
        ExportError: lambda: export_run(run, format="saebench", out=tmp_path / "bench"),
        LiveUnavailableError: lambda: live.activations("the cat"),
    }
    made = sorted(p.name for p in run.iterdir())
    fix = f"crosslens pretrained run {KISSANE}/{hook} --out {run} --store STORE --overwrite"
    for error, call in refusals.items():
        with pytest.raises(error) as info:
            call()
        message = str(info.value)
        assert len(message.splitlines()) == 1 and "factors its source did not save" in message and fix in message
    live.close()
    err = one_line_exit_2(["dashboards", str(run), "--store", str(store.path)], capsys)
    assert err.startswith("crosslens dashboards: error: ") and fix in err
    assert sorted(p.name for p in run.iterdir()) == made  # no lock file, nothing else
    assert not (tmp_path / "bench").exists()

    for release, given, why in (
        (KISSANE, "swapped", "snapshots [gemma-2-2b, gemma-2-2b-it] vs [gemma-2-2b-it,"),
        (MINDER, "store", "records how its crosscoder scales activations (or reads them raw)"),
    ):
        argv = ["pretrained", "run", release, "--out", str(tmp_path / "other"), "--store", str(tmp_path / given)]
        err = one_line_exit_2(argv, capsys)
        assert err.startswith("crosslens pretrained run: error: --store: ") and why in err, err
        assert not (tmp_path / "other").exists()

    argv = ["pretrained", "run", KISSANE, "--out", str(run), "--store", str(store.path), "--overwrite"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    factors = store.norm_factors(hook).tolist()
    metadata = json.loads((run / "final" / "cfg.json").read_text())["metadata"]
    assert metadata["activation_norm_factors"] == factors and len(factors) == 2
    assert metadata["activation_norm_factors_unknown"] is False and metadata["activation_norm_factors_folded"] is False
    assert f"activation scaling measured on {store.path}: " in said and f"next: crosslens dashboards {run}" in said
    database = compute_dashboards(run, store=store, config=settings, device="cpu", progress=False)
    assert database.is_file()
