"""The crosscoder's weight matmuls under autocast: autocast's forward, the weight's gradient
in float32 (crosslens.kernels.weight_grads)."""

from __future__ import annotations

import types

import pytest
import torch

import crosslens.crosscoders as cc
from crosslens.core.tensors import row_norms
from crosslens.kernels.plan import KernelPlan
from crosslens.kernels.regated_decode import snapshot_decode
from crosslens.kernels.weight_grads import (
    deferred_weight_grads,
    float32_product,
    row_norms_now,
    weight_matmul,
    weight_row_norms,
)

N, K, M = 48, 40, 72


def _operands(a_grad: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(N, K, generator=gen).requires_grad_(a_grad)
    W = torch.randn(K, M, generator=gen).requires_grad_()
    b = torch.randn(M, generator=gen).requires_grad_()
    return a, W, b


def _autocast_addmm(a, W, b, feature_major):
    return torch.addmm(b[:, None], W.T, a.T) if feature_major else torch.addmm(b, a, W)


def _node_names(t: torch.Tensor) -> set[str]:
    names, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None:
            names.add(type(node).__name__)
            todo.extend(next_node for next_node, _ in node.next_functions)
    return names


def _grads(out, grad, tensors):
    out.backward(grad.to(out.dtype))
    grads = [None if t.grad is None else t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return grads


@pytest.mark.parametrize("feature_major", [False, True])
@pytest.mark.parametrize("a_grad", [False, True])
def test_under_autocast_the_forward_is_autocasts_and_the_weight_gradient_float32(feature_major, a_grad):
    a, W, b = _operands(a_grad)
    grad = torch.randn(M, N) if feature_major else torch.randn(N, M)
    with torch.autocast("cpu", torch.bfloat16):
        ref = _autocast_addmm(a, W, b, feature_major)
    ref_a, ref_W, ref_b = _grads(ref, grad, (a, W, b))
    with torch.autocast("cpu", torch.bfloat16):
        out = weight_matmul(a, W, b, feature_major=feature_major)
    assert type(out.grad_fn).__name__ == "_WeightMatmulBackward"
    assert out.dtype == torch.bfloat16 and out.is_contiguous()
    assert torch.equal(out, ref)  # the same rounded operands, the same product
    got_a, got_W, got_b = _grads(out, grad, (a, W, b))

    grad_NM = (grad.T if feature_major else grad).bfloat16().double()
    exact_W = a.detach().bfloat16().double().T @ grad_NM
    assert got_W.dtype == torch.float32 and got_W.stride() == W.stride()
    error, autocast_error = (got_W.double() - exact_W).abs().max(), (ref_W.double() - exact_W).abs().max()
    assert error <= 1e-6 * exact_W.abs().max()  # float32 accumulation of exact products
    assert error * 1000 < autocast_error  # autocast's gradient is rounded to bfloat16
    torch.testing.assert_close(got_b, grad_NM.sum(dim=0).float(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got_b, ref_b, rtol=1e-2, atol=0.1)  # autocast's sum is in bfloat16
    if a_grad:
        assert torch.equal(got_a, ref_a)
    else:
        assert got_a is None


def test_without_autocast_or_a_weight_gradient_it_is_the_plain_addmm():
    a, W, b = _operands(a_grad=False)
    out = weight_matmul(a, W, b)
    assert type(out.grad_fn).__name__ == "AddmmBackward0"
    assert torch.equal(out, torch.addmm(b, a, W))
    assert torch.equal(weight_matmul(a, W, b, feature_major=True), torch.addmm(b[:, None], W.T, a.T))
    with torch.autocast("cpu", torch.bfloat16):
        with torch.no_grad():
            out = weight_matmul(a, W, b)
        assert out.grad_fn is None and torch.equal(out, torch.addmm(b, a, W).detach())
        frozen = weight_matmul(a, W.detach(), b.detach())
        assert frozen.grad_fn is None and frozen.dtype == torch.bfloat16


def test_backward_lets_the_rounded_operands_go_and_a_second_backward_says_why_it_cannot():
    a, W, b = _operands(a_grad=True)
    with torch.autocast("cpu", torch.bfloat16):
        out = weight_matmul(a, W, b)
    node = out.grad_fn
    assert node.W_low.dtype == torch.bfloat16 and node.a_low.dtype == torch.bfloat16
    out.float().sum().backward(retain_graph=True)
    # the rounded weight is gone before the float32 gradient is written: not both at the peak
    assert node.W_low is None and node.a_low is None
    with pytest.raises(RuntimeError, match="differentiated twice.*run the forward again"):
        out.float().sum().backward()


def test_a_crosscoder_under_autocast_takes_its_weight_gradients_in_float32():
    """The encoder (both layouts) and the dense decode go through it: each weight's gradient is
    the float32 product of the rounded operands, not autocast's bfloat16 one."""
    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES["crosscoder"]
    torch.manual_seed(0)
    sae = train_cls(train_cfg_cls(d_in=16, d_sae=64, n_snapshots=3))
    x = torch.randn(32, sae.cfg.n_snapshots, sae.cfg.d_in)
    for feature_major in (False, True):
        with torch.autocast("cpu", torch.bfloat16):
            h = sae.hidden_pre(x, feature_major=feature_major)
        assert "_WeightMatmulBackward" in _node_names(h)
        h.float().square().sum().backward()
        grad_h = (2 * h.float()).bfloat16().double()
        exact = x.reshape(32, -1).bfloat16().double().T @ grad_h
        got = sae.W_enc.grad.reshape(exact.shape).double()
        assert (got - exact).abs().max() <= 1e-6 * exact.abs().max()
        sae.zero_grad()
    f = torch.relu(torch.randn(32, sae.cfg.d_sae))
    with torch.autocast("cpu", torch.bfloat16):
        out = sae.decode_dense(f)
    assert "_WeightMatmulBackward" in _node_names(out)
    out.float().sum().backward()
    exact = f.bfloat16().double().T @ torch.ones(32, sae.cfg.n_snapshots * sae.cfg.d_in, dtype=torch.float64)
    got = sae.W_dec.grad.reshape(exact.shape).double()
    assert (got - exact).abs().max() <= 1e-6 * exact.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda_the_float32_product_is_the_widened_one():
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(2048, 768, device="cuda", generator=gen).bfloat16()
    g = torch.randn(2048, 1024, device="cuda", generator=gen).bfloat16()
    got = float32_product(a.T, g)
    assert got.dtype == torch.float32
    # sums of 2,048 products of about 45 in size: float32 accumulation in another order differs by
    # up to about 3e-4 (seen on an H200); the bfloat16 product widened would be 0.1 off
    torch.testing.assert_close(got, a.T.float() @ g.float(), rtol=1e-5, atol=2e-3)
    a32, W, b = (t.cuda() for t in _operands(a_grad=True))
    with torch.autocast("cuda", torch.bfloat16):
        ref = torch.addmm(b, a32, W)
        out = weight_matmul(a32, W, b)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("feature_major", [False, True])
def test_deferred_gradients_are_one_matmul_over_the_micro_batches(autocast, feature_major):
    """In a deferred block the weight's gradient is left out of each backward and added once,
    on leaving, as the product over all the micro-batches' rows: the whole batch's. The weight
    is rounded once for all of them, and the bias's gradient is summed as it comes."""
    a, W, b = _operands(a_grad=True)
    grad = torch.randn(M, N) if feature_major else torch.randn(N, M)
    whole_grad = (lambda n0, n1: grad[:, n0:n1]) if feature_major else (lambda n0, n1: grad[n0:n1])
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        whole = weight_matmul(a, W, b, feature_major=feature_major)
    ref_a, ref_W, ref_b = _grads(whole, grad, (a, W, b))

    nodes = []
    with deferred_weight_grads([W]) as block:
        for n0 in range(0, N, 16):
            with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                out = weight_matmul(a[n0 : n0 + 16], W, b, feature_major=feature_major, block=block)
            nodes.append(out.grad_fn)
            out.backward(whole_grad(n0, n0 + 16).to(out.dtype))
            assert W.grad is None and b.grad is not None  # the weight's waits, the bias's does not
    assert W.grad.dtype == torch.float32
    torch.testing.assert_close(
        W.grad, ref_W if not autocast else _float32_reference(a, grad, feature_major), rtol=1e-6, atol=1e-5
    )
    torch.testing.assert_close(b.grad, ref_b, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(a.grad, ref_a, rtol=0, atol=0)
    if autocast:
        assert all(node.deferred is nodes[0].deferred for node in nodes)
        assert len({node.deferred.round(W, torch.bfloat16).data_ptr() for node in nodes}) == 1  # one rounding
    else:  # no autocast: the weight is read as it is, and the forward is the plain addmm's
        assert nodes[0].deferred.round(W, torch.float32) is W


def _float32_reference(a, grad, feature_major):
    grad_NM = grad.T if feature_major else grad
    return (a.detach().bfloat16().double().T @ grad_NM.bfloat16().double()).float()


def test_a_deferred_block_adds_to_a_gradient_already_there_drops_its_rows_on_an_error_and_does_not_nest():
    a, W, _ = _operands(a_grad=False)
    W.grad = torch.ones_like(W)
    with deferred_weight_grads([W]) as block:
        weight_matmul(a, W, block=block).sum().backward()
    torch.testing.assert_close(W.grad, 1 + a.sum(dim=0)[:, None].expand(K, M), rtol=1e-6, atol=1e-5)
    before = W.grad.clone()
    with pytest.raises(ValueError, match="boom"):
        with deferred_weight_grads([W]) as block:
            weight_matmul(a, W, block=block).sum().backward()
            raise ValueError("boom")
    assert torch.equal(W.grad, before)
    holder = types.SimpleNamespace(weight_block=None)  # a crosscoder holds its step's block
    with pytest.raises(RuntimeError, match="do not nest"):
        with deferred_weight_grads([W], holder) as block:
            assert holder.weight_block is block
            with deferred_weight_grads([W], holder):
                pass
    assert holder.weight_block is None  # let go, even after an error
    other = torch.randn(K, M, requires_grad=True)
    with deferred_weight_grads([W]) as block:  # a weight it does not list keeps the plain matmul
        out = weight_matmul(a, other, block=block)
    assert type(out.grad_fn).__name__ == "MmBackward0"


STEP_CASES = [(arch, {}, False) for arch in cc.ARCHITECTURES] + [
    ("jumprelu_crosscoder", {"jumprelu_sparse": True}, False),  # the step from pairs (CUDA's, trained)
    ("jumprelu_crosscoder", {}, True),  # under autocast: the gate per snapshot and its batched matmul
    ("jumprelu_crosscoder", {"closed_gate_decoder_grad": True}, False),  # the shared code's decoder gradient
    ("jumprelu_crosscoder", {"closed_gate_decoder_grad": True}, True),
    ("crosscoder", {}, True),
    ("topk_crosscoder", {}, True),
    ("topk_crosscoder", {"d_sae": 128}, False),  # k 4 of 128: the sparse decode, the pairs' eager kernels
    ("batchtopk_crosscoder", {"d_sae": 128}, False),
]


@pytest.mark.parametrize(("arch", "settings", "autocast"), STEP_CASES)
def test_micro_batches_write_the_weight_gradients_once_at_the_end(arch, settings, autocast, monkeypatch):
    """``micro_batched_pass`` defers both weights' gradients on every path a step takes: no
    gradient reaches ``W_enc`` or ``W_dec`` during the micro-batches' backwards (none is written
    per micro-batch), and the ones written at the end are the whole batch's in float32, or under
    autocast (whose bfloat16 forward rounds a micro-batch's numbers otherwise than the whole
    batch's) those of the same micro-batches written one by one. TopK's auxiliary loss has dead
    features to decode."""
    import contextlib

    from sae_lens.saes.sae import TrainStepInput

    from crosslens.training import micro
    from crosslens.training.micro import micro_batched_pass

    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]
    extra = {
        "crosscoder": {"l1_coefficient": 0.05, "l1_warm_up_steps": 0},
        "jumprelu_crosscoder": {"l0_coefficient": 0.01, "l0_warm_up_steps": 0},
    }.get(arch, {"k": 4})
    torch.manual_seed(0)
    plan = KernelPlan.resolve("cpu", jumprelu_sparse=settings.get("jumprelu_sparse"))
    settings = {key: value for key, value in settings.items() if key != "jumprelu_sparse"}
    sae = train_cls(train_cfg_cls(**{"d_in": 8, "d_sae": 32, "n_snapshots": 2, **extra, **settings}))
    sae.use_kernel_plan(plan)
    x = torch.randn(32, 2, 8)
    dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    dead[:6] = True

    def step_input(x_b):
        return TrainStepInput(x_b, {name: 0.3 for name in sae.get_coefficients()}, dead, 10, False)

    def autocast_context():
        return torch.autocast("cpu", torch.bfloat16, enabled=autocast)

    arrivals = []
    for W in (sae.W_enc, sae.W_dec):
        W.register_hook(arrivals.append)
    if autocast:
        with monkeypatch.context() as undeferred:
            undeferred.setattr(micro, "deferred_weight_grads", lambda weights, holder: contextlib.nullcontext())
            micro_batched_pass(sae, x, 4, step_input, autocast_context)
    else:
        sae.training_forward_pass(step_input(x)).loss.backward()
    assert len([g for g in arrivals if g is not None]) >= 2
    whole = {name: getattr(sae, name).grad.clone() for name in ("W_enc", "W_dec")}
    sae.zero_grad()
    arrivals.clear()
    micro_batched_pass(sae, x, 4, step_input, autocast_context)
    assert [g for g in arrivals if g is not None] == []  # nothing reached a weight in the backwards
    got = {name: getattr(sae, name).grad for name in whole}
    if autocast and "topk" in arch:
        # the undeferred auxiliary decode is autocast's matmul, whose gradient to the dead rows
        # is rounded to bfloat16; the block's is float32
        dead_rows = got["W_dec"][dead] - whole["W_dec"][dead]
        assert dead_rows.abs().max() <= 2**-7 * whole["W_dec"][dead].abs().max()
        got["W_dec"], whole["W_dec"] = got["W_dec"][~dead], whole["W_dec"][~dead]
    for name, want in whole.items():
        torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-6, msg=name)


def test_an_operand_modified_in_place_before_backward_is_refused():
    a, W, _ = _operands(a_grad=False)
    with deferred_weight_grads([W]) as block:  # float32: the matmul keeps the input itself, not a copy
        out = weight_matmul(a, W, block=block)
        a.mul_(2)
        with pytest.raises(RuntimeError, match="modified in place.*clone it"):
            out.sum().backward()


def test_a_deferred_block_is_never_silently_wrong_about_what_it_kept():
    """A backward after the block writes its own gradient; an operand modified in place after
    its backward is refused when the block sums it; a weight modified in place inside the block
    is rounded again."""
    a, W, _ = _operands(a_grad=False)
    with deferred_weight_grads([W]) as block:
        out = weight_matmul(a, W, block=block)
    out.sum().backward()  # after the block: nothing left to sum it, so it is written now
    torch.testing.assert_close(W.grad, a.sum(dim=0)[:, None].expand(K, M), rtol=1e-6, atol=1e-5)

    W.grad = None
    with pytest.raises(RuntimeError, match="modified in place.*clone it"):
        with deferred_weight_grads([W]) as block:
            weight_matmul(a, W, block=block).sum().backward()
            a.mul_(2)  # the kept operand is the input itself in float32
    assert W.grad is None

    with torch.autocast("cpu", torch.bfloat16), deferred_weight_grads([W]) as block:
        first = weight_matmul(a, W, block=block)
        with torch.no_grad():
            W.mul_(2)
        second = weight_matmul(a, W, block=block)
        assert torch.equal(second, a @ W)  # autocast's matmul of the changed weight
        assert not torch.equal(first, second)


def test_a_backward_run_under_cpu_autocast_keeps_the_float32_weight_gradient():
    a, W, _ = _operands(a_grad=False)
    grad = torch.randn(N, M)
    with torch.autocast("cpu", torch.bfloat16):
        out = weight_matmul(a, W)
        out.backward(grad.bfloat16())
    exact = a.bfloat16().double().T @ grad.bfloat16().double()
    assert (W.grad.double() - exact).abs().max() <= 1e-6 * exact.abs().max()


def test_the_sparse_steps_rounded_decoder_is_the_blocks_one_copy():
    """``autocast_copy`` (the pairs' rounded decoder) takes a deferred block's copy of a weight
    it lists, so a micro-batched step rounds ``W_dec`` once; outside a block, a copy each call."""
    from crosslens.kernels.sparse import autocast_copy

    W = torch.randn(64, 3, 8, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16):
        outside = [autocast_copy(W, 10 * 64) for _ in range(2)]
        with deferred_weight_grads([W]) as block:
            inside = [autocast_copy(W, 10 * 64, block=block) for _ in range(2)]
    assert outside[0].data_ptr() != outside[1].data_ptr()
    assert inside[0].data_ptr() == inside[1].data_ptr()
    assert torch.equal(inside[0], W.detach().bfloat16()) and not inside[0].requires_grad


# ------------------------------------------------ the decoder's norms and gated decode in a block
def _decoder(seed: int = 0, F_: int = 24, S: int = 3, D: int = 8) -> torch.Tensor:
    return torch.randn(F_, S, D, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def test_row_norms_in_a_block_are_computed_once_and_their_gradient_multiplies_the_weight_once():
    W = _decoder()
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(24, 3, generator=gen) for _ in range(4)]
    for grad in grads:
        row_norms(W).backward(grad)
    want = W.grad.clone()
    W.grad = None
    arrivals = []
    W.register_hook(arrivals.append)
    with deferred_weight_grads([W]) as block:
        for grad in grads:
            norms = weight_row_norms(W, block=block)
            assert torch.equal(norms, row_norms(W))
            norms.backward(grad)
            assert W.grad is None
        assert block.row_norms(W) is block.row_norms(W)  # one pass over W for all the micro-batches
        assert torch.equal(row_norms_now(W, block=block), block.row_norms(W)) and row_norms_now(
            W, block=block
        ) is not block.row_norms(W)  # a copy
    assert [g for g in arrivals if g is not None] == []
    torch.testing.assert_close(W.grad, want, rtol=1e-6, atol=1e-6)

    W.grad = None
    with deferred_weight_grads([W]) as block:
        late = weight_row_norms(W, block=block)
    late.backward(grads[0])  # after the block: written by this backward
    torch.testing.assert_close(W.grad, W.detach() * (grads[0] / W.detach().norm(dim=-1))[..., None])


def test_a_weight_changed_in_place_after_its_norms_gradient_is_refused_at_the_blocks_end():
    W = _decoder()
    with pytest.raises(RuntimeError, match="modified in place inside a micro-batched step.*before the step or after"):
        with deferred_weight_grads([W]) as block:
            weight_row_norms(W, block=block).sum().backward()
            with torch.no_grad():
                W.mul_(2)
    assert W.grad is None
    with deferred_weight_grads([W]) as block:  # changed before the norms: they are computed again
        first = weight_row_norms(W, block=block).detach()
        with torch.no_grad():
            W.mul_(2)
        assert torch.equal(weight_row_norms(W, block=block), 2 * first)


def _gated_code(seed: int, N_: int, F_: int = 24, S: int = 3, dtype: torch.dtype = torch.float32):
    """A JumpReLU code as the step gates it: under autocast ``h`` and the threshold are in
    bfloat16, the norms in float32."""
    gen = torch.Generator().manual_seed(seed)
    h_NF = torch.randn(N_, F_, generator=gen).to(dtype).requires_grad_()
    norms_FS = torch.rand(F_, S, generator=gen) + 0.5
    threshold_F = (torch.rand(F_, generator=gen) * 0.5).to(dtype)
    f_SNF = torch.where(h_NF * norms_FS.T[:, None, :] > threshold_F, h_NF, 0.0)  # as forward_block gates it
    return f_SNF, (h_NF.detach(), norms_FS, threshold_F), h_NF


@pytest.mark.parametrize("autocast", [False, True])
def test_the_gated_decode_regates_its_code_for_the_decoders_gradient_in_float32(autocast):
    """Under autocast: autocast's batched matmul to the bit, the code's gradient autocast's, the
    decoder's the float32 product of the rounded operands, from the code regated from ``(h,
    norms, threshold)``: the ``[S, N, F]`` code is not kept. In a block, the same sum over the
    micro-batches, written at its end. Without either, the plain batched matmul."""
    W = _decoder()
    f_SNF, gate, h = _gated_code(0, 16, dtype=torch.bfloat16 if autocast else torch.float32)
    grad = torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        ref = torch.bmm(f_SNF, W.transpose(0, 1))
        out = snapshot_decode(f_SNF, W, gate)
    assert type(out.grad_fn).__name__ == ("_RegatedDecodeBackward" if autocast else "BmmBackward0")
    assert torch.equal(out, ref)
    if autocast:  # it keeps the rounded decoder and the gate's inputs, nothing the code's size
        assert all(t.numel() < f_SNF.numel() for t in (out.grad_fn.W_low, *out.grad_fn.code))
    ref_h, ref_W = torch.autograd.grad(ref, (h, W), grad.to(ref.dtype), retain_graph=True)
    got_h, got_W = torch.autograd.grad(out, (h, W), grad.to(out.dtype))
    assert torch.equal(got_h, ref_h)
    if autocast:
        exact = torch.einsum("snf,snd->fsd", f_SNF.detach().bfloat16().double(), grad.bfloat16().double())
        assert got_W.dtype == torch.float32
        error, autocast_error = (got_W.double() - exact).abs().max(), (ref_W.double() - exact).abs().max()
        assert error <= 1e-6 * exact.abs().max() and error * 100 < autocast_error

    whole = got_W
    with deferred_weight_grads([W]) as block:
        for n0 in range(0, 16, 4):
            with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                part = snapshot_decode(
                    f_SNF.detach()[:, n0 : n0 + 4], W, (gate[0][n0 : n0 + 4], *gate[1:]), block=block
                )
            assert type(part.grad_fn).__name__ == "_RegatedDecodeBackward"
            part.backward(grad[:, n0 : n0 + 4].to(part.dtype))
            assert W.grad is None
    torch.testing.assert_close(W.grad, whole, rtol=1e-6, atol=1e-6)


def test_a_gradient_free_matmul_in_a_block_reads_the_blocks_rounded_weight():
    """The micro-batched step's gradient-free pass (the whole batch's numbers) under autocast:
    autocast's product, from the copy of the weight the step's matmuls then read."""
    a, W, b = _operands(a_grad=False)
    with torch.autocast("cpu", torch.bfloat16), deferred_weight_grads([W]) as block:
        with torch.no_grad():
            out = weight_matmul(a, W, b, block=block)
            ref = torch.addmm(b, a, W)
        copy = block.rounded[id(W)][1]
        assert torch.equal(out, ref)
        assert block.round(W, torch.bfloat16).data_ptr() == copy.data_ptr()  # no second rounding


def test_the_gated_decode_refuses_a_changed_gate_and_a_second_backward():
    W = _decoder()
    f_SNF, gate, _ = _gated_code(0, 16)
    with torch.autocast("cpu", torch.bfloat16):
        out = snapshot_decode(f_SNF.detach(), W, gate)
    out.float().sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="differentiated twice.*run the forward again"):
        out.float().sum().backward()
    with torch.autocast("cpu", torch.bfloat16):
        out = snapshot_decode(f_SNF.detach(), W, gate)
    gate[0].mul_(2)  # the pre-activation the decoder's gradient regates from
    with pytest.raises(RuntimeError, match="pre-activation, norms or threshold.*modified in place.*clone it"):
        out.float().sum().backward()


def test_a_block_checks_every_weight_before_it_writes_any_gradient():
    a, W, _ = _operands(a_grad=False)
    W_dec = _decoder()
    with pytest.raises(RuntimeError, match="modified in place inside a micro-batched step"):
        with deferred_weight_grads([W, W_dec]) as block:
            weight_matmul(a, W, block=block).sum().backward()
            weight_row_norms(W_dec, block=block).sum().backward()
            with torch.no_grad():
                W_dec.mul_(2)
    assert W.grad is None and W_dec.grad is None  # nothing half-written


@pytest.mark.parametrize("arch", ["jumprelu_crosscoder", "batchtopk_crosscoder"])
@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_a_micro_batched_step_multiplies_each_micro_batch_by_the_encoder_once(arch, autocast, monkeypatch):
    """The gradient-free pass of the architectures that need the whole batch's numbers first
    leaves its encoder products in the block, and each micro-batch's pass takes its own: one
    product with ``W_enc`` per micro-batch, not two, and the step's loss, outputs and gradients
    are those of multiplying again, to the byte."""
    import contextlib

    from sae_lens.saes.sae import TrainStepInput

    from crosslens.kernels import weight_grads
    from crosslens.training import micro

    S, D, F_ = 2, 8, 32  # W_enc is [S * D, F] as a matrix, W_dec [F, S * D]: told apart by shape
    products: list[tuple[int, ...]] = []
    plain = weight_grads._plain

    def counted(a, W, bias, feature_major):
        products.append(tuple(W.shape))
        return plain(a, W, bias, feature_major)

    monkeypatch.setattr(weight_grads, "_plain", counted)

    def step(keep: bool) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
        _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]
        torch.manual_seed(0)
        extra = {"l0_coefficient": 0.01, "l0_warm_up_steps": 0} if arch == "jumprelu_crosscoder" else {"k": 4}
        sae = train_cls(train_cfg_cls(d_in=D, d_sae=F_, n_snapshots=S, **extra))
        x = torch.randn(32, S, D)

        def step_input(x_b):
            return TrainStepInput(x_b, {name: 0.3 for name in sae.get_coefficients()}, None, 10, False)

        products.clear()
        with monkeypatch.context() as patch:
            if not keep:
                patch.setattr(micro, "kept_products", contextlib.nullcontext)
            out = micro.micro_batched_pass(
                sae, x, 4, step_input, lambda: torch.autocast("cpu", torch.bfloat16, enabled=autocast)
            )
        tensors = [out.sae_out, out.hidden_pre, *(p.grad for p in sae.parameters())]
        return products.count((S * D, F_)), out.loss, tensors

    once, loss, tensors = step(keep=True)
    twice, loss_again, tensors_again = step(keep=False)
    assert (once, twice) == (4, 8)
    assert torch.equal(loss, loss_again)
    assert all(torch.equal(a, b) for a, b in zip(tensors, tensors_again, strict=True))


def test_a_kept_product_is_taken_once_and_only_for_the_very_same_operands():
    from crosslens.kernels.weight_grads import kept_products

    a, W, b = _operands(False)
    with deferred_weight_grads([W]) as block:
        with torch.no_grad():
            weight_matmul(a, W, b, block=block)
        assert block.products == []  # outside kept_products nothing is left
        with kept_products(block), torch.no_grad():
            kept = weight_matmul(a, W, b, block=block)
            weight_matmul(a.clone(), W, b, block=block)  # the same values in other memory: a product of its own
        taken = weight_matmul(a, W, b, block=block)
        assert taken.data_ptr() == kept.data_ptr() and len(block.products) == 1
        taken.mul_(1.0)  # the product handed over is the output itself, which a hook may edit
        # handed over once: computed now, and the miss lets the weight's other products go
        again = weight_matmul(a, W, b, block=block)
        assert again.data_ptr() != kept.data_ptr() and torch.equal(again, kept) and block.products == []
        a2 = a.clone()
        with kept_products(block), torch.no_grad():
            weight_matmul(a2, W, b, block=block)
        a2.mul_(2)  # changed in place after its product was left: not that product's input
        changed = weight_matmul(a2, W, b, block=block)
        assert torch.equal(changed, torch.addmm(b, a2, W))
        with kept_products(block), torch.no_grad():
            edited = weight_matmul(a, W, b, block=block)
        edited.add_(1.0)  # a product edited after it was left (a hook in the gradient-free pass)
        recomputed = weight_matmul(a, W, b, block=block)
        assert torch.equal(recomputed, torch.addmm(b, a, W)) and block.products == []
        (taken.sum() + again.sum() + changed.sum() + recomputed.sum()).backward()
    ones = torch.ones(N, M)
    torch.testing.assert_close(W.grad, a.T @ ones * 5)
    torch.testing.assert_close(b.grad, ones.sum(0) * 4)


@pytest.mark.parametrize("arch", ["jumprelu_crosscoder", "batchtopk_crosscoder"])
@pytest.mark.parametrize("edit", ["in place", "b_dec subtracted"])
def test_a_micro_batched_step_with_an_edited_pre_activation_or_input_trains_as_without_kept_products(
    arch, edit, monkeypatch
):
    """A hook that edits the pre-activation in place runs in both passes, so the kept product is
    not taken (and the hook's edit is applied once a pass, as without kept products); an input
    made afresh in each pass (``apply_b_dec_to_input``) is not matched, and the products are let
    go at the first micro-batch rather than held through the step."""
    import contextlib

    from sae_lens.saes.sae import TrainStepInput

    from crosslens.kernels import weight_grads
    from crosslens.training import micro

    held = []
    write_grads = weight_grads.WeightBlock.write_grads

    def counting_write_grads(block):
        held.append(len(block.products))
        return write_grads(block)

    monkeypatch.setattr(weight_grads.WeightBlock, "write_grads", counting_write_grads)

    def step(keep: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]
        torch.manual_seed(0)
        extra = {"l0_coefficient": 0.01, "l0_warm_up_steps": 0} if arch == "jumprelu_crosscoder" else {"k": 4}
        if edit == "b_dec subtracted":
            extra["apply_b_dec_to_input"] = True
        sae = train_cls(train_cfg_cls(d_in=8, d_sae=32, n_snapshots=2, **extra))
        if edit == "in place":
            sae.hook_sae_acts_pre.add_hook(lambda t, hook: t.add_(0.05))
        x = torch.randn(32, 2, 8)

        def step_input(x_b):
            return TrainStepInput(x_b, {name: 0.3 for name in sae.get_coefficients()}, None, 10, False)

        with monkeypatch.context() as patch:
            if not keep:
                patch.setattr(micro, "kept_products", contextlib.nullcontext)
            out = micro.micro_batched_pass(sae, x, 4, step_input, contextlib.nullcontext)
        return out.loss, [out.sae_out, *(p.grad for p in sae.parameters())]

    loss, tensors = step(keep=True)
    loss_again, tensors_again = step(keep=False)
    assert held == [0, 0]
    assert torch.equal(loss, loss_again)
    assert all(torch.equal(a, b) for a, b in zip(tensors, tensors_again, strict=True))


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_the_shared_code_decode_is_the_closed_gate_decoder_gradient(autocast):
    """``shared_code_decode``: the per-snapshot code's decode forward, the code's gradient the
    decode's, and the decoder's gradient at every snapshot the shared code's (closed gates
    included): what a second decode of the closed entries times ``W - W.detach()`` gave, without
    that decode or its ``[S, N, F]`` code kept, and in float32 under autocast."""
    from crosslens.kernels.regated_decode import shared_code_decode

    gen = torch.Generator().manual_seed(5)
    S, N_, F_, D = 3, 20, 16, 8
    h = torch.randn(N_, F_, generator=gen)
    open_SNF = torch.rand(S, N_, F_, generator=gen) < 0.4
    shared_NF = h * open_SNF.any(0)
    f_SNF = (h * open_SNF).requires_grad_()
    W = torch.randn(F_, S, D, generator=gen, requires_grad=True)
    grad_SND = torch.randn(S, N_, D, generator=gen)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        out = shared_code_decode(f_SNF, W, shared_NF)
        W_SFD = W.transpose(0, 1)
        closed_SNF = (shared_NF[None] - f_SNF).detach()
        want = torch.bmm(f_SNF, W_SFD) + torch.bmm(closed_SNF, W_SFD - W_SFD.detach())
    assert not any(t.numel() >= f_SNF.numel() for t in out.grad_fn.code)  # no [S, N, F] code kept
    got_grads = torch.autograd.grad(out, (f_SNF, W), grad_SND.to(out.dtype))
    want_grads = torch.autograd.grad(want, (f_SNF, W), grad_SND.to(want.dtype))
    assert torch.equal(out, want) and got_grads[1].dtype == torch.float32
    torch.testing.assert_close(got_grads[0], want_grads[0], rtol=0, atol=0)
    if autocast:  # the float32 product of the bfloat16 operands, not autocast's bfloat16 gradient
        exact = torch.einsum("nf,snd->fsd", shared_NF.bfloat16().double(), grad_SND.bfloat16().double())
        assert (got_grads[1].double() - exact).abs().max() < (want_grads[1].double() - exact).abs().max()
    else:
        torch.testing.assert_close(got_grads[1], want_grads[1], rtol=1e-6, atol=1e-6)
