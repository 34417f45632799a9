"""Suites of distinct models (model diffing): built from a list of models that share an architecture,
named by model everywhere, and carried through the whole chain on two tiny models: harvest, train,
analyze (with the diffing classes), dashboards, browse, export, and the streamed train and
dashboards."""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import trust_fixtures as tf
from hf_cache import make_word_tokenizer, tiny_neox, write_fake_hub_repo, write_local_suite
from test_browser import get, serving
from test_cli import one_line_error

from crosslens.analysis.diffing import DiffingAnalysis, DiffingThresholds, diffing_scaling
from crosslens.analysis.emergence_check import EmergenceCheckConfig
from crosslens.cli import main
from crosslens.core.model_specs import ModelSpec, model_labels, parse_models
from crosslens.core.paths import EMERGENCE_NAME
from crosslens.core.sealed import write_sealed

BASE, CHAT = "crosslens-test/tiny-base", "crosslens-test/tiny-chat"
MODELS = f"{BASE},{CHAT}"
THIRD = "crosslens-test/tiny-third"
HOOK = "blocks.0.hook_resid_post"
CPU = ["--device", "cpu"]


@pytest.fixture
def two_models(offline_hf_home):
    tokenizer = make_word_tokenizer()
    for repo_id, seed in ((BASE, 0), (CHAT, 1)):
        write_fake_hub_repo(offline_hf_home, repo_id, {"main": tiny_neox(seed)}, tokenizer)
    return offline_hf_home


# --------------------------------------------------------------------------- classes
def test_diffing_classes_by_relative_decoder_norm():
    norms = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 2.0], [1.0, 0.05], [1.0, 0.7], [0.0, 0.0], [0.5, 0.45]])
    diffing = DiffingAnalysis.from_norms(norms, ("base", "chat"))
    expected = torch.tensor([0.5, 0.0, 1.0, 0.025, 0.35, 0.5, 0.45])
    torch.testing.assert_close(diffing.relative_norm, expected)
    assert diffing.classes == ["shared", "base-only", "chat-only", "base-only", "other", "dead", "shared"]
    assert diffing.class_counts() == {"shared": 2, "base-only": 2, "chat-only": 1, "other": 1, "dead": 1}
    fired = DiffingAnalysis.from_norms(norms, ("base", "chat"), frequency=torch.tensor([1.0, 0, 1, 1, 1, 1, 1]))
    assert fired.classes[1] == "dead"
    assert "latent scaling: not measured" in diffing.summary_lines()[-1]
    with pytest.raises(ValueError, match="only_below <= shared_low"):
        DiffingThresholds(only_below=0.5)


def test_a_two_model_report_gives_each_models_dimensionality_and_the_cosine_between_the_models():
    """Two models have no previous or final snapshot: the report gives each model's total feature
    dimensionality and the mean cosine of a feature's decoder directions in the two models, over
    the features present in both, where one model's checkpoints get curves through training."""
    from html import unescape

    from crosslens.analysis import evolution_report
    from crosslens.analysis.evolution_analysis import EvolutionAnalysis

    u_KD = torch.eye(8)
    W_FSD = torch.zeros(4, 2, 8)
    W_FSD[0, 0], W_FSD[0, 1] = u_KD[0], 2 * u_KD[0]  # one direction in both: cosine 1
    W_FSD[1, 0], W_FSD[1, 1] = u_KD[1], 1.5 * u_KD[4]  # orthogonal in the two: cosine 0
    W_FSD[2, 0] = u_KD[2]  # the base's alone: no cosine
    W_FSD[3, 0], W_FSD[3, 1] = u_KD[3], 0.8 * (0.5 * u_KD[3] + 0.75**0.5 * u_KD[5])  # 60 degrees: cosine 0.5
    suite = {"family": "models", "snapshots": [{"revision": "base"}, {"revision": "chat"}]}
    analysis = EvolutionAnalysis.from_decoder(W_FSD, metadata={"suite": suite})
    assert "dead" not in analysis.classes  # each norm moves between the models
    html = unescape(evolution_report(analysis, through_time=False).render())
    assert "Direction drift" not in html and "final snapshot" not in html and "previous" not in html
    assert "Decoder directions between the two models" in html
    assert (
        "Mean cosine of each feature's decoder direction in base with its direction in chat, over the 3 features "
        "present in both: 0.5." in html
    )
    # every model's rows are orthogonal, each a dimension of its own: the base's four, the chat model's three
    assert "Total feature dimensionality in each model" in html and "turn at step" not in html
    rows = re.findall(r'<tr><td class="text">(base|chat)</td><td class="">([\d.]+)</td></tr>', html)
    assert rows == [("base", "4"), ("chat", "3")], rows


# each latent's scale in the base's and the chat model's activations, and what the decoder rows hold
TWO_MODEL_DATA = torch.tensor([[0.0, 1.0], [0.3, 1.0], [1.0, 1.0], [0.3, 1.0], [0.0, 0.0], [1.0, 0.0]])
TWO_MODEL_DECODER = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.3, 0.0], [1.0, 0.0]])


def two_model_crosscoder(n_tokens: int = 4000):
    """A ReLU crosscoder of a base and a chat model whose code is the planted coefficients, on
    activations ``x_m = sum_j c_j beta_jm u_j`` (orthonormal ``u_j``): latent 0 is the chat model's
    alone; latent 1 is a third as strong in the base, whose row the decoder shrank to zero
    (Complete Shrinkage); latent 3 likewise, but latent 4, firing with it, writes its base part
    (Latent Decoupling: one concept, a latent per model); latent 2 is shared, latent 5 the base's."""
    import crosslens.crosscoders as crosscoders

    F, D = 6, 12
    sae_cls, cfg_cls = crosscoders.ARCHITECTURES["crosscoder"][:2]
    crosscoder = sae_cls(cfg_cls(d_in=D, d_sae=F, n_snapshots=2))
    gen = torch.Generator().manual_seed(0)
    u_FD = torch.linalg.qr(torch.randn(D, F, generator=gen))[0].T
    rows_FD = u_FD.clone()
    rows_FD[4] = u_FD[3]
    with torch.no_grad():
        crosscoder.W_dec.copy_(TWO_MODEL_DECODER[..., None] * rows_FD[:, None, :])
        for p in (crosscoder.b_dec, crosscoder.b_enc, crosscoder.W_enc):
            p.zero_()
        for j in range(F):  # read back from the model where the latent is whole
            crosscoder.W_enc[0 if j == 5 else 1, :, j] = u_FD[3 if j == 4 else j]
    fires_NF = torch.rand(n_tokens, F, generator=gen) < 0.2
    c_NF = (0.5 + torch.rand(n_tokens, F, generator=gen)) * fires_NF
    c_NF[:, 4] = c_NF[:, 3]
    x_NSD = torch.einsum("nf,fs,fd->nsd", c_NF, TWO_MODEL_DATA, u_FD)
    return crosscoder, x_NSD, c_NF


def test_latent_scaling_tells_a_chat_only_latent_from_complete_shrinkage_and_latent_decoupling():
    from crosslens.analysis.scaling import latent_scaling

    crosscoder, x_NSD, c_NF = two_model_crosscoder()
    with torch.no_grad():
        assert torch.allclose(crosscoder.encode(x_NSD), c_NF, atol=1e-5)
    scaling = latent_scaling(crosscoder, x_NSD)
    diffing = DiffingAnalysis.from_crosscoder(crosscoder, labels=("base", "chat"), scaling=scaling)
    assert diffing.classes == ["chat-only", "chat-only", "shared", "chat-only", "base-only", "base-only"]
    verdicts = diffing.latent_scaling.verdicts
    assert verdicts == ["specific", "shrinkage", None, "decoupling", "decoupling", "specific"]
    # Minder et al.'s ratios, base over chat for a chat-only latent: the base's third in its error ...
    assert float(diffing.latent_scaling.nu_error[1]) == pytest.approx(0.3, abs=1e-5)
    assert float(diffing.latent_scaling.nu_error[0]) == pytest.approx(0.0, abs=1e-5)
    # ... and latent 4 reconstructs latent 3's base part, none of it left in the base's error
    assert float(diffing.latent_scaling.nu_error[3]) == pytest.approx(0.0, abs=1e-5)
    assert float(diffing.latent_scaling.presence_elsewhere[3]) == pytest.approx(0.3, abs=1e-5)
    assert torch.isnan(diffing.latent_scaling.nu_error[2]) and torch.isnan(diffing.latent_scaling.presence_elsewhere[2])
    assert diffing.verdict_counts() == {
        "base-only": {"specific": 1, "shrinkage": 0, "decoupling": 1, "not measured": 0},
        "chat-only": {"specific": 1, "shrinkage": 1, "decoupling": 1, "not measured": 0},
    }
    lines = diffing.summary_lines()
    assert lines[2] == "  latent scaling on 4,000 tokens, of the latents one model only:"
    assert lines[4] == (
        "    chat-only 3: 1 specific, 1 in base's error (Complete Shrinkage), "
        "1 reconstructed in base by other latents (Latent Decoupling), 0 not measured"
    )
    # the presence line is the emergence check's: at 0.35 the base's third no longer counts
    strict = diffing_scaling(diffing, scaling, EmergenceCheckConfig(presence_threshold=0.35))
    assert strict.verdicts[:4] == ["specific", "specific", None, "specific"]
    # a latent firing on fewer than min_fire of the tokens read gets no verdict
    few = diffing_scaling(diffing, scaling, EmergenceCheckConfig(min_fire=int(scaling.n_fire.max()) + 1))
    assert few.verdicts == ["not measured", "not measured", None, "not measured", "not measured", "not measured"]
    with pytest.raises(ValueError, match="same two-model crosscoder"):
        diffing_scaling(DiffingAnalysis.from_norms(torch.ones(3, 2), ("base", "chat")), scaling)


def test_a_presence_in_the_other_model_read_from_its_error_alone_is_shrinkage():
    """Where no latent of the base points a chat-only latent's way, its base presence is read from
    the base's error alone: co-firing latents reconstructing more there make it no decoupling."""
    from crosslens.analysis.scaling import latent_scaling

    crosscoder, x_NSD, _ = two_model_crosscoder()
    scaling = latent_scaling(crosscoder, x_NSD)
    diffing = DiffingAnalysis.from_crosscoder(crosscoder, labels=("base", "chat"), scaling=scaling)
    assert float(scaling.carrier_cosine[1, 0]) < EmergenceCheckConfig().carrier_cosine  # nothing carries latent 1
    # latent 1 (a third as strong in the base, in its error) with others reconstructing twice that along it
    amplitude = scaling.amplitude.clone()
    amplitude[1, 0] = 3 * scaling.error_amplitude[1, 0]
    cofiring = dataclasses.replace(scaling, amplitude=amplitude)
    assert float(cofiring.reconstruction_amplitude[1, 0]) > float(cofiring.error_amplitude[1, 0]) > 0
    assert diffing_scaling(diffing, cofiring).verdicts[1] == "shrinkage"
    # where a base latent at the carrier line points its way, what it reconstructs is the presence
    partnered = cofiring.carrier_cosine.clone()
    partnered[1, 0] = 0.9
    assert diffing_scaling(diffing, dataclasses.replace(cofiring, carrier_cosine=partnered)).verdicts[1] == "decoupling"


def test_model_specs_and_labels():
    specs = parse_models("google/gemma-2-2b, google/gemma-2-2b-it@abc123,./local/model")
    assert specs == [
        ModelSpec("google/gemma-2-2b"),
        ModelSpec("google/gemma-2-2b-it", "abc123"),
        ModelSpec("./local/model"),
    ]
    assert model_labels(specs) == ["gemma-2-2b", "gemma-2-2b-it@abc123", "model"]
    assert model_labels(parse_models("a/model,b/model")) == ["a--model", "b--model"]
    with pytest.raises(ValueError, match="listed more than once"):
        model_labels(parse_models("a/model,a/model"))


# --------------------------------------------------------------------------- the suite
def test_a_suite_of_models_is_named_by_model_and_built_again_from_its_record(two_models):
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.checkpoints.records import suite_from_record

    suite = CheckpointSuite.models(MODELS)
    assert suite.family == "models" and suite.model_id == MODELS
    assert suite.revisions == ("tiny-base", "tiny-chat") and suite.steps == (0, 1)
    record = suite.provenance()
    assert record["models"] == [
        {"label": "tiny-base", "model_id": BASE, "revision": None},
        {"label": "tiny-chat", "model_id": CHAT, "revision": None},
    ]
    again = suite_from_record(record)
    assert again.revisions == suite.revisions and again.model_id == MODELS
    chat = suite.select(indices=[1])
    assert chat.revisions == ("tiny-chat",) and chat.repo_revision(chat.snapshots[0]) == (CHAT, "main")
    model = chat.load(0)
    assert model.crosslens_snapshot.revision == "tiny-chat" and model.cfg.tokenizer_name == CHAT


def test_raw_residual_processing_reads_what_hugging_face_computes(two_models):
    from transformers import AutoModelForCausalLM

    from crosslens.checkpoints import CheckpointSuite
    from crosslens.checkpoints.models import RAW_RESIDUAL

    tokens = torch.randint(3, 60, (2, 10), generator=torch.Generator().manual_seed(0))
    hf = AutoModelForCausalLM.from_pretrained(CHAT).eval()
    with torch.no_grad():
        want = hf(tokens, output_hidden_states=True).hidden_states[1]
    for processing, close in ((RAW_RESIDUAL, True), (None, False)):
        suite = CheckpointSuite.models(MODELS, processing=processing)
        _, cache = suite.load(1).run_with_cache(tokens, names_filter=HOOK)
        assert torch.allclose(cache[HOOK], want, atol=1e-5) is close
    assert CheckpointSuite.models(MODELS, processing=RAW_RESIDUAL).provenance()["processing"] == {
        "fold_ln": True,
        "center_writing_weights": False,
        "center_unembed": True,
    }


def test_a_store_loaded_with_other_processing_is_not_the_crosscoders_partner(two_models, tmp_path, capsys):
    """The weight processing is part of what a store holds: a crosscoder trained on centred
    activations is refused a store of its models' raw residual streams, before anything is written,
    and the other way round; a record without processing is crosslens's default."""
    from crosslens.activations import ActivationStore, harvest_activations
    from crosslens.activations.partners import check_crosscoder_store
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.checkpoints.models import RAW_RESIDUAL
    from crosslens.core.errors import PartnerMismatchError
    from crosslens.crosscoders.saved import load_crosscoder_folder
    from crosslens.training.comparison import compare_with_saes

    store, run, raw = tmp_path / "store", tmp_path / "run", tmp_path / "raw"
    assert main(["harvest", "--models", MODELS, "--hook", HOOK, "--out", str(store), "--n-tokens", "512"]) == 0
    train = ["--arch", "crosscoder", "--d-sae", "16", "--n-steps", "4", "--batch-size", "64", "--spliced-seqs", "0"]
    assert main(["train", "--store", str(store), "--out", str(run), *train, *CPU]) == 0
    centred = ActivationStore.open(store)
    suite = CheckpointSuite.models(MODELS, processing=RAW_RESIDUAL)
    harvest_activations(suite, HOOK, centred.sequences, raw, progress=False)
    crosscoder = load_crosscoder_folder(run / "final")
    assert "processing" not in crosscoder.cfg.metadata.suite  # crosslens's default, left out of the record
    check_crosscoder_store(crosscoder, centred, crosscoder_name=run)
    report, emergence = run / "report.html", run / EMERGENCE_NAME
    assert not report.exists() and not emergence.exists()

    capsys.readouterr()  # what harvest and train printed
    err = one_line_error(["analyze", "--crosscoder", str(run), "--store", str(raw), *CPU], capsys)
    assert (
        "the crosscoder's models were loaded with the weight processing center_writing_weights=True, the store's "
        "with center_writing_weights=False; pass a store harvested with the crosscoder's processing "
        f"(`crosslens harvest --suite {MODELS} --hook {HOOK}`)" in err
    )
    assert not report.exists() and not emergence.exists()
    err = one_line_error(
        ["train", "--store", str(store), "--eval-store", str(raw), "--out", str(tmp_path / "r2")], capsys
    )
    assert "the training store's models were loaded with the weight processing center_writing_weights=True" in err
    assert not (tmp_path / "r2").exists()
    streamed = ["--stream", "--models", MODELS, "--hook", HOOK, "--eval-store", str(raw), "--n-tokens", "256", *CPU]
    err = one_line_error(["train", *streamed, *train, "--out", str(tmp_path / "r3")], capsys)
    assert "holds other activations of the streamed snapshots (the streamed models were loaded with" in err
    assert not (tmp_path / "r3").exists()
    with pytest.raises(ValueError, match="eval_store holds other activations than store"):
        compare_with_saes(
            centred, HOOK, crosscoder, snapshots=[0], architectures=["topk"], n_steps=2, eval_store=raw, progress=False
        )

    # a crosscoder of raw residual streams (a release records only the flag it chose) and a centred store
    crosscoder.cfg.metadata.suite["processing"] = dict(RAW_RESIDUAL)
    check_crosscoder_store(crosscoder, ActivationStore.open(raw), crosscoder_name=run)
    with pytest.raises(PartnerMismatchError) as refused:
        check_crosscoder_store(crosscoder, centred, crosscoder_name=run)
    assert (
        "the crosscoder's models were loaded with the weight processing center_writing_weights=False, the store's "
        "with center_writing_weights=True; pass a store harvested with the crosscoder's processing (`crosslens "
        f"harvest --suite {MODELS} --hook {HOOK} --no-center-writing-weights`)" in str(refused.value)
    )


AGREEMENT_PAIRS = [
    ("the cat sees", "the cat see"),
    ("the dogs see", "the dogs sees"),
    ("the man walks", "the man walk"),
    ("the men walk", "the men walks"),
    ("the bird eats", "the bird eat"),
    ("the birds eat", "the birds eats"),
    ("the child runs", "the child run"),
    ("the children run", "the children runs"),
]
"""Minimal pairs in the tiny models' vocabulary, for `attribute --task PAIRS.jsonl`."""


def test_a_crosscoder_of_raw_residual_streams_streams_and_attributes_on_its_models_loaded_raw(
    two_models, tmp_path, capsys
):
    """A crosscoder trained on its models' raw residual streams (`harvest --no-center-writing-weights`):
    `dashboards --stream` and `attribute` refused the --models/--suite A,B that named its models,
    which loaded centred, and had no flag to load them raw. A suite of models loads as the crosscoder's
    record says, named or not; a folder of the same models, which loads with its architecture's
    processing, is refused in one line before anything is written."""
    from crosslens.crosscoders.saved import load_crosscoder_folder

    store, run = tmp_path / "store", tmp_path / "run"
    harvest = ["--models", MODELS, "--hook", HOOK, "--out", str(store), "--n-tokens", "512", "--seq-len", "16"]
    assert main(["harvest", *harvest, "--no-center-writing-weights", *CPU]) == 0
    train = ["--arch", "crosscoder", "--d-sae", "16", "--n-steps", "4", "--batch-size", "64", "--spliced-seqs", "0"]
    assert main(["train", "--store", str(store), "--out", str(run), *train, *CPU]) == 0
    assert load_crosscoder_folder(run / "final").cfg.metadata.suite["processing"]["center_writing_weights"] is False
    local = tmp_path / "local"  # the same two models, as a folder of checkpoints
    write_local_suite(local, {"step0": tiny_neox(0), "step1": tiny_neox(1)}, make_word_tokenizer())
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"sentence_good": g, "sentence_bad": b}) + "\n" for g, b in AGREEMENT_PAIRS))
    capsys.readouterr()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    said = "its models load with the weight processing center_writing_weights=True, but the crosscoder"
    out = str(tmp_path / "attribution.json")
    attribute = ["attribute", "--crosscoder", str(run), "--task", str(pairs), "--n-examples", "8", "--allow-chance"]
    dashboards = ["--top-k", "4", "--window", "3", "--batch-size", "48", "--n-tokens", "256", "--seq-len", "16"]
    for argv in (
        ["dashboards", str(run), "--stream", "--suite", str(local), *dashboards, *CPU],
        [*attribute, "--suite", str(local), "--out", out, *CPU],
    ):
        err = one_line_error(argv, capsys)
        assert f"--suite {local}: {said}" in err, err
        assert "was trained on them loaded with center_writing_weights=False; drop --suite: the suite" in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before

    databases = []
    for flags in (["--models", MODELS], ["--suite", MODELS], []):  # each loads the models raw, as recorded
        assert main(["dashboards", str(run), "--stream", *flags, *dashboards, "--overwrite", *CPU]) == 0
        with sqlite3.connect(run / "dashboards.sqlite") as db:
            databases.append(db.execute("SELECT * FROM feature_snapshots ORDER BY 1, 2").fetchall())
        db.close()
    assert databases[0] and databases[0] == databases[1] == databases[2]
    for flags in (["--models", MODELS], []):
        capsys.readouterr()
        assert main([*attribute, *flags, "--out", out, *CPU]) == 0
        assert f"IE table: {out}" in capsys.readouterr().out
        assert json.loads(Path(out).read_text())


def test_train_stream_loads_a_suite_of_models_raw_with_the_harvest_flag(two_models, tmp_path, capsys):
    """`train --stream` had no `--no-center-writing-weights`: a crosscoder of raw residual streams
    could be trained only on a store. The flag is harvest's (its help and meaning), for a suite of
    models only; the streamed run records the processing, and `dashboards --stream` loads it so."""
    from crosslens.crosscoders.saved import load_crosscoder_folder

    run = tmp_path / "run"
    train = ["--arch", "crosscoder", "--d-sae", "16", "--n-steps", "4", "--batch-size", "64", "--spliced-seqs", "0"]
    streamed = ["--stream", "--hook", HOOK, "--n-tokens", "512", "--seq-len", "16", *train, *CPU]
    raw = ["--no-center-writing-weights"]
    err = one_line_error(["train", "--store", str(tmp_path / "store"), *raw, "--out", str(run), *train], capsys)
    assert err == (
        "crosslens train: error: --no-center-writing-weights chooses how --stream loads a suite of models: add --stream"
    )
    err = one_line_error(["train", *streamed, "--suite", "pico", *raw, "--out", str(run)], capsys)
    assert "--no-center-writing-weights chooses how a suite of models loads (--models A,B)" in err
    assert not run.exists()
    assert main(["train", *streamed, "--models", MODELS, *raw, "--out", str(run)]) == 0
    suite = load_crosscoder_folder(run / "final").cfg.metadata.suite
    assert suite["processing"]["center_writing_weights"] is False
    assert (
        json.loads((run / "run.json").read_text())["stream"]["suite"]["processing"]["center_writing_weights"] is False
    )
    dashboards = ["--top-k", "4", "--window", "3", "--batch-size", "48", "--n-tokens", "256", "--seq-len", "16"]
    assert main(["dashboards", str(run), "--stream", "--models", MODELS, *dashboards, *CPU]) == 0


def test_the_harvest_named_for_a_streamed_run_loads_its_models_as_the_run_did(two_models, tmp_path):
    """A run streamed from a suite of models read raw records that processing, and the harvest it
    names for a store of its tokens loads the models so (`--no-center-writing-weights`); a suite of
    models is named whole, without the --steps it refuses. A processing no flag chooses names no
    command: it would harvest other activations."""
    import shlex

    from crosslens.activations import ActivationStore, TokenBudget, TokenSource
    from crosslens.activations.partners import harvest_processing_flags
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.checkpoints.models import RAW_RESIDUAL
    from crosslens.cli.train import stream_record
    from crosslens.training.runfolder import streamed_store_command

    run = tmp_path / "run"
    run.mkdir()

    def named(suite) -> list[str]:
        record = stream_record(suite, HOOK, TokenSource(), TokenBudget(256, 16, 0), "float32")
        (run / "run.json").write_text(json.dumps({"stream": record}))
        return shlex.split(streamed_store_command(run))

    sizes = ["--n-tokens", "256", "--seq-len", "16", "--heldout-tokens", "0", "--out", str(tmp_path / "run-store")]
    assert named(CheckpointSuite.models(MODELS)) == ["crosslens", "harvest", "--suite", MODELS, "--hook", HOOK, *sizes]
    words = named(CheckpointSuite.models(MODELS, processing=RAW_RESIDUAL))
    assert words == ["crosslens", "harvest", "--suite", MODELS, "--hook", HOOK, "--no-center-writing-weights", *sizes]
    assert main([*words[1:], *CPU]) == 0
    store = ActivationStore.open(tmp_path / "run-store")
    assert store.manifest["spec"]["suite"]["processing"]["center_writing_weights"] is False
    assert store.manifest["spec"]["suite"]["model_id"] == MODELS
    # centring a post-norm model's writing weights, which it does not fold: no flag does that
    chosen = {"family": "models", "processing": {"fold_ln": False, "center_writing_weights": True}}
    assert harvest_processing_flags(chosen) is None
    stream = json.loads((run / "run.json").read_text())["stream"]
    (run / "run.json").write_text(json.dumps({"stream": {**stream, "suite": {**stream["suite"], **chosen}}}))
    assert streamed_store_command(run) is None


def test_processing_is_compared_where_it_changes_activations():
    from crosslens.activations.partners import harvest_advice
    from crosslens.checkpoints.models import architecture_processing, processing_difference

    gemma = {"processing": {"fold_ln": True, "center_writing_weights": True, "center_unembed": False}}
    raw_gemma = {"processing": {"fold_ln": True, "center_writing_weights": False, "center_unembed": False}}
    release = {"processing": {"center_writing_weights": False}}
    olmo2 = {
        "family": "olmo",
        "model_id": "allenai/OLMo-2-0425-1B",
        "processing": {
            "fold_ln": False,
            "center_writing_weights": False,
            "center_unembed": True,
        },
    }
    # no record is the default; centring the unembedding changes only the logits (a softcapped Gemma-2)
    assert processing_difference({}, gemma) is None and processing_difference(release, raw_gemma) is None
    assert processing_difference(release, gemma) == ("center_writing_weights=False", "center_writing_weights=True")
    assert processing_difference({}, raw_gemma) == ("center_writing_weights=True", "center_writing_weights=False")
    # a post-norm architecture neither folds its norms nor centres, and `crosslens harvest` loads it so
    assert architecture_processing(olmo2) and architecture_processing(gemma) and architecture_processing({})
    assert not architecture_processing(release) and not architecture_processing(raw_gemma)
    snapshots = [{"revision": "stage1-step1000", "step": 1000}]
    assert harvest_advice(olmo2, snapshots, HOOK) == (
        f"`crosslens harvest --suite allenai/OLMo-2-0425-1B --steps 1000 --hook {HOOK}`"
    )


def test_models_flag_refusals(two_models, tmp_path, capsys):
    write_fake_hub_repo(two_models, THIRD, {"main": tiny_neox(2)}, make_word_tokenizer())
    capsys.readouterr()
    picks = "in no training order, so there are no snapshots to choose among them"
    for argv, message in (
        (["--models", BASE], "--models lists one model"),
        (["--models", MODELS, "--suite", "pico"], "--models and --suite both name the suite"),
        # distinct models have no order, and model diffing compares two: two models, whole
        (["--models", f"{MODELS},{THIRD}"], "--models lists 3 models; model diffing compares two, in no training"),
        (["--suite", f"{MODELS},{THIRD}"], "--suite lists 3 models; model diffing compares two"),
        (["--models", MODELS, "--n-snapshots", "2"], f"--n-snapshots: --models names two models, {picks}"),
        (["--models", MODELS, "--steps", "5"], f"--steps: --models names two models, {picks}; drop --steps"),
        (["--suite", MODELS, "--steps", "0"], f"--steps: --suite names two models, {picks}"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["harvest", *argv, "--hook", HOOK, "--out", str(tmp_path / "never"), "--n-tokens", "256", *CPU])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "never").exists()
    # a --steps a suite of models does not hold (a run of two models streamed again) names the models'
    # steps: `crosslens suite list` lists one model's revisions, not a suite of models
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.cli.common import CLIError, select_snapshots

    with pytest.raises(CLIError) as refused:
        select_snapshots(CheckpointSuite.models(MODELS), [5], None, MODELS)
    assert str(refused.value) == (
        f"--steps: step5 is not among the 2 snapshots of {MODELS}; its models are at steps 0 (tiny-base), 1 (tiny-chat)"
    )


def test_a_suite_of_models_selected_from_more_is_built_again_at_its_models_positions(two_models):
    """Two models picked from three keep the positions they were harvested at (0 and 2): the suite
    their record builds is the store's, not one renumbered 0 and 1."""
    from crosslens.activations.partners import snapshot_problem
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.checkpoints.records import suite_from_record

    write_fake_hub_repo(two_models, THIRD, {"main": tiny_neox(2)}, make_word_tokenizer())
    picked = CheckpointSuite.models([BASE, CHAT, THIRD]).select(indices=[0, 2])
    record = picked.provenance()
    again = suite_from_record(record)
    assert again.revisions == ("tiny-base", "tiny-third") and again.steps == picked.steps == (0, 2)
    assert snapshot_problem(record["snapshots"], again.provenance()["snapshots"], require_identity=False) is None
    assert again.repo_revision(again.snapshots[1]) == (THIRD, "main")


def test_a_crosscoder_of_three_models_is_read_by_no_analysis(two_models, tmp_path, capsys):
    """A suite of three models is still built, harvested and trained in Python; what would read its
    models as a training order, or diff them, refuses it before it writes anything."""
    from trust_fixtures import token_table

    from crosslens.activations import harvest_activations
    from crosslens.analysis import analyze_crosscoder, evolution_report
    from crosslens.analysis.diffing import is_diffing
    from crosslens.analysis.evolution_analysis import EvolutionAnalysis
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.core.errors import CrosslensError
    from crosslens.crosscoders.saved import load_crosscoder_folder
    from crosslens.pretrained import LocalHubApi, push_to_hub

    write_fake_hub_repo(two_models, THIRD, {"main": tiny_neox(2)}, make_word_tokenizer())
    store, run = tmp_path / "store", tmp_path / "run"
    harvest_activations(CheckpointSuite.models([BASE, CHAT, THIRD]), HOOK, token_table(64), store, progress=False)
    train = ["--arch", "crosscoder", "--d-sae", "16", "--n-steps", "4", "--batch-size", "64", "--spliced-seqs", "0"]
    assert main(["train", "--store", str(store), "--out", str(run), *train, *CPU]) == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()

    said = "the crosscoder reads 3 distinct models (tiny-base, tiny-chat, tiny-third), which have no training order"
    fix = "train a crosscoder on a store of two of them (`crosslens harvest --models A,B`"
    for argv, where in (
        (["analyze", "--crosscoder", str(run), *CPU], run / "final"),
        (["dashboards", str(run), *CPU], run),
        (["export", str(run), "--format", "saebench", "--out", str(tmp_path / "export")], run),
    ):
        err = one_line_error(argv, capsys)
        assert f"error: {where}: {said}" in err and fix in err, err
    crosscoder = load_crosscoder_folder(run / "final", device="cpu")
    with pytest.raises(CrosslensError, match="^analyze_crosscoder: " + re.escape(said)):
        analyze_crosscoder(crosscoder, progress=False)
    with pytest.raises(CrosslensError, match="^evolution_report: " + re.escape(said)):
        evolution_report(EvolutionAnalysis.from_crosscoder(crosscoder))
    with pytest.raises(CrosslensError, match=re.escape(f"{run / 'final'}: {said}")):
        push_to_hub(run, "me/three", api=LocalHubApi(tmp_path / "hub"), n_eval_tokens=256)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written

    # the family says which crosscoder reads distinct models, not its number of snapshots: two
    # checkpoints of one model keep their analysis through time
    def of(family: str) -> SimpleNamespace:
        return SimpleNamespace(cfg=SimpleNamespace(n_snapshots=2, metadata={"suite": {"family": family}}))

    assert is_diffing(of("pythia")) is False and is_diffing(of("models")) is True


def test_a_model_to_leave_out_is_named_as_models_lists_it(two_models, capsys):
    """A model with another tokenizer, or the same weights as another, is refused with the command
    line's fix (the model as --models lists it) beside the Python one."""
    odd = make_word_tokenizer()
    odd.add_tokens(["zebra"])
    write_fake_hub_repo(two_models, "crosslens-test/tiny-odd", {"main": tiny_neox(2)}, odd)
    write_fake_hub_repo(two_models, "crosslens-test/tiny-copy", {"main": tiny_neox(0)}, make_word_tokenizer())
    harvest = ["harvest", "--hook", HOOK, "--out", "never", "--n-tokens", "512", *CPU]
    capsys.readouterr()  # what writing the models printed
    err = one_line_error([*harvest, "--models", f"{BASE},crosslens-test/tiny-odd"], capsys)
    assert err.endswith(
        "so remove crosslens-test/tiny-odd from --models (in Python: drop it with suite.select(...))"
    ), err
    err = one_line_error([*harvest, "--models", f"{BASE},crosslens-test/tiny-copy@main"], capsys)
    assert err.endswith(
        "drop one: remove crosslens-test/tiny-copy@main from --models (in Python: suite.select(steps=[...]) "
        "without step 1). Nothing was written."
    ), err
    assert not Path("never").exists()


# --------------------------------------------------------------------------- the chain
def _served(run: Path, paths: list[str]) -> list[dict]:
    with serving(run) as server:
        replies = [get(server, "/" + path) for path in paths]
    assert all(status == 200 for status, _ in replies), replies
    return [answer for _, answer in replies]


def test_the_chain_on_two_models(two_models, tmp_path, capsys):
    store, run = tmp_path / "store", tmp_path / "run"
    budget = ["--n-tokens", "2048", "--seq-len", "16"]
    assert main(["harvest", "--models", MODELS, "--hook", HOOK, "--out", str(store), *budget, *CPU]) == 0
    manifest = json.loads((store / "manifest.json").read_text())
    assert [s["revision"] for s in manifest["snapshots"]] == ["tiny-base", "tiny-chat"]
    assert manifest["spec"]["suite"]["family"] == "models"

    train = ["--arch", "crosscoder", "--d-sae", "48", "--n-steps", "30", "--batch-size", "64", "--spliced-seqs", "2"]
    assert main(["train", "--store", str(store), "--out", str(run), *train, *CPU]) == 0
    out = capsys.readouterr().out
    assert "tiny-base " in out and "tiny-chat " in out  # the quality table names snapshots by model

    assert main(["analyze", "--crosscoder", str(run), *CPU]) == 0
    out = capsys.readouterr().out
    assert "model diffing (tiny-base vs tiny-chat)" in out
    # analyzed with the run's store: latent scaling reads the one-model-only latents there
    assert "latent scaling on 1,866 tokens, of the latents one model only:" in out
    assert "    tiny-chat-only 0: 0 specific, 0 in tiny-base's error (Complete Shrinkage)" in out
    # a base model and its fine-tune have no training order: no emergence check or lineage to print
    assert "measured emergences contested" not in out and "splits" not in out and "persistent" not in out
    err = one_line_error(["analyze", "--crosscoder", str(run), "--lineage-against", str(run), *CPU], capsys)
    assert "this crosscoder is of two models, with no training order for a split or a merge: leave the flag out" in err
    html = (run / "report.html").read_text()
    assert "Model diffing" in html and "tiny-chat-only" in html
    assert "Latent scaling on 1,866 tokens, one-model-only latents" in html
    # nor do the report's sections that read the snapshots as a training order
    assert "Feature classes" not in html and "Dip and recover" not in html and "Trajectories" not in html
    assert "Direction drift" not in html and "Decoder directions between the two models" in html
    assert "Overview" in html
    # nor do its tables and captions: the models by label, each feature by its diffing class
    headers = {h.replace("<wbr>", "") for h in re.findall(r"<th(?: [^>]*)?>(.*?)</th>", html)}
    assert {"model", "present", "class", "relative_norm"} <= headers
    timed = {"step", "tokens_seen", "emerging", "fading", "dipping", "recovering", "emergence_step", "peak_step"}
    assert not headers & timed
    captions = re.findall(
        r'<caption>feature <a class="feature-link" href="feature/\d+">\d+</a> \((.*?)\)</caption>', html
    )
    assert len(captions) == 12 and set(captions) <= {"shared", "tiny-base-only", "tiny-chat-only", "other"}
    assert "initialization" not in html and "emerges at step" not in html
    from crosslens.analysis import analyze_crosscoder
    from crosslens.crosscoders.saved import load_crosscoder_folder

    analysis, _ = analyze_crosscoder(load_crosscoder_folder(run / "final", device="cpu"), emergence=False)
    assert analysis.classes == analysis.diffing.classes and "initialization" not in analysis.classes

    from crosslens.pretrained import LocalHubApi, push_to_hub

    card = push_to_hub(run, "me/tiny-diff", api=LocalHubApi(tmp_path / "hub"), n_eval_tokens=256).card
    assert "# Model-diffing crosscoder: crosslens-test/tiny-base vs crosslens-test/tiny-chat" in card
    # the card gives the diffing classes and the verdict analyze saved beside the run for these weights
    assert "## Model diffing" in card and "## Feature classes" not in card
    assert "Latent scaling on 1,866 tokens, of the one-model-only latents:" in card
    assert "| tiny-chat-only | 0 | 0 | 0 | 0 | 0 |" in card
    # a saved check of other weights (the run trained again since) is said and left out of the card
    again = tf.copy_tree(run, tmp_path / "again")
    record = json.loads((again / EMERGENCE_NAME).read_text())
    record["partners"]["crosscoder"] = "0" * 64
    write_sealed(
        again / EMERGENCE_NAME, {k: v for k, v in record.items() if k != "emergence_sha256"}, "emergence_sha256"
    )
    capsys.readouterr()
    card = push_to_hub(again, "me/tiny-diff-2", api=LocalHubApi(tmp_path / "hub"), n_eval_tokens=256).card
    assert "Latent scaling: not measured" in card and "| tiny-chat-only |" not in card
    assert "note: the card leaves out the check `crosslens analyze` saved:" in capsys.readouterr().out

    dashboards = ["--top-k", "4", "--window", "3", "--batch-size", "48", *CPU]
    assert main(["dashboards", str(run), *dashboards]) == 0
    facts, features = _served(run, ["api/run", "api/features?" + urllib.parse.urlencode({"class": "shared"})])
    assert [s["revision"] for s in facts["snapshots"]] == ["tiny-base", "tiny-chat"]
    present = {name for name, count in facts["classes"].items() if count}
    assert present <= {"shared", "tiny-base-only", "tiny-chat-only", "other", "dead"}
    assert facts["classes"].get("shared", 0) > 0 and features["total"] == facts["classes"]["shared"]

    for kind in ("saebench", "neuronpedia"):
        assert main(["export", str(run), "--format", kind, "--out", str(tmp_path / kind)]) == 0
    assert {p.name for p in (tmp_path / "saebench").iterdir() if p.is_dir()} == {"tiny-base", "tiny-chat"}
    cfg = json.loads((tmp_path / "saebench" / "tiny-chat" / "cfg.json").read_text())
    assert cfg["model_name"] == CHAT
    assert {p.name for p in (tmp_path / "neuronpedia").iterdir() if p.is_dir()} == {
        "tiny-base@tiny-base",
        "tiny-chat@tiny-chat",
    }

    streamed = tmp_path / "streamed"
    stream = ["--models", MODELS, "--hook", HOOK, "--n-tokens", "1024", "--seq-len", "16"]
    train = ["--arch", "crosscoder", "--d-sae", "32", "--n-steps", "8", "--batch-size", "64", "--spliced-seqs", "0"]
    assert main(["train", "--stream", *stream, "--out", str(streamed), *train, *CPU]) == 0
    assert main(["dashboards", str(streamed), "--stream", "--n-tokens", "512", "--seq-len", "16", *dashboards]) == 0
    (facts,) = _served(streamed, ["api/run"])
    assert [s["revision"] for s in facts["snapshots"]] == ["tiny-base", "tiny-chat"]
