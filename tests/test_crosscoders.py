"""Crosscoder architectures: hand-computed losses, SAELens equivalence at one snapshot,
registration, save/load, folding."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, TrainingSAE
from sae_lens.registry import get_sae_class, get_sae_training_class
from sae_lens.saes import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.saes.sae import TrainStepInput

import crosslens.crosscoders as cc
from crosslens.core.errors import CrosslensError
from crosslens.crosscoders.base import set_crosscoder_metadata
from crosslens.kernels.jumprelu_dense import snapshot_gate_and_score
from crosslens.kernels.plan import KernelPlan

ARCHS = list(cc.ARCHITECTURES)


def make_training(arch: str, *, S: int = 2, D: int = 3, F: int = 4, sparse_decode: bool | None = None, **kw):
    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]
    if "topk" in arch:
        kw.setdefault("k", 2)
    sae = train_cls(train_cfg_cls(d_in=D, d_sae=F, n_snapshots=S, **kw))
    sae.use_kernel_plan(KernelPlan.resolve("cpu", topk_sparse_decode=sparse_decode))
    return sae


def make_inference(arch: str, *, S: int = 2, D: int = 3, F: int = 4, **kw):
    sae_cls, cfg_cls, _, _ = cc.ARCHITECTURES[arch]
    if arch == "topk_crosscoder":
        kw.setdefault("k", 2)
    return sae_cls(cfg_cls(d_in=D, d_sae=F, n_snapshots=S, **kw))


@torch.no_grad()
def randomize(sae, seed: int = 0, threshold: float | None = None) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _name, p in sae.named_parameters():
        p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * 0.5)
    if hasattr(sae, "threshold"):
        sae.threshold.fill_(0.2 if threshold is None else threshold)


def step_input(x, *, dead=None, coefficients=None):
    return TrainStepInput(
        sae_in=x,
        coefficients=coefficients or {},
        dead_neuron_mask=dead,
        n_training_steps=0,
        is_logging_step=False,
    )


# ---------------------------------------------------------------- naive references
def naive_hidden(sae, x):
    """h[b][i] = b_enc[i] + sum_s sum_d x[b][s][d] W_enc[s][d][i], by loops."""
    W, b, xs = sae.W_enc.tolist(), sae.b_enc.tolist(), x.tolist()
    S, D, F = len(W), len(W[0]), len(b)
    return [[b[i] + sum(xb[s][d] * W[s][d][i] for s in range(S) for d in range(D)) for i in range(F)] for xb in xs]


def naive_norms(sae):
    W = sae.W_dec.tolist()
    return [[math.sqrt(sum(v * v for v in row)) for row in feat] for feat in W]


def naive_recon(sae, code_bsi, bias=True):
    """x_hat[b][s][d] = b_dec[s][d] + sum_i code[b][s][i] W_dec[i][s][d]."""
    W, bd = sae.W_dec.tolist(), sae.b_dec.tolist()
    F, S, D = len(W), len(W[0]), len(W[0][0])
    return [
        [
            [(bd[s][d] if bias else 0.0) + sum(cb[s][i] * W[i][s][d] for i in range(F)) for d in range(D)]
            for s in range(S)
        ]
        for cb in code_bsi
    ]


def naive_sq_err(x, recon):
    xs = x.tolist()
    return sum(
        (recon[b][s][d] - xs[b][s][d]) ** 2
        for b in range(len(xs))
        for s in range(len(xs[0]))
        for d in range(len(xs[0][0]))
    ) / len(xs)


# ------------------------------------------------------------------- registration
@pytest.mark.parametrize("arch", ARCHS)
def test_registered_with_saelens_and_from_dict(arch):
    sae_cls, cfg_cls, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]
    assert get_sae_class(arch) == (sae_cls, cfg_cls)
    assert get_sae_training_class(arch) == (train_cls, train_cfg_cls)
    training = make_training(arch, S=3)
    rebuilt = SAE.from_dict(training.cfg.get_inference_sae_cfg_dict())
    assert type(rebuilt) is sae_cls and rebuilt.cfg.n_snapshots == 3
    rebuilt_training = TrainingSAE.from_dict(training.cfg.to_dict())
    assert type(rebuilt_training) is train_cls
    assert rebuilt_training.cfg == training.cfg


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_layout_and_initialisation(arch):
    sae = make_training(arch, S=3, D=5, F=7, decoder_init_norm=0.08)
    assert sae.W_enc.shape == (3, 5, 7) and sae.W_dec.shape == (7, 3, 5)
    assert sae.b_enc.shape == (7,) and sae.b_dec.shape == (3, 5)
    torch.testing.assert_close(sae.decoder_norms(), torch.full((7, 3), 0.08))
    assert torch.equal(sae.W_enc, sae.W_dec.permute(1, 2, 0))
    assert torch.count_nonzero(sae.b_enc) == 0 and torch.count_nonzero(sae.b_dec) == 0
    assert not sae.cfg.apply_b_dec_to_input


def test_bad_inputs_name_the_fix():
    sae = make_training("crosscoder", S=2, D=3)
    with pytest.raises(ValueError, match=r"n_snapshots=2, d_in=3.*second-to-last axis"):
        sae.encode(torch.zeros(4, 3, 2))
    for arch in cc.ARCHITECTURES:  # codes of another width reached a reshape or broadcast error
        with pytest.raises(
            ValueError, match=r"^codes shaped \(4, 3\) given to decode; the crosscoder's are \[\.\.\., d_sae="
        ):
            make_training(arch, S=2, D=3).decode(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="fold_activation_norm_scaling_factors"):
        cc.ReLUCrosscoderConfig(d_in=3, d_sae=4, n_snapshots=2, normalize_activations="layer_norm")
    with pytest.raises(ValueError, match="n_snapshots"):
        cc.ReLUCrosscoderConfig(d_in=3, d_sae=4, n_snapshots=0)
    with pytest.raises(ValueError, match="k must be"):
        cc.TopKTrainingCrosscoderConfig(d_in=3, d_sae=4, n_snapshots=2, k=5)


# -------------------------------------------------------------- hand-computed losses
def test_relu_loss_by_hand():
    sae = make_training("crosscoder", l1_coefficient=0.7)
    randomize(sae, 1)
    x = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(2))
    out = sae.training_forward_pass(step_input(x, coefficients={"l1": 0.7}))

    h = naive_hidden(sae, x)
    f = [[max(v, 0.0) for v in hb] for hb in h]
    recon = naive_recon(sae, [[fb, fb] for fb in f])
    norms = naive_norms(sae)
    mse = naive_sq_err(x, recon)
    l1 = 0.7 * sum(fb[i] * sum(norms[i]) for fb in f for i in range(4)) / 3
    assert out.losses["mse_loss"].item() == pytest.approx(mse, rel=1e-5)
    assert out.losses["l1_loss"].item() == pytest.approx(l1, rel=1e-5)
    assert out.loss.item() == pytest.approx(mse + l1, rel=1e-5)
    torch.testing.assert_close(out.feature_acts, torch.tensor(f))
    torch.testing.assert_close(out.sae_out, torch.tensor(recon))


def _jumprelu_with_mixed_gates(**kw):
    sae = make_training("jumprelu_crosscoder", **kw)
    randomize(sae, 3)
    with torch.no_grad():
        sae.W_dec[:, 1] *= 3.0  # snapshot 1 three times stronger: gates differ
    x = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        contrib = sae.hidden_pre(x)[..., None, :] * sae.decoder_norms().T
        sae.threshold.fill_(contrib[contrib > 0].median().item())
    return sae, x


def test_jumprelu_tanh_scale_is_one_field_that_training_and_saving_read(tmp_path):
    """c has SAELens's name only: set on a config (built, replaced or changed on the crosscoder), it is the c
    the sparsity loss uses and the one a checkpoint saves, not a second field's older value."""
    cfg = cc.JumpReLUTrainingCrosscoderConfig(d_in=3, d_sae=4, n_snapshots=2, jumprelu_tanh_scale=2.0)
    assert "tanh_scale" not in cfg.to_dict()
    assert dataclasses.replace(cfg, jumprelu_tanh_scale=7.0).jumprelu_tanh_scale == 7.0
    with pytest.raises(ValueError, match="jumprelu_tanh_scale must be > 0"):
        dataclasses.replace(cfg, jumprelu_tanh_scale=0.0)
    sae, x = _jumprelu_with_mixed_gates(jumprelu_tanh_scale=2.0)
    sae.cfg.jumprelu_tanh_scale = 3.0
    fresh, _ = _jumprelu_with_mixed_gates(jumprelu_tanh_scale=3.0)
    loss = sae.training_forward_pass(step_input(x, coefficients={"l0": 0.3})).losses["l0_loss"]
    assert loss.item() == fresh.training_forward_pass(step_input(x, coefficients={"l0": 0.3})).losses["l0_loss"].item()
    sae.save_model(tmp_path / "step_1")
    assert TrainingSAE.load_from_disk(tmp_path / "step_1").cfg.jumprelu_tanh_scale == 3.0


def test_jumprelu_loss_by_hand():
    lam, c, q = 0.3, 4.0, 0.01
    sae, x = _jumprelu_with_mixed_gates(l0_coefficient=lam, jumprelu_tanh_scale=c, sparsity_target=q)
    out = sae.training_forward_pass(step_input(x, coefficients={"l0": lam}))

    h, norms, t = naive_hidden(sae, x), naive_norms(sae), sae.threshold.tolist()
    gate = [[[h[b][i] * norms[i][s] > t[i] for i in range(4)] for s in range(2)] for b in range(4)]
    assert any(gate[b][0][i] != gate[b][1][i] for b in range(4) for i in range(4)), "need mixed gates"
    code = [[[h[b][i] * gate[b][s][i] for i in range(4)] for s in range(2)] for b in range(4)]
    mse = naive_sq_err(x, naive_recon(sae, code))
    p = [sum(math.tanh(c * code[b][s][i] * norms[i][s]) for b in range(4) for s in range(2)) / 8 for i in range(4)]
    sparsity = lam * sum(pi * (1 + pi / q) for pi in p)
    assert out.losses["mse_loss"].item() == pytest.approx(mse, rel=1e-5)
    assert out.losses["l0_loss"].item() == pytest.approx(sparsity, rel=1e-5)
    shared = [[h[b][i] * any(gate[b][s][i] for s in range(2)) for i in range(4)] for b in range(4)]
    torch.testing.assert_close(out.feature_acts, torch.tensor(shared))


def test_jumprelu_straight_through_gradient_by_hand():
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(6, 3, generator=gen)
    norms = torch.rand(3, 2, generator=gen) + 0.5
    t = torch.tensor([0.1, 0.3, 0.2], requires_grad=True)
    h.requires_grad_(True)
    bw = 0.8
    upstream = torch.randn(2, 6, 3, generator=gen)  # snapshot-major [S, N, F]
    f_SNF, _, _ = snapshot_gate_and_score(h, norms, t, bandwidth=bw, tanh_scale=4.0)
    (f_SNF * upstream).sum().backward()

    exp_t, exp_h = [0.0] * 3, [[0.0] * 3 for _ in range(6)]
    for b in range(6):
        for s in range(2):
            for i in range(3):
                g = upstream[s, b, i].item()
                x = h[b, i].item() * norms[i, s].item()
                if x > t[i].item():
                    exp_h[b][i] += g
                if abs(x - t[i].item()) < bw / 2:
                    exp_t[i] -= g * t[i].item() / (norms[i, s].item() * bw)
    torch.testing.assert_close(t.grad, torch.tensor(exp_t))
    torch.testing.assert_close(h.grad, torch.tensor(exp_h))


@pytest.mark.parametrize("sparse", [False, True])
def test_topk_loss_by_hand(sparse):
    sae = make_training(
        "topk_crosscoder", k=2, aux_loss_coefficient=0.5, aux_k=2, sparse_decode=sparse, l1_coefficient=0.3
    )
    randomize(sae, 6)
    x = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(7))
    dead = torch.tensor([True, False, True, True])
    out = sae.training_forward_pass(step_input(x, dead=dead, coefficients={"l1": 0.3}))

    h, norms = naive_hidden(sae, x), naive_norms(sae)
    nsum = [sum(n) for n in norms]
    code = []
    for hb in h:
        order = sorted(range(4), key=lambda i: -max(hb[i], 0) * nsum[i])[:2]
        code.append([max(hb[i], 0) if i in order else 0.0 for i in range(4)])
    recon = naive_recon(sae, [[cb, cb] for cb in code])
    mse = naive_sq_err(x, recon)
    # aux: top-2 dead features by h * sum_s norm, code h (may be negative), no bias
    xs, aux = x.tolist(), 0.0
    for b, hb in enumerate(h):
        chosen = sorted([0, 2, 3], key=lambda i: -hb[i] * nsum[i])[:2]
        aux_code = [hb[i] if i in chosen else 0.0 for i in range(4)]
        aux_recon = naive_recon(sae, [[aux_code, aux_code]], bias=False)[0]
        aux += sum((aux_recon[s][d] - (xs[b][s][d] - recon[b][s][d])) ** 2 for s in range(2) for d in range(3))
    aux = 0.5 * min(3 / 2, 1.0) * aux / 3
    # L1 on the kept codes, weighted by each feature's decoder norms summed over snapshots
    l1 = 0.3 * sum(cb[i] * nsum[i] for cb in code for i in range(4)) / 3
    assert out.losses["mse_loss"].item() == pytest.approx(mse, rel=1e-5)
    assert out.losses["auxiliary_reconstruction_loss"].item() == pytest.approx(aux, rel=1e-5)
    assert l1 > 0 and out.losses["l1_loss"].item() == pytest.approx(l1, rel=1e-5)
    torch.testing.assert_close(out.feature_acts, torch.tensor(code))


@pytest.mark.parametrize("sparse", [False, True])
def test_batchtopk_loss_and_threshold_by_hand(sparse):
    sae = make_training("batchtopk_crosscoder", k=1.5, sparse_decode=sparse, topk_threshold_lr=0.25, l1_coefficient=0.2)
    randomize(sae, 8)
    x = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(9))
    out = sae.training_forward_pass(step_input(x, dead=torch.zeros(4, dtype=torch.bool), coefficients={"l1": 0.2}))

    h, norms = naive_hidden(sae, x), naive_norms(sae)
    nsum = [sum(n) for n in norms]
    scores = {(b, i): max(h[b][i], 0) * nsum[i] for b in range(4) for i in range(4)}
    kept = sorted(scores, key=lambda bi: -scores[bi])[:6]  # k * batch = 1.5 * 4
    code = [[max(h[b][i], 0) if (b, i) in kept else 0.0 for i in range(4)] for b in range(4)]
    mse = naive_sq_err(x, naive_recon(sae, [[cb, cb] for cb in code]))
    min_kept = min(scores[bi] for bi in kept if scores[bi] > 0)
    l1 = 0.2 * sum(code[b][i] * nsum[i] for b in range(4) for i in range(4)) / 4
    assert out.losses["mse_loss"].item() == pytest.approx(mse, rel=1e-5)
    assert out.losses["auxiliary_reconstruction_loss"].item() == 0.0
    assert l1 > 0 and out.losses["l1_loss"].item() == pytest.approx(l1, rel=1e-5)
    torch.testing.assert_close(out.feature_acts, torch.tensor(code))
    assert sae.topk_threshold.item() == pytest.approx(0.25 * min_kept, rel=1e-6)


# --------------------------------------------------- one snapshot == SAELens's SAE
def _copy_to_saelens(ours, ref):
    with torch.no_grad():
        ref.W_enc.copy_(ours.W_enc[0])
        ref.W_dec.copy_(ours.W_dec[:, 0])
        ref.b_enc.copy_(ours.b_enc)
        ref.b_dec.copy_(ours.b_dec[0])


def _assert_same_grads(ours, ref, names=("W_enc", "W_dec", "b_enc", "b_dec")):
    for name in names:
        g_ours, g_ref = getattr(ours, name).grad, getattr(ref, name).grad
        if name == "W_enc":
            g_ours = g_ours[0]
        elif name in ("W_dec", "b_dec"):
            g_ours = g_ours[:, 0] if name == "W_dec" else g_ours[0]
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6, msg=name)


X1 = torch.randn(16, 1, 6, generator=torch.Generator().manual_seed(10))


@pytest.mark.parametrize("apply_b_dec", [False, True])
def test_relu_matches_saelens_standard(apply_b_dec):
    ours = make_inference("crosscoder", S=1, D=6, F=10, apply_b_dec_to_input=apply_b_dec)
    randomize(ours, 11)
    ref = StandardSAE(StandardSAEConfig(d_in=6, d_sae=10, apply_b_dec_to_input=apply_b_dec))
    _copy_to_saelens(ours, ref)
    f = ours.encode(X1)
    torch.testing.assert_close(f, ref.encode(X1[:, 0]))
    torch.testing.assert_close(ours.decode(f)[:, 0], ref.decode(f))
    torch.testing.assert_close(ours(X1)[:, 0], ref(X1[:, 0]))

    ours_t = make_training("crosscoder", S=1, D=6, F=10, apply_b_dec_to_input=apply_b_dec)
    randomize(ours_t, 11)
    ref_t = StandardTrainingSAE(
        StandardTrainingSAEConfig(d_in=6, d_sae=10, apply_b_dec_to_input=apply_b_dec, l1_coefficient=0.4)
    )
    _copy_to_saelens(ours_t, ref_t)
    out = ours_t.training_forward_pass(step_input(X1, coefficients={"l1": 0.4}))
    out_ref = ref_t.training_forward_pass(step_input(X1[:, 0], coefficients={"l1": 0.4}))
    for name in ("mse_loss", "l1_loss"):
        torch.testing.assert_close(out.losses[name], out_ref.losses[name])
    out.loss.backward()
    out_ref.loss.backward()
    _assert_same_grads(ours_t, ref_t)


def test_jumprelu_matches_saelens_jumprelu():
    ours = make_inference("jumprelu_crosscoder", S=1, D=6, F=10)
    randomize(ours, 12, threshold=0.4)
    ref = JumpReLUSAE(JumpReLUSAEConfig(d_in=6, d_sae=10, apply_b_dec_to_input=False))
    _copy_to_saelens(ours, ref)
    with torch.no_grad():  # SAELens gates h > t'; ours gates h * ||W_dec|| > t
        ref.threshold.copy_(ours.threshold / ours.decoder_norms()[:, 0])
    f = ours.encode(X1)
    assert 0 < int((f != 0).sum()) < f.numel()
    torch.testing.assert_close(f, ref.encode(X1[:, 0]))
    torch.testing.assert_close(ours(X1)[:, 0], ref(X1[:, 0]))

    # training: SAELens's tanh sparsity loss is ours without the quadratic term (q=None);
    # with unit decoder norms the gates, losses and STE gradients coincide
    ours_t = make_training("jumprelu_crosscoder", S=1, D=6, F=10, sparsity_target=None, jumprelu_bandwidth=1.0)
    randomize(ours_t, 12, threshold=0.4)
    with torch.no_grad():
        ours_t.W_dec /= ours_t.W_dec.norm(dim=-1, keepdim=True)
    ref_t = JumpReLUTrainingSAE(
        JumpReLUTrainingSAEConfig(
            d_in=6,
            d_sae=10,
            apply_b_dec_to_input=False,
            jumprelu_sparsity_loss_mode="tanh",
            jumprelu_tanh_scale=4.0,
            jumprelu_bandwidth=1.0,
            l0_coefficient=0.3,
        )
    )
    _copy_to_saelens(ours_t, ref_t)
    with torch.no_grad():
        ref_t.threshold.copy_(ours_t.threshold)
    out = ours_t.training_forward_pass(step_input(X1, coefficients={"l0": 0.3}))
    out_ref = ref_t.training_forward_pass(step_input(X1[:, 0], coefficients={"l0": 0.3}))
    for name in ("mse_loss", "l0_loss"):
        torch.testing.assert_close(out.losses[name], out_ref.losses[name])
    out.loss.backward()
    out_ref.loss.backward()
    _assert_same_grads(ours_t, ref_t)
    assert ours_t.threshold.grad.abs().sum() > 0
    torch.testing.assert_close(ours_t.threshold.grad, ref_t.threshold.grad)


@pytest.mark.parametrize("sparse", [False, True])
def test_topk_matches_saelens_topk(sparse):
    ours = make_inference("topk_crosscoder", S=1, D=6, F=10, k=3)
    randomize(ours, 13)
    ref = TopKSAE(TopKSAEConfig(d_in=6, d_sae=10, k=3, apply_b_dec_to_input=False, rescale_acts_by_decoder_norm=True))
    _copy_to_saelens(ours, ref)
    # SAELens's code is ReLU(h) * ||W_dec||, ours ReLU(h)
    torch.testing.assert_close(ours.encode(X1) * ours.decoder_norms()[:, 0], ref.encode(X1[:, 0]))
    torch.testing.assert_close(ours(X1)[:, 0], ref(X1[:, 0]))

    # SAELens's TopK has no L1 term: ours without it is the same loss
    ours_t = make_training("topk_crosscoder", S=1, D=6, F=10, k=3, sparse_decode=sparse, l1_coefficient=0.0)
    randomize(ours_t, 13)
    ref_t = TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=6, d_sae=10, k=3, apply_b_dec_to_input=False, rescale_acts_by_decoder_norm=True)
    )
    _copy_to_saelens(ours_t, ref_t)
    dead = torch.tensor([True, False] * 5)
    out = ours_t.training_forward_pass(step_input(X1, dead=dead))
    out_ref = ref_t.training_forward_pass(step_input(X1[:, 0], dead=dead))
    assert out.losses["auxiliary_reconstruction_loss"] > 0
    for name in ("mse_loss", "auxiliary_reconstruction_loss"):
        torch.testing.assert_close(out.losses[name], out_ref.losses[name])
    out.loss.backward()
    out_ref.loss.backward()
    _assert_same_grads(ours_t, ref_t)


def test_batchtopk_matches_saelens_batchtopk(tmp_path):
    ours_t = make_training("batchtopk_crosscoder", S=1, D=6, F=10, k=2.5, l1_coefficient=0.0)
    randomize(ours_t, 14)
    ref_t = BatchTopKTrainingSAE(
        BatchTopKTrainingSAEConfig(
            d_in=6, d_sae=10, k=2.5, apply_b_dec_to_input=False, rescale_acts_by_decoder_norm=True
        )
    )
    _copy_to_saelens(ours_t, ref_t)
    dead = torch.tensor([False, True] * 5)
    out = ours_t.training_forward_pass(step_input(X1, dead=dead))
    out_ref = ref_t.training_forward_pass(step_input(X1[:, 0], dead=dead))
    assert out.losses["auxiliary_reconstruction_loss"] > 0
    for name in ("mse_loss", "auxiliary_reconstruction_loss"):
        torch.testing.assert_close(out.losses[name], out_ref.losses[name])
    torch.testing.assert_close(out.feature_acts * ours_t.decoder_norms()[:, 0], out_ref.feature_acts)
    torch.testing.assert_close(ours_t.topk_threshold, ref_t.topk_threshold)
    out.loss.backward()
    out_ref.loss.backward()
    _assert_same_grads(ours_t, ref_t)

    # inference: both save a fixed threshold; SAELens's loads as a JumpReLU SAE
    ours_t.save_inference_model(tmp_path / "ours")
    ref_t.save_inference_model(tmp_path / "ref")
    ours, ref = SAE.load_from_disk(tmp_path / "ours"), SAE.load_from_disk(tmp_path / "ref")
    assert isinstance(ours, cc.BatchTopKCrosscoder) and isinstance(ref, JumpReLUSAE)
    torch.testing.assert_close(ours(X1)[:, 0], ref(X1[:, 0]))


# ----------------------------------------------------------------- JumpReLU details
def test_jumprelu_decode_regates_shared_code():
    sae, x = _jumprelu_with_mixed_gates()
    sae.eval()
    f_shared = sae.encode(x)
    f_per_snapshot = sae.encode_per_snapshot(x)
    gates = f_per_snapshot != 0
    assert (gates[:, 0] != gates[:, 1]).any()
    torch.testing.assert_close(sae.decode(f_shared), sae(x))
    torch.testing.assert_close(sae.decode_per_snapshot(f_per_snapshot), sae(x))
    # shared code = pre-activation wherever any snapshot's gate is open
    torch.testing.assert_close(f_shared, f_per_snapshot.abs().amax(dim=1) * f_shared.sign())
    # training reconstruction reads the same per-snapshot code
    out = sae.training_forward_pass(step_input(x, coefficients={"l0": 1.0}))
    torch.testing.assert_close(out.sae_out, sae(x))


def test_jumprelu_threshold_float32_and_slower_lr():
    sae = make_training("jumprelu_crosscoder", threshold_lr_scale=0.1)
    sae.to(torch.float64)
    assert sae.W_dec.dtype == torch.float64 and sae.threshold.dtype == torch.float32
    groups = sae.optimizer_param_groups(1e-3)
    assert groups[1]["params"] == [sae.threshold] and groups[1]["lr"] == pytest.approx(1e-4)
    assert all(p is not sae.threshold for p in groups[0]["params"])
    assert len(groups[0]["params"]) == 4


# ------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("arch", ["topk_crosscoder", "batchtopk_crosscoder"])
def test_sparse_decode_matches_dense(arch):
    x = torch.randn(8, 3, 5, generator=torch.Generator().manual_seed(15))
    grads, outs = [], []
    for sparse in (False, True):
        sae = make_training(arch, S=3, D=5, F=24, k=3, sparse_decode=sparse)
        randomize(sae, 16)
        # the L1 term on the kept codes reads them through both paths too
        out = sae.training_forward_pass(step_input(x, dead=torch.arange(24) % 3 == 0, coefficients={"l1": 0.25}))
        assert out.losses["l1_loss"] > 0
        out.loss.backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()})
    assert outs[1].sae_out.shape == (8, 3, 5)
    torch.testing.assert_close(outs[0].sae_out, outs[1].sae_out)
    torch.testing.assert_close(outs[0].loss, outs[1].loss)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_leading_axes_are_kept(arch):
    sae = make_inference(arch, S=2, D=3, F=6)
    randomize(sae, 17, threshold=0.05)
    x = torch.randn(2, 5, 2, 3, generator=torch.Generator().manual_seed(18))
    f = sae.encode(x)
    assert f.shape == (2, 5, 6) and sae(x).shape == x.shape
    torch.testing.assert_close(f.reshape(10, 6), sae.encode(x.reshape(10, 2, 3)))


# ----------------------------------------------------------------- folding and I/O
@pytest.mark.parametrize("arch", ARCHS)
def test_folded_on_raw_equals_unfolded_on_normalised(arch):
    sae = make_inference(arch, S=3, D=4, F=12)
    randomize(sae, 19)
    factors = torch.tensor([2.0, 0.5, 3.0])
    raw = torch.randn(20, 3, 4, generator=torch.Generator().manual_seed(20)) * 2
    normalised = raw * factors[:, None]
    with torch.no_grad():
        if arch == "jumprelu_crosscoder":
            contrib = sae.hidden_pre(normalised)[..., None, :] * sae.decoder_norms().T
            sae.threshold.fill_(contrib[contrib > 0].median().item())
        if arch == "batchtopk_crosscoder":
            scores = sae.hidden_pre(normalised).relu() * sae.decoder_norms().sum(1)
            sae.threshold.fill_(scores[scores > 0].median().item())
    norms_before = sae.decoder_norms()
    code_before = sae.encode(normalised)
    recon_before = sae(normalised) / factors[:, None]
    assert 0 < int((code_before != 0).sum()) < code_before.numel()

    set_crosscoder_metadata(sae.cfg, activation_norm_factors=factors)
    sae.fold_activation_norm_scaling_factors()
    torch.testing.assert_close(sae.encode(raw), code_before)
    torch.testing.assert_close(sae(raw), recon_before)
    torch.testing.assert_close(sae.decoder_norms(), norms_before)
    torch.testing.assert_close(sae.raw_decoder_norms(), norms_before / factors)
    with pytest.raises(ValueError, match="already folded"):
        sae.fold_activation_norm_scaling_factors()


@pytest.mark.parametrize("arch", ARCHS)
def test_fold_W_dec_norm_keeps_outputs(arch):
    sae = make_inference(arch, S=2, D=4, F=8)
    randomize(sae, 21, threshold=0.1)
    x = torch.randn(10, 2, 4, generator=torch.Generator().manual_seed(22))
    before = sae(x)
    sae.fold_W_dec_norm()
    torch.testing.assert_close(sae.W_dec.reshape(8, -1).norm(dim=-1), torch.ones(8))
    torch.testing.assert_close(sae(x), before)


PROVENANCE = {
    "family": "local",
    "model_id": "crosslens/pico",
    "snapshots": [
        {"index": 0, "revision": "step0", "step": 0, "tokens_seen": 0, "weights_sha256": "aa"},
        {"index": 1, "revision": "step64", "step": 64, "tokens_seen": 8192, "weights_sha256": "bb"},
    ],
}


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip(arch, tmp_path):
    training = make_training(arch, S=2, D=3, F=6)
    randomize(training, 23, threshold=0.05)
    set_crosscoder_metadata(
        training.cfg,
        provenance=PROVENANCE,
        hook_name="blocks.1.hook_resid_post",
        activation_norm_factors=[1.5, 0.75],
    )
    x = torch.randn(9, 2, 3, generator=torch.Generator().manual_seed(24))
    if arch == "batchtopk_crosscoder":
        training.training_forward_pass(step_input(x, coefficients={"l1": 0.25}))  # moves the running threshold off 0

    # training checkpoint: SAELens layout, same class and weights back
    training.save_model(tmp_path / "train")
    assert {p.name for p in (tmp_path / "train").iterdir()} == {"cfg.json", "sae_weights.safetensors"}
    again = TrainingSAE.load_from_disk(tmp_path / "train")
    assert type(again) is type(training)
    for name, value in training.state_dict().items():
        if name == "topk_threshold":  # float64, but SAELens's loader reads at cfg.dtype
            assert again.topk_threshold.dtype == torch.float64
            assert again.topk_threshold.item() == pytest.approx(value.item(), rel=1e-7)
        else:
            assert torch.equal(again.state_dict()[name], value), name

    # a training checkpoint also loads as the inference class
    as_inference = SAE.load_from_disk(tmp_path / "train")
    assert type(as_inference) is cc.ARCHITECTURES[arch][0]

    # inference model through SAE.load_from_disk
    training.save_inference_model(tmp_path / "infer")
    loaded = SAE.load_from_disk(tmp_path / "infer")
    assert type(loaded) is cc.ARCHITECTURES[arch][0]
    meta = loaded.cfg.metadata
    assert meta.suite == PROVENANCE and meta.model_name == "crosslens/pico"
    assert meta.hook_name == "blocks.1.hook_resid_post"
    assert meta.activation_norm_factors == [1.5, 0.75]
    if arch == "batchtopk_crosscoder":
        t = training.topk_threshold.item()
        torch.testing.assert_close(loaded.threshold, torch.full((6,), t))
        relu_h = training.hidden_pre(x).relu()
        expected = relu_h * (relu_h * training.decoder_norms().sum(1) > t)
        torch.testing.assert_close(loaded.encode(x), expected)
        torch.testing.assert_close(as_inference.encode(x), expected)
    else:
        torch.testing.assert_close(loaded.encode(x), training.encode(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), training(x), rtol=0, atol=0)
        torch.testing.assert_close(as_inference(x), training(x))

    # the inference folder (a run's final/) is refused as the training class: it keeps the training
    # settings only as metadata (test_an_inference_folder_is_not_trained_on_with_guessed_settings)
    with pytest.raises(ValueError, match="saved for inference.* Load it with SAE.load_from_disk"):
        TrainingSAE.load_from_disk(tmp_path / "infer")

    # folded inference model survives a second round trip unchanged
    loaded.fold_activation_norm_scaling_factors()
    loaded.save_model(tmp_path / "folded")
    reloaded = SAE.load_from_disk(tmp_path / "folded")
    torch.testing.assert_close(reloaded.folded_norm_factors, torch.tensor([1.5, 0.75]))
    torch.testing.assert_close(reloaded(x), loaded(x), rtol=0, atol=0)


TRAINED_SETTINGS = {
    "crosscoder": dict(l1_coefficient=0.7, l1_warm_up_steps=3),
    "jumprelu_crosscoder": dict(
        l0_coefficient=0.3, jumprelu_bandwidth=0.2, sparsity_target=None, threshold_lr_scale=0.5
    ),
    "topk_crosscoder": dict(k=4, l1_coefficient=0.1, aux_k=3, aux_loss_coefficient=1 / 32),
    "batchtopk_crosscoder": dict(k=4, topk_threshold_lr=0.05, aux_k=3),
}


@pytest.mark.parametrize("arch", list(cc.ARCHITECTURES))
def test_an_inference_folder_is_not_trained_on_with_guessed_settings(arch, tmp_path):
    """A run's final/ keeps the training settings only in metadata.training_architecture_details (and
    not JumpReLU's controller factor or BatchTopK's running threshold): every architecture refuses it as
    a training crosscoder, naming the settings, where JumpReLU and TopK took defaults for them. A training
    checkpoint loads with the settings it was trained with."""
    _, _, train_cls, train_cfg = cc.ARCHITECTURES[arch]
    training = train_cls(train_cfg(d_in=4, d_sae=16, n_snapshots=2, **TRAINED_SETTINGS[arch]))
    training.save_inference_model(tmp_path / "final")
    saved = json.loads((tmp_path / "final" / "cfg.json").read_text())
    details = saved["metadata"]["training_architecture_details"]
    assert {k: details.get(k, saved.get(k)) for k in TRAINED_SETTINGS[arch]} == TRAINED_SETTINGS[arch]
    named = sorted(set(TRAINED_SETTINGS[arch]) & set(details))[0]
    with pytest.raises(CrosslensError, match=f"{arch} saved for inference, without what its training kept .*{named}"):
        TrainingSAE.load_from_disk(tmp_path / "final")
    assert type(SAE.load_from_disk(tmp_path / "final")) is cc.ARCHITECTURES[arch][0]
    if arch == "batchtopk_crosscoder":  # its weights alone: a fixed threshold where training keeps a running one
        with pytest.raises(
            CrosslensError, match="saved for inference, without what its training kept .*topk_threshold"
        ):
            training.load_weights_from_checkpoint(tmp_path / "final")
    training.save_model(tmp_path / "step_1")
    again = TrainingSAE.load_from_disk(tmp_path / "step_1")
    assert {k: getattr(again.cfg, k) for k in TRAINED_SETTINGS[arch]} == TRAINED_SETTINGS[arch]


def test_metadata_checks_snapshot_count():
    cfg = cc.ReLUTrainingCrosscoderConfig(d_in=3, d_sae=4, n_snapshots=3)
    with pytest.raises(ValueError, match="lists 2 snapshots"):
        set_crosscoder_metadata(cfg, provenance=PROVENANCE)
    with pytest.raises(ValueError, match="3 finite positive"):
        set_crosscoder_metadata(cfg, activation_norm_factors=[1.0, 2.0])


def test_api_doc_gives_the_parts_of_an_architectures_entry_in_order():
    """docs/API.md describes ``ARCHITECTURES``'s values as what they are: every part, in its order."""
    from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig

    api = (Path(__file__).resolve().parent.parent / "docs" / "API.md").read_text()
    row = re.search(r"^\| `ARCHITECTURES` \| architecture name -> \(([^)]*)\) \|$", api, re.M)
    assert row, "docs/API.md has no ARCHITECTURES row of the form 'architecture name -> (...)'"
    kinds = {
        "inference class": lambda c: issubclass(c, SAE) and not issubclass(c, TrainingSAE),
        "inference config": lambda c: issubclass(c, SAEConfig) and not issubclass(c, TrainingSAEConfig),
        "training class": lambda c: issubclass(c, TrainingSAE),
        "training config": lambda c: issubclass(c, TrainingSAEConfig),
    }
    parts = [part.strip() for part in row.group(1).split(",")]
    for arch, entry in cc.ARCHITECTURES.items():
        assert len(parts) == len(entry), (arch, parts)
        assert all(kinds[part](cls) for part, cls in zip(parts, entry, strict=True)), (arch, parts)
