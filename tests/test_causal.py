"""crosslens.causal: splicing, integrated gradients (vs Captum), completeness, ablation, RelIE."""

from __future__ import annotations

import copy
import dataclasses
import json
import types

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from tiny_crosscoders import random_architecture
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from crosslens.causal import (
    AttributionConfig,
    IETable,
    RelIEThresholds,
    SnapshotCodec,
    ablate,
    ablation_curves,
    attribute,
    class_counts,
    classify_relie,
    integrated_gradients,
    reldec,
    relie,
    relie_pairwise,
    splice,
    task_metric,
)
from crosslens.causal.ablation import ablation_curve, ablation_edit
from crosslens.causal.attribution import attribute_snapshot, ig_endpoints, logit_diff
from crosslens.causal.ig import attribution_patching
from crosslens.causal.plots import ablation_curves_figure, relie_heatmap, relie_vs_reldec
from crosslens.causal.relative_ie import select_top_features
from crosslens.causal.snapshot_models import collect_activations, collect_task_activations, run_from_hook
from crosslens.causal.splicing import exact_codes
from crosslens.core.errors import CrosslensError, PartnerMismatchError
from crosslens.tasks import MinimalPair, TaskDataset
from crosslens.tasks import agreement as lexicon
from crosslens.tasks.agreement import agreement_pairs

HOOK = "blocks.0.hook_resid_post"
N_SNAPSHOTS, D_MODEL, D_SAE = 3, 32, 64
FACTORS = [2.0, 0.5, 1.5]
ARCHITECTURES = ["crosscoder", "jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder"]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    words = ["<bos>", "<pad>", "<unk>", "The", "the", "that"]
    for pair in lexicon.SUBJECT_NOUNS + lexicon.PLACE_NOUNS + lexicon.AGREEING_VERBS:
        words += list(pair)
    words += [*lexicon.ADJECTIVES, *lexicon.PREPOSITIONS, *lexicon.CLAUSE_VERBS]
    inner = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def snapshots(tokenizer) -> list[HookedTransformer]:
    """Three tiny random 'snapshots' of one architecture."""
    out = []
    for seed in range(N_SNAPSHOTS):
        cfg = HookedTransformerConfig(
            n_layers=2,
            d_model=D_MODEL,
            n_ctx=24,
            d_head=8,
            n_heads=4,
            d_vocab=len(tokenizer),
            act_fn="gelu",
            normalization_type="LN",
            seed=seed,
        )
        model = HookedTransformer(cfg)
        model.eval()
        out.append(model)
    return out


def make_crosscoder(arch: str, n_snapshots: int = N_SNAPSHOTS, seed: int = 0):
    crosscoder, _ = random_architecture(
        arch, d_in=D_MODEL, d_sae=D_SAE, n_snapshots=n_snapshots, seed=seed, k=8, threshold=0.4
    )
    crosscoder.cfg.metadata.hook_name = HOOK
    crosscoder.cfg.metadata.activation_norm_factors = FACTORS[:n_snapshots]
    return crosscoder


@pytest.fixture(scope="module")
def task(tokenizer):
    return agreement_pairs("pp", n=6, seed=0).tokenize(tokenizer)


@pytest.fixture(scope="module")
def acts_all(snapshots, task):
    return collect_activations(snapshots, HOOK, task.clean_tokens, task.mask.long())


def logits(model, task):
    with torch.no_grad():
        return model(task.clean_tokens, attention_mask=task.mask.long())


# ---------------------------------------------------------------------------- splicing
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_codec_reconstructs_like_the_crosscoder(arch, acts_all):
    crosscoder = make_crosscoder(arch)
    factors = torch.tensor(FACTORS)
    x_NSD = acts_all.reshape(-1, N_SNAPSHOTS, D_MODEL) * factors[:, None]
    with torch.no_grad():
        reference = crosscoder.decode(crosscoder.encode(x_NSD))
        for s in range(N_SNAPSHOTS):
            codec = SnapshotCodec(crosscoder, s)
            mine = codec.decode(codec.encode(acts_all.reshape(-1, N_SNAPSHOTS, D_MODEL)))
            torch.testing.assert_close(mine, reference[:, s] / factors[s], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_splice_with_error_kept_leaves_logits_unchanged(arch, snapshots, task, acts_all):
    crosscoder = make_crosscoder(arch)
    model = snapshots[1]
    clean = logits(model, task)
    codes = exact_codes(crosscoder, acts_all, 1)
    for kwargs in ({}, {"codes": codes}, {"codes": codes, "error": "detach"}):
        with splice(model, crosscoder, snapshot=1, **kwargs) as state:
            spliced = logits(model, task)
        assert state.n_calls == 1
        assert float(state.codes.abs().sum()) > 0  # the crosscoder really is in the loop
        torch.testing.assert_close(spliced, clean, rtol=0, atol=1e-5)
    with splice(model, crosscoder, snapshot=1, codes=codes, error="drop"):
        dropped = logits(model, task)
    assert float((dropped - clean).abs().max()) > 1e-3


def test_splice_removes_hooks_even_when_the_block_raises(snapshots, task):
    crosscoder = make_crosscoder("crosscoder")
    model = snapshots[0]
    clean = logits(model, task)
    with pytest.raises(RuntimeError, match="boom"):
        with splice(model, crosscoder, snapshot=0, error="drop"):
            assert len(model.hook_dict[HOOK].fwd_hooks) == 1
            raise RuntimeError("boom")
    assert model.hook_dict[HOOK].fwd_hooks == []
    wrong_codes = torch.zeros(1, 2, D_SAE)
    with pytest.raises(ValueError, match="do not match the activation"):
        with splice(model, crosscoder, snapshot=0, codes=wrong_codes):
            logits(model, task)
    assert all(not hook.fwd_hooks for hook in model.hook_dict.values())
    torch.testing.assert_close(logits(model, task), clean, rtol=0, atol=0)


def test_dropping_error_and_all_features_leaves_b_dec(snapshots, task):
    crosscoder = make_crosscoder("jumprelu_crosscoder")
    s = 2
    model = snapshots[s]
    b_dec = crosscoder.b_dec[s].detach() / FACTORS[s]
    torch.testing.assert_close(SnapshotCodec(crosscoder, s).bias(), b_dec)
    with torch.no_grad():
        expected = model.run_with_hooks(
            task.clean_tokens,
            attention_mask=task.mask.long(),
            fwd_hooks=[(HOOK, lambda act, hook: b_dec.expand_as(act).clone())],
        )
    with ablate(model, crosscoder, snapshot=s, features=range(D_SAE), error="drop"):
        ablated = logits(model, task)
    torch.testing.assert_close(ablated, expected, rtol=0, atol=1e-5)


def test_folded_and_unfolded_crosscoders_splice_identically(snapshots, task, acts_all):
    """The normalisation factor is applied around an unfolded crosscoder and skipped once folded."""
    unfolded = make_crosscoder("crosscoder")
    folded = copy.deepcopy(unfolded)
    folded.fold_activation_norm_scaling_factors(FACTORS)
    model = snapshots[1]
    outputs = []
    for crosscoder in (unfolded, folded):
        with splice(model, crosscoder, snapshot=1, codes=exact_codes(crosscoder, acts_all, 1), error="drop") as state:
            outputs.append((logits(model, task), state.error))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs[0][1], outputs[1][1], rtol=1e-4, atol=1e-4)


def test_spliced_model_sees_the_reconstruction_on_its_own_scale(snapshots, task, acts_all):
    """With the error dropped the hook carries ``crosscoder(c * a)[s] / c_s``: inputs normalised, output rescaled."""
    crosscoder = make_crosscoder("crosscoder")
    model = snapshots[2]
    factors = torch.tensor(FACTORS)
    with torch.no_grad():
        expected = crosscoder(acts_all * factors[:, None])[:, :, 2] / factors[2]
    seen = {}

    def capture(activation, hook):
        seen["acts"] = activation.detach()

    with splice(model, crosscoder, snapshot=2, codes=exact_codes(crosscoder, acts_all, 2), error="drop"):
        with model.hooks(fwd_hooks=[(HOOK, capture)]):  # runs after the splice hook
            logits(model, task)
    torch.testing.assert_close(seen["acts"], expected, rtol=1e-5, atol=1e-5)
    # with the factors ignored the model would see a different activation
    with splice(
        model, crosscoder, snapshot=2, codes=exact_codes(crosscoder, acts_all, 2), error="drop", norm_factors=[1.0] * 3
    ):
        with model.hooks(fwd_hooks=[(HOOK, capture)]):
            logits(model, task)
    assert float((seen["acts"] - expected).abs().max()) > 1e-2


def test_per_snapshot_codes_use_only_that_snapshots_encoder(acts_all):
    crosscoder = make_crosscoder("crosscoder")
    codec = SnapshotCodec(crosscoder, 1)
    a_ND = acts_all[:, :, 1].reshape(-1, D_MODEL)
    with torch.no_grad():
        expected = torch.relu(a_ND * FACTORS[1] @ crosscoder.W_enc[1] + crosscoder.b_enc)
        torch.testing.assert_close(codec.encode_single(a_ND), expected, rtol=1e-5, atol=1e-5)
        exact = codec.encode(acts_all.reshape(-1, N_SNAPSHOTS, D_MODEL))
    assert float((exact - expected).abs().max()) > 1e-2  # the modes differ with several snapshots
    single = make_crosscoder("crosscoder", n_snapshots=1)
    codec_1 = SnapshotCodec(single, 0)
    with torch.no_grad():
        torch.testing.assert_close(codec_1.encode_single(a_ND), codec_1.encode(a_ND[:, None]), rtol=0, atol=0)


@pytest.mark.parametrize(
    "hook", ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"]
)
@pytest.mark.parametrize("positions", ["standard", "rotary"])
def test_run_from_hook_matches_a_full_forward_pass(hook, positions, snapshots, task):
    model = snapshots[0]
    if positions == "rotary":  # GPT-NeoX / Pythia style: positions enter inside every attention layer
        cfg = HookedTransformerConfig(
            n_layers=2,
            d_model=D_MODEL,
            n_ctx=24,
            d_head=8,
            n_heads=4,
            d_vocab=model.cfg.d_vocab,
            act_fn="gelu",
            normalization_type="LN",
            positional_embedding_type="rotary",
            rotary_dim=4,
            parallel_attn_mlp=True,
            seed=5,
        )
        model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        full, cache = model.run_with_cache(task.clean_tokens, attention_mask=task.mask.long(), names_filter=[hook])
        resumed = run_from_hook(model, hook, cache[hook], task.clean_tokens, task.mask.long())
    torch.testing.assert_close(resumed, full, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- integrated gradients
def _toy_metric_net():
    generator = torch.Generator().manual_seed(1)
    W_f = torch.randn(6, 5, generator=generator)
    W_e = torch.randn(4, 5, generator=generator)
    v = torch.randn(5, generator=generator)

    def metric(f, e):  # any leading axes; per-example scalar
        return torch.tanh(f @ W_f + e @ W_e) @ v + (f**2).sum(-1) * 0.1

    return metric


def test_integrated_gradients_matches_captum():
    metric = _toy_metric_net()
    generator = torch.Generator().manual_seed(2)
    f_clean, f_patch = torch.randn(3, 6, generator=generator), torch.randn(3, 6, generator=generator)
    e_clean, e_patch = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    captum = IntegratedGradients(lambda f, e: metric(f, e))
    ref_f, ref_e = captum.attribute((f_patch, e_patch), baselines=(f_clean, e_clean), n_steps=10, method="riemann_left")
    for batched in (True, 3, False):
        ours = integrated_gradients(metric, f_clean, f_patch, e_clean, e_patch, n_steps=10, batched=batched)
        torch.testing.assert_close(ours.features, ref_f, rtol=0, atol=1e-4)
        torch.testing.assert_close(ours.error, ref_e, rtol=0, atol=1e-4)
        torch.testing.assert_close(ours.metric_path[0], metric(f_clean, e_clean), rtol=0, atol=1e-6)
    patching = attribution_patching(metric, f_clean, f_patch, e_clean, e_patch)
    f0 = f_clean.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(metric(f0, e_clean).sum(), f0)
    torch.testing.assert_close(patching.features, (f_patch - f_clean) * grad, rtol=0, atol=1e-6)


def test_integrated_gradients_completeness_improves_like_one_over_n():
    metric = _toy_metric_net()
    generator = torch.Generator().manual_seed(3)
    f_clean, f_patch = torch.randn(4, 6, generator=generator), torch.randn(4, 6, generator=generator)
    e_clean, e_patch = torch.randn(4, 4, generator=generator), torch.randn(4, 4, generator=generator)
    target = metric(f_patch, e_patch) - metric(f_clean, e_clean)
    gaps = {}
    for n in (10, 100, 1000):
        result = integrated_gradients(metric, f_clean, f_patch, e_clean, e_patch, n_steps=n)
        total = result.features.sum(-1) + result.error.sum(-1)
        gaps[n] = float((total - target).abs().max())
    assert gaps[100] < gaps[10] / 5 and gaps[1000] < gaps[100] / 5
    # stated tolerance: at n = 1000 the sum is within 0.5% of the largest metric change
    assert gaps[1000] < 5e-3 * float(target.abs().max())


def test_integrated_gradients_rejects_bad_inputs():
    metric = _toy_metric_net()
    f = torch.zeros(2, 6)
    with pytest.raises(ValueError, match="both err_clean and err_patch"):
        integrated_gradients(metric, f, f, torch.zeros(2, 4), None)
    with pytest.raises(ValueError, match="path points along its first axis"):
        integrated_gradients(lambda f, e: f.sum(), f, f, n_steps=3)


@pytest.fixture(scope="module")
def jumprelu():
    return make_crosscoder("jumprelu_crosscoder")


def test_model_attribution_matches_captum(snapshots, task, acts_all, jumprelu):
    """IG through the model equals Captum's IntegratedGradients on the same function of (f, e)."""
    s, model = 1, snapshots[1]
    codes_clean = exact_codes(jumprelu, acts_all, s)
    acts_patch_all = collect_activations(snapshots, HOOK, task.corrupted_tokens, task.mask.long())
    codes_patch = exact_codes(jumprelu, acts_patch_all, s)
    ours = attribute_snapshot(
        model,
        jumprelu,
        task,
        snapshot=s,
        acts_clean=acts_all[:, :, s],
        acts_patch=acts_patch_all[:, :, s],
        codes_clean=codes_clean,
        codes_patch=codes_patch,
        config=AttributionConfig(n_steps=10, batch_size=4),
        keep_per_token=True,
    )

    codec = SnapshotCodec(jumprelu, s)
    positions = task.feature_mask()
    with torch.no_grad():
        f_clean, e_clean, f_patch, e_patch = ig_endpoints(
            codec, acts_all[:, :, s], codes_clean, acts_patch_all[:, :, s], codes_patch, positions
        )

    def forward(f, e):
        repeats = f.shape[0] // len(task)
        out = run_from_hook(
            model, HOOK, codec.decode(f) + e, task.clean_tokens.repeat(repeats, 1), task.mask.long().repeat(repeats, 1)
        )
        last = out[torch.arange(out.shape[0]), task.last_pos.repeat(repeats)]
        return logit_diff(last, task.correct_ids.repeat(repeats), task.wrong_ids.repeat(repeats))

    ref_f, ref_e = IntegratedGradients(forward).attribute(
        (f_patch, e_patch), baselines=(f_clean, e_clean), n_steps=10, method="riemann_left"
    )
    torch.testing.assert_close(ours.per_token, ref_f, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours.per_token_error, ref_e.sum(-1), rtol=0, atol=1e-4)
    # the patch end is the corrupted run itself (error kept, exact codes)
    with torch.no_grad():
        out = model(task.corrupted_tokens, attention_mask=task.mask.long())
    expected_patch = logit_diff(out[torch.arange(len(task)), task.last_pos], task.correct_ids, task.wrong_ids)
    torch.testing.assert_close(ours.metric_patch, expected_patch, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours.metric_clean, task_metric(model, task), rtol=0, atol=1e-4)


def test_model_attribution_completeness_and_batching(snapshots, task, jumprelu):
    model = snapshots[2]
    gaps = {}
    for n in (4, 40):
        result = attribute_snapshot(model, jumprelu, task, snapshot=2, config=AttributionConfig(n_steps=n))
        gaps[n] = float(result.completeness_gap().abs().max())
        change = float((result.metric_patch - result.metric_clean).abs().max())
    assert change > 0.05  # the corrupted prompt really moves the metric
    assert gaps[40] < gaps[4] / 5
    assert gaps[40] < 0.03 * change  # stated tolerance: within 3% of the metric change at n = 40
    looped = attribute_snapshot(
        model, jumprelu, task, snapshot=2, config=AttributionConfig(n_steps=5, steps_per_pass=1, batch_size=2)
    )
    batched = attribute_snapshot(model, jumprelu, task, snapshot=2, config=AttributionConfig(n_steps=5))
    torch.testing.assert_close(looped.ie, batched.ie, rtol=0, atol=1e-5)
    assert looped.error_ie == pytest.approx(batched.error_ie, abs=1e-5)


def test_zero_patch_task_and_per_token_threshold(snapshots, tokenizer, jumprelu):
    """BLiMP-style tasks (no corrupted prompt) patch to f = 0, e = 0 at feature positions."""
    pairs = [MinimalPair(p.clean, p.correct, p.wrong) for p in agreement_pairs("simple", n=5, seed=1)]
    plain = TaskDataset(name="plain", pairs=tuple(pairs)).tokenize(tokenizer)
    model = snapshots[0]
    result = attribute_snapshot(
        model, jumprelu, plain, snapshot=0, config=AttributionConfig(n_steps=8), keep_per_token=True
    )
    b_dec = jumprelu.b_dec[0].detach() / FACTORS[0]
    positions = plain.feature_mask()

    def to_bias(act, hook):
        return torch.where(positions[..., None], b_dec.expand_as(act), act)

    with model.hooks(fwd_hooks=[(HOOK, to_bias)]):
        expected = task_metric(model, plain)
    torch.testing.assert_close(result.metric_patch, expected, rtol=0, atol=1e-4)
    assert bool((result.per_token[:, 0] == 0).all())  # BOS is never attributed

    threshold = float(result.per_token.abs().flatten().quantile(0.9))
    thresholded = attribute_snapshot(
        model, jumprelu, plain, snapshot=0, config=AttributionConfig(n_steps=8, threshold=threshold)
    )
    kept = torch.where(result.per_token.abs() > threshold, result.per_token, 0.0)
    manual = (kept.sum(1) / positions.sum(1, keepdim=True)).mean(0)
    torch.testing.assert_close(thresholded.ie, manual, rtol=0, atol=1e-6)
    summed = attribute_snapshot(
        model, jumprelu, plain, snapshot=0, config=AttributionConfig(n_steps=8, reduce_positions="sum")
    )
    torch.testing.assert_close(summed.ie, result.per_token.sum(1).mean(0), rtol=0, atol=1e-6)


def test_attribute_across_snapshots_gives_a_tidy_table(snapshots, tokenizer, tmp_path):
    crosscoder = make_crosscoder("topk_crosscoder")
    task = agreement_pairs("rc", n=4, seed=2)
    table = attribute(
        snapshots, crosscoder, task, tokenizer=tokenizer, config=AttributionConfig(n_steps=3), progress=False
    )
    assert table.ie.shape == (D_SAE, N_SNAPSHOTS) and table.snapshots == [0, 1, 2] and table.task == "agreement_rc"
    assert bool((table.ie != 0).any(dim=0).all())
    per_snapshot = attribute(
        snapshots,
        crosscoder,
        task,
        tokenizer=tokenizer,
        snapshots=[1],
        config=AttributionConfig(n_steps=3, mode="per_snapshot"),
        progress=False,
    )
    assert per_snapshot.ie.shape == (D_SAE, 1) and per_snapshot.snapshot_labels == ["s1"]
    assert not torch.allclose(per_snapshot.ie[:, 0], table.ie[:, 1])
    rows = table.rows()
    assert {"feature", "snapshot", "label", "task", "ie"} <= set(rows[0])
    assert len(rows) == int((table.ie != 0).sum())
    assert [r["feature"] for r in table.rows([3], include_zero=True)] == [3] * table.ie.shape[1]
    for outside in (-1, D_SAE):  # -1 was reported as a feature -1 with the last feature's effects
        with pytest.raises(IndexError, match=rf"^feature {outside}: this table has features 0 to {D_SAE - 1}$"):
            table.rows([outside])
    loaded = IETable.load(table.save(tmp_path / "ie.json"))
    torch.testing.assert_close(loaded.ie, table.ie)
    assert loaded.config["n_steps"] == 3 and loaded.snapshot_labels == table.snapshot_labels
    with pytest.raises(ValueError, match="reads 3 snapshots but 2 models"):
        attribute(snapshots[:2], crosscoder, task, tokenizer=tokenizer, progress=False)


def test_causal_stage_writes_tables_and_report(snapshots, tokenizer, tmp_path, jumprelu):
    import json

    from crosslens.causal import run_causal_stage

    task = agreement_pairs("pp", n=4, seed=7)
    result = run_causal_stage(
        snapshots,
        jumprelu,
        task,
        tmp_path,
        tokenizer=tokenizer,
        config=AttributionConfig(n_steps=2),
        top_k=3,
        ks=(1, 3),
        n_random=1,
        progress=False,
    )
    paths = result.paths
    assert all(p.is_file() for p in (paths.ie_table, paths.relie, paths.ablation_curves, paths.report, paths.summary))
    assert json.loads(paths.summary.read_text()) == result.summary.to_dict()
    relie_file = json.loads(paths.relie.read_text())
    selected = relie_file["features"]
    assert selected == result.table.top_features(3).tolist() and 3 <= len(selected) <= 9
    assert np.allclose(np.asarray(relie_file["relie"]).sum(1), 1.0, atol=1e-5)
    assert IETable.load(paths.ie_table).ie.shape == (D_SAE, N_SNAPSHOTS)
    html = paths.report.read_text()
    assert "RelIE vs RelDec" in html and "Ablation curves" in html and html.count("plotly-graph-div") >= 3
    # where the patch point and the ablations are, as the code has them: the prompt's positions after BOS,
    # and the decoder bias where a task has no corrupted prompt (not zero)
    assert "positions after BOS set to the patch point" in html and "at every task position" not in html
    assert (
        "every feature and the error term zeroed, which leaves the crosscoder" in html and "or zero where" not in html
    )
    assert "ablated features are set to 0, at the prompt" in html
    # Bootstrap intervals around every selected IE, and the RelIE floor.
    table = result.table
    assert table.ie_per_example.shape == (4, D_SAE, N_SNAPSHOTS)
    torch.testing.assert_close(table.ie_per_example.mean(0), table.ie, atol=1e-5, rtol=1e-4)
    ie, low, high = (np.asarray(relie_file[k]) for k in ("ie", "ie_ci95_low", "ie_ci95_high"))
    assert (
        ie.shape == low.shape == (len(selected), N_SNAPSHOTS) and (low <= ie + 1e-6).all() and (ie <= high + 1e-6).all()
    )
    assert len(relie_file["classed"]) == len(selected) and relie_file["effect_floor"] > 0
    below = [c for row in relie_file["classes"] for c in row if c == "below_floor"]
    assert len(below) == N_SNAPSHOTS * relie_file["classed"].count(False)
    assert "IE confidence intervals" in html and result.summary.claims_final["keep_k"] == 100


class _CountingSuite:
    """A CheckpointSuite stand-in over in-memory models that counts loads per snapshot."""

    def __init__(self, models):
        self._models = models
        self.snapshots = [types.SimpleNamespace(revision=f"step{i}") for i in range(len(models))]
        self.loads = [0] * len(models)

    def __len__(self):
        return len(self._models)

    def load(self, index):
        self.loads[index] += 1
        return self._models[index]


@pytest.mark.parametrize("mode", ["exact", "per_snapshot"])
def test_causal_stage_loads_each_snapshot_once_per_pass(snapshots, tokenizer, tmp_path, jumprelu, mode):
    """Exact mode needs every snapshot's activations before any code, so one pass loads
    each model for activations and a second for attribution and ablation together
    (before: a third for the ablation curves); per-snapshot mode needs one pass."""
    from crosslens.causal import run_causal_stage
    from crosslens.causal.stage import CausalStageResult, CausalSummary

    task = agreement_pairs("pp", n=4, seed=7)
    options = dict(tokenizer=tokenizer, config=AttributionConfig(n_steps=2, mode=mode), top_k=2, ks=(1, 3), n_random=1)
    suite = _CountingSuite(snapshots)
    result = run_causal_stage(suite, jumprelu, task, tmp_path / "suite", progress=False, **options)
    assert suite.loads == [2 if mode == "exact" else 1] * N_SNAPSHOTS
    assert isinstance(result, CausalStageResult) and isinstance(result.summary, CausalSummary)
    # The same numbers as the stage over plain models, and as attribute() + ablation_curves().
    plain = run_causal_stage(snapshots, jumprelu, task, tmp_path / "plain", progress=False, **options)
    torch.testing.assert_close(result.table.ie, plain.table.ie)
    table = attribute(snapshots, jumprelu, task, tokenizer=tokenizer, config=options["config"], progress=False)
    torch.testing.assert_close(plain.table.ie, table.ie)
    rows = ablation_curves(
        snapshots,
        jumprelu,
        task,
        table,
        ks=[1, 3],
        n_random=1,
        tokenizer=tokenizer,
        exact=mode == "exact",
        progress=False,
    )
    assert [r["metric"] for r in plain.ablation_rows] == pytest.approx([r["metric"] for r in rows], abs=1e-6)
    assert [(r["label"], r["k"], r["selection"]) for r in plain.ablation_rows] == [
        (r["label"], r["k"], r["selection"]) for r in rows
    ]
    assert {r["label"] for r in result.ablation_rows} == {f"step{i}" for i in range(N_SNAPSHOTS)}


# ---------------------------------------------------------------------------- ablation
def test_ablation_edits_only_the_chosen_features():
    codes = torch.arange(1.0, 13.0).reshape(2, 6)
    zero = ablation_edit([1, 4], 6)(codes)
    assert zero[:, [1, 4]].abs().sum() == 0 and torch.equal(zero[:, [0, 2, 3, 5]], codes[:, [0, 2, 3, 5]])
    keep = ablation_edit([1, 4], 6, keep_only=True)(codes)
    assert torch.equal(keep[:, [1, 4]], codes[:, [1, 4]]) and keep[:, [0, 2, 3, 5]].abs().sum() == 0
    means = torch.full((6,), -1.0)
    mean = ablation_edit([2], 6, mode="mean", mean_codes=means)(codes)
    assert bool((mean[:, 2] == -1).all())
    with pytest.raises(ValueError, match="mean_codes"):
        ablation_edit([2], 6, mode="mean")
    with pytest.raises(ValueError, match=r"in \[0, 6\)"):
        ablation_edit([7], 6)


def test_ablation_curve_end_points(snapshots, task, acts_all, jumprelu):
    model = snapshots[1]
    codes = exact_codes(jumprelu, acts_all, 1)
    ie = attribute_snapshot(
        model, jumprelu, task, snapshot=1, codes_clean=codes, config=AttributionConfig(n_steps=4)
    ).ie
    clean = float(task_metric(model, task).mean())
    n = int((ie != 0).sum())  # the features ranked; the others never fire on the task
    ablate_rows = ablation_curve(model, jumprelu, task, ie, snapshot=1, ks=[0, 3, n], codes=codes, n_random=2)
    keep_rows = ablation_curve(
        model, jumprelu, task, ie, snapshot=1, ks=[0, n], codes=codes, keep_only=True, n_random=1
    )
    by = {(r["selection"], r["k"]): r["metric"] for r in ablate_rows}
    assert by[("none", 0)] == pytest.approx(clean, abs=1e-5)
    assert by[("top", 0)] == pytest.approx(clean, abs=1e-5)  # ablating nothing
    kept = {(r["selection"], r["k"]): r["metric"] for r in keep_rows}
    assert kept[("top", n)] == pytest.approx(clean, abs=1e-5)  # keeping everything
    assert kept[("top", 0)] == pytest.approx(by[("top", n)], abs=1e-5)  # keep none == ablate all
    assert len([r for r in ablate_rows if r["selection"] == "random" and r["k"] == 3]) == 2
    chunked = ablation_curve(model, jumprelu, task, ie, snapshot=1, ks=[0, 3, n], codes=codes, n_random=2, batch_size=4)
    assert [r["metric"] for r in chunked] == pytest.approx([r["metric"] for r in ablate_rows], abs=1e-5)
    assert by[("top", 3)] != pytest.approx(clean, abs=1e-4)


def test_keep_only_curve_reports_the_all_ablated_floor_and_restoration(snapshots, task, acts_all, jumprelu):
    model = snapshots[1]
    codes = exact_codes(jumprelu, acts_all, 1)
    ie = attribute_snapshot(
        model, jumprelu, task, snapshot=1, codes_clean=codes, config=AttributionConfig(n_steps=4)
    ).ie
    n = int((ie != 0).sum())  # the features ranked; the others never fire on the task
    for mode in ("zero", "mean"):
        keep_rows = ablation_curve(
            model, jumprelu, task, ie, snapshot=1, ks=[2, n], codes=codes, mode=mode, keep_only=True, n_random=0
        )
        ablate_rows = ablation_curve(model, jumprelu, task, ie, snapshot=1, ks=[n], codes=codes, mode=mode, n_random=0)
        clean = next(r["metric"] for r in keep_rows if r["selection"] == "none")
        floor = [r for r in keep_rows if r["selection"] == "all"]
        assert len(floor) == 1 and floor[0]["ablation"] == mode
        # The floor is the model with every feature ablated the same way.
        ablate_all = next(r["metric"] for r in ablate_rows if r["selection"] == "top" and r["k"] == n)
        assert floor[0]["metric"] == pytest.approx(ablate_all, abs=1e-5)
        assert floor[0]["metric"] != pytest.approx(clean, abs=1e-3)
        top = {r["k"]: r for r in keep_rows if r["selection"] == "top"}
        assert top[n]["restored"] == pytest.approx(1.0, abs=1e-4)  # keeping everything restores it all
        expected = (top[2]["metric"] - floor[0]["metric"]) / (clean - floor[0]["metric"])
        assert top[2]["restored"] == pytest.approx(expected, rel=1e-6)
        assert all("restored" not in r for r in ablate_rows)


def test_top_k_curves_rank_only_features_with_an_effect(snapshots, task, acts_all, jumprelu):
    """A thresholded attribution zeroes small effects; past the features it leaves, the "top"
    set was filled with features 0, 1, ... by index and drawn as top-IE."""
    model = snapshots[1]
    codes = exact_codes(jumprelu, acts_all, 1)
    full = attribute_snapshot(
        model, jumprelu, task, snapshot=1, codes_clean=codes, config=AttributionConfig(n_steps=4)
    ).ie
    strongest = torch.sort(full.abs(), descending=True).indices[:2]
    ie = torch.zeros_like(full)
    ie[strongest] = full[strongest]
    options = dict(snapshot=1, ks=[1, 2, 3, 10], codes=codes, n_random=1)
    for keep_only in (False, True):
        rows = ablation_curve(model, jumprelu, task, ie, keep_only=keep_only, **options)
        assert [r["k"] for r in rows if r["selection"] == "top"] == [1, 2]
        assert {r["n_with_effect"] for r in rows} == {2}
        # the random controls are drawn at every k, as they are whatever the IE
        unfiltered = ablation_curve(model, jumprelu, task, full, keep_only=keep_only, **options)
        random = [(r["k"], r["metric"]) for r in rows if r["selection"] == "random"]
        assert [k for k, _ in random] == [1, 2, 3, 10]
        assert random == [(r["k"], r["metric"]) for r in unfiltered if r["selection"] == "random"]
    with ablate(model, jumprelu, snapshot=1, features=strongest, codes=codes, positions=task.feature_mask()):
        both = float(task_metric(model, task).mean())
    top2 = next(
        r for r in ablation_curve(model, jumprelu, task, ie, **options) if r["k"] == 2 and r["selection"] == "top"
    )
    assert top2["metric"] == pytest.approx(both, abs=1e-5)


def test_an_ie_of_zeros_everywhere_draws_no_top_curve_and_says_so(snapshots, task, acts_all, jumprelu):
    codes = exact_codes(jumprelu, acts_all, 1)
    with pytest.warns(UserWarning, match=r"snapshot 1: no feature has a nonzero IE, so there is no top-k curve"):
        rows = ablation_curve(
            snapshots[1], jumprelu, task, torch.zeros(D_SAE), snapshot=1, ks=[1, 5], codes=codes, n_random=1
        )
    assert [(r["selection"], r["k"]) for r in rows] == [("none", 0), ("random", 1), ("random", 5)]
    assert {r["n_with_effect"] for r in rows} == {0}


def test_causal_stage_says_where_no_feature_has_an_effect(snapshots, tokenizer, tmp_path, jumprelu, capsys):
    from crosslens.causal import run_causal_stage
    from crosslens.causal.sections import _print_snapshots

    with pytest.warns(UserWarning, match="no feature has a nonzero IE"):
        result = run_causal_stage(
            snapshots,
            jumprelu,
            agreement_pairs("pp", n=4, seed=7),
            tmp_path,
            tokenizer=tokenizer,
            config=AttributionConfig(n_steps=2, threshold=1e6),  # every per-token effect is below it
            top_k=2,
            ks=(1, 3),
            n_random=1,
            progress=False,
        )
    assert not any(r["selection"] == "top" for r in result.ablation_rows)
    assert result.summary.features_with_effect == [0] * N_SNAPSHOTS
    assert result.summary.keep_only_restored_final == {}
    labels = ", ".join(result.table.snapshot_labels)
    assert f"No top-k curve at {labels}: no feature has a nonzero IE there" in result.paths.report.read_text()
    _print_snapshots(dataclasses.replace(result.summary, behaviour=[]), model_lines=False)  # as if it behaved
    assert "no top-k row, 0 features have a nonzero IE there" in capsys.readouterr().out


def test_causal_stage_labels_the_ablation_and_drops_ks_above_d_sae(snapshots, tokenizer, tmp_path, jumprelu):
    import json

    from crosslens.causal import run_causal_stage

    task = agreement_pairs("pp", n=4, seed=7)
    result = run_causal_stage(
        snapshots,
        jumprelu,
        task,
        tmp_path,
        tokenizer=tokenizer,
        config=AttributionConfig(n_steps=2),
        top_k=2,
        ks=(2, D_SAE, 10 * D_SAE),
        ablation="mean",
        n_random=0,
        progress=False,
    )
    rows = json.loads(result.paths.ablation_curves.read_text())
    assert {r["ablation"] for r in rows} == {"mean"}
    summary = result.summary
    assert max(summary.features_with_effect) < D_SAE  # so the top-k curves stop before k = D_SAE
    assert {r["k"] for r in rows if r["selection"] == "top"} == {2} and max(r["k"] for r in rows) <= D_SAE
    assert summary.ablation == "mean" and set(summary.keep_only_restored_final) == {"2"}
    html = result.paths.report.read_text()
    assert "mean-ablation" in html and "Keep-only restoration" in html
    # IE = m(patch) - m(clean) and the metric is negative when the model is right: a feature that
    # helps has a positive IE
    assert "a positive IE means the feature helps the correct answer" in html


def test_a_snapshot_the_crosscoder_lacks_is_refused_naming_its_range(snapshots, tokenizer, jumprelu, tmp_path):
    from crosslens.causal import run_causal_stage

    task = agreement_pairs("simple", n=4, seed=5)
    for wrong in ([7], [0, 0], [-1]):
        with pytest.raises(
            ValueError,
            match=rf"snapshots must be distinct indices of the crosscoder's 3 snapshots \(0..2\), got \{wrong}",
        ):
            run_causal_stage(snapshots, jumprelu, task, tmp_path, tokenizer=tokenizer, snapshots=wrong, progress=False)


class _Checkpoint:
    """A model's ``crosslens_snapshot`` as a suite sets it: which checkpoint the model is."""

    def __init__(self, step: int) -> None:
        self.step = step

    def to_dict(self) -> dict:
        return {"revision": f"step{self.step}", "step": self.step}


def labelled(models, steps):
    """Shallow copies of ``models`` that say they are the checkpoints at ``steps`` (the fixtures stay unlabelled)."""
    out = []
    for model, step in zip(models, steps):
        model = copy.copy(model)
        model.crosslens_snapshot = _Checkpoint(step)
        out.append(model)
    return out


def test_every_model_is_checked_to_be_its_snapshot_before_any_runs(
    snapshots, tokenizer, jumprelu, tmp_path, monkeypatch
):
    """Exact mode reads every snapshot's activations: models of other checkpoints at snapshots 0 and 1
    went into snapshot 2's codes unchecked, and with every snapshot the refusal came after all
    collection, with the stage's folder made."""
    import crosslens.causal.snapshot_models as snapshot_models
    from crosslens.causal import run_causal_stage

    crosscoder = copy.deepcopy(jumprelu)
    crosscoder.cfg.metadata.suite = {"snapshots": [{"revision": f"step{s}", "step": s} for s in (0, 1000, 143000)]}
    wrong = labelled([snapshots[1], snapshots[0], snapshots[2]], (512, 4000, 143000))
    task = agreement_pairs("pp", n=4, seed=0)
    ran = []
    real = snapshot_models.activations_at
    monkeypatch.setattr(snapshot_models, "activations_at", lambda *a, **k: ran.append(1) or real(*a, **k))
    refusal = r"^the model given as snapshot 0 is step512, but the crosscoder's snapshot 0 is step0; pass that snapshot's model"
    config = AttributionConfig(n_steps=2)
    with pytest.raises(PartnerMismatchError, match=refusal):
        attribute(wrong, crosscoder, task, snapshots=[2], config=config, tokenizer=tokenizer, progress=False)
    table = attribute(snapshots, jumprelu, task, snapshots=[2], config=config, tokenizer=tokenizer, progress=False)
    ran.clear()
    with pytest.raises(PartnerMismatchError, match=refusal):
        ablation_curves(wrong, crosscoder, task, table, ks=[1], n_random=0, tokenizer=tokenizer, progress=False)
    out = tmp_path / "stage"
    with pytest.raises(PartnerMismatchError, match=refusal):
        run_causal_stage(wrong, crosscoder, task, out, tokenizer=tokenizer, config=config, progress=False)
    assert ran == [] and not out.exists()
    right = labelled(snapshots, (0, 1000, 143000))
    again = attribute(right, crosscoder, task, snapshots=[2], config=config, tokenizer=tokenizer, progress=False)
    torch.testing.assert_close(again.ie, table.ie)


def test_activations_are_used_only_with_the_task_they_ran_on(snapshots, tokenizer, jumprelu):
    """Activations of another task of the same shape went silently into the IE and the clean metric,
    and of another shape crashed in a bare RuntimeError."""
    task, config = agreement_pairs("pp", n=4, seed=0), AttributionConfig(n_steps=2)
    own = collect_task_activations(snapshots, HOOK, task.tokenize(tokenizer))
    fresh = attribute(snapshots, jumprelu, task, snapshots=[1], config=config, tokenizer=tokenizer, progress=False)
    reused = attribute(
        snapshots, jumprelu, task, snapshots=[1], config=config, tokenizer=tokenizer, activations=own, progress=False
    )
    torch.testing.assert_close(reused.ie, fresh.ie)
    torch.testing.assert_close(reused.metric_clean, fresh.metric_clean)
    same_shape = collect_task_activations(snapshots, HOOK, agreement_pairs("pp", n=4, seed=7).tokenize(tokenizer))
    wider = collect_task_activations(snapshots, HOOK, agreement_pairs("rc", n=4, seed=0).tokenize(tokenizer))
    assert same_shape.clean.shape == own.clean.shape != wider.clean.shape
    fix = r"; collect them for this task: collect_task_activations\(models, hook, tokenized task\)$"
    refusals = {
        "other tokens": (same_shape, r"^the activations were collected on other tokens than this task's" + fix),
        "other shape": (wider, r"^the activations were collected on other tokens than this task's" + fix),
        "other hook": (
            dataclasses.replace(own, hook="blocks.1.hook_resid_post"),
            r"^the activations are at blocks\.1\.hook_resid_post, the crosscoder reads blocks\.0\.hook_resid_post"
            + fix,
        ),
        "a bare tuple": ((own.clean, own.corrupted), r"^activations= is tuple; pass what collect_task_activations"),
    }
    for activations, refusal in refusals.values():
        with pytest.raises(CrosslensError, match=refusal):
            attribute(snapshots, jumprelu, task, config=config, tokenizer=tokenizer, activations=activations)
        with pytest.raises(CrosslensError, match=refusal):
            ablation_curves(
                snapshots, jumprelu, task, fresh, ks=[1], n_random=0, tokenizer=tokenizer, activations=activations
            )


def test_an_ie_table_records_its_crosscoder_and_task_and_ranks_only_them(snapshots, tokenizer, tmp_path):
    """A table of another crosscoder of the same shape, or of another task, ranked the features of the
    crosscoder and task given by its effects, silently: a table recorded only its settings."""
    crosscoder, other = make_crosscoder("crosscoder", seed=0), make_crosscoder("crosscoder", seed=1)
    task, config = agreement_pairs("simple", n=4, seed=3), AttributionConfig(n_steps=2)
    table = attribute(snapshots, crosscoder, task, snapshots=[2], config=config, tokenizer=tokenizer, progress=False)
    loaded = IETable.load(table.save(tmp_path / "ie.json"))
    options = dict(ks=[1], n_random=0, keep_only=(False,), tokenizer=tokenizer, progress=False)
    fix = r"; pass the table attribute\(\) made with this crosscoder on this task, or compute one: attribute\(models, crosscoder, task\)"
    with pytest.raises(
        PartnerMismatchError,
        match=r"^the IE table of agreement_simple: it was computed with another crosscoder \(weights sha256 ",
    ):
        ablation_curves(snapshots, other, task, loaded, **options)
    with pytest.raises(
        PartnerMismatchError,
        match=r"^the IE table of agreement_simple: it was computed on other tokens than this task's" + fix,
    ):
        ablation_curves(snapshots, crosscoder, agreement_pairs("pp", n=4, seed=0), loaded, **options)
    relabelled = copy.deepcopy(crosscoder)
    relabelled.cfg.metadata.suite = {"snapshots": [{"revision": f"step{s}", "step": s} for s in (0, 10, 20)]}
    with pytest.raises(
        PartnerMismatchError, match=r"its crosscoder's snapshots are s0, s1, s2, this one's step0, step10, step20"
    ):
        ablation_curves(snapshots, relabelled, task, loaded, **options)
    unverified = dataclasses.replace(loaded, config={k: v for k, v in loaded.config.items() if k != "task_sha256"})
    with pytest.raises(
        PartnerMismatchError, match=r"it records no crosscoder or task it was computed with" + r".*" + fix
    ):
        ablation_curves(snapshots, crosscoder, task, unverified, **options)
    rows = ablation_curves(snapshots, crosscoder, task, loaded, **options)
    assert [r["selection"] for r in rows] == ["none", "top"] and {r["snapshot"] for r in rows} == {2}

    from crosslens.causal.ie_table import table_identity
    from crosslens.causal.snapshot_models import task_sha256
    from crosslens.core.hashing import weights_sha256

    tokenized = task.tokenize(tokenizer)
    assert loaded.config["crosscoder_sha256"] == weights_sha256(crosscoder) != weights_sha256(other)
    assert loaded.config["crosscoder_snapshots"] == ["s0", "s1", "s2"]
    assert loaded.config["task_sha256"] == task_sha256(tokenized)
    assert table_identity(crosscoder, tokenized).items() <= loaded.config.items()


def test_a_task_is_tokenized_only_with_the_models_vocabulary(snapshots, tokenizer, jumprelu):
    """tokenizer= was used over the models' own tokenizer whatever its ids, and a TokenizedTask with
    an id beyond the vocabulary reached the embedding as a bare IndexError."""
    vocab = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)
    shuffled = vocab[:3] + vocab[3:][::-1]  # the same words at other ids
    inner = Tokenizer(models.WordLevel({w: i for i, w in enumerate(shuffled)}, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    other = PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")
    carrying = [copy.copy(model) for model in snapshots]
    for model in carrying:
        model.tokenizer = tokenizer
    task, config = agreement_pairs("pp", n=4, seed=0), AttributionConfig(n_steps=2)
    with pytest.raises(
        PartnerMismatchError,
        match=r"^tokenizer= has another vocabulary than the models' own tokenizer \(\d+ tokens, theirs \d+, or the same "
        r"tokens at other ids\); leave tokenizer= out to tokenize the task with the models' own$",
    ):
        attribute(carrying, jumprelu, task, snapshots=[0], config=config, tokenizer=other, progress=False)
    own = attribute(carrying, jumprelu, task, snapshots=[0], config=config, progress=False)
    same = attribute(carrying, jumprelu, task, snapshots=[0], config=config, tokenizer=tokenizer, progress=False)
    torch.testing.assert_close(same.ie, own.ie)
    tokenized = task.tokenize(tokenizer)
    tokenized.clean_tokens[0, 1] = 10_000
    refusal = (
        rf"^the tokenized task holds token id 10000, but the models read ids 0 to {len(tokenizer) - 1}; tokenize it"
    )
    with pytest.raises(CrosslensError, match=refusal):
        attribute(snapshots, jumprelu, tokenized, snapshots=[0], config=config, progress=False)
    with pytest.raises(CrosslensError, match=refusal):
        attribute_snapshot(snapshots[0], jumprelu, tokenized, snapshot=0, config=config)


def test_a_task_name_or_a_top_k_under_1_is_refused_before_anything_is_written(snapshots, tokenizer, jumprelu, tmp_path):
    """A task's name reached ``'str' object has no attribute 'name'``; ``top_k=0`` was refused after
    every snapshot's attribution, as "k", and an ablation mode after snapshot 0's. None leaves a folder behind."""
    from crosslens.causal import run_causal_stage

    out = tmp_path / "stage"
    with pytest.raises(
        TypeError,
        match=r"^the task is str; pass a TaskDataset or a TokenizedTask: crosslens\.tasks\.get_task\('agreement_pp'\)$",
    ):
        run_causal_stage(snapshots, jumprelu, "agreement_pp", out, tokenizer=tokenizer, progress=False)
    with pytest.raises(TypeError, match=r"^the task is str; pass a TaskDataset"):
        attribute(snapshots, jumprelu, "agreement_pp", tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"^top_k=0: select 1 feature or more per snapshot$"):
        run_causal_stage(snapshots, jumprelu, agreement_pairs("simple", n=4, seed=5), out, top_k=0, progress=False)
    with pytest.raises(CrosslensError, match=r"^ablation='avg': ablate with 'zero' or 'mean'$"):
        run_causal_stage(
            snapshots,
            jumprelu,
            agreement_pairs("simple", n=4, seed=5),
            out,
            ablation="avg",
            tokenizer=tokenizer,
            config=AttributionConfig(n_steps=2),
            progress=False,
        )
    assert not out.exists()


def test_ablation_curves_across_snapshots(snapshots, tokenizer, jumprelu):
    task = agreement_pairs("simple", n=4, seed=5)
    table = attribute(
        snapshots,
        jumprelu,
        task,
        tokenizer=tokenizer,
        snapshots=[0, 2],
        config=AttributionConfig(n_steps=2),
        progress=False,
    )
    rows = ablation_curves(snapshots, jumprelu, task, table, ks=[1, 4], n_random=1, tokenizer=tokenizer, progress=False)
    assert {r["snapshot"] for r in rows} == {0, 2} and {r["keep_only"] for r in rows} == {False, True}
    assert {r["label"] for r in rows} == {"s0", "s2"}
    figure = ablation_curves_figure(rows)
    assert len(figure.data) == 2 * 2 * 2  # snapshots x (ablate, keep) x (top, random)
    # another crosscoder's table ranked this one's features by the other's effects, silently
    wider = dataclasses.replace(table, ie=torch.cat([table.ie, table.ie]))
    later = dataclasses.replace(table, snapshots=[0, 5])
    for other in (wider, later):
        with pytest.raises(
            ValueError, match=r"^the IE table has \d+ features at snapshots \[0, [25]\]; this crosscoder has"
        ):
            ablation_curves(snapshots, jumprelu, task, other, ks=[1], n_random=1, tokenizer=tokenizer, progress=False)


# ---------------------------------------------------------------------------- RelIE
def test_reldec_is_one_mechanism_and_folding_leaves_it_alone():
    """analysis.rel_dec (on a crosscoder or W_dec) and causal.reldec (on decoder norms) are
    one ratio, taken in the training space, so folding the normalisation changes neither."""
    from crosslens.analysis import rel_dec
    from crosslens.crosscoders.folding import is_folded

    crosscoder = make_crosscoder("jumprelu_crosscoder")
    before = reldec(crosscoder.decoder_norms())
    torch.testing.assert_close(rel_dec(crosscoder), before)
    torch.testing.assert_close(rel_dec(crosscoder.W_dec), before)
    folded = copy.deepcopy(crosscoder)
    folded.fold_activation_norm_scaling_factors([0.5 * 2.0**s for s in range(N_SNAPSHOTS)])
    assert is_folded(folded) and not is_folded(crosscoder)
    torch.testing.assert_close(rel_dec(folded), before)
    torch.testing.assert_close(reldec(folded.decoder_norms()), before)
    # The stored (raw-scale) decoder of a folded crosscoder is another quantity altogether.
    assert not torch.allclose(rel_dec(folded.W_dec), before, atol=1e-3)


def test_every_decoder_measure_takes_a_crosscoder_as_rel_dec_does():
    from crosslens.analysis import direction_drift, feature_dimensionality
    from crosslens.analysis.geometry import pairwise_rel_dec

    crosscoder = make_crosscoder("jumprelu_crosscoder")
    folded = copy.deepcopy(crosscoder)
    folded.fold_activation_norm_scaling_factors([0.5 * 2.0**s for s in range(N_SNAPSHOTS)])
    for measure in (direction_drift, feature_dimensionality, pairwise_rel_dec):
        expected = measure(crosscoder.W_dec)
        for given in (crosscoder, folded):
            torch.testing.assert_close(measure(given), expected, equal_nan=True)
    with pytest.raises(TypeError, match="expected a decoder tensor .* or a crosscoder, got list"):
        feature_dimensionality([1.0])


def test_relie_one_vs_all_and_pairwise_on_a_hand_made_table():
    ie = torch.tensor([[3.0, -1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, -2.0], [0.0, 0.0, -5.0]])
    expected = torch.tensor([[0.75, 0.25, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.25, 0.25, 0.5], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(relie(ie), expected)
    torch.testing.assert_close(relie(ie).sum(-1), torch.ones(4))
    pairwise = relie_pairwise(torch.tensor([1.0, 0.0, -3.0, 0.0]), torch.tensor([3.0, 0.0, 1.0, 2.0]))
    torch.testing.assert_close(pairwise, torch.tensor([0.75, 0.5, 0.25, 1.0]))
    torch.testing.assert_close(relie(torch.zeros(2, 2)), torch.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="at least 2 snapshots"):
        relie(torch.ones(3, 1))
    # from NumPy (or lists) the same numbers: "'numpy.ndarray' object has no attribute 'abs'" before
    torch.testing.assert_close(relie(ie.numpy()), expected)
    torch.testing.assert_close(relie_pairwise([1.0, 0.0, -3.0, 0.0], np.array([3.0, 0.0, 1.0, 2.0])), pairwise.double())


def test_relie_classes_and_thresholds():
    values = torch.tensor([[0.75, 0.25], [0.5, 0.5], [0.3, 0.7], [0.71, 0.29]])
    labels = classify_relie(values)
    assert labels.tolist() == [["specific", "other"], ["shared", "shared"], ["shared", "shared"], ["specific", "other"]]
    stricter = classify_relie(values, RelIEThresholds(specific=0.74, other=0.26))
    assert stricter[3].tolist() == ["shared", "shared"] and stricter[0].tolist() == ["specific", "other"]
    counts = class_counts(labels)
    assert counts["specific"].tolist() == [2, 0] and counts["shared"].tolist() == [2, 2]
    assert classify_relie(values.numpy()).tolist() == labels.tolist()
    with pytest.raises(TypeError, match=r"^class_counts counts the labels classify_relie returns; got Tensor$"):
        class_counts(values)  # it counted a bool: "'bool' object has no attribute 'sum'"
    with pytest.raises(ValueError, match="0 <= other < specific <= 1"):
        RelIEThresholds(specific=0.3, other=0.7)


def test_select_top_features_is_the_union_of_per_snapshot_top_k():
    ie = torch.tensor([[5.0, 0.0], [-4.0, 0.1], [0.0, -3.0], [1.0, 2.0], [0.0, 0.0]])
    assert select_top_features(ie, 1).tolist() == [0, 2]
    assert select_top_features(ie, 2).tolist() == [0, 1, 2, 3]
    assert select_top_features(ie, 10).tolist() == [0, 1, 2, 3]  # zero IE is never selected


def test_relie_plots_build():
    relie_values = relie(torch.tensor([[3.0, 1.0], [0.0, 2.0], [1.0, 1.0]]))
    norms = reldec(torch.tensor([[1.0, 0.5], [0.1, 1.0], [1.0, 1.0]]))
    scatter = relie_vs_reldec(relie_values[:, 1:], norms[:, 1:], feature_ids=[10, 11, 12], snapshot_labels=["step100"])
    names = {trace.name: len(trace.x) for trace in scatter.data}
    assert names == {"specific": 1, "shared": 1, "other": 1} and scatter.layout.annotations[0].text == "step100"
    heatmap = relie_heatmap(relie_values, feature_ids=[10, 11, 12], snapshot_labels=["a", "b"])
    assert np.asarray(heatmap.data[0].z).shape == (3, 2) and list(heatmap.data[0].x) == ["a", "b"]


# ---------------------------------------------------------------------------- multi-token continuations
def multi_token_pairs(n: int = 6, corrupted: bool = True) -> tuple[MinimalPair, ...]:
    """Agreement pairs whose continuations run on for 0-2 more words, sometimes different
    lengths for correct and wrong: one batch mixes 1-, 2- and 3-token continuations, and
    the last two pairs are one token on both sides."""
    tails = ["", " tired", " tall tired", " old", "", ""]
    pairs = []
    for index, pair in enumerate(agreement_pairs("pp", n=n, seed=0)):
        tail = tails[index % len(tails)]
        wrong_tail = tail if index % 2 else tails[(index + 1) % len(tails)]
        pairs.append(
            MinimalPair(
                pair.clean,
                pair.correct + tail,
                pair.wrong + wrong_tail,
                corrupted=pair.corrupted if corrupted else None,
            )
        )
    return tuple(pairs)


@pytest.fixture(scope="module")
def multi_task(tokenizer):
    return TaskDataset(name="multi", pairs=multi_token_pairs()).tokenize(tokenizer)


def hand_metric(model, tokenizer, pair: MinimalPair) -> float:
    """log p(wrong) - log p(correct), each summed over its tokens, one unpadded sequence at a time."""
    prompt = [tokenizer.bos_token_id, *tokenizer(pair.clean, add_special_tokens=False)["input_ids"]]
    summed = []
    for continuation in (pair.correct, pair.wrong):
        ids = prompt + tokenizer(continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = model(torch.tensor([ids]))[0].log_softmax(-1)
        summed.append(sum(float(logprobs[t - 1, ids[t]]) for t in range(len(prompt), len(ids))))
    return summed[1] - summed[0]


def test_multi_token_task_lays_out_both_continuations(multi_task):
    assert multi_task.multi_token
    lengths = multi_task.continuation_lengths
    assert {int(n) for n in lengths.flatten()} == {1, 2, 3}  # one batch, three lengths
    sequences = multi_task.sequences()
    for row in range(len(multi_task)):
        prompt_len = int(multi_task.last_pos[row]) + 1
        for side in (0, 1):
            n = int(lengths[row, side])
            real = sequences.tokens[row, side][sequences.mask[row, side]].tolist()
            expected = (
                multi_task.clean_tokens[row, :prompt_len].tolist()
                + multi_task.continuation_tokens[row, side, :n].tolist()
            )
            assert real == expected
            assert sequences.target_pos[row, side, :n].tolist() == list(range(prompt_len - 1, prompt_len - 1 + n))


def test_multi_token_metric_is_the_summed_log_probability_difference(snapshots, tokenizer, multi_task, jumprelu):
    model = snapshots[1]
    expected = torch.tensor([hand_metric(model, tokenizer, pair) for pair in multi_token_pairs()])
    torch.testing.assert_close(task_metric(model, multi_task), expected, rtol=1e-5, atol=1e-5)
    # the same number through the IG path (run from the hook, the crosscoder spliced with its error term)
    result = attribute_snapshot(
        model, jumprelu, multi_task, snapshot=1, config=AttributionConfig(n_steps=2, batch_size=4)
    )
    torch.testing.assert_close(result.metric_clean, expected, rtol=1e-5, atol=1e-5)
    assert bool((expected != 0).all()) and len({round(float(v), 3) for v in expected}) == len(expected)


def test_multi_token_ig_completeness(snapshots, tokenizer, multi_task):
    crosscoder = make_crosscoder("jumprelu_crosscoder", seed=1)
    zero_patch = TaskDataset(name="multi_zero", pairs=multi_token_pairs(corrupted=False)).tokenize(tokenizer)
    for task in (multi_task, zero_patch):
        gaps = []
        for n_steps in (16, 256):
            result = attribute_snapshot(
                snapshots[2], crosscoder, task, snapshot=2, config=AttributionConfig(n_steps=n_steps)
            )
            gaps.append(float(result.completeness_gap().abs().max()))
        delta = (result.metric_patch - result.metric_clean).abs()
        assert float(delta.min()) > 0.05  # the patch moves the metric, so completeness says something
        # sum of attributions -> metric(patch) - metric(clean), the left Riemann sum's error shrinking like 1/n
        assert gaps[1] < 0.01 * float(delta.max()) and gaps[1] < gaps[0] / 8


def test_multi_token_batches_mixing_lengths_match_one_example_at_a_time(snapshots, tokenizer, multi_task, jumprelu):
    model = snapshots[0]
    config = AttributionConfig(n_steps=3, mode="per_snapshot")
    together = attribute_snapshot(model, jumprelu, multi_task, snapshot=0, config=replace_config(config, batch_size=6))
    alone_metric, alone_ie = [], []
    for pair in multi_token_pairs():
        single = TaskDataset(name="one", pairs=(pair,)).tokenize(tokenizer)
        alone_metric.append(task_metric(model, single))
        alone_ie.append(attribute_snapshot(model, jumprelu, single, snapshot=0, config=config).per_example)
    torch.testing.assert_close(task_metric(model, multi_task), torch.cat(alone_metric), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together.per_example, torch.cat(alone_ie), rtol=1e-4, atol=1e-5)


def replace_config(config: AttributionConfig, **changes) -> AttributionConfig:
    from dataclasses import replace

    return replace(config, **changes)


def test_one_token_path_equals_the_summed_log_probability_path(snapshots, task, jumprelu):
    """For one-token continuations the two metrics are one number: forcing the multi-token path
    on a one-token task changes results only by float rounding."""
    from dataclasses import replace

    forced = replace(task, multi_token=True)
    model = snapshots[1]
    torch.testing.assert_close(task_metric(model, forced), task_metric(model, task), rtol=1e-5, atol=1e-5)
    config = AttributionConfig(n_steps=4, batch_size=4)
    one = attribute_snapshot(model, jumprelu, task, snapshot=1, config=config)
    multi = attribute_snapshot(model, jumprelu, forced, snapshot=1, config=config)
    for name in ("metric_clean", "metric_patch", "ie", "total_ie"):
        torch.testing.assert_close(getattr(multi, name), getattr(one, name), rtol=1e-4, atol=1e-5)


def test_one_token_results_are_the_previous_implementations(snapshots, task, acts_all):
    """Frozen from the implementation before multi-token support (commit d14e4ae, same fixtures):
    the one-token path must keep giving these numbers. They matched it bit for bit
    (``scripts/multitoken_one_token_identity.py`` measures it)."""
    crosscoder = make_crosscoder("jumprelu_crosscoder")
    model = snapshots[1]
    result = attribute_snapshot(model, crosscoder, task, snapshot=1, config=AttributionConfig(n_steps=4, batch_size=4))
    torch.testing.assert_close(result.metric_clean, torch.tensor(FROZEN_METRIC_CLEAN), rtol=0, atol=1e-5)
    torch.testing.assert_close(result.metric_patch, torch.tensor(FROZEN_METRIC_PATCH), rtol=0, atol=1e-5)
    assert float(result.ie.sum()) == pytest.approx(FROZEN_IE_SUM, abs=1e-5)
    assert result.error_ie == pytest.approx(FROZEN_ERROR_IE, abs=1e-5)
    rows = ablation_curve(
        model,
        crosscoder,
        task,
        result.ie,
        snapshot=1,
        ks=[1, 5, 64],
        codes=exact_codes(crosscoder, acts_all, 1),
        keep_only=True,
        batch_size=4,
    )
    # a feature without an effect is not ranked, so the frozen keep-only top-64 row (index 10) is not drawn
    assert {r["k"] for r in rows if r["selection"] == "top"} == {1, 5} and rows[0]["n_with_effect"] < 64
    frozen = FROZEN_KEEP_ONLY_CURVE[:10] + FROZEN_KEEP_ONLY_CURVE[11:]
    torch.testing.assert_close(torch.tensor([r["metric"] for r in rows]), torch.tensor(frozen), rtol=0, atol=1e-5)


def test_multi_token_ablation_curve_end_points(snapshots, multi_task, tokenizer, jumprelu):
    acts = collect_activations(snapshots, HOOK, multi_task.clean_tokens, multi_task.mask.long())
    codes = exact_codes(jumprelu, acts, 1)
    model = snapshots[1]
    clean = float(task_metric(model, multi_task).mean())
    ie = attribute_snapshot(
        model, jumprelu, multi_task, snapshot=1, codes_clean=codes, config=AttributionConfig(n_steps=2)
    ).ie
    n = int((ie != 0).sum())  # the features ranked; the others never fire on the prompts
    ablated = ablation_curve(
        model, jumprelu, multi_task, ie, snapshot=1, ks=[0, 5, n], codes=codes, n_random=0, batch_size=4
    )
    kept = ablation_curve(
        model,
        jumprelu,
        multi_task,
        ie,
        snapshot=1,
        ks=[0, n],
        codes=codes,
        n_random=0,
        keep_only=True,
        batch_size=4,
    )
    by = {(r["selection"], r["k"]): r["metric"] for r in ablated}
    keep = {(r["selection"], r["k"]): r["metric"] for r in kept}
    assert by[("none", 0)] == pytest.approx(clean, abs=1e-5) and by[("top", 0)] == pytest.approx(clean, abs=1e-5)
    assert keep[("top", n)] == pytest.approx(clean, abs=1e-5)  # keeping every feature changes nothing
    assert keep[("top", 0)] == pytest.approx(by[("top", n)], abs=1e-5)  # keep none == ablate all
    assert abs(by[("top", n)] - clean) > 1e-3  # ablating every prompt feature moves the metric
    # ablating every feature by hand: the spliced prompt positions decode the zero code (b_dec), error kept
    from crosslens.causal.continuations import rows_from_prompt

    part_codes, part_positions = rows_from_prompt(multi_task, codes, multi_task.feature_mask())
    with ablate(model, jumprelu, snapshot=1, features=torch.arange(D_SAE), codes=part_codes, positions=part_positions):
        assert float(task_metric(model, multi_task).mean()) == pytest.approx(by[("top", n)], abs=1e-5)


def test_a_custom_metric_is_refused_for_multi_token_tasks(snapshots, multi_task, jumprelu):
    def last_logit(logits, correct, wrong):
        return logits.gather(-1, wrong[:, None].to(logits.device))[:, 0]

    with pytest.raises(ValueError, match="several tokens.*leave metric at its default"):
        attribute_snapshot(snapshots[0], jumprelu, multi_task, snapshot=0, metric=last_logit)
    with pytest.raises(ValueError, match="several tokens"):
        task_metric(snapshots[0], multi_task, last_logit)


def test_causal_stage_on_a_multi_token_task(snapshots, tokenizer, tmp_path, jumprelu):
    from crosslens.causal import run_causal_stage

    task = TaskDataset(name="multi", pairs=multi_token_pairs())
    result = run_causal_stage(
        snapshots,
        jumprelu,
        task,
        tmp_path,
        config=AttributionConfig(n_steps=2),
        ks=(1, 5),
        tokenizer=tokenizer,
        n_random=1,
        n_boot=50,
        progress=False,
    )
    summary = json.loads(result.paths.summary.read_text())
    assert summary["metric"] == "summed_logprob_diff" and summary["n_multi_token"] == 4
    expected = torch.tensor([hand_metric(snapshots[-1], tokenizer, pair) for pair in multi_token_pairs()]).mean()
    assert summary["metric_clean"][-1] == pytest.approx(float(expected), abs=1e-4)
    assert result.table.config["metric"] == "summed_logprob_diff"
    assert "log p(wrong) - log p(correct), each summed over" in result.paths.report.read_text()


# Computed by the one-token implementation (commit d14e4ae) on the fixtures above.
FROZEN_METRIC_CLEAN = [
    -2.3462438583374023,
    2.9201316833496094,
    -1.6093305349349976,
    1.2303048372268677,
    -1.1109037399291992,
    1.3608430624008179,
]
FROZEN_METRIC_PATCH = [
    -3.293194055557251,
    3.0816009044647217,
    -1.0784692764282227,
    1.4864749908447266,
    -1.3648936748504639,
    1.5979712009429932,
]
FROZEN_IE_SUM = 0.1104346439242363
FROZEN_ERROR_IE = -0.1140919029712677
FROZEN_KEEP_ONLY_CURVE = [
    0.07413375377655029,
    0.17993122339248657,
    0.1638563722372055,
    0.18575789034366608,
    0.1638563722372055,
    0.20525096356868744,
    0.035789310932159424,
    0.5003601908683777,
    0.3140523433685303,
    0.10370656102895737,
    0.07413361221551895,
    0.07413361221551895,
    0.07413361221551895,
    0.07413361221551895,
]
