"""Each published format converts to a crosslens crosscoder whose codes and reconstructions are the
source project's own, written out from its equations (tests/pretrained_sources.py), within 1e-5 in
float32 on random inputs; each quirk is handled as its loader says; bad files are refused in one line
with nothing left in the cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from pretrained_sources import (
    dictionary_learning_forward,
    dictionary_learning_state,
    kissane_forward,
    kissane_state,
    llamascopium_forward,
    llamascopium_state,
    write_dictionary_learning,
    write_kissane,
    write_llamascopium,
)
from safetensors.torch import save_file

import crosslens
from crosslens.core.errors import CrosslensError
from crosslens.crosscoders.saved import load_crosscoder_folder
from crosslens.pretrained.card import converted_card
from crosslens.pretrained.convert import convert_once, converted_root, source_record
from crosslens.pretrained.formats import local_files
from crosslens.pretrained.tensors import ConvertOptions, FormatError, UnknownFormatError

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
HOOK = "blocks.0.hook_resid_post"


def inputs(n_snapshots: int, d: int = 8, seed: int = 7) -> torch.Tensor:
    return torch.randn(256, n_snapshots, d, generator=torch.Generator().manual_seed(seed))


def load(folder: Path, **kwargs):
    crosscoder, suite = crosslens.from_pretrained(folder, hook_name=HOOK, **kwargs)
    assert suite is None  # a local folder's suite is the caller's to give
    return crosscoder


def convert(folder: Path, **options) -> Path:
    """The converted folder of ``folder``'s crosscoder (converting it if the cache has none)."""
    files = local_files(folder)
    return convert_once(files, ConvertOptions(hook_name=HOOK, **options), provenance={}, card=converted_card)


def cache_entries() -> set[str]:
    """The converted folders in the cache (their locks aside)."""
    root = converted_root()
    return {p.name for p in root.iterdir() if not p.name.endswith(".lock")} if root.exists() else set()


# --------------------------------------------------------------------------- Kissane / Nanda
@pytest.mark.parametrize("through_time", [False, True])
def test_kissane_codes_and_reconstructions_are_the_sources(tmp_path, through_time):
    state = kissane_state(2, 8, 24, seed=1)
    folder = write_kissane(tmp_path / "cc", state, through_time=through_time, hook_point=HOOK)
    crosscoder = load(folder, norm_factors=[1.5, 0.5])
    assert crosscoder.cfg.architecture() == "crosscoder" and crosscoder.cfg.n_snapshots == 2
    x = inputs(2)
    code, recon = kissane_forward(state, x)
    assert (code > 0).float().mean() > 0.2  # the comparison covers live and dead latents
    torch.testing.assert_close(crosscoder.encode(x), code, **TOLERANCE)
    torch.testing.assert_close(crosscoder(x), recon, **TOLERANCE)
    meta = crosscoder.cfg.metadata
    assert meta.activation_norm_factors == [1.5, 0.5] and meta.activation_norm_factors_folded is False
    quirks = source_record(convert(folder, norm_factors=(1.5, 0.5)))["quirks"]
    assert any("no n_models" in q for q in quirks) == (not through_time)
    assert any("factors its code publishes" in q for q in quirks)


def test_kissane_unknown_scaling_is_refused_until_measured(tmp_path):
    from crosslens.crosscoders.folding import resolve_norm_factors

    state = kissane_state(2, 8, 24, seed=2)
    crosscoder = load(write_kissane(tmp_path / "cc", state, hook_point=HOOK))
    assert crosscoder.cfg.metadata.activation_norm_factors_unknown is True
    with pytest.raises(ValueError, match="measure_norm_factors"):
        resolve_norm_factors(crosscoder)
    acts = inputs(2) * torch.tensor([3.0, 0.5])[None, :, None]
    factors = crosslens.pretrained.measure_norm_factors(crosscoder, acts)
    want = (8**0.5 / acts.norm(dim=-1).mean(dim=0)).tolist()
    assert factors == pytest.approx(want, rel=1e-5)
    assert resolve_norm_factors(crosscoder).tolist() == pytest.approx(want, rel=1e-5)


def test_kissane_decoder_bias_for_two_models_with_three_is_refused(tmp_path):
    state = kissane_state(3, 8, 24, seed=3)
    state["b_dec"] = state["b_dec"][:2]  # the replication code's b_dec [2, d_in]
    folder = write_kissane(tmp_path / "cc", state, through_time=True)
    before = cache_entries()
    with pytest.raises(FormatError, match=r"b_dec holds 2 rows .* read 3 models") as info:
        load(folder)
    assert len(str(info.value).splitlines()) == 1
    assert cache_entries() == before


def test_shapes_contradicting_the_config_are_refused_and_nothing_is_cached(tmp_path):
    state = kissane_state(2, 8, 24, seed=4)
    folder = write_kissane(tmp_path / "cc", state, hook_point=HOOK)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "dict_size": 32}))
    before = cache_entries()
    with pytest.raises(FormatError, match=r"W_enc is \[2, 8, 24\], but the config .*dict_size=32.* \[2, 8, 32\]"):
        load(folder)
    assert cache_entries() == before


# --------------------------------------------------------------------------- dictionary_learning
DICTIONARY_LEARNING_CASES = {
    "relu": {},
    "batchtopk": {"batchtopk": True},
    "batchtopk-sae": {"batchtopk": True, "code_normalization": "SAE"},
    "batchtopk-mixed": {"batchtopk": True, "code_normalization": "MIXED"},
    "batchtopk-none": {"batchtopk": True, "code_normalization": "NONE"},
    "normaliser": {"batchtopk": True, "normalizer": True},
    "relu-normaliser": {"normalizer": True},
    "encoder-layers": {"encoder_layers": [1]},
}


@pytest.mark.parametrize("case", sorted(DICTIONARY_LEARNING_CASES))
def test_dictionary_learning_codes_and_reconstructions_are_the_sources(tmp_path, case):
    kwargs = DICTIONARY_LEARNING_CASES[case]
    state = dictionary_learning_state(2, 8, 24, seed=5, **kwargs)
    config = {"encoder_layers": kwargs["encoder_layers"]} if "encoder_layers" in kwargs else None
    crosscoder = load(write_dictionary_learning(tmp_path / "cc", state, config=config, compiled=case == "relu"))
    want_architecture = "batchtopk_crosscoder" if kwargs.get("batchtopk") else "crosscoder"
    assert crosscoder.cfg.architecture() == want_architecture
    x = inputs(2) * 2
    code, recon = dictionary_learning_forward(
        state,
        x,
        code_normalization=kwargs.get("code_normalization", "CROSSCODER"),
        encoder_layers=kwargs.get("encoder_layers"),
    )
    assert 0.05 < (code > 0).float().mean() < 0.95, "the gate must cut somewhere for the test to mean anything"
    torch.testing.assert_close(crosscoder.encode(x), code, **TOLERANCE)
    torch.testing.assert_close(crosscoder(x), recon, **TOLERANCE)
    assert crosscoder.cfg.metadata.activation_norm_factors_folded is True  # it reads raw activations
    if kwargs.get("normalizer"):  # the gate's decoder norms are those it trained with
        torch.testing.assert_close(
            crosscoder.decoder_norms(), state["decoder.weight"].norm(dim=-1).T, atol=1e-6, rtol=1e-6
        )


def test_dictionary_learning_code_normalisation_from_the_registry_where_files_are_silent(tmp_path):
    state = dictionary_learning_state(2, 8, 24, seed=6, batchtopk=True)  # no code_normalization_id
    folder = write_dictionary_learning(tmp_path / "cc", state)
    x = inputs(2) * 2
    out = convert(folder, code_normalization="SAE")
    code, _ = dictionary_learning_forward(state, x, code_normalization="SAE")
    torch.testing.assert_close(load_crosscoder_folder(out).encode(x), code, **TOLERANCE)
    assert any("do not record the code normalisation: SAE" in q for q in source_record(out)["quirks"])

    recorded = dictionary_learning_state(2, 8, 24, seed=6, batchtopk=True, code_normalization="CROSSCODER")
    with pytest.raises(FormatError, match="records code normalisation CROSSCODER, the release says SAE"):
        convert(write_dictionary_learning(tmp_path / "recorded", recorded), code_normalization="SAE")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"code_normalization": "DECOUPLED"}, "DECOUPLED BatchTopK crosscoder gates each model's code separately"),
        ({"threshold": torch.tensor(-1.0)}, "its threshold is -1.0, the value it starts at"),
    ],
)
def test_dictionary_learning_refusals(tmp_path, change, message):
    state = dictionary_learning_state(
        2, 8, 24, seed=7, batchtopk=True, code_normalization=change.get("code_normalization")
    )
    if "threshold" in change:
        state["threshold"] = change["threshold"]
    with pytest.raises(FormatError, match=message):
        load(write_dictionary_learning(tmp_path / "cc", state))


# --------------------------------------------------------------------------- Llamascopium
@pytest.mark.parametrize(("act_fn", "norm_activation"), [("jumprelu", "dataset-wise"), ("relu", "inference")])
def test_llamascopium_codes_and_reconstructions_are_the_sources(tmp_path, act_fn, norm_activation):
    state = llamascopium_state(3, 8, 24, seed=8, act_fn=act_fn)
    heads = ["step0", "step1000", "step143000"]
    norms = [2.5, 4.0, 1.5] if norm_activation == "dataset-wise" else None
    folder = write_llamascopium(
        tmp_path / "cc", state, heads, act_fn=act_fn, norm_activation=norm_activation, average_norms=norms
    )
    crosscoder = load(folder)
    want = {"jumprelu": "jumprelu_crosscoder", "relu": "crosscoder"}[act_fn]
    assert crosscoder.cfg.architecture() == want and crosscoder.cfg.n_snapshots == 3
    x = inputs(3)
    code_SF, recon = llamascopium_forward(state, x, act_fn=act_fn, average_norms=norms)
    per_snapshot = crosscoder.encode_per_snapshot(x) if act_fn == "jumprelu" else crosscoder.encode(x)[:, None]
    assert 0.05 < (code_SF != 0).float().mean() < 0.95
    torch.testing.assert_close(per_snapshot.expand_as(code_SF), code_SF, **TOLERANCE)
    torch.testing.assert_close(crosscoder(x), recon, **TOLERANCE)
    assert crosscoder.cfg.metadata.llamascopium_hook_points == heads


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"norm_activation": "token-wise"}, "scales each token .* by its own norm"),
        ({"act_fn": "batchtopk"}, "selects the top latents per head and batch"),
    ],
)
def test_llamascopium_refusals(tmp_path, config, message):
    state = llamascopium_state(2, 8, 24, seed=9)
    folder = write_llamascopium(tmp_path / "cc", state, ["a", "b"], average_norms=[1.0, 2.0])
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **config}))
    with pytest.raises(FormatError, match=message):
        load(folder)


def test_llamascopium_dataset_norms_not_set_are_refused(tmp_path):
    state = llamascopium_state(2, 8, 24, seed=10)
    folder = write_llamascopium(tmp_path / "cc", state, ["a", "b"], average_norms=[1.0, float("nan")])
    with pytest.raises(FormatError, match="holds no average norm for 'b'"):
        load(folder)


# --------------------------------------------------------------------------- formats and the cache
def test_unknown_format_is_refused_naming_every_format(tmp_path):
    folder = tmp_path / "mystery"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden": 3}))
    save_file({"w": torch.zeros(2)}, str(folder / "weights.safetensors"))
    with pytest.raises(UnknownFormatError) as info:
        load(folder)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "config.json, weights.safetensors" in message
    for layout in ("kissane (cfg.json + cc_weights.pt", "dictionary_learning (config.json + model.safetensors)"):
        assert layout in message
    assert "llamascopium (config.json + sae_weights.safetensors" in message


def test_a_local_path_that_is_no_folder_is_named_as_such(tmp_path, monkeypatch):
    """Read as a hub id, a path that is not there reached the hub's own "Repo id must be in the
    form" error, or its offline advice."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "cc.pt").write_bytes(b"x")
    fix = "; pass the folder holding a crosscoder's config and weights, a release name"
    for path, what in [(tmp_path / "gone", "does not exist"), (tmp_path / "cc.pt", "is a file, not a folder")]:
        with pytest.raises(CrosslensError, match=rf"^{path} {what}{fix}"):
            crosslens.from_pretrained(str(path))
    with pytest.raises(CrosslensError, match=rf"^\./runs/final does not exist{fix}"):
        crosslens.from_pretrained("./runs/final")


def test_converted_once_recording_each_source_files_sha256(tmp_path, monkeypatch):
    from crosslens.pretrained import kissane

    state = kissane_state(2, 8, 24, seed=11)
    folder = write_kissane(tmp_path / "cc", state, hook_point=HOOK)
    first = load(folder, norm_factors=[1.0, 1.0])
    record = source_record(convert(folder, norm_factors=(1.0, 1.0)))
    for name in ("cfg.json", "cc_weights.pt"):
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert record["source"]["files"][name] == {"sha256": digest, "bytes": (folder / name).stat().st_size}
    monkeypatch.setattr(kissane, "convert", lambda *a, **k: pytest.fail("converted twice"))
    again = load(folder, norm_factors=[1.0, 1.0])
    assert torch.equal(again.W_dec, first.W_dec)


def test_a_failed_conversion_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    from crosslens.pretrained import convert as convert_module

    folder = write_kissane(tmp_path / "cc", kissane_state(2, 8, 24, seed=12), hook_point=HOOK)
    before = cache_entries()

    def crash(path, tensors, **kwargs):  # dies half way through the weights file
        path.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(convert_module, "write_safetensors", crash)
    with pytest.raises(OSError, match="disk full"):
        load(folder)
    assert cache_entries() == before
    monkeypatch.undo()
    assert load(folder).cfg.d_sae == 24  # and a later load converts it whole


def test_the_registry_s_format_names_are_the_ones_read():
    """The registry checks a release's format without torch, from its own list of names; the formats
    crosslens reads (each a module, with torch) must be those names."""
    from crosslens.pretrained import formats, release_fields

    assert sorted(release_fields.FORMAT_NAMES) == sorted(formats.FORMAT_NAMES)
