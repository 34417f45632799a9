"""The split JumpReLU step (:mod:`crosslens.kernels.jumprelu_split`) against the per-snapshot
reference: the entries open at every snapshot and outside the window through the shared
code's matmul, the rest from their pairs, give the reference's decode, scores and gradients to
``h``, the decoder and the threshold, freshly initialised (every norm equal) and with norms
parted between snapshots; its score block functions against their eager twins, compiled, on
CUDA. The whole step through it is in ``tests/test_sparse_step.py``."""

from __future__ import annotations

import pytest
import torch

from crosslens.kernels.jumprelu_dense import snapshot_gate_and_score
from crosslens.kernels.jumprelu_pairs import active_entries
from crosslens.kernels.jumprelu_split import EverywhereScores, everywhere_and_rest, split_gated_decode
from crosslens.kernels.plan import KernelPlan

N, S, D, F = 48, 4, 8, 96
BANDWIDTH, TANH_SCALE = 0.2, 4.0
NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def operands(parted: bool, feature_major: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """Pre-activations, a decoder whose norms are equal at every snapshot (fresh) or spread
    over them (parted), a threshold of 0.3 and snapshot factors other than 1."""
    g = torch.Generator().manual_seed(seed)
    h_NF = torch.randn(N, F, generator=g)
    W_FSD = torch.randn(F, S, D, generator=g)
    W_FSD /= W_FSD.norm(dim=-1, keepdim=True)
    W_FSD *= torch.rand(F, 1, 1, generator=g) + 0.5
    factors_S = torch.rand(S, generator=g) + 0.5
    if parted:
        W_FSD *= torch.rand(F, S, 1, generator=g) + 0.5
    else:  # equal training-space norms: the factors fold into the decoder
        W_FSD /= factors_S[None, :, None]
    if feature_major:
        h_NF = h_NF.T.contiguous().T
    return {"h_NF": h_NF, "W_FSD": W_FSD, "t_F": torch.full((F,), 0.3), "factors_S": factors_S}


def upstream(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, S, D, generator=g), torch.randn(F, generator=g)


def reference(ops: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Values and gradients of the per-snapshot code and its batched decode."""
    h, W, t = (ops[k].clone().requires_grad_() for k in ("h_NF", "W_FSD", "t_F"))
    norms_FS = W.norm(dim=-1) * ops["factors_S"]
    f_SNF, score_F, open_NF = snapshot_gate_and_score(h, norms_FS, t, bandwidth=BANDWIDTH, tanh_scale=TANH_SCALE)
    recon_NSD = torch.bmm(f_SNF, W.transpose(0, 1)).transpose(0, 1)
    return backward(recon_NSD, score_F, open_NF, h * open_NF, h, W, t)


def split(ops: dict[str, torch.Tensor], plan: KernelPlan) -> tuple[tuple[torch.Tensor, ...], tuple]:
    h, W, t = (ops[k].clone().requires_grad_() for k in ("h_NF", "W_FSD", "t_F"))
    raw_FS = W.detach().norm(dim=-1)
    args = (h.detach(), raw_FS * ops["factors_S"], t.detach(), BANDWIDTH / 2)
    classes = everywhere_and_rest(*args, active_entries(*args, plan))
    out = split_gated_decode(h, W, t, (raw_FS, ops["factors_S"]), classes, (BANDWIDTH, TANH_SCALE), plan)
    return backward(*out, h, W, t), classes


def backward(recon_NSD, score_F, open_NF, shared_NF, h, W, t) -> tuple[torch.Tensor, ...]:
    grad_NSD, grad_F = upstream()
    ((recon_NSD * grad_NSD).sum() + (score_F * grad_F).sum()).backward()
    return recon_NSD.detach(), score_F.detach(), open_NF, shared_NF.detach(), h.grad, W.grad, t.grad


@pytest.mark.parametrize("parted", [False, True], ids=["fresh", "parted"])
@pytest.mark.parametrize("feature_major", [False, True], ids=["token-major", "feature-major"])
def test_split_decode_equals_the_per_snapshot_reference(parted, feature_major):
    ops = operands(parted, feature_major)
    got, (everywhere_NF, rest, open_NF) = split(ops, KernelPlan.resolve("cpu"))
    assert torch.equal(open_NF, rest.open_NF | everywhere_NF)  # the two parts are all the open entries
    want = reference(ops)
    # every class is there: open everywhere outside the window, open everywhere but inside it at
    # some snapshot, open at some snapshots only (parted alone), shut everywhere inside the window
    distance_SNF = ops["h_NF"] * (ops["W_FSD"].norm(dim=-1) * ops["factors_S"]).T[:, None, :] - ops["t_F"]
    open_everywhere_NF = (distance_SNF > 0).all(dim=0)
    assert 0 < int(everywhere_NF.sum()) < int(open_everywhere_NF.sum())
    assert torch.equal(everywhere_NF, (distance_SNF >= BANDWIDTH / 2).all(dim=0))
    assert ((distance_SNF > 0).any(dim=0) & ~open_everywhere_NF).any() == parted
    assert rest.n_window > 0 and rest.n_open == int((want[2] & ~everywhere_NF).sum())
    assert torch.equal(got[2], want[2]) and torch.equal(got[3], want[3]), "gates and shared code to the bit"
    for name, a, b in zip(
        ("recon", "scores", "h", "W_dec", "threshold"), (got[0], got[1], *got[4:]), (want[0], want[1], *want[4:])
    ):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.slow  # torch.compile takes tens of seconds on 2 CPU cores
def test_split_decode_compiled_on_a_cpu_equals_the_eager_one():
    """The score blocks through torch.compile (CUDA's default; here on a CPU, whole batch) give
    the eager blocks' values and gradients, in float32 and in bfloat16 under autocast."""
    for dtype in (torch.float32, torch.bfloat16):
        ops = operands(True, True)
        ops["h_NF"] = ops["h_NF"].to(dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            fast, _ = split(ops, KernelPlan.resolve("cpu", compile=True))
            eager, _ = split(ops, KernelPlan.resolve("cpu", compile=False))
        assert torch.equal(fast[2], eager[2])
        for a, b in zip((fast[0], fast[1], *fast[4:]), (eager[0], eager[1], *eager[4:])):
            torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-4)


def test_the_scores_of_entries_open_everywhere_in_blocks_equal_one_block():
    """Token blocks (and a shorter last one) sum to the whole batch's scores and gradients."""
    ops = operands(True, False)
    h0, norms0 = ops["h_NF"], ops["W_FSD"].norm(dim=-1)
    mask_NF = h0 > 0.5
    results = []
    for elements in (1 << 22, S * F * 10):  # one block; blocks of 10 tokens, the last of 8
        h, norms = h0.clone().requires_grad_(), norms0.clone().requires_grad_()
        plan = KernelPlan.resolve("cpu", cpu_block_elements=elements)
        score_F = EverywhereScores.apply(h, norms, mask_NF, TANH_SCALE, plan)
        (score_F * upstream()[1]).sum().backward()
        results.append((score_F.detach(), h.grad, norms.grad))
    expected = (torch.tanh(TANH_SCALE * h0[:, :, None] * norms0[None]) * mask_NF[:, :, None]).sum(dim=(0, 2))
    torch.testing.assert_close(results[0][0], expected, rtol=1e-5, atol=1e-5)
    assert (results[0][1][~mask_NF] == 0).all() and (results[0][1][mask_NF] != 0).any()
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@NO_CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_decode_compiled_on_cuda_equals_the_eager_one(dtype):
    """The plan's compiled score blocks and Triton pairs against the eager twins, on CUDA; in
    bfloat16 under autocast, as a step runs (the encoder's pre-activations in bfloat16)."""
    ops = {k: v.cuda() for k, v in operands(True, True).items()}
    ops["h_NF"] = ops["h_NF"].to(dtype)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        fast, _ = split(ops, KernelPlan.resolve("cuda", device_block_elements=S * F * 10))
        eager, _ = split(ops, KernelPlan.resolve("cuda", backend="eager", compile=False))
    assert torch.equal(fast[2], eager[2])
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for a, b in zip((fast[0], fast[1], *fast[4:]), (eager[0], eager[1], *eager[4:])):
        torch.testing.assert_close(a.float(), b.float(), **tolerance)


def test_the_plan_names_the_split_step_and_reads_records_without_it():
    """The split step is CUDA's default (with the Triton kernels of its pairs), not a CPU's; a run's
    printout says where it runs; a run.json written before the plan had it reads back with the
    split off."""
    cuda = KernelPlan.resolve("cuda")  # no device needed: only the choice is made
    assert cuda.jumprelu_split == (cuda.backend == "triton") and not KernelPlan.resolve("cpu").jumprelu_split
    assert "from the active pairs where it pays, else split between the shared code and the pairs where it pays," in (
        KernelPlan(jumprelu_split=True).describe("cuda")
    )
    for always_or_never in (True, False):
        assert "split" not in KernelPlan(jumprelu_sparse=always_or_never).describe("cuda")
    record = KernelPlan().to_dict()
    del record["jumprelu_split"], record["split_rest_share"]
    assert KernelPlan.from_dict(record) == KernelPlan()
