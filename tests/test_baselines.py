"""Per-snapshot SAELens SAE baselines and the crosscoder quality table."""

from __future__ import annotations

import math

import pytest
import torch
from hf_cache import FAKE_VOCAB_SIZE, make_word_tokenizer, tiny_neox, write_local_suite
from sae_lens import SAE
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

from crosslens.activations import ActivationStore, harvest_activations
from crosslens.checkpoints import CheckpointSuite
from crosslens.core.seeding import seeded
from crosslens.crosscoders import ARCHITECTURES
from crosslens.training.baselines import (
    _next_coefficient,
    build_training_sae,
    calibrate_sparsity_coefficient,
    evaluate_sae,
    inference_sae,
    snapshot_batches,
    threshold_at_l0,
    train_snapshot_sae,
)
from crosslens.training.comparison import compare_with_saes, format_quality_table, quality_table
from crosslens.training.metrics import evaluate_crosscoder

HOOK = "blocks.0.hook_resid_post"
STEPS = (0, 10, 100)
D_IN, D_SAE = 32, 64
TRAIN = dict(n_steps=60, batch_size=128, lr=3e-3, seed=0)


def _harvest(tmp_path_factory, steps):
    root = tmp_path_factory.mktemp("suite")
    write_local_suite(root, {f"step{s}": tiny_neox(seed=s) for s in steps}, make_word_tokenizer())
    tokens = torch.randint(3, FAKE_VOCAB_SIZE, (48, 16), generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("store")
    return harvest_activations(CheckpointSuite.local(root), HOOK, tokens, out, progress=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ActivationStore:
    return _harvest(tmp_path_factory, STEPS)


@pytest.fixture(scope="module")
def one_snapshot_store(tmp_path_factory) -> ActivationStore:
    return _harvest(tmp_path_factory, (10,))


# ---------------------------------------------------------------- training


@pytest.mark.parametrize(
    ("architecture", "settings", "inference_cls"),
    [
        ("standard", dict(sparsity_coefficient=0.01), StandardSAE),
        ("jumprelu", dict(target_l0=8), JumpReLUSAE),
        ("topk", dict(k=8), TopKSAE),
    ],
)
def test_baseline_is_a_trained_saelens_sae(store, architecture, settings, inference_cls):
    torch.manual_seed(TRAIN["seed"])
    untrained = inference_sae(build_training_sae(architecture, d_in=D_IN, d_sae=D_SAE, **settings))
    before = evaluate_sae(untrained, store, HOOK, 1)

    sae = train_snapshot_sae(store, HOOK, 1, architecture, D_SAE, **settings, **TRAIN)

    assert type(sae) is inference_cls
    assert sae.cfg.architecture() == architecture
    assert sae.W_dec.shape == (D_SAE, D_IN)
    after = evaluate_sae(sae, store, HOOK, 1)
    assert after["explained_variance"] > before["explained_variance"] + 0.3
    assert after["mse"] < before["mse"]
    assert after["d_sae"] == D_SAE and after["n_tokens"] == store.n_tokens
    meta = sae.cfg.metadata
    assert meta.hook_name == HOOK
    assert meta.snapshot["step"] == STEPS[1] and meta.snapshot["index"] == 1
    assert meta.activation_norm_factor == pytest.approx(float(store.norm_factors(HOOK)[1]))
    if architecture == "topk":
        assert after["l0"] == 8.0


def test_jumprelu_quadratic_loss_pulls_l0_to_the_target(store):
    # untrained, about half the features fire; the target-L0 loss must cut that down
    torch.manual_seed(0)
    untrained_l0 = evaluate_sae(
        inference_sae(build_training_sae("jumprelu", d_in=D_IN, d_sae=D_SAE, target_l0=8)), store, HOOK, 2
    )["l0"]
    sae = train_snapshot_sae(store, HOOK, 2, "jumprelu", D_SAE, target_l0=8, **{**TRAIN, "n_steps": 200})
    assert sae.cfg.metadata.training_architecture_details["jumprelu_sparsity_loss_mode"] == "quadratic"
    l0 = evaluate_sae(sae, store, HOOK, 2)["l0"]
    assert untrained_l0 > 20
    assert abs(l0 - 8) < abs(untrained_l0 - 8) / 2


def _first_batch(store, snapshot, batch_size, *, seed):
    batches = snapshot_batches(store, HOOK, snapshot, batch_size, seed=seed)
    try:
        return next(batches)
    finally:
        batches.close()


def test_threshold_at_l0_fires_the_target_on_its_batch(store):
    torch.manual_seed(0)
    sae = build_training_sae("jumprelu", d_in=D_IN, d_sae=D_SAE, target_l0=8)
    x_BD = _first_batch(store, 1, 100, seed=0)
    _, hidden_pre_BF = sae.encode_with_hidden_pre(x_BD)
    for target in (1, 8, 2.5):
        threshold = threshold_at_l0(sae, x_BD, target)
        assert threshold > 0
        assert int((hidden_pre_BF > threshold).sum()) == round(target * 100)
    # more latents than have a positive pre-activation: a JumpReLU threshold stops at 0
    assert int((hidden_pre_BF > 0).sum()) < D_SAE * 100
    assert threshold_at_l0(sae, x_BD, D_SAE) == 0.0


def test_jumprelu_baseline_starts_at_its_target_l0(store):
    settings = {**TRAIN, "n_steps": 2}
    sae = train_snapshot_sae(store, HOOK, 1, "jumprelu", D_SAE, target_l0=8, **settings)
    with seeded(TRAIN["seed"], "cpu"):  # the same initial weights, and the run's first batch
        fresh = build_training_sae("jumprelu", d_in=D_IN, d_sae=D_SAE, target_l0=8)
    first_BD = _first_batch(store, 1, TRAIN["batch_size"], seed=TRAIN["seed"])
    details = sae.cfg.metadata.training_architecture_details
    assert details["jumprelu_init_threshold"] == threshold_at_l0(fresh, first_BD, 8) > 0.01
    given = train_snapshot_sae(store, HOOK, 1, "jumprelu", D_SAE, target_l0=8, jumprelu_init_threshold=0.02, **settings)
    assert given.cfg.metadata.training_architecture_details["jumprelu_init_threshold"] == 0.02


def test_training_is_reproducible_from_the_seed(store):
    first = train_snapshot_sae(store, HOOK, 0, "topk", D_SAE, k=4, **{**TRAIN, "n_steps": 10})
    second = train_snapshot_sae(store, HOOK, 0, "topk", D_SAE, k=4, **{**TRAIN, "n_steps": 10})
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name


# -------------------------------------------------- evaluation agrees with the crosscoder's


def _copy_into_sae(crosscoder, sae) -> None:
    with torch.no_grad():
        sae.W_enc.copy_(crosscoder.W_enc[0])
        sae.W_dec.copy_(crosscoder.W_dec[:, 0])
        sae.b_enc.copy_(crosscoder.b_enc)
        sae.b_dec.copy_(crosscoder.b_dec[0])
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(crosscoder.threshold)


@pytest.mark.parametrize(
    ("crosscoder_arch", "sae_cls", "sae_cfg"),
    [
        ("crosscoder", StandardSAE, StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)),
        (
            "topk_crosscoder",
            TopKSAE,
            TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, apply_b_dec_to_input=False, rescale_acts_by_decoder_norm=True),
        ),
        ("jumprelu_crosscoder", JumpReLUSAE, JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)),
    ],
)
def test_sae_and_one_snapshot_crosscoder_evaluate_alike(one_snapshot_store, crosscoder_arch, sae_cls, sae_cfg):
    cc_cls, cc_cfg_cls, _, _ = ARCHITECTURES[crosscoder_arch]
    extra = {"k": 5} if crosscoder_arch == "topk_crosscoder" else {}
    torch.manual_seed(0)
    crosscoder = cc_cls(cc_cfg_cls(d_in=D_IN, d_sae=D_SAE, n_snapshots=1, **extra))
    with torch.no_grad():
        crosscoder.W_dec.normal_(0, 0.3)
        if crosscoder_arch == "jumprelu_crosscoder":
            # the crosscoder gates h * ||W_dec||, SAELens gates h: equal for unit-norm rows
            crosscoder.W_dec.div_(crosscoder.W_dec.norm(dim=-1, keepdim=True))
            crosscoder.threshold.uniform_(0.0, 1.0)
        crosscoder.W_enc.copy_(crosscoder.W_dec.permute(1, 2, 0) * 0.5)
        crosscoder.b_enc.normal_(0, 0.3)
        crosscoder.b_dec.normal_(0, 0.3)
    sae = sae_cls(sae_cfg)
    _copy_into_sae(crosscoder, sae)

    cc_eval = evaluate_crosscoder(crosscoder, one_snapshot_store, HOOK, n_tokens=500, batch_size=128)
    sae_eval = evaluate_sae(sae, one_snapshot_store, HOOK, 0, n_tokens=500, batch_size=128)
    assert sae_eval["explained_variance"] == pytest.approx(cc_eval["explained_variance"][0], abs=1e-5)
    assert sae_eval["mse"] == pytest.approx(cc_eval["mse"][0], rel=1e-5)
    assert sae_eval["l0"] == pytest.approx(cc_eval["l0"], abs=1e-6)
    assert sae_eval["dead_features"] == cc_eval["dead_features"]
    assert 0 < sae_eval["l0"] < D_SAE  # the gates really select

    # and both equal the definition, computed here by hand
    x = one_snapshot_store.read(HOOK, torch.arange(500), normalize=True)[:, 0]
    with torch.no_grad():
        x_hat = sae(x)
    ev = 1 - (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert sae_eval["explained_variance"] == pytest.approx(ev.item(), abs=1e-5)


# ------------------------------------------------------------------ the table


def _metrics(ev: float, l0: float, d_sae: int = 128, dead: int = 0) -> dict:
    return {"explained_variance": ev, "mse": 1.0 - ev, "l0": l0, "d_sae": d_sae, "dead_features": dead}


def test_quality_table_rows_and_rendering():
    crosscoder_eval = {"explained_variance": [0.5, 0.9, 0.95, 0.97], "l0": 30.0, "dead_features": 12}
    baselines = {
        ("topk", 1): _metrics(0.91, 30.0, dead=4),
        ("topk", 3): _metrics(0.96, 30.0, dead=6),
        ("standard", 3): _metrics(0.934, 27.0, dead=3),
        ("standard", 1): _metrics(0.88, 35.0, dead=2),
    }
    snapshots = [{"step": step, "revision": f"step{step}"} for step in (0, 16, 64, 640)]
    rows = quality_table(crosscoder_eval, baselines, snapshots, d_sae=128, sparsity={"topk": "k=30"})

    ev_rows = [r for r in rows if r["kind"] == "ev"]
    assert [r["step"] for r in ev_rows] == [0, 16, 64, 640]
    assert ev_rows[3]["crosscoder"] == 0.97 and ev_rows[3]["standard"] == 0.934
    assert ev_rows[0]["topk"] is None and ev_rows[2]["standard"] is None
    assert "jumprelu" not in ev_rows[0]  # architectures never trained get no column
    (l0_row,) = [r for r in rows if r["kind"] == "l0"]
    assert l0_row["crosscoder"] == 30.0 and l0_row["standard"] == pytest.approx(31.0) and l0_row["topk"] == 30.0
    (width_row,) = [r for r in rows if r["kind"] == "d_sae"]
    assert width_row["crosscoder"] == width_row["topk"] == 128

    text = format_quality_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["crosscoder", "EV", "standard", "EV", "topk", "EV"]
    for step in (0, 16, 64, 640):
        assert any(line.startswith(f"step{step} ") for line in lines)  # the revision, as other tables name it
    (last_step,) = [line for line in lines if line.startswith("step640")]
    assert last_step.split()[1:] == ["97.0%", "93.4%", "96.0%"]
    (first_step,) = [line for line in lines if line.startswith("step0 ")]
    assert first_step.split()[1:] == ["50.0%"]  # blank baseline cells
    (l0_line,) = [line for line in lines if line.startswith("mean L0")]
    assert l0_line.split()[2:] == ["30.0", "31.0", "30.0"]
    (dead_line,) = [line for line in lines if line.startswith("dead latents")]  # beside the sparsity
    assert dead_line.split()[2:] == ["12", "2.5", "5"] and lines.index(dead_line) == lines.index(l0_line) + 1
    assert any(line.startswith("d_sae") and line.split()[1:] == ["128", "128", "128"] for line in lines)
    assert any(line.startswith("sparsity") and line.split()[1:] == ["k=30"] for line in lines)
    # a rule separates the snapshots from the summary
    assert set(lines[lines.index(l0_line) - 1]) == {"-"}
    # columns line up: every full row ends where the header does
    assert len(last_step) == len(l0_line) == len(lines[0])


def test_quality_table_rejects_mismatched_inputs():
    crosscoder_eval = {"explained_variance": [0.5, 0.9], "l0": 10.0}
    two = [{"step": 0, "revision": "step0"}, {"step": 16, "revision": "step16"}]
    with pytest.raises(ValueError, match=r"3 snapshot records for 2 snapshots; pass .*store.snapshots"):
        quality_table(crosscoder_eval, {}, [*two, {"step": 64}])
    with pytest.raises(ValueError, match="outside 0..1"):
        quality_table(crosscoder_eval, {("topk", 5): _metrics(0.9, 10)}, two)
    with pytest.raises(ValueError, match="choose one of"):
        quality_table(crosscoder_eval, {("gated", 0): _metrics(0.9, 10)}, two)


# ---------------------------------------------------- calibration and the full comparison


def test_secant_step_solves_a_power_law():
    # L0 = 40 c^-0.5: from one point the first guess assumes slope -1,
    # from two points the secant lands on the exact coefficient
    assert _next_coefficient([(1.0, 40.0)], 10.0) == pytest.approx(4.0)
    assert _next_coefficient([(1.0, 40.0), (4.0, 20.0)], 10.0) == pytest.approx(16.0)
    # an all-dead run moves the coefficient down, but at most by e^2
    assert _next_coefficient([(1.0, 0.0)], 100.0) == pytest.approx(math.exp(-2.0))
    # a bracket is interpolated linearly in L0 against log coefficient...
    assert _next_coefficient([(1.0, 40.0), (16.0, 10.0)], 20.0) == pytest.approx(16.0 ** (2 / 3))
    # ...but a collapsed run (L0 ~ 0) cannot pin the guess to the bracket's end
    assert _next_coefficient([(13.0, 39.4), (36.0, 0.04)], 32.0) == pytest.approx(13.0 * (36.0 / 13.0) ** 0.2)


def test_calibration_lands_near_the_target_l0(store):
    calibration = calibrate_sparsity_coefficient(
        store, HOOK, 1, "standard", D_SAE, 12.0, initial=0.3, max_runs=5, rel_tolerance=0.15, **TRAIN
    )
    coefficients = [c for c, _ in calibration.history]
    assert coefficients[0] == 0.3 and len(set(coefficients)) == len(coefficients) > 1
    misses = [abs(math.log(l0 / 12.0)) for _, l0 in calibration.history]
    assert abs(math.log(calibration.l0 / 12.0)) == min(misses) <= math.log(1.15)
    assert evaluate_sae(calibration.sae, store, HOOK, 1, n_tokens=4096)["l0"] == calibration.l0


def test_compare_with_saes_end_to_end(store):
    cc_cls, cc_cfg_cls, _, _ = ARCHITECTURES["topk_crosscoder"]
    torch.manual_seed(0)
    crosscoder = cc_cls(cc_cfg_cls(d_in=D_IN, d_sae=D_SAE, n_snapshots=len(STEPS), k=6))

    rows = compare_with_saes(
        store, HOOK, crosscoder, snapshots=[0, 2], n_steps=40, batch_size=128, lr=3e-3, progress=False
    )

    ev_rows = [r for r in rows if r["kind"] == "ev"]
    assert [r["step"] for r in ev_rows] == list(STEPS)
    for arch in ("standard", "jumprelu", "topk"):
        assert ev_rows[1][arch] is None
        assert ev_rows[0][arch] is not None and ev_rows[2][arch] is not None
    assert ev_rows[0]["topk_l0"] == ev_rows[2]["topk_l0"] == 6.0  # k = the crosscoder's L0
    (width_row,) = [r for r in rows if r["kind"] == "d_sae"]
    assert all(width_row[col] == D_SAE for col in ("crosscoder", "standard", "jumprelu", "topk"))
    (sparsity_row,) = [r for r in rows if r["kind"] == "sparsity"]
    assert sparsity_row["topk"] == "k=6" and sparsity_row["crosscoder"] == "k=6"
    assert sparsity_row["standard"].startswith("l1=")
    text = format_quality_table(rows)
    # rows named by the suite's revisions (here its folder names), as its other tables are
    assert (
        any(line.startswith("step100 ") for line in text.splitlines()) and "mean L0" in text and "jumprelu EV" in text
    )


def test_compare_can_calibrate_standard_once(store):
    cc_cls, cc_cfg_cls, _, _ = ARCHITECTURES["topk_crosscoder"]
    torch.manual_seed(0)
    crosscoder = cc_cls(cc_cfg_cls(d_in=D_IN, d_sae=D_SAE, n_snapshots=len(STEPS), k=10))

    rows = compare_with_saes(
        store,
        HOOK,
        crosscoder,
        snapshots=[0, 1, 2],
        architectures=("standard",),
        calibrate="once",
        n_steps=30,
        batch_size=128,
        lr=3e-3,
        progress=False,
    )

    ev_rows = [r for r in rows if r["kind"] == "ev"]
    assert all(r["standard"] is not None and r["standard_l0"] > 0 for r in ev_rows)
    (sparsity_row,) = [r for r in rows if r["kind"] == "sparsity"]
    assert sparsity_row["standard"].startswith("l1=") and ".." not in sparsity_row["standard"]
    (l0_row,) = [r for r in rows if r["kind"] == "l0"]
    assert l0_row["standard"] == pytest.approx(sum(r["standard_l0"] for r in ev_rows) / 3)
    with pytest.raises(ValueError, match="per_snapshot"):
        compare_with_saes(store, HOOK, crosscoder, snapshots=[0], calibrate="never")


def test_compare_refuses_an_eval_store_of_other_snapshots(store, one_snapshot_store):
    crosscoder = ARCHITECTURES["topk_crosscoder"][0](
        ARCHITECTURES["topk_crosscoder"][1](d_in=D_IN, d_sae=D_SAE, n_snapshots=len(STEPS), k=6)
    )
    with pytest.raises(
        ValueError, match=r"other snapshots than store \(snapshots \[step0, step10, step100\] vs \[step10\]\); harvest"
    ):
        compare_with_saes(
            store, HOOK, crosscoder, snapshots=[0], eval_store=one_snapshot_store, n_steps=1, progress=False
        )


def test_bad_inputs_name_the_fix(store):
    with pytest.raises(ValueError, match="out of range"):
        train_snapshot_sae(store, HOOK, 3, "topk", D_SAE, k=4, **TRAIN)
    with pytest.raises(ValueError, match="choose one of"):
        train_snapshot_sae(store, HOOK, 0, "gated", D_SAE, **TRAIN)
    with pytest.raises(ValueError, match="lower batch_size"):
        train_snapshot_sae(store, HOOK, 0, "topk", D_SAE, k=4, n_steps=1, batch_size=store.n_tokens + 1)
    with pytest.raises(ValueError, match="needs k"):
        build_training_sae("topk", d_in=D_IN, d_sae=D_SAE)
    with pytest.raises(ValueError, match="not in the store"):
        evaluate_sae(inference_sae(build_training_sae("topk", d_in=D_IN, d_sae=D_SAE, k=4)), store, "x", 0)
    standard = inference_sae(build_training_sae("standard", d_in=D_IN, d_sae=D_SAE))
    assert isinstance(standard, SAE) and (standard.cfg.d_in, standard.cfg.d_sae) == (D_IN, D_SAE)
