"""The blocked JumpReLU gate/score function gives the loss and every gradient
of the whole-batch implementation it replaced (copied below as the reference), on random
inputs whose gates are open at some snapshots and shut at others."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput

import crosslens.kernels.jumprelu_dense as dense
import crosslens.kernels.jumprelu_entry_classes as kernels
import crosslens.kernels.jumprelu_ops as ops
from crosslens.crosscoders import JumpReLUTrainingCrosscoder, JumpReLUTrainingCrosscoderConfig
from crosslens.crosscoders.base import CrosscoderPass
from crosslens.crosscoders.collectives import LocalCollectives
from crosslens.crosscoders.jumprelu_crosscoder import snapshot_gated_decode
from crosslens.kernels.jumprelu_ops import forward_block
from crosslens.kernels.jumprelu_pairs import snapshot_score_sums
from crosslens.kernels.plan import KernelPlan

CPU = KernelPlan.resolve("cpu", compile=False)
CUDA = KernelPlan.resolve("cuda", compile=None)  # a plan only: resolving it needs no CUDA


# ------------------------------------------ the reference: the unblocked implementation
class OldSnapshotJumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h_NF, norms_FS, threshold_F, bandwidth):  # type: ignore[override]
        norms_S1F = norms_FS.T.contiguous()[:, None, :]
        ctx.save_for_backward(h_NF, norms_S1F, threshold_F)
        ctx.bandwidth = bandwidth
        return torch.where(h_NF * norms_S1F > threshold_F, h_NF, 0.0)

    @staticmethod
    def backward(ctx: Any, grad_SNF):  # type: ignore[override]
        h_NF, norms_S1F, threshold_F = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        distance_SNF = h_NF * norms_S1F - threshold_F
        grad_h = torch.where(distance_SNF > 0, grad_SNF, 0.0).sum(dim=0)
        in_window_SNF = distance_SNF.abs_() < bandwidth / 2
        window_grad_SF = torch.where(in_window_SNF, grad_SNF, 0.0).sum(dim=1)
        kernel_SF = threshold_F / (norms_S1F[:, 0].clamp(min=1e-8) * bandwidth)
        grad_t = -(window_grad_SF * kernel_SF).sum(dim=0)
        return grad_h, None, grad_t, None


class OldJumpReLU(JumpReLUTrainingCrosscoder):
    def _training_encode(self, x_NSD: torch.Tensor) -> CrosscoderPass:
        h_NF = self.hidden_pre(x_NSD)
        norms_FS = self.snapshot_norms()
        f_SNF = OldSnapshotJumpReLU.apply(h_NF, norms_FS, self.threshold.to(h_NF.dtype), self.cfg.jumprelu_bandwidth)
        with torch.no_grad():
            on_anywhere_NF = self.collectives.snapshot_any((f_SNF != 0).any(dim=0))
            f_NF = torch.where(on_anywhere_NF, h_NF, 0.0)
        f_NF = self.hook_sae_acts_post(f_NF)
        return CrosscoderPass(
            x_NSD=x_NSD, hidden_pre_NF=h_NF, feature_acts_NF=f_NF, extras={"f_SNF": f_SNF, "norms_FS": norms_FS}
        )

    def _sparsity_losses(self, step_input, fwd):
        f_SNF, norms_FS = fwd.extras["f_SNF"], fwd.extras["norms_FS"]
        scale_S1F = (self.cfg.jumprelu_tanh_scale * norms_FS.T).contiguous()[:, None, :]
        score_SNF = torch.tanh(f_SNF * scale_S1F)
        p_F = self.collectives.mean_over_snapshots_and_tokens(score_SNF)
        q = self.cfg.sparsity_target
        per_feature_F = p_F if q is None else p_F * (1 + p_F / q)
        penalty = self.collectives.replicated_share(per_feature_F.sum())
        return {"l0_loss": step_input.coefficients["l0"] * penalty}


# ------------------------------------------------------------------------- helpers
def _pair(seed: int, **cfg: Any) -> tuple[JumpReLUTrainingCrosscoder, OldJumpReLU]:
    config = dict(d_in=6, d_sae=40, n_snapshots=4, jumprelu_init_threshold=0.05, jumprelu_bandwidth=0.1) | cfg
    torch.manual_seed(seed)
    new = JumpReLUTrainingCrosscoder(JumpReLUTrainingCrosscoderConfig(**config))
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # snapshots of very different strength, so gates differ per snapshot
        new.W_dec.mul_(torch.rand(config["d_sae"], config["n_snapshots"], 1, generator=gen) * 3)
        new.threshold.copy_(torch.rand(config["d_sae"], generator=gen) * 0.2)
        new.b_enc.copy_(torch.randn(config["d_sae"], generator=gen) * 0.1)
    old = OldJumpReLU(JumpReLUTrainingCrosscoderConfig(**config))
    old.load_state_dict(new.state_dict())
    return new, old


def _run(cc, x: torch.Tensor):
    step = TrainStepInput(
        sae_in=x, coefficients={"l0": 0.7}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
    )
    out = cc.training_forward_pass(step)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in cc.named_parameters()}


# How the new code may run: the per-snapshot kernel in many blocks or one (the fallback for
# many mixed gates), or the gated decode with each of its three ways of summing the window,
# its entries open everywhere gathered one at a time or packed into padded rows (in blocks
# of a few rows, or all at once), its code gradient in blocks of a few features or all at once.
GATHER = {"padding_limit": 0.0}
ROWS = {"padding_limit": float("inf"), "row_block_elements": 50, "code_grad_block_elements": 50}
PATHS = {
    "dense-blocks": {"cpu_block_elements": 200, "gather_share": -1.0},
    "dense-one-block": {"cpu_block_elements": 1 << 20, "gather_share": -1.0},
    "gathered": {"gather_share": 1.0, "window_mode": "gathered", "sparse_entry_chunk": 64, **GATHER},
    "matmul": {"gather_share": 1.0, "window_mode": "matmul", **GATHER},
    "per_snapshot": {"gather_share": 1.0, "window_mode": "per_snapshot", **GATHER},
    "rows-gathered": {"gather_share": 1.0, "window_mode": "gathered", "sparse_entry_chunk": 64, **ROWS},
    "rows-matmul": {"gather_share": 1.0, "window_mode": "matmul", **ROWS},
    "rows-per_snapshot": {"gather_share": 1.0, "window_mode": "per_snapshot", **ROWS},
    "rows-one-block": {"gather_share": 1.0, "window_mode": "matmul", "padding_limit": float("inf")},
}


@pytest.fixture
def calls():
    """Counts the calls of the Python functions a test watches (``calls.watch(f)``) through
    ``sys.setprofile``: it observes which path ran without replacing anything."""
    counter = CallCounter()
    previous = sys.getprofile()
    sys.setprofile(counter.profile)
    try:
        yield counter
    finally:
        sys.setprofile(previous)


class CallCounter:
    def __init__(self) -> None:
        self.counts: dict[Any, list[int]] = {}

    def watch(self, function: Any) -> list[int]:
        return self.counts.setdefault(function.__code__, [0])

    def profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call" and (count := self.counts.get(frame.f_code)) is not None:
            count[0] += 1


def _count_gated_decodes(calls: CallCounter) -> list[int]:
    return calls.watch(kernels.SnapshotGatedDecode.forward)


def _count_padded_rows(calls: CallCounter) -> list[int]:
    """How many times entries open everywhere were packed into padded rows."""
    return calls.watch(ops.PaddedRows.__init__)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"sparsity_target": None},
        {"closed_gate_decoder_grad": True},
        {"jumprelu_tanh_scale": 1.5, "jumprelu_bandwidth": 0.3},
    ],
)
@pytest.mark.parametrize("collectives", ["default", "local"])
def test_loss_and_every_gradient_match_the_old_implementation(calls, path, cfg, collectives):
    gated_decodes = _count_gated_decodes(calls)
    padded = _count_padded_rows(calls)
    new, old = _pair(3, **cfg)
    new.use_kernel_plan(KernelPlan.resolve("cpu", **PATHS[path]))
    if collectives == "local":  # the object a one-rank mesh run holds, with the snapshot count set
        new.collectives = LocalCollectives(n_snapshots_total=4)
        old.collectives = LocalCollectives(n_snapshots_total=4)
    x = 3 * torch.randn(37, 4, 6, generator=torch.Generator().manual_seed(9))
    out_new, grads_new = _run(new, x)
    out_old, grads_old = _run(old, x)
    # the path asked for is the one that ran (closed_gate_decoder_grad decodes the [S, N, F] code)
    assert gated_decodes[0] == int(not path.startswith("dense") and "closed_gate_decoder_grad" not in cfg)
    assert padded[0] == int(path.startswith("rows") and "closed_gate_decoder_grad" not in cfg)

    # the inputs exercise every case: gates open at some snapshots and shut at others, in the window
    f_SNF = old._training_encode(x).extras["f_SNF"]
    open_SNF = f_SNF != 0
    partly_open = open_SNF.any(0) & ~open_SNF.all(0)
    assert partly_open.float().mean() > 0.05 and open_SNF.float().mean() > 0.1
    assert open_SNF.all(0).float().mean() > 0.03  # and open at every snapshot
    assert float(grads_old["threshold"].abs().sum()) > 0 and float(grads_old["W_dec"].abs().sum()) > 0

    for key in ("mse_loss", "l0_loss"):
        torch.testing.assert_close(out_new.losses[key], out_old.losses[key], rtol=1e-5, atol=1e-6)
    # the same decode, its sums over features taken in another order on the gated-decode paths
    torch.testing.assert_close(out_new.sae_out, out_old.sae_out, rtol=1e-6, atol=1e-6)
    assert torch.equal(out_new.feature_acts, out_old.feature_acts)
    assert set(grads_new) == set(grads_old) == {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}
    for name, grad in grads_old.items():
        torch.testing.assert_close(grads_new[name], grad, rtol=1e-5, atol=1e-6, msg=f"gradient of {name}")


def _brute_force_classes(h_NF, norms_FS, threshold_F, half_width):
    distance_SNF = h_NF * norms_FS.T[:, None, :] - threshold_F
    open_SNF, window_SNF = distance_SNF > 0, distance_SNF.abs() < half_width
    return open_SNF.all(0), open_SNF.any(0), window_SNF.all(0), window_SNF.any(0) & ~window_SNF.all(0)


def test_entry_classes_equal_a_per_snapshot_count_on_edge_cases():
    gen = torch.Generator().manual_seed(0)
    N, F_, S, w = 300, 24, 5, 0.05
    h = torch.randn(N, F_, generator=gen)
    h[::7] = 0.0  # exact zeros, and values that land exactly on the gate and the window's edges
    norms = torch.rand(F_, S, generator=gen) + 0.2
    norms[0] = 0.0  # a feature absent everywhere
    norms[1, :3] = 0.0  # absent at the first snapshots
    norms[2] = norms[2, 0]  # equal at every snapshot
    threshold = torch.rand(F_, generator=gen) * 0.3
    threshold[3] = 0.0
    threshold[4] = -0.1  # not reachable in training (clamped at 0), but the classes hold for any sign
    h[5, 5] = float(threshold[5] / norms[5, 0])
    h[6, 6] = float((threshold[6] + w) / norms[6].max())
    h[8, 8] = float((threshold[8] - w) / norms[8].min())
    classes = kernels.EntryClasses(h, norms, threshold, w)
    open_all, open_any, window_all, window_mixed = _brute_force_classes(h, norms, threshold, w)
    assert torch.equal(classes.open_all_FN, open_all.T)  # feature-major
    assert torch.equal(classes.open_any_FN, open_any.T)
    assert torch.equal(classes.window_all_FN, window_all.T)
    mixed = torch.zeros(F_ * N, dtype=torch.bool)
    mixed[classes.mixed_open_flat] = True
    assert torch.equal(mixed.view(F_, N).T, open_any & ~open_all)
    assert (open_any & ~open_all).any() and window_mixed.any() and window_all.any()


@pytest.mark.parametrize("share", [0.0, 1e-3, 0.01, 0.3, 1.0])
def test_flat_nonzero_is_nonzero_whether_it_reads_words_or_entries(share):
    """Sparse masks are searched word by word (eight entries at a time), dense ones entry by entry:
    the indices are nonzero's either way, as are those of masks whose entries do not fill words."""
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(96, 256, generator=gen) < share
    words = mask.view(-1).view(torch.int64)
    sparse = int(torch.count_nonzero(words)) <= ops.SPARSE_WORD_SHARE * words.numel()
    assert sparse == (share < 0.3)  # both readings are taken
    assert torch.equal(ops.flat_nonzero(mask), mask.view(-1).nonzero().squeeze(1))
    for part in (mask[:, :-3].contiguous(), mask.view(-1)[5:]):  # 253 a row; an offset inside a word
        assert torch.equal(ops.flat_nonzero(part), part.reshape(-1).nonzero().squeeze(1))


@pytest.mark.parametrize("window_mode", ["gathered", "matmul", "per_snapshot"])
@pytest.mark.parametrize("padding_limit", [0.0, float("inf")])
def test_gated_decode_matches_the_per_snapshot_code_and_its_matmul(window_mode, padding_limit):
    """The function alone, with upstream gradients on the decode and on the scores."""
    # several blocks of rows, and of features in the code's gradient (8 of 30, the last one short)
    plan = KernelPlan.resolve(
        "cpu",
        gather_share=1.0,
        window_mode=window_mode,
        padding_limit=padding_limit,
        row_block_elements=40,
        code_grad_block_elements=8 * 40,
    )
    gen = torch.Generator().manual_seed(2)
    N, F_, S, D = 40, 30, 3, 5
    h = torch.randn(N, F_, generator=gen, dtype=torch.float64, requires_grad=True)
    threshold = (torch.rand(F_, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    W_dec = torch.randn(F_, S, D, generator=gen, dtype=torch.float64)
    W_dec = (W_dec / W_dec.norm(dim=-1, keepdim=True) * (torch.rand(F_, S, 1, generator=gen) + 0.3)).requires_grad_()
    factors = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)  # folded normalisation factors
    grad_recon = torch.randn(N, S, D, generator=gen, dtype=torch.float64)
    grad_score = torch.randn(F_, generator=gen, dtype=torch.float64)
    kw = {"bandwidth": 0.4, "tanh_scale": 2.0}

    recon, score, open_any, shared, _ = snapshot_gated_decode(
        h, W_dec, threshold, norm_factors_S=factors, plan=plan, **kw
    )
    torch.autograd.backward([recon, score], [grad_recon, grad_score])
    grads = [t.grad.clone() for t in (h, threshold, W_dec)]
    for t in (h, threshold, W_dec):
        t.grad = None
    norms = W_dec.norm(dim=-1) * factors  # the reference: autograd's norm backward
    f_SNF, score_ref, open_ref = dense.snapshot_gate_and_score(h, norms, threshold, **kw)
    recon_ref = torch.bmm(f_SNF, W_dec.transpose(0, 1)).transpose(0, 1)
    torch.autograd.backward([recon_ref, score_ref], [grad_recon, grad_score])

    # gates mixed both ways: open at most snapshots (decoded by the matmul, minus the shut
    # ones) and at few (plus the open ones)
    n_open_NF = (h[None] * norms.T[:, None] > threshold).sum(dim=0)
    assert (n_open_NF == 1).any() and (n_open_NF == 2).any(), "S = 3: one open, or two"
    assert (n_open_NF == 3).any(), "and open everywhere (the padded rows)"
    torch.testing.assert_close(recon, recon_ref)
    torch.testing.assert_close(score, score_ref, rtol=1e-6, atol=0)  # both sum the scores in float32
    assert torch.equal(open_any, open_ref)
    assert torch.equal(shared, torch.where(open_ref, h, 0.0)) and not shared.requires_grad
    for name, grad, t in zip(("h", "threshold", "W_dec"), grads, (h, threshold, W_dec)):
        torch.testing.assert_close(grad, t.grad, msg=f"gradient of {name}")
    # W_dec's gradient has a part through the scores' norms, which the gated decode adds itself
    W_dec.grad = None
    f_SNF, _, _ = dense.snapshot_gate_and_score(h, norms.detach(), threshold, **kw)
    recon_no_norms = torch.bmm(f_SNF, W_dec.transpose(0, 1)).transpose(0, 1)
    torch.autograd.backward([recon_no_norms], [grad_recon])
    assert not torch.allclose(grads[2], W_dec.grad)
    # without gradients the forward skips the scores' gradient parts, and computes the same
    with torch.no_grad():
        recon_ng, score_ng, *_ = snapshot_gated_decode(h, W_dec, threshold, norm_factors_S=factors, plan=plan, **kw)
    assert torch.equal(recon_ng, recon) and torch.equal(score_ng, score)
    # a loss of one output alone: the other's gradient reaches the backward as None, not zeros
    for upstream in ([grad_recon, None], [None, grad_score]):
        recon, score, *_ = snapshot_gated_decode(h, W_dec, threshold, norm_factors_S=factors, plan=plan, **kw)
        used = [(out, g) for out, g in zip((recon, score), upstream) if g is not None]
        got = torch.autograd.grad([out for out, _ in used], (h, threshold, W_dec), [g for _, g in used])
        f_SNF, score_ref, _ = dense.snapshot_gate_and_score(h, W_dec.norm(dim=-1) * factors, threshold, **kw)
        outs_ref = (torch.bmm(f_SNF, W_dec.transpose(0, 1)).transpose(0, 1), score_ref)
        used_ref = [(out, g) for out, g in zip(outs_ref, upstream) if g is not None]
        want = torch.autograd.grad([out for out, _ in used_ref], (h, threshold, W_dec), [g for _, g in used_ref])
        for name, a, b in zip(("h", "threshold", "W_dec"), got, want):
            torch.testing.assert_close(a, b, msg=f"gradient of {name} from one output")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["token-major", "feature-major"])
def test_score_sums_alone_are_those_of_the_gate_and_score(calls, dtype, layout):
    """The scores without the code, from the open entries alone in chunks, equal the
    per-snapshot kernel's (the same gates; tanh from a sigmoid, sums in another order), and an
    entry open at one snapshot only, or exactly on its gate, counts as there."""
    plan = KernelPlan.resolve("cpu", cpu_block_elements=4 * 500)  # several chunks of entries
    gen = torch.Generator().manual_seed(3)
    N, F_, S = 300, 40, 4
    h = torch.randn(N, F_, generator=gen).to(dtype)
    if layout == "feature-major":
        h = h.T.contiguous().T
    norms = torch.rand(F_, S, generator=gen) + 0.2
    norms[1, 1:] = 0.0  # present at the first snapshot only
    norms[2] = 0.0  # absent everywhere
    threshold = (torch.rand(F_, generator=gen) * 0.8).to(dtype)
    threshold[3] = 0.0
    h[7, 4] = threshold[4] / norms[4, 0]  # near the gate (equal after rounding, or not)
    kw = {"tanh_scale": 2.5}
    # the per-snapshot kernel's block function over the whole batch, its sums kept in float32
    expected = forward_block(h, norms.T[:, None], (2.5 * norms).T[:, None], threshold)[2]
    open_NF = (h[None] * norms.T[:, None] > threshold).any(0)
    assert 0 < open_NF.float().mean() < 0.5
    gate_and_score = calls.watch(dense.SnapshotGateAndScore.forward)
    got = snapshot_score_sums(h, norms, threshold, plan=plan, **kw)
    assert gate_and_score[0] == 0, "the scores alone use nothing of SnapshotGateAndScore"
    assert got.dtype == torch.float32 and got[2] == 0 and got[1] > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_gated_decode_runs_where_few_gates_are_mixed(calls):
    """At initialisation every snapshot's decoder norm is the same, so no gate is mixed and
    the gated decode runs; with gates mixed for most entries the per-snapshot kernel does."""
    gated_decodes = _count_gated_decodes(calls)
    padded = _count_padded_rows(calls)
    torch.manual_seed(0)
    cc = JumpReLUTrainingCrosscoder(JumpReLUTrainingCrosscoderConfig(d_in=16, d_sae=256, n_snapshots=4))
    x = torch.randn(64, 4, 16)
    _run(cc, x)
    assert gated_decodes[0] == 1
    assert padded[0] == 1  # about 30% of entries open everywhere, evenly over features: padded rows
    with torch.no_grad():
        cc.W_dec[:, :2] *= 0.01  # features far weaker at the first two snapshots
        cc.threshold.fill_(0.0005)
    _run(cc, x)
    assert gated_decodes[0] == 1


def test_block_size_follows_the_device():
    assert dense.token_block(4096, 8, 8192, torch.device("cpu")) == CPU.cpu_block_elements // (8 * 8192)
    assert dense.token_block(4096, 8, 8192, torch.device("meta")) == 4096  # one block off the CPU at this size
    # Ge et al.'s shape: [S, block, F] temporaries of the plan's device block, not the whole batch
    assert dense.token_block(2048, 32, 24576, torch.device("meta")) == CPU.device_block_elements // (32 * 24576)
    assert dense.token_block(2048, 32, 24576, torch.device("meta")) < 2048
    assert dense.token_block(3, 8, 8192, torch.device("cpu")) == 3
    assert dense.token_block(100, 1 << 12, 1 << 12, torch.device("cpu")) == 1  # never zero


def test_gradient_without_the_score_matches_old_straight_through():
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(6, 3, generator=gen, requires_grad=True)
    norms = torch.rand(3, 2, generator=gen) + 0.5
    t = torch.tensor([0.1, 0.3, 0.2], requires_grad=True)
    upstream = torch.randn(2, 6, 3, generator=gen)
    f_new, _, _ = dense.snapshot_gate_and_score(h, norms, t, bandwidth=0.8, tanh_scale=4.0)
    (f_new * upstream).sum().backward()
    grads_new = (h.grad.clone(), t.grad.clone())
    h.grad = t.grad = None
    f_old = OldSnapshotJumpReLU.apply(h, norms, t, 0.8)
    assert torch.equal(f_new, f_old)
    (f_old * upstream).sum().backward()
    torch.testing.assert_close(grads_new, (h.grad, t.grad))


@pytest.mark.slow  # torch.compile takes tens of seconds on 2 CPU cores
def test_compiled_kernels_match_the_old_implementation():
    new, old = _pair(3)
    new.use_kernel_plan(
        KernelPlan.resolve("cpu", compile=True, gather_share=-1.0)
    )  # the per-snapshot kernel, which compiles
    x = 3 * torch.randn(37, 4, 6, generator=torch.Generator().manual_seed(9))
    out_new, grads_new = _run(new, x)
    out_old, grads_old = _run(old, x)
    for key in ("mse_loss", "l0_loss"):
        torch.testing.assert_close(out_new.losses[key], out_old.losses[key], rtol=1e-5, atol=1e-6)
    for name, grad in grads_old.items():
        torch.testing.assert_close(grads_new[name], grad, rtol=1e-5, atol=1e-6, msg=f"gradient of {name}")


def test_the_block_functions_are_compiled_on_cuda_and_eager_elsewhere():
    from crosslens.kernels.jumprelu_ops import backward_block

    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # no CUDA needed: only the choice is made
    fast = KernelPlan(backend="triton", compile=True, adam="kernel", adam_backend="triton", handoff_norms=True)
    shape = (2048, 32, 24576)
    assert dense.block_function(forward_block, *shape, cpu, CPU) == (forward_block, dense.token_block(*shape, cpu))
    assert dense.block_function(backward_block, *shape, cpu, CPU) == (backward_block, dense.token_block(*shape, cpu))
    compiled, block = dense.block_function(forward_block, *shape, cuda, fast)
    assert compiled is not forward_block and compiled is dense.block_function(forward_block, 64, 2, 8, cuda, fast)[0]
    assert block == fast.device_block_elements // (32 * 24576), "compiled on CUDA, still in blocks"
    assert dense.block_function(backward_block, *shape, cuda, fast)[0] not in (backward_block, compiled)
    no_triton = KernelPlan(backend="eager", compile=False)  # CUDA without triton: Inductor's CUDA code is Triton
    assert dense.block_function(forward_block, *shape, cuda, no_triton)[0] is forward_block
    # asked for everywhere: a CPU too, the whole batch at once, compiled for its one shape
    whole, n = dense.block_function(forward_block, *shape, cpu, KernelPlan.resolve("cpu", compile=True))
    assert n == 2048 and whole not in (forward_block, compiled)
    # asked for nowhere: CUDA's default too
    assert dense.block_function(forward_block, *shape, cuda, KernelPlan.resolve("cuda", compile=False)) == (
        forward_block,
        block,
    )
    assert dense.block_function(forward_block, *shape, cpu)[0] is forward_block


@pytest.mark.parametrize(
    "setting, on_cpu, on_cuda", [("0", False, False), ("1", True, True), ("", False, True), ("yes", False, True)]
)
def test_the_environment_sets_where_the_block_functions_are_compiled(setting, on_cpu, on_cuda):
    """``CROSSLENS_COMPILE_KERNELS`` 0 or 1 is a plan's ``compile`` False or True for a process;
    unset, the default: compiled on CUDA with Triton; another value is named and ignored."""
    import subprocess
    import sys

    probe = (
        "import crosslens.kernels.plan as kp\n"
        "kp.triton_installed = lambda: True\n"  # the CUDA default holds where triton is installed
        "print([kp.KernelPlan.resolve(t).compile for t in ('cpu', 'cuda')])"
    )
    env = {**os.environ, "CROSSLENS_COMPILE_KERNELS": setting}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str([on_cpu, on_cuda])
    assert ("CROSSLENS_COMPILE_KERNELS='yes' is ignored: set 1" in done.stderr) == (setting == "yes"), done.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_block_functions_equal_the_eager_ones_on_cuda(dtype):
    """The gate and code to the bit, the sums and gradients to float order, at a shape that
    takes several blocks (and a last, shorter one)."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    N, S, F_ = 520, 4, 512
    h0 = torch.randn(N, F_, device="cuda", generator=gen).to(dtype)
    norms = torch.rand(F_, S, device="cuda", generator=gen) + 0.5
    t0 = torch.rand(F_, device="cuda", generator=gen) * 0.5
    upstream = torch.randn(S, N, F_, device="cuda", generator=gen).to(dtype)
    results = {}
    for compiled in (True, False):
        plan = KernelPlan.resolve(
            "cuda", compile=compiled, device_block_elements=4 * 170 * 512
        )  # blocks of 170 tokens, last of 10
        h, t, n = h0.clone().requires_grad_(), t0.clone().requires_grad_(), norms.clone().requires_grad_()
        f, score, open_any = dense.snapshot_gate_and_score(h, n, t, bandwidth=0.1, tanh_scale=4.0, plan=plan)
        ((f * upstream).sum() + score.sum()).backward()
        results[compiled] = (f.detach(), open_any, score.detach(), h.grad, n.grad, t.grad)
    fast, eager = results[True], results[False]
    assert torch.equal(fast[0], eager[0]) and torch.equal(fast[1], eager[1]), "gate and code to the bit"
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for name, a, b in zip(("score sums", "h", "norms", "threshold"), fast[2:], eager[2:]):
        torch.testing.assert_close(a.float(), b.float(), **tolerance, msg=name)
