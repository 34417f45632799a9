"""The exports: Neuronpedia batch JSON, delphi's latent cache and SAEBench custom SAEs, each checked
against the upstream format as its public code defines it, on a tiny trained run and a feature
database seeded through the schema."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
import trust_fixtures as tf
from safetensors.numpy import load_file

from crosslens.core.hashing import file_sha256
from crosslens.core.paths import EXPORT_MANIFEST_NAME
from crosslens.crosscoders.per_snapshot_sae import SnapshotCodec
from crosslens.crosscoders.saved import load_crosscoder_folder
from crosslens.dashboards import schema
from crosslens.dashboards.record import write_record
from crosslens.exports import ExportError, SnapshotBenchSAE, export_run, load_bench_sae

N_SNAPSHOTS, D_SAE, VOCAB = 3, 32, 60
EDGES = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
REVISIONS = ("step0", "step10", "step20")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3-snapshot suite, a store and a 40-step ReLU crosscoder run (about 3 s)."""
    root = tmp_path_factory.mktemp("exports")
    suite = tf.write_suite(root / "suite")
    tf.harvest(suite, root / "store")
    tf.train(root / "store", root / "run")
    return root


def seed_database(run_dir: Path, *, seed: int = 0) -> dict:
    """A feature database with every feature at every snapshot, two top and two quantile contexts
    each, written through ``schema.create_schema``; returns what was seeded, for the checks."""
    rng = np.random.default_rng(seed)
    path = run_dir / schema.DATABASE_NAME
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    schema.create_schema(db)
    meta = {
        "format": schema.FORMAT,
        "crosscoder": {
            "d_sae": D_SAE,
            "n_snapshots": N_SNAPSHOTS,
            "weights_sha256": file_sha256(run_dir / "final" / "sae_weights.safetensors"),
        },
        "n_tokens": 320,
        "histogram_edges": EDGES,
        "tokens": {"store": {"content_sha256": "0" * 64}, "seq_len": 16},
    }
    db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
    db.executemany(
        "INSERT INTO snapshots VALUES (?, ?, ?, NULL, ?)", [(s, r, 10 * s, r) for s, r in enumerate(REVISIONS)]
    )
    db.executemany("INSERT INTO vocabulary VALUES (?, ?)", [(i, f" w{i}") for i in range(VOCAB)])
    seeded = {}
    for f in range(D_SAE):
        db.execute(
            "INSERT INTO features (feature, class, peak_decoder_norm, density, max_activation) VALUES (?, 'persistent', 1, 0.1, 3)",
            (f,),
        )
        for s in range(N_SNAPSHOTS):
            counts = np.zeros(len(EDGES) - 1, "<u4")
            counts[2:5] = rng.integers(1, 9, 3)
            top_ids = rng.integers(0, 64, 4).astype("<i4")  # ids >= 60 are not in the vocabulary
            row = (
                f,
                s,
                0.5,
                0.5,
                0.01 * (f + 1),
                1.0,
                3.5,
                counts.tobytes(),
                top_ids.tobytes(),
                rng.normal(size=4).astype("<f4").tobytes(),
                rng.integers(0, 60, 4).astype("<i4").tobytes(),
                np.sort(rng.normal(size=4)).astype("<f4").tobytes(),
            )
            db.execute("INSERT INTO feature_snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            windows = [
                ("top", 0, 3.5, None),
                ("top", 1, 3.0, None),
                ("quantile", 0, 1.0, 0.25),
                ("quantile", 1, 2.0, 0.75),
            ]
            for kind, rank, act, q in windows:
                ids = rng.integers(0, 60, 5).astype("<i4")
                acts = rng.uniform(0, act, 5).astype("<f2")
                values = (f, s, kind, rank, int(rng.integers(24)), act, q, ids.tobytes(), acts.tobytes())
                db.execute("INSERT INTO contexts VALUES (?, ?, ?, ?, ?, 7, ?, ?, 5, ?, ?)", values)
            seeded[(f, s)] = {"counts": counts, "top_ids": top_ids, "density": 0.01 * (f + 1)}
    db.commit()
    db.close()
    write_record(run_dir, partners={}, settings={}, n_tokens=320)  # sealed as crosslens dashboards seals one
    return seeded


@pytest.fixture(scope="module")
def seeded(tiny):
    return seed_database(tiny / "run")


# ---------------------------------------------------------------- neuronpedia

# SAEDashboard 0.8.0 (tag v0.8.0, commit 37bb168), sae_dashboard/neuronpedia/neuronpedia_dashboard.py:
# the keys, in order, of NeuronpediaDashboardBatch.to_dict(), NeuronpediaDashboardFeature.to_dict()
# and NeuronpediaDashboardActivation.to_dict() (dfa_values, dfa_maxValue, dfa_targetIndex only with
# DFA data), with the types neuronpedia_converter.py fills them with.
NUMBER, INT, STR, OPT_STR = (int, float), (int,), (str,), (str, type(None))
NP_BATCH = {"model_id": STR, "layer": INT, "sae_set": STR, "sae_id_suffix": OPT_STR, "features": [dict]}
NP_FEATURE = {
    "feature_index": INT,
    "neuron_alignment_indices": [INT],
    "neuron_alignment_values": [NUMBER],
    "neuron_alignment_l1": [NUMBER],
    "correlated_neurons_indices": [INT],
    "correlated_neurons_l1": [NUMBER],
    "correlated_neurons_pearson": [NUMBER],
    "correlated_features_indices": [INT],
    "correlated_features_l1": [NUMBER],
    "correlated_features_pearson": [NUMBER],
    "neg_str": [STR],
    "neg_values": [NUMBER],
    "pos_str": [STR],
    "pos_values": [NUMBER],
    "frac_nonzero": NUMBER,
    "freq_hist_data_bar_values": [NUMBER],
    "freq_hist_data_bar_heights": [NUMBER],
    "logits_hist_data_bar_heights": [NUMBER],
    "logits_hist_data_bar_values": [NUMBER],
    "n_prompts_total": INT,
    "n_tokens_in_prompt": INT,
    "dataset": STR,
    "decoder_weights_dist": [NUMBER],
    "activations": [dict],
    "vector": [NUMBER],
}
NP_ACTIVATION = {
    "bin_min": NUMBER,
    "bin_max": NUMBER,
    "bin_contains": NUMBER,
    "tokens": [STR],
    "values": [NUMBER],
    "qualifying_token_index": INT,
}
# skipped_indexes.json as neuronpedia_runner.py's record_skipped_features writes it
NP_SKIPPED = {"model_id": STR, "layer": STR, "sae_set": STR, "log_sparsity": INT, "skipped_indexes": [INT]}


def check_shape(value: dict, spec: dict, where: str) -> None:
    assert list(value) == list(spec), f"{where}: keys {list(value)} != {list(spec)}"
    for key, kind in spec.items():
        item = value[key]
        if isinstance(kind, list):
            assert isinstance(item, list), f"{where}.{key} is {type(item).__name__}, not a list"
            assert all(isinstance(x, kind[0]) and not isinstance(x, bool) for x in item), f"{where}.{key}: {item[:5]}"
        else:
            assert isinstance(item, kind) and not isinstance(item, bool), f"{where}.{key} is {item!r}"


def test_neuronpedia_export_has_saedashboards_schema(tiny, seeded, tmp_path):
    out = export_run(tiny / "run", format="neuronpedia", out=tmp_path / "np", features_per_batch=12)
    manifest = json.loads((out / EXPORT_MANIFEST_NAME).read_text())
    sources = manifest["neuronpedia"]["sources"]
    assert [s["folder"] for s in sources] == [f"suite@{r}" for r in REVISIONS]
    assert [s["neuronpedia_source_id"] for s in sources] == [f"0-res-crosslens__{r}" for r in REVISIONS]
    for source, revision in zip(sources, REVISIONS):
        folder = out / source["folder"]
        assert sorted(p.name for p in folder.iterdir()) == [
            "batch-0.json",
            "batch-1.json",
            "batch-2.json",
            "skipped_indexes.json",
        ]
        check_shape(json.loads((folder / "skipped_indexes.json").read_text()), NP_SKIPPED, "skipped")
        features = []
        for n in range(3):
            batch = json.loads((folder / f"batch-{n}.json").read_text())
            check_shape(batch, NP_BATCH, f"batch-{n}")
            assert (batch["model_id"], batch["layer"], batch["sae_set"], batch["sae_id_suffix"]) == (
                "suite",
                0,
                "res-crosslens",
                revision,
            )
            features += batch["features"]
        assert [f["feature_index"] for f in features] == list(range(D_SAE))  # every feature, in order
        for feature in features:
            check_shape(feature, NP_FEATURE, f"feature {feature['feature_index']}")
            for activation in feature["activations"]:
                check_shape(activation, NP_ACTIVATION, "activation")
                assert (
                    0 <= activation["qualifying_token_index"] < len(activation["tokens"]) == len(activation["values"])
                )


def test_neuronpedia_values_come_from_the_database_and_the_decoder(tiny, seeded, tmp_path):
    out = export_run(tiny / "run", format="neuronpedia", out=tmp_path / "np", snapshots=["step10"])
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_MANIFEST_NAME, "suite@step10"]
    feature = json.loads((out / "suite@step10" / "batch-0.json").read_text())["features"][5]
    row = seeded[(5, 1)]
    assert feature["frac_nonzero"] == pytest.approx(row["density"])
    assert feature["freq_hist_data_bar_heights"] == [int(c) for c in row["counts"][2:5]]  # empty end bins dropped
    assert feature["freq_hist_data_bar_values"] == [1.25, 1.75, 2.25]  # bin centres
    assert feature["pos_str"] == [f" w{i}" if i < VOCAB else "<|outofrange|>" for i in row["top_ids"]]
    top, quantile = feature["activations"][:2], feature["activations"][2:]
    assert [(a["bin_min"], a["bin_max"], a["bin_contains"]) for a in top] == [(-1, 3.5, -1)] * 2
    assert [a["bin_max"] for a in quantile] == [2.0, 1.0]  # highest quantile first
    assert [a["bin_contains"] for a in quantile] == [pytest.approx(0.5 * 0.06), pytest.approx(0.5 * 0.06)]
    assert all(a["qualifying_token_index"] == 2 for a in feature["activations"])  # pos 7 - first_pos 5
    assert (feature["n_tokens_in_prompt"], feature["n_prompts_total"]) == (16, 20)
    direction = SnapshotCodec(load_crosscoder_folder(tiny / "run" / "final"), 1).raw_weights()["W_dec"][5].detach()
    top3 = torch.topk(direction, 3)
    assert feature["neuron_alignment_indices"] == top3.indices.tolist()
    assert feature["neuron_alignment_values"] == pytest.approx(top3.values.tolist(), abs=1e-5)
    assert feature["neuron_alignment_l1"] == pytest.approx(
        (top3.values.abs() / direction.abs().sum()).tolist(), abs=1e-5
    )
    assert feature["correlated_neurons_indices"] == feature["logits_hist_data_bar_values"] == feature["vector"] == []


# ---------------------------------------------------------------- delphi

# eai-delphi 0.1.3 (its repository at commit 3c2e139 the same), delphi/latents/cache.py
# (LatentCache.save_splits, save_config) and delphi/latents/loader.py (TensorBuffer, LatentDataset):
# per hookpoint folder, files FIRST_LAST.safetensors cut at torch.linspace(0, width, n_splits + 1),
# holding locations [n, 3] (uint16 below 2**16, else uint32; column 2 = latent - FIRST),
# activations [n] float16 and tokens [n_seqs, seq_len]; config.json = CacheConfig.to_dict() +
# model_name. delphi itself is not installed here: eai-delphi requires vllm, whose install would
# downgrade numpy and transformers in crosslens's environment and add a CUDA stack, so this test
# checks the documented format instead, and the load with delphi's LatentDataset is the optional
# test below.
DELPHI_CONFIG_KEYS = [
    "dataset_repo",
    "dataset_split",
    "dataset_name",
    "dataset_column",
    "batch_size",
    "cache_ctx_len",
    "n_tokens",
    "n_splits",
    "model_name",
]


def expected_firings(tiny: Path, snapshot: int) -> dict[tuple[int, int, int], float]:
    """(sequence, position, latent) -> activation of every per-snapshot code above 1e-5, computed
    directly from the store."""
    from crosslens.activations.store import ActivationStore

    store = ActivationStore.open(tiny / "store")
    crosscoder = load_crosscoder_folder(tiny / "run" / "final")
    acts = store.read(tf.HOOK, slice(None), normalize=False)[:, snapshot]
    with torch.no_grad():
        codes = SnapshotCodec(crosscoder, snapshot).encode_single(acts)
    rows, latents = (codes.abs() > 1e-5).nonzero(as_tuple=True)
    where = store.positions[rows]
    return {(int(a), int(b), int(c)): float(codes[r, c]) for a, b, c, r in zip(where[:, 0], where[:, 1], latents, rows)}


def test_delphi_cache_has_delphis_layout_and_every_firing(tiny, tmp_path):
    out = export_run(tiny / "run", format="delphi", out=tmp_path / "dl", n_splits=3, batch_size=100)
    modules = sorted(p.name for p in (out / "latents").iterdir())
    assert modules == sorted(f"{tf.HOOK}@{r}" for r in REVISIONS)
    from crosslens.activations.store import ActivationStore

    sequences = ActivationStore.open(tiny / "store").sequences
    for s, revision in enumerate(REVISIONS):
        folder = out / "latents" / f"{tf.HOOK}@{revision}"
        files = sorted((p.name for p in folder.glob("*.safetensors")), key=lambda n: int(n.split("_")[0]))
        assert files == ["0_9.safetensors", "10_20.safetensors", "21_31.safetensors"]  # linspace(0, 32, 4)
        config = json.loads((folder / "config.json").read_text())
        assert list(config)[: len(DELPHI_CONFIG_KEYS)] == DELPHI_CONFIG_KEYS
        assert config["n_splits"] == 3 and config["cache_ctx_len"] == 16
        assert Path(config["model_name"], "tokenizer_config.json").is_file()
        found = {}
        for name in files:
            first, last = (int(x) for x in name.removesuffix(".safetensors").split("_"))
            data = load_file(str(folder / name))
            assert set(data) == {"locations", "activations", "tokens"}
            assert data["locations"].dtype == np.uint16 and data["locations"].shape[1] == 3
            assert data["activations"].dtype == np.float16 and len(data["activations"]) == len(data["locations"])
            assert np.array_equal(data["tokens"], sequences.numpy()) and data["tokens"].dtype == np.int64
            loc = data["locations"].astype(np.int64)
            assert loc[:, 2].max() <= last - first  # sharded by latent, local indices
            assert np.all(np.diff(loc[:, 0] * 10**6 + loc[:, 1] * 10**3 + loc[:, 2]) > 0)  # delphi's order
            found.update(
                {(a, b, c + first): float(v) for (a, b, c), v in zip(loc.tolist(), data["activations"].tolist())}
            )
        expected = expected_firings(tiny, s)
        assert found.keys() == expected.keys()
        assert all(found[key] == pytest.approx(value, rel=2e-3, abs=1e-4) for key, value in expected.items())


def test_delphi_token_budget_keeps_whole_sequences(tiny, tmp_path):
    out = export_run(tiny / "run", format="delphi", out=tmp_path / "dl", snapshots=["step0"], n_tokens=40, n_splits=1)
    data = load_file(str(out / "latents" / f"{tf.HOOK}@step0" / "0_31.safetensors"))
    assert data["tokens"].shape == (2, 16)  # 15 stored tokens a sequence (BOS excluded): 30 <= 40 < 45
    assert set(data["locations"][:, 0].tolist()) <= {0, 1}
    expected = {key for key in expected_firings(tiny, 0) if key[0] < 2}
    assert {tuple(row) for row in data["locations"].astype(int).tolist()} == expected


def test_delphi_loads_the_cache_with_its_own_loader(tiny, tmp_path):
    """Where eai-delphi is installed (not in crosslens's own environment, see above)."""
    pytest.importorskip("delphi.latents", reason="eai-delphi is not installed (it needs vllm; see the comment above)")
    from delphi.config import ConstructorConfig, SamplerConfig
    from delphi.latents import LatentDataset
    from transformers import AutoTokenizer

    out = export_run(tiny / "run", format="delphi", out=tmp_path / "dl", n_splits=2)
    module = f"{tf.HOOK}@step10"
    config = json.loads((out / "latents" / module / "config.json").read_text())
    dataset = LatentDataset(
        out / "latents",
        SamplerConfig(),
        ConstructorConfig(),
        modules=[module],
        tokenizer=AutoTokenizer.from_pretrained(config["model_name"]),
    )
    assert torch.equal(
        dataset.tokens, torch.from_numpy(load_file(str(out / "latents" / module / "0_15.safetensors"))["tokens"])
    )
    latents = {int(data.latent.latent_index) for buffer in dataset.buffers for data in buffer}
    assert latents == {c for _, _, c in expected_firings(tiny, 1)}


# ---------------------------------------------------------------- saebench

# sae-bench 0.6.0 (its repository at tag v0.6.0, commit 8042bb3): the fields of
# sae_bench/custom_saes/custom_sae_config.py's CustomSAEConfig, in order, and the interface
# sae_bench/custom_saes/base_sae.py and custom_saes/README.md ask of a custom SAE. sae-bench is not
# installed here: it requires numpy < 2 and datasets < 4, below what crosslens's environment has.
CUSTOM_SAE_CONFIG_FIELDS = [
    "model_name",
    "d_in",
    "d_sae",
    "hook_layer",
    "hook_name",
    "context_size",
    "hook_head_index",
    "architecture",
    "apply_b_dec_to_input",
    "finetuning_scaling_factor",
    "activation_fn_str",
    "prepend_bos",
    "normalize_activations",
    "dtype",
    "device",
    "dataset_path",
    "dataset_trust_remote_code",
    "seqpos_slice",
    "training_tokens",
    "sae_lens_training_version",
    "neuronpedia_id",
]


def random_crosscoder(architecture: str):
    import crosslens.crosscoders as crosscoders

    sae_cls, cfg_cls = crosscoders.ARCHITECTURES[architecture][:2]
    extra = {"k": 4} if architecture == "topk_crosscoder" else {}
    crosscoder = sae_cls(cfg_cls(d_in=16, d_sae=24, n_snapshots=3, **extra))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in crosscoder.named_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
            if name == "threshold":
                parameter.abs_()
        crosscoder.W_dec[3, 1] = 0  # feature 3 never reaches snapshot 1
    crosscoder.cfg.metadata.hook_name = "blocks.2.hook_resid_post"
    crosscoder.cfg.metadata.activation_norm_factors = [1.5, 2.0, 0.5]
    return crosscoder


@pytest.mark.parametrize(
    "architecture", ["crosscoder", "jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder"]
)
def test_bench_sae_is_saebenchs_interface_over_the_per_snapshot_mode(architecture):
    crosscoder = random_crosscoder(architecture)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(2)) * 2
    for s in range(3):
        sae = SnapshotBenchSAE(crosscoder, s)
        for name, shape in (("W_enc", (16, 24)), ("W_dec", (24, 16)), ("b_enc", (24,)), ("b_dec", (16,))):
            assert isinstance(getattr(sae, name), torch.nn.Parameter) and getattr(sae, name).shape == shape
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(24), atol=1e-5) and sae.check_decoder_norms()
        assert isinstance(sae.device, torch.device) and sae.dtype == torch.float32
        assert list(sae.cfg.to_dict())[: len(CUSTOM_SAE_CONFIG_FIELDS)] == CUSTOM_SAE_CONFIG_FIELDS
        assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.hook_layer, sae.cfg.hook_name) == (
            16,
            24,
            2,
            "blocks.2.hook_resid_post",
        )
        assert sae.cfg.dtype == "float32" and sae.cfg.model_from_pretrained_kwargs == {}
        codec = SnapshotCodec(crosscoder, s)
        with torch.no_grad():
            code = codec.encode_single(x)
            norms = codec.raw_weights()["W_dec"].norm(dim=1)
            assert torch.allclose(sae.decode(sae.encode(x)), codec.decode(code), atol=1e-5)
            assert torch.allclose(sae(x), codec.decode(code), atol=1e-5)
            assert torch.allclose(sae.encode(x), code * norms, atol=1e-5)


def test_saebench_export_loads_back(tiny, tmp_path):
    out = export_run(tiny / "run", format="saebench", out=tmp_path / "sb", snapshots=["10", "step20"])
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_MANIFEST_NAME, "step10", "step20"]
    crosscoder = load_crosscoder_folder(tiny / "run" / "final")
    x = torch.randn(20, crosscoder.cfg.d_in) * 0.2
    for s, revision in ((1, "step10"), (2, "step20")):
        assert sorted(p.name for p in (out / revision).iterdir()) == ["cfg.json", "sae_weights.safetensors"]
        sae = load_bench_sae(out / revision)
        assert (sae.cfg.snapshot, sae.cfg.step, sae.cfg.model_name, sae.cfg.architecture) == (
            revision,
            10 * s,
            "suite",
            "standard",
        )
        # what SAEBench's _standardize_sae_cfg (sae_bench_utils/general_utils.py) refuses to go without
        assert None not in (sae.cfg.hook_name, sae.cfg.hook_layer, sae.cfg.model_name)
        codec = SnapshotCodec(crosscoder, s)
        with torch.no_grad():
            assert torch.allclose(sae(x), codec.decode(codec.encode_single(x)), atol=1e-5)


# ---------------------------------------------------------------- determinism and bad input


@pytest.mark.parametrize("fmt", ["neuronpedia", "delphi", "saebench"])
def test_same_run_exports_the_same_bytes(tiny, seeded, tmp_path, fmt):
    first = export_run(tiny / "run", format=fmt, out=tmp_path / "a")
    second = export_run(tiny / "run", format=fmt, out=tmp_path / "b")
    assert tf.tree_bytes(first) == tf.tree_bytes(second)
    again = export_run(tiny / "run", format=fmt, out=first, overwrite=True)
    assert tf.tree_bytes(again) == tf.tree_bytes(second)


def one_line_error(tmp_path: Path, run: Path, **kwargs) -> str:
    with pytest.raises(ExportError) as error:
        export_run(run, **{"out": tmp_path / "out", "format": "saebench", **kwargs})
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_bad_input_is_refused_in_one_line_naming_the_fix(tiny, seeded, tmp_path):
    run = tiny / "run"
    assert "one of neuronpedia, delphi, saebench" in one_line_error(tmp_path, run, format="sae_vis")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text("{}")
    assert "has no final crosscoder (final/cfg.json); finish its training" in one_line_error(tmp_path, unfinished)
    final = run / "final"  # the crosscoder's folder for its run: it was told to finish training
    assert one_line_error(tmp_path, final).endswith(
        f"{final} is a crosscoder's folder inside the run {run}; pass the run folder {run}"
    )
    assert "which this run does not have; pick from step0, step10, step20" in one_line_error(
        tmp_path, run, snapshots=["step5"]
    )
    assert "lies inside the run folder" in one_line_error(tmp_path, run, out=run / "exports")

    existing = export_run(run, format="saebench", out=tmp_path / "out")
    before = tf.tree_bytes(existing)
    assert "already holds a saebench export; pass overwrite=True (`--overwrite`)" in one_line_error(
        tmp_path, run, format="delphi"
    )
    (existing / "notes.txt").write_text("mine")
    assert "notes.txt, which the export did not write" in one_line_error(tmp_path, run, overwrite=True)
    assert tf.tree_bytes(existing) == {**before, "notes.txt": b"mine"}  # nothing lost
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("x")
    assert "holds no crosslens export; pick a new or empty folder" in one_line_error(
        tmp_path, run, out=tmp_path / "other"
    )
    assert not list(tmp_path.glob(".*.partial"))


def test_a_python_caller_is_told_the_keywords_that_fix_a_refused_out(tiny, seeded, tmp_path):
    """``export_run`` is called from notebooks too, so a refused ``out`` names the keyword beside
    the flag, and the keyword named does what the message says."""
    run = tiny / "run"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert one_line_error(tmp_path, run, out=a_file) == f"{a_file} is a file; pass a folder for out (`--out`)"
    inside = run / "exports"
    assert one_line_error(tmp_path, run, out=inside) == (
        f"out (`--out`) {inside} lies inside the run folder {run}; pick a folder outside it"
    )
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("x")
    assert one_line_error(tmp_path, run, out=other) == (
        f"{other} is not empty and holds no crosslens export; pick a new or empty folder for out (`--out`)"
    )
    existing = export_run(run, format="saebench", out=tmp_path / "out")
    assert one_line_error(tmp_path, run) == (
        f"{existing} already holds a saebench export; pass overwrite=True (`--overwrite`) to replace it, or pick "
        "another out (`--out`)"
    )
    (existing / "notes.txt").write_text("mine")
    assert one_line_error(tmp_path, run, overwrite=True) == (
        f"{existing} holds a saebench export and also notes.txt, which the export did not write; move it away or "
        "pick another out (`--out`)"
    )
    (existing / "notes.txt").unlink()
    assert export_run(run, format="saebench", out=existing, overwrite=True) == existing


def test_neuronpedia_needs_a_sound_database(tiny, tmp_path):
    run = tf.copy_tree(tiny / "run", tmp_path / "run")
    (run / schema.DATABASE_NAME).unlink(missing_ok=True)
    assert "has no feature database (dashboards.sqlite); run `crosslens dashboards" in one_line_error(
        tmp_path, run, format="neuronpedia"
    )
    (run / schema.RECORD_NAME).unlink(missing_ok=True)
    (run / schema.DATABASE_NAME).write_bytes(b"not a database at all" * 100)
    assert "has no sealed record beside it" in one_line_error(tmp_path, run, format="neuronpedia")
    write_record(run, partners={}, settings={}, n_tokens=0)  # sealed, yet not SQLite
    assert "rebuild it with `crosslens dashboards" in one_line_error(tmp_path, run, format="neuronpedia")
    foreign = sqlite3.connect(run / schema.DATABASE_NAME.replace(".sqlite", "2.sqlite"))
    foreign.execute("CREATE TABLE t (x)")
    foreign.close()
    (run / schema.DATABASE_NAME.replace(".sqlite", "2.sqlite")).replace(run / schema.DATABASE_NAME)
    write_record(run, partners={}, settings={}, n_tokens=0)
    assert "not a crosslens feature database" in one_line_error(tmp_path, run, format="neuronpedia")
    seed_database(run)
    db = sqlite3.connect(run / schema.DATABASE_NAME)
    db.execute("DELETE FROM feature_snapshots WHERE feature = 7 AND snapshot = 2")
    db.commit()
    db.close()
    assert "sha256 differs: damaged or edited" in one_line_error(tmp_path, run, format="neuronpedia")
    write_record(run, partners={}, settings={}, n_tokens=0)  # even a sealed one is checked row by row
    assert "no row for feature 7 at snapshot step20 (it is incomplete)" in one_line_error(
        tmp_path, run, format="neuronpedia"
    )
    db = sqlite3.connect(run / schema.DATABASE_NAME)
    db.execute("UPDATE meta SET value = ? WHERE key = 'crosscoder'", (json.dumps({"weights_sha256": "f" * 64}),))
    db.commit()
    db.close()
    write_record(run, partners={}, settings={}, n_tokens=0)
    assert "computed for another crosscoder" in one_line_error(tmp_path, run, format="neuronpedia")
    assert not (tmp_path / "out").exists()


def test_an_interrupted_export_leaves_out_as_it_was(tiny, tmp_path, monkeypatch):
    out = export_run(tiny / "run", format="saebench", out=tmp_path / "out", snapshots=["step0"])
    before = tf.tree_bytes(out)
    save, calls = SnapshotBenchSAE.save, []

    def save_then_stop(self, folder):
        calls.append(folder)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second snapshot is written
        save(self, folder)

    monkeypatch.setattr(SnapshotBenchSAE, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        export_run(tiny / "run", format="saebench", out=out, overwrite=True)
    assert tf.tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder left behind
