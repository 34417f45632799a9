"""The sparse step's kernels equal the eager step they replace: the gather-sum decode and
its two gradients against dense products; the JumpReLU step from its active pairs
(a plan's ``jumprelu_sparse=True``) against the dense-kernel step, at a trained crosscoder's sparsity
and freshly initialised; TopK and BatchTopK through the Triton kernels against
``embedding_bag`` and the dense decode. Loss, every parameter gradient, and the
parameters after 20 Adam steps, in float32. On a CPU the Triton kernels run under
``TRITON_INTERPRET=1`` (skipped where triton is not installed); the same tests run on
CUDA where there is one."""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter

import pytest
import torch
from host_reads import HostReads, counted
from interpreted import HAS_TRITON, INTERPRETED, skip_outside_the_interpreter
from sae_lens.saes.sae import TrainStepInput

import crosslens.crosscoders as cc
from crosslens.core.devices import counted_cuda_syncs
from crosslens.core.tensors import row_norms
from crosslens.kernels import jumprelu_pairs, sparse, weight_grads
from crosslens.kernels.active_pairs import ActivePairs, run_starts
from crosslens.kernels.jumprelu_pairs import ActiveEntries, active_entries, sparse_step_pays
from crosslens.kernels.plan import KernelPlan
from crosslens.kernels.sparse import EagerKernels, gather_decode
from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig

S, D, F, B = 3, 8, 64, 32
NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=NO_CUDA)]


INTERPRETED_STEPS = 5
"""Adam steps of a Triton step test under the interpreter (a Python loop per kernel
program: seconds per step); 20 on CUDA and for the eager kernels."""

STEPS = INTERPRETED_STEPS if INTERPRETED else 20
"""Adam steps of a run: :data:`INTERPRETED_STEPS` in the interpreter's process, which runs the
Triton tests' cpu cases alone (``tests/test_triton_interpreted.py``), else 20."""


def eager_plan(device: str, **fields) -> KernelPlan:
    """The device's default plan with the eager kernels (on CUDA too), and ``fields`` replaced."""
    return KernelPlan.resolve(device, backend="eager", **fields)


@pytest.fixture
def triton_backend(request: pytest.FixtureRequest) -> KernelPlan:
    """A plan with the Triton kernels: compiled on CUDA; on a CPU interpreted, which works only
    where TRITON_INTERPRET=1 was set before triton loaded (sae_lens imports it), so
    ``tests/test_triton_interpreted.py`` runs these tests in such a process."""
    device = request.node.callspec.params.get("device", "cpu")
    skip_outside_the_interpreter(device)
    return KernelPlan.resolve(device, backend="triton")


@pytest.fixture
def pairs_path_with_eager_sums() -> KernelPlan:
    """The sparse steps' path as a plan with the Triton backend takes it (TopK's decode from its
    pairs, whose node differentiates the norms), with the eager sums, which launch on a CPU
    outside the interpreter."""
    return KernelPlan.resolve("cpu", backend="eager", topk_pairs_kernels=True)


def batches(n: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(B, S, D, generator=g).to(device) for _ in range(n)]


# ---------------------------------------------------------------- the kernels alone
def random_pairs(
    device: str, groups: int, seed: int = 0
) -> tuple[ActivePairs, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    active_NF = torch.rand(B, F, generator=g) < 0.1
    active_NF[3] = False  # a token without pairs
    active_NF[:, 5] = False  # a feature without pairs
    pairs = ActivePairs.from_mask(active_NF.to(device), int(active_NF.sum()))  # as a step lists them
    W_FGD = torch.randn(F, groups, D * S // groups, generator=g).to(device).requires_grad_()
    values_AG = torch.randn(pairs.token_A.shape[0], groups, generator=g).to(device).requires_grad_()
    grad_NGD = torch.randn(B, groups, D * S // groups, generator=g).to(device)
    return pairs, W_FGD, values_AG, grad_NGD


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_the_gathers_launch_with_the_block_and_warps_of_their_plan(monkeypatch):
    """A sweep (``gpu.py --gathers``) launches the kernels of one plan after another's: each
    launch takes its own plan's tunings; every launch makes the tensors' device current."""
    from crosslens.kernels import triton_sparse as tk

    launches, devices = [], []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(kwargs)

    @contextlib.contextmanager
    def launching_on(tensor):
        devices.append(tensor.device)
        yield

    for kernel in ("_gather_rows", "_pair_dots"):
        monkeypatch.setattr(tk, kernel, Recorder())
    monkeypatch.setattr(tk, "launching_on", launching_on)
    pairs, W_FGD, values_AG, grad_NGD = random_pairs("cpu", 1)
    W_FGD, values_AG = W_FGD.detach(), values_AG.detach()
    for block, warps in ((512, 8), (1024, 4)):
        kernels = tk.TritonKernels(KernelPlan(backend="triton", column_block=block, gather_warps=warps))
        kernels.decode(W_FGD, values_AG, pairs)
        kernels.weight_grad(grad_NGD, values_AG, pairs)
        assert [(k["BLOCK"], k["num_warps"]) for k in launches[-2:]] == [(block, warps)] * 2
    tk.TritonKernels(KernelPlan(backend="triton", pair_block=8, pair_columns=64)).values_grad(grad_NGD, W_FGD, pairs)
    assert (launches[-1]["PAIRS"], launches[-1]["BLOCK"]) == (8, 64)
    assert len(devices) == len(launches) == 5


def check_against_dense(plan: KernelPlan, device: str, groups: int) -> None:
    pairs, W_FGD, values_AG, grad_NGD = random_pairs(device, groups)
    code_NFG = torch.zeros(B, F, groups, device=device).index_put((pairs.token_A, pairs.feature_A), values_AG)
    dense_NGD = torch.einsum("nfg,fgd->ngd", code_NFG, W_FGD)
    dense_grads = torch.autograd.grad(dense_NGD, (W_FGD, values_AG), grad_NGD)
    out_NGD = gather_decode(W_FGD, values_AG, pairs, plan)
    grads = torch.autograd.grad(out_NGD, (W_FGD, values_AG), grad_NGD)
    torch.testing.assert_close(out_NGD, dense_NGD, rtol=1e-5, atol=1e-5)
    assert out_NGD[3].abs().max() == 0
    for got, want, name in zip(grads, dense_grads, ("W", "values")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
    assert grads[0][5].abs().max() == 0 and grads[0].abs().max() > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("groups", [1, S])
def test_eager_gather_decode_equals_the_dense_products(device, groups):
    check_against_dense(eager_plan(device), device, groups)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("groups", [1, S])
def test_triton_gather_decode_equals_the_dense_products(device, groups, triton_backend):
    check_against_dense(triton_backend, device, groups)


def check_rounded_copy(plan: KernelPlan, device: str) -> None:
    """Read from W rounded to bfloat16, the decode and the values' gradient are those of the
    rounded weights, in float32; the decoder's gradient is W's (it does not read W)."""
    pairs, W_FGD, values_AG, grad_NGD = random_pairs(device, S)
    read_FGD = W_FGD.detach().to(torch.bfloat16)
    out_NGD = gather_decode(W_FGD, values_AG, pairs, plan, read_FGD)
    grads = torch.autograd.grad(out_NGD, (W_FGD, values_AG), grad_NGD)
    rounded_FGD = read_FGD.float().requires_grad_()
    want_NGD = gather_decode(rounded_FGD, values_AG, pairs, plan)
    want = torch.autograd.grad(want_NGD, (rounded_FGD, values_AG), grad_NGD)
    assert out_NGD.dtype == grads[0].dtype == grads[1].dtype == torch.float32
    assert not torch.equal(read_FGD.float(), W_FGD)  # the rounding is seen
    torch.testing.assert_close(out_NGD, want_NGD, rtol=1e-6, atol=1e-6)
    for got, expected, name in zip(grads, want, ("W", "values")):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg=name)


def check_rounded_gradient(plan: KernelPlan, device: str) -> None:
    """Decoded under autocast, backward reads the output's gradient rounded to bfloat16: both
    gradients are those of the rounded gradient, in float32 (the values' and W's dtype)."""
    pairs, W_FGD, values_AG, grad_NGD = random_pairs(device, S)
    with torch.autocast(device, torch.bfloat16):
        out_NGD = gather_decode(W_FGD, values_AG, pairs, plan)
    grads = torch.autograd.grad(out_NGD, (W_FGD, values_AG), grad_NGD)
    rounded_NGD = grad_NGD.to(torch.bfloat16).float()
    assert not torch.equal(rounded_NGD, grad_NGD)  # the rounding is seen
    want = torch.autograd.grad(gather_decode(W_FGD, values_AG, pairs, plan), (W_FGD, values_AG), rounded_NGD)
    for got, expected, name in zip(grads, want, ("W", "values")):
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_eager_gather_decode_reads_the_rounded_copy(device):
    check_rounded_copy(eager_plan(device), device)
    check_rounded_gradient(eager_plan(device), device)


@pytest.mark.parametrize("device", DEVICES)
def test_triton_gather_decode_reads_the_rounded_copy(device, triton_backend):
    check_rounded_copy(triton_backend, device)
    check_rounded_gradient(triton_backend, device)


def assert_same_sums(got: torch.Tensor, want: torch.Tensor, backend: str) -> None:
    """Two runs of the same sums: the same bytes, but for the eager sums on CUDA, whose
    ``index_add_`` adds with atomics in no fixed order."""
    if backend == "eager" and got.is_cuda:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(got, want)


def check_decode_and_norms(plan: KernelPlan, device: str, groups: int) -> None:
    """The decode's node, given W's norms per snapshot (``[F, S]``, whatever the groups),
    returns them differentiable, and the matmul decode of a few rows (TopK's auxiliary code):
    W's one gradient equals the sum of the decode's, the norms' (each row's slice at each
    snapshot) and the rows', zero rows included; unused, they add nothing."""
    pairs, W_FGD, values_AG, grad_NGD = random_pairs(device, groups)
    with torch.no_grad():
        W_FGD[7] = 0.0  # a zero row: its norms' gradient is 0, not NaN
        W_FGD[9, :, : D * S // groups // 2] = 0.0
    g = torch.Generator().manual_seed(3)
    grad_FS = torch.randn(F, S, generator=g).to(device)
    rows_R = torch.tensor([2, 7, 9, 11]).to(device)  # rows the pairs use too, and a zero row
    values_NR = torch.randn(pairs.n_tokens, 4, generator=g).to(device).requires_grad_()
    grad_NK = torch.randn(pairs.n_tokens, S * D, generator=g).to(device)
    norms_FS = torch.linalg.vector_norm(W_FGD.detach().reshape(F, S, D), dim=-1)
    out_NGD, got_FS, rows_NK = sparse.gather_decode_and_norms(
        W_FGD, values_AG, pairs, norms_FS, plan, rows=(rows_R, values_NR)
    )
    inputs = (W_FGD, values_AG, values_NR)
    grads = torch.autograd.grad((out_NGD, got_FS, rows_NK), inputs, (grad_NGD, grad_FS, grad_NK))
    want_NGD = gather_decode(W_FGD, values_AG, pairs, plan)
    want_FS = row_norms(W_FGD.reshape(F, S, D))
    want_NK = values_NR @ W_FGD.reshape(F, S * D)[rows_R]
    want = torch.autograd.grad((want_NGD, want_FS, want_NK), inputs, (grad_NGD, grad_FS, grad_NK))
    assert_same_sums(out_NGD, want_NGD, plan.backend)
    assert torch.equal(got_FS, want_FS) and got_FS.requires_grad
    torch.testing.assert_close(rows_NK, want_NK, rtol=1e-6, atol=1e-6)
    for got, expected, name in zip(grads, want, ("W", "values", "the rows' values")):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg=name)
    assert grads[0].isfinite().all() and grads[0][7].abs().max() > 0  # the rows' part alone
    decode_only_NGD = sparse.gather_decode_and_norms(W_FGD, values_AG, pairs, norms_FS, plan)[0]
    alone = torch.autograd.grad(decode_only_NGD, W_FGD, grad_NGD)[0]
    decode_NGD = gather_decode(W_FGD, values_AG, pairs, plan)
    assert_same_sums(alone, torch.autograd.grad(decode_NGD, W_FGD, grad_NGD)[0], plan.backend)
    norms_only = sparse.gather_decode_and_norms(W_FGD, values_AG, pairs, norms_FS, plan)[1]
    assert torch.autograd.grad(norms_only, W_FGD, grad_FS)[0][7].abs().max() == 0


def check_block_sums(plan: KernelPlan, device: str, groups: int) -> None:
    """In a micro-batched step (a ``deferred_weight_grads`` block listing W) the node hands W's
    gradient to the block, the pairs' and the rows' parts added to its float32 sum, the norms'
    part as a scale: the gradient written when the block ends is the one two plain backwards
    add up, and no gradient reaches W before it."""
    g = torch.Generator().manual_seed(3)
    W_FSD = torch.randn(F, S, D, generator=g).to(device).requires_grad_()
    W_FGD = W_FSD.view(F, groups, S * D // groups)  # TopK's one group is a view of W_dec
    micro_batches = []
    for seed in (0, 1):
        pairs, _, values_AG, grad_NGD = random_pairs(device, groups, seed)
        rows = (torch.tensor([2, 5, 9]).to(device), torch.randn(pairs.n_tokens, 3, generator=g).to(device))
        grads = (
            grad_NGD,
            torch.randn(F, S, generator=g).to(device),
            torch.randn(pairs.n_tokens, S * D, generator=g).to(device),
        )
        micro_batches.append((pairs, values_AG, rows, grads))

    def backwards(block: weight_grads.WeightBlock | None = None) -> None:
        for pairs, values_AG, rows, grads in micro_batches:
            norms_FS = weight_grads.row_norms_now(W_FSD, block=block)
            outs = sparse.gather_decode_and_norms(W_FGD, values_AG, pairs, norms_FS, plan, rows=rows, block=block)
            torch.autograd.backward(outs, grads)

    backwards()
    want = W_FSD.grad.clone()
    W_FSD.grad = None
    arrivals = []
    W_FSD.register_hook(arrivals.append)
    with weight_grads.deferred_weight_grads([W_FSD]) as block:
        backwards(block)
        assert W_FSD.grad is None
    assert [g for g in arrivals if g is not None] == [] and W_FSD.grad.dtype == torch.float32
    torch.testing.assert_close(W_FSD.grad, want, rtol=1e-5, atol=1e-5)
    assert want[5].abs().max() > 0  # a feature without pairs: the norms' and the rows' parts alone


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("groups", [1, S])
@pytest.mark.parametrize("backend", ["eager", "triton"])
@pytest.mark.parametrize("check", [check_decode_and_norms, check_block_sums], ids=["one-step", "micro-batched"])
def test_gather_decode_and_norms_write_one_gradient(device, groups, backend, check, request):
    if backend == "triton":  # compiled on CUDA, interpreted in its own process on a CPU
        plan = request.getfixturevalue("triton_backend")
    else:
        plan = eager_plan(device)
    check(plan, device, groups)


def test_gather_decode_and_norms_refuses_norms_that_do_not_split_the_rows():
    pairs, W_FGD, values_AG, _ = random_pairs("cpu", 1)
    with pytest.raises(ValueError, match="do not split the rows of W"):
        sparse.gather_decode_and_norms(W_FGD, values_AG, pairs, torch.ones(F, 5))


def test_gather_decode_and_norms_refuses_rows_without_a_value_per_token_and_row():
    pairs, W_FGD, values_AG, _ = random_pairs("cpu", 1)
    rows = (torch.tensor([1, 2]), torch.ones(pairs.n_tokens, 3))
    with pytest.raises(ValueError, match="one value per token and row"):
        sparse.gather_decode_and_norms(W_FGD, values_AG, pairs, torch.ones(F, S), rows=rows)


# ---------------------------------------------------------------- the whole step
def make_sae(
    arch: str,
    device: str,
    plan: KernelPlan | None = None,
    *,
    sparse_step: bool | None = None,
    sparse_decode: bool | None = True,
    **extra,
):
    """A training crosscoder whose step runs ``plan`` (the device's default where None) with the
    JumpReLU step from the pairs as ``sparse_step`` says and TopK's decode from its pairs as
    ``sparse_decode`` does (the plan's ``jumprelu_sparse`` and ``topk_sparse_decode``)."""
    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]
    # the coefficients at full value from the start, as the step is read outside a trainer
    extra = {**({"l0_warm_up_steps": 0} if arch == "jumprelu_crosscoder" else {"k": 4}), **extra}
    torch.manual_seed(0)
    sae = train_cls(train_cfg_cls(d_in=D, d_sae=F, n_snapshots=S, device=device, **extra))
    plan = plan if plan is not None else KernelPlan.resolve(device)
    split = plan.jumprelu_split and sparse_step is None  # a step from the pairs always or never does not split
    sae.use_kernel_plan(
        dataclasses.replace(plan, jumprelu_sparse=sparse_step, jumprelu_split=split, topk_sparse_decode=sparse_decode)
    )
    _made.append(sae)
    return sae


_made: list = []
"""The crosscoders :func:`make_sae` made during the running test (the ``passes`` fixture counts
their passes)."""


@torch.no_grad()
def set_trained_sparsity(sae, x_BSD: torch.Tensor, share: float = 0.1) -> float:
    """Spread the decoder norms over snapshots (so gates differ between them) and set the
    threshold so that L0 on ``x_BSD`` is about ``share`` of d_sae; returns the L0."""
    g = torch.Generator().manual_seed(2)
    sae.W_dec.mul_(torch.empty(F, S, 1).uniform_(0.3, 1.7, generator=g).to(sae.W_dec.device))
    h_BF = sae.hidden_pre(x_BSD)
    contribution = (h_BF[:, None, :] * sae.snapshot_norms().T).amax(dim=1)
    sae.threshold.fill_(float(contribution.flatten().quantile(1 - share)))
    return float((sae.encode(x_BSD) != 0).sum(dim=-1).float().mean())


def loss_and_grads(sae, x_BSD: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    sae.zero_grad()
    step_input = TrainStepInput(
        sae_in=x_BSD,
        coefficients=sae_coefficients(sae),
        dead_neuron_mask=dead_mask(sae),
        n_training_steps=0,
        is_logging_step=False,
    )
    out = sae.training_forward_pass(step_input)
    out.loss.backward()
    return out.loss.item(), {name: p.grad.clone() for name, p in sae.named_parameters()}


def sae_coefficients(sae) -> dict[str, float]:
    """The coefficients at their full value (past any warm-up), as the trainer passes them."""
    return {name: getattr(c, "value", c) for name, c in sae.get_coefficients().items()}


def dead_mask(sae) -> torch.Tensor:
    """Every fourth feature dead, so that TopK's auxiliary loss decodes too."""
    return (torch.arange(F) % 4 == 0).to(sae.W_dec.device)


def run(sae, xs: list[torch.Tensor], autocast: str | None = None) -> tuple[float, dict, list[float], dict]:
    loss, grads = loss_and_grads(sae, xs[0])
    cfg = CrosscoderTrainerConfig(
        total_steps=len(xs),
        lr=3e-3,
        device=str(xs[0].device),
        autocast_dtype=autocast,
        activation_scale_check="off",
        resample_dead=0,  # every pass a step's, so that the passes counted are the steps'
    )
    trainer = CrosscoderTrainer(sae, cfg, plan=sae.kernel_plan)
    losses = [trainer.step(x).loss.item() for x in xs]
    return loss, grads, losses, {name: p.detach().clone() for name, p in sae.named_parameters()}


def assert_same_run(got, want, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    (loss, grads, losses, params), (loss_ref, grads_ref, losses_ref, params_ref) = got, want
    assert loss == pytest.approx(loss_ref, rel=1e-6)
    for name, grad in grads_ref.items():
        assert grad.abs().max() > 0, name  # every parameter has a gradient to compare
        torch.testing.assert_close(grads[name], grad, rtol=rtol, atol=atol, msg=name)
    assert losses == pytest.approx(losses_ref, rel=1e-5)
    for name, p in params_ref.items():
        torch.testing.assert_close(params[name], p, rtol=rtol, atol=atol, msg=name)


@pytest.fixture(autouse=True)
def _forget_the_crosscoders_made():
    yield
    _made.clear()


@pytest.fixture
def passes():
    """``passes(path)``: how many JumpReLU training passes of the crosscoders this test made
    (:func:`make_sae`) took that implementation (``plan.JUMPRELU_PATHS``)."""
    return lambda path: sum(sae.pass_paths[path] for sae in _made if hasattr(sae, "pass_paths"))


def jumprelu_run(
    device: str, trained: bool, sparse_step: bool | None, autocast: str | None = None, plan: KernelPlan | None = None
) -> tuple:
    sae = make_sae("jumprelu_crosscoder", device, plan, l0_coefficient=0.3, sparse_step=sparse_step)
    xs = batches(STEPS, device)
    if trained:
        l0 = set_trained_sparsity(sae, xs[0])
        assert 0.05 * F <= l0 <= 0.2 * F
    # entries open everywhere, shut but inside the window, and (trained) open at some snapshots only
    with torch.no_grad():
        h_BF, norms_FS = sae.hidden_pre(xs[0]), sae.snapshot_norms()
        entries = active_entries(h_BF, norms_FS, sae.threshold, 0.025, sae.kernel_plan)
        open_everywhere_BF = h_BF * norms_FS.min(dim=1).values > sae.threshold
    assert entries.n_window == int(entries.window_NF().sum()) > 0 and open_everywhere_BF.any()
    assert (entries.open_NF & ~open_everywhere_BF).any() == trained  # fresh: every norm equal
    return run(sae, xs, autocast)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("trained", [True, False], ids=["trained", "fresh"])
def test_jumprelu_sparse_step_equals_the_dense_step(device, trained, passes):
    dense = jumprelu_run(device, trained, False)
    assert passes("pairs") == 0
    assert_same_run(jumprelu_run(device, trained, True), dense)
    assert passes("pairs") == STEPS + 1  # the gradient check's pass and every step


@pytest.mark.parametrize("device", DEVICES)
def test_jumprelu_sparse_step_under_bfloat16_autocast(device, passes):
    """Under autocast (CUDA's default precision) the sparse step gates, scores and decodes
    in float32 where the dense kernels follow the autocast dtype: the runs agree to
    bfloat16's precision, not bit for bit. After 20 Adam steps each parameter is closer to
    the dense kernels' under autocast than those are to the float32 run's."""
    _, _, dense_losses, dense_params = jumprelu_run(device, True, False, "bfloat16")
    _, _, _, fp32_params = jumprelu_run(device, True, False)
    _, _, losses, params = jumprelu_run(device, True, True, "bfloat16")
    assert passes("pairs") == STEPS + 1
    assert losses == pytest.approx(dense_losses, rel=5e-3)
    for name, p in dense_params.items():
        assert 0 < (params[name] - p).norm() < (fp32_params[name] - p).norm(), name


def split_run(
    device: str, parted: bool, sparse_step: bool | None, plan: KernelPlan | None = None, autocast: str | None = None
) -> tuple:
    """A JumpReLU run whose code is dense (about a fifth of the entries open), with a narrow
    window, from equal norms or norms parted a little between snapshots, as early in a run."""
    sae = make_sae(
        "jumprelu_crosscoder", device, plan, l0_coefficient=0.3, sparse_step=sparse_step, jumprelu_bandwidth=0.002
    )
    if parted:
        with torch.no_grad():
            g = torch.Generator().manual_seed(2)
            sae.W_dec.mul_(torch.empty(F, S, 1).uniform_(0.8, 1.2, generator=g).to(device))
    return run(sae, batches(STEPS, device), autocast)


def split_plan(device: str, rest_share: float = 1 / 8) -> KernelPlan:
    """The eager plan with the split step, which takes over where over 1/8 of the entries are
    open and at most ``rest_share`` of them are not open everywhere."""
    return eager_plan(device, jumprelu_split=True, sparse_step_share=1 / 8, split_rest_share=rest_share)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("parted", [True, False], ids=["parted", "fresh"])
def test_jumprelu_split_step_equals_the_dense_step(device, parted, passes):
    """While too many entries are open for the step from the pairs (here over 1/8), the split
    step decodes those open everywhere with the shared code's matmul and the rest from their
    pairs, and trains as the dense kernels do."""
    dense = split_run(device, parted, False)
    plan = split_plan(device)
    assert_same_run(split_run(device, parted, None, plan), dense)
    assert passes("split") == STEPS + 1 and passes("pairs") == 0


@pytest.mark.parametrize("device", DEVICES)
def test_jumprelu_split_step_under_bfloat16_autocast(device, passes):
    """Under autocast the split step decodes the entries open everywhere in bfloat16, as the
    dense kernels' batched matmul does, and its pairs in float32: after 20 Adam steps each
    parameter is closer to the dense kernels' under autocast than those are to float32's."""
    _, _, dense_losses, dense_params = split_run(device, True, False, autocast="bfloat16")
    _, _, _, fp32_params = split_run(device, True, False)
    plan = split_plan(device)
    _, _, losses, params = split_run(device, True, None, plan, autocast="bfloat16")
    assert passes("split") == STEPS + 1
    assert losses == pytest.approx(dense_losses, rel=5e-3)
    for name, p in dense_params.items():
        assert 0 < (params[name] - p).norm() < (fp32_params[name] - p).norm(), name


def test_jumprelu_split_step_in_micro_batches(passes):
    """In micro-batches (the decoder's gradient summed by the step's weight block) the split step
    trains as the dense kernels do."""

    def micro_batched(sparse_step: bool | None, plan: KernelPlan | None) -> tuple[list[float], dict]:
        sae = make_sae(
            "jumprelu_crosscoder", "cpu", plan, l0_coefficient=0.3, sparse_step=sparse_step, jumprelu_bandwidth=0.002
        )
        cfg = CrosscoderTrainerConfig(
            total_steps=6, lr=3e-3, device="cpu", micro_batches=2, activation_scale_check="off"
        )
        trainer = CrosscoderTrainer(sae, cfg, plan=sae.kernel_plan)
        losses = [trainer.step(x).loss.item() for x in batches(6, "cpu")]
        return losses, {name: p.detach().clone() for name, p in sae.named_parameters()}

    dense_losses, dense_params = micro_batched(False, None)
    losses, params = micro_batched(None, split_plan("cpu"))
    assert passes("split") >= 6 * 2
    assert losses == pytest.approx(dense_losses, rel=1e-5)
    for name, p in dense_params.items():
        torch.testing.assert_close(params[name], p, rtol=1e-5, atol=1e-6, msg=name)


def test_the_split_step_falls_back_where_the_rest_is_too_dense(passes):
    """Where even the entries not open everywhere are too many for the pairs, the step takes the
    dense kernels; where all the open entries are few enough, the step from all the pairs."""
    plan = split_plan("cpu", rest_share=1 / 1000)
    assert_same_run(split_run("cpu", True, None, plan), split_run("cpu", True, False))
    assert passes("split") == 0 and passes("pairs") == 0
    split_run("cpu", True, None, dataclasses.replace(plan, sparse_step_share=1.0))
    assert passes("split") == 0 and passes("pairs") == STEPS + 1


def window_modes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """How each ShutWindow pass sums its window: "kernel" (Triton's window kernel) or "eager"
    (its eager twin)."""
    modes: list[str] = []
    original = jumprelu_pairs.ShutWindow.forward

    def forward(ctx, *args):
        out = original(ctx, *args)
        modes.append("eager" if isinstance(ctx.ops, EagerKernels) else "kernel")
        return out

    monkeypatch.setattr(jumprelu_pairs.ShutWindow, "forward", staticmethod(forward))
    return modes


@pytest.mark.parametrize("device", DEVICES)
def test_jumprelu_sparse_step_through_triton(device, triton_backend, passes, monkeypatch):
    dense = jumprelu_run(device, True, False, plan=triton_backend)
    modes = window_modes(monkeypatch)
    assert_same_run(jumprelu_run(device, True, True, plan=triton_backend), dense)
    assert passes("pairs") == STEPS + 1
    assert "kernel" in modes and len(modes) == STEPS + 1


def dense_window_sums(grad_SND, W_FSD, h_NF, window_NF, norms_FS, t_F, half_width):
    """The fused window kernel's sums over every (token, feature, snapshot), densely."""
    inside_SNF = window_NF & ((h_NF.float() * norms_FS.T[:, None, :] - t_F).abs() < half_width)
    dots_SNF = torch.bmm(grad_SND.double(), W_FSD.double().permute(1, 2, 0))
    return (dots_SNF * inside_SNF).sum(dim=1).T, inside_SNF.sum(dim=1).T.double()


def window_operands(device: str, layout: str, N: int = 70, D_: int = 72) -> list[torch.Tensor]:
    """Shapes that fill no tile evenly (70 tokens, 100 features, d_in 72, by default), a window
    of a third of the entries and about half of those inside at each snapshot (half-width 0.6)."""
    g = torch.Generator().manual_seed(3)
    F_, S_ = 100, 3
    h_NF = torch.randn(N, F_, generator=g)
    if layout == "feature-major":
        h_NF = h_NF.T.contiguous().T
    window_NF = torch.rand(N, F_, generator=g) < 1 / 3
    norms_FS = torch.rand(F_, S_, generator=g) + 0.5
    t_F = torch.rand(F_, generator=g) * 0.5
    W_FSD = torch.randn(F_, S_, D_, generator=g)
    grad_SND = torch.randn(S_, N, D_, generator=g)
    return [x.to(device) for x in (grad_SND, W_FSD, h_NF, window_NF, norms_FS, t_F)]


def check_window_dots(window_dots, args: list[torch.Tensor]) -> None:
    sums, counts = window_dots(*args, 0.6)
    want_sums, want_counts = dense_window_sums(*args, 0.6)
    assert 0.1 < float(want_counts.sum()) / want_counts.numel() / args[0].shape[1] < 0.3
    torch.testing.assert_close(counts.double(), want_counts, rtol=0, atol=0)
    torch.testing.assert_close(sums.double(), want_sums, rtol=1e-5, atol=1e-4)


def entry_operands(
    device: str, layout: str, dtype: torch.dtype, threshold_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, ...]:
    """``(h_NF, low_F, high_F, t_F)`` at 70 tokens by 1,030 features (no tile filled evenly, either
    way round). Each threshold is the rounded product ``h[0, i] * low_i``, and a third of the
    features have ``low == high``: token 0 then sits on the gate, shut only where the difference
    is rounded as torch rounds it (a fused multiply-add would open about half of those). With
    half-precision thresholds (a step under autocast), those features' norms are 1 and token 0's
    ``h`` is a half-precision number, so that it sits on the gate too."""
    g = torch.Generator().manual_seed(8)
    N, F_ = 70, 1030
    h_NF = torch.randn(N, F_, generator=g).to(dtype)
    low_F = torch.rand(F_, generator=g) + 0.5
    high_F = low_F + torch.rand(F_, generator=g) * 0.5
    if threshold_dtype != torch.float32:
        h_NF[0] = h_NF[0].to(threshold_dtype).to(dtype)
        low_F[::3] = 1.0
    high_F[::3] = low_F[::3]
    t_F = (h_NF[0].float() * low_F).to(threshold_dtype)
    if layout == "feature-major":
        h_NF = h_NF.T.contiguous().T
    return tuple(x.to(device) for x in (h_NF, low_F, high_F, t_F))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype, threshold_dtype",
    [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)],
    ids=["float32", "bfloat16-h", "bfloat16-h-and-thresholds"],
)
@pytest.mark.parametrize("layout", ["token-major", "feature-major"])
def test_triton_entry_masks_equal_the_eager_ones(device, layout, dtype, threshold_dtype, triton_backend):
    """Bit for bit: the open and active entries, their counts, and the masks in ``h``'s layout;
    with the thresholds in bfloat16 too, as a step under autocast compares them."""
    from crosslens.kernels.triton_sparse import TritonKernels

    operands = entry_operands(device, layout, dtype, threshold_dtype)
    open_NF, active_NF, *counts = TritonKernels(triton_backend).entry_masks(*operands, 0.3)
    want_open, want_active, *want_counts = sparse.eager_entry_masks(*operands, 0.3)
    assert torch.equal(open_NF, want_open) and torch.equal(active_NF, want_active)
    n_open, n_active = (int(n) for n in counts)
    assert [n_open, n_active] == [int(n) for n in want_counts] == [int(want_open.sum()), int(want_active.sum())]
    assert open_NF.stride() == active_NF.stride() == want_open.stride() == operands[0].stride()
    on_the_gate = ~want_open[0, ::3]  # token 0 where low == high: distance exactly 0 somewhere
    assert on_the_gate.sum() > 100 and 0 < n_open < n_active < open_NF.numel()


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_entries_in_dtypes_the_kernel_does_not_take_are_listed_eagerly():
    """A crosscoder held in bfloat16 has bfloat16 norms, whose products with ``h`` torch rounds
    to bfloat16: the step lists its entries with the eager twin, not the float32 kernel (which,
    launched here on a CPU outside the interpreter, would fail)."""
    triton = KernelPlan.resolve("cpu", backend="triton")
    h_NF, low_F, high_F, t_F = (x.bfloat16() for x in entry_operands("cpu", "feature-major", torch.float32))
    entries = active_entries(h_NF, torch.stack((low_F, high_F), dim=1), t_F, 0.3, triton)
    want_open, want_active, n_open, n_active = sparse.eager_entry_masks(h_NF, low_F, high_F, t_F, 0.3)
    assert torch.equal(entries.open_NF, want_open) and torch.equal(entries.active_NF, want_active)
    assert (entries.n_open, entries.n_window) == (int(n_open), int(n_active - n_open))


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_a_step_under_autocast_lists_its_entries_with_the_kernel(monkeypatch):
    """Under autocast the encoder leaves ``h`` in bfloat16, the step compares it with its
    thresholds rounded to bfloat16, and the decoder norms stay float32: dtypes the kernel
    takes, so the step's entries are listed in one pass and not by the eager twin's dozen."""
    from crosslens.kernels import triton_sparse

    class Listed(Exception):
        """The step reached the kernel (stopped there: no Triton kernel runs on a CPU)."""

    def reached(h_NF, low_F, high_F, t_F, half_width):
        raise Listed(h_NF.dtype, low_F.dtype, high_F.dtype, t_F.dtype)

    monkeypatch.setattr(triton_sparse.TritonKernels, "entry_masks", staticmethod(reached))
    sae = make_sae("jumprelu_crosscoder", "cpu", KernelPlan.resolve("cpu", backend="triton"), sparse_step=True)
    x_BSD = batches(1, "cpu")[0]
    set_trained_sparsity(sae, x_BSD)
    with torch.autocast("cpu", torch.bfloat16), pytest.raises(Listed) as listed:
        sae.training_pass(x_BSD)
    assert listed.value.args == (torch.bfloat16, torch.float32, torch.float32, torch.bfloat16)


@pytest.mark.parametrize("layout", ["token-major", "feature-major"])
def test_eager_window_dots_equal_the_dense_sums(layout):
    """The window kernel's eager twin, what a backend without Triton would sum the window with."""
    check_window_dots(sparse.eager_window_dots, window_operands("cpu", layout))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["token-major", "feature-major"])
def test_triton_window_dots_equal_the_dense_sums(device, layout, triton_backend):
    from crosslens.kernels.triton_sparse import TritonKernels

    kernels = TritonKernels(triton_backend)
    args = window_operands(device, layout)
    check_window_dots(kernels.window_dots, args)
    if device == "cpu":  # the interpreter's bfloat16 dot products are not the hardware's
        return
    # under autocast the gradient is bfloat16 and the kernel rounds W to it as it loads it, so
    # the rounded copy the step passes under autocast gives the very same sums
    args[0] = args[0].to(torch.bfloat16)
    from_float32 = kernels.window_dots(*args, 0.6)
    args[1] = args[1].to(torch.bfloat16)
    assert all(map(torch.equal, kernels.window_dots(*args, 0.6), from_float32))


@pytest.mark.parametrize("device", DEVICES)
def test_triton_window_dots_with_the_wide_tile_equal_the_dense_sums(device, triton_backend, monkeypatch):
    """bfloat16 rows with d_in and the tokens multiples of ``ALIGNMENT`` take the wide tile
    (the plan's ``window_tile``, 128 x 128 where the others take 64 x 64): its sums are the
    dense ones of the same bfloat16 numbers."""
    from crosslens.kernels import triton_sparse

    kernel, launched = triton_sparse._window_dots, []

    class Recorded:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launched.append({**kwargs, "grid": grid})
                return kernel[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(triton_sparse, "_window_dots", Recorded())
    plan = triton_backend
    wide = plan.window_tile
    assert wide.tokens > plan.window_tile_narrow.tokens
    args = window_operands(device, "feature-major", N=144, D_=64)
    if device == "cpu":  # the interpreter's bfloat16 dots are not the hardware's: the tile's masks and sums in float32
        plan = dataclasses.replace(plan, window_tile_narrow=wide)
    else:
        args[0], args[1] = args[0].to(torch.bfloat16), args[1].to(torch.bfloat16)
    check_window_dots(triton_sparse.TritonKernels(plan).window_dots, args)
    assert [(k["BLOCK_N"], k["BLOCK_F"], k["num_stages"]) for k in launched] == [
        (wide.tokens, wide.features, wide.stages)
    ]
    assert launched[0]["grid"] == (2, 1, 3)  # token blocks, feature blocks, snapshots


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("trained", [True, False], ids=["trained", "fresh"])
def test_jumprelu_sparse_step_by_default_only_on_cuda_at_a_trained_sparsity(device, trained, passes):
    """Where the step from the pairs pays: L0 here is 1% of d_sae, a trained crosscoder's
    share at scale (a fresh one's is about 30%)."""
    x_BSD = batches(1, device)[0]
    sae = make_sae("jumprelu_crosscoder", device, jumprelu_bandwidth=0.002)  # few entries inside the window
    if trained:
        set_trained_sparsity(sae, x_BSD, share=0.01)
        entries = active_entries(
            sae.hidden_pre(x_BSD).detach(),
            sae.snapshot_norms().detach(),
            sae.threshold.detach(),
            0.001,
            sae.kernel_plan,
        )
        assert entries.n_open > 0 and sparse_step_pays(entries, sae.kernel_plan)
    loss_and_grads(sae, x_BSD)
    assert passes("pairs") == int(device == "cuda" and trained)


def topk_run(arch: str, device: str, plan: KernelPlan | None = None, **extra) -> tuple:
    return run(make_sae(arch, device, plan, **extra), batches(STEPS, device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["topk_crosscoder", "batchtopk_crosscoder"])
def test_topk_triton_decode_equals_embedding_bag_and_dense(device, arch, triton_backend):
    got = topk_run(arch, device, triton_backend)
    eager = eager_plan(device)
    assert_same_run(got, topk_run(arch, device, eager))
    assert_same_run(got, topk_run(arch, device, eager, sparse_decode=False))


def test_the_step_from_pairs_pays_for_few_open_entries_whatever_the_window():
    """Open entries are gathered at every snapshot, so their share (the plan's
    ``sparse_step_share``) decides; the window kernel sums the window's entries at a fixed cost."""
    n = 3200
    eager, triton = KernelPlan(backend="eager"), KernelPlan(backend="triton")

    def pays(n_open: int, n_window: int, plan: KernelPlan = eager) -> bool:
        open_, active = torch.zeros(2, n, dtype=torch.bool)
        open_[:n_open], active[: n_open + n_window] = True, True
        entries = ActiveEntries(active, open_, n_open, n_window)
        return sparse_step_pays(entries, plan)

    open_limit, window_limit = int(n * eager.sparse_step_share), n // 10  # a tenth of the entries in the window
    assert pays(open_limit, window_limit)
    assert not pays(open_limit + 1, 0)
    assert pays(10, window_limit + 1, triton)  # the kernel is on by default
    assert pays(10, n - 10, triton)
    assert not pays(open_limit + 1, 0, triton)


# ---------------------------------------------------------------- waits for the device
def test_run_starts_are_the_counted_offsets():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (300,), generator=g).sort().values
    ids = ids[(ids != 0) & (ids != 17)]  # the first id and one inside have no run
    want = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(ids, minlength=45).cumsum(0)])
    assert torch.equal(run_starts(ids, 45), want)
    assert run_starts(ids, 45)[-1] == ids.shape[0] and run_starts(ids, 45)[1] == 0
    assert torch.equal(run_starts(ids[:0], 3), torch.zeros(4, dtype=torch.long))


def test_pairs_listed_to_a_known_count_are_those_of_the_mask():
    mask = torch.rand(B, F, generator=torch.Generator().manual_seed(3)) < 0.2
    listed, counted_ = ActivePairs.from_mask(mask), ActivePairs.from_mask(mask, int(mask.sum()))
    assert torch.equal(listed.token_A, counted_.token_A) and torch.equal(listed.feature_A, counted_.feature_A)
    assert counted_.token_A.is_contiguous() and counted_.feature_A.is_contiguous()  # the kernels index them flat


def step_reads(sae, x_BSD: torch.Tensor, *modules) -> Counter:
    """The syncing operations of one training pass, forward and backward, and the calls of
    ``host_ints`` (the deliberate read) in ``modules``."""
    reads: Counter = Counter()
    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(counted(module, "host_ints", reads))
        mode = stack.enter_context(HostReads())
        step_input = TrainStepInput(
            sae_in=x_BSD,
            coefficients=sae_coefficients(sae),
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )
        sae.training_forward_pass(step_input).loss.backward()
    return reads + mode.counts


def test_the_jumprelu_step_from_pairs_waits_for_the_device_once_for_its_counts():
    """One read of the open and window counts sizes every list of the step; the window kernel
    (here its eager twin) decides in backward which entries are inside, with no read."""
    sae = make_sae("jumprelu_crosscoder", "cpu", l0_coefficient=0.3, sparse_step=True)
    x_BSD = batches(1, "cpu")[0]
    set_trained_sparsity(sae, x_BSD)
    reads = step_reads(sae, x_BSD, jumprelu_pairs)
    assert reads == Counter({"host_ints": 1}), reads


@pytest.mark.parametrize("arch", ["topk_crosscoder", "batchtopk_crosscoder"])
def test_the_topk_sparse_decode_waits_for_nothing(arch, pairs_path_with_eager_sums):
    """TopK and BatchTopK (one process, no micro-batches, no dead features) list their pairs
    and decode from them as on CUDA without a read: the pairs' path that the Triton backend
    takes, here with the eager sums in the kernels' place."""
    sae = make_sae(arch, "cpu", pairs_path_with_eager_sums)
    assert step_reads(sae, batches(1, "cpu")[0]) == Counter()


@pytest.mark.parametrize("arch", ["topk_crosscoder", "batchtopk_crosscoder"])
def test_topk_lists_its_dead_features_from_a_copy_queued_before_the_encode(arch, monkeypatch):
    """The one list the auxiliary loss sizes its code by: started before the encode is queued
    (on CUDA its read then waits for the mask alone), and read once, as the mask's entries."""
    from crosslens.core.tensors import HostListing

    sae = make_sae(arch, "cpu")
    order: list[str] = []
    start, encode = HostListing.start, sae._training_encode
    monkeypatch.setattr(HostListing, "start", classmethod(lambda cls, mask: order.append("listed") or start(mask)))
    monkeypatch.setattr(sae, "_training_encode", lambda x: order.append("encoded") or encode(x))
    with HostReads() as reads:
        fwd = sae.training_pass(batches(1, "cpu")[0], dead_mask(sae))
    assert order == ["listed", "encoded"] and reads.counts == Counter({"nonzero": 1})
    rows, n_dead = fwd.dead_rows.rows()
    assert torch.equal(rows, dead_mask(sae).nonzero().flatten()) and n_dead == F // 4
    assert fwd.extras["aux"][0][0] is rows


def dead_listing_trainer(micro_batches: int = 1) -> CrosscoderTrainer:
    """A TopK trainer whose features die after one silent step, so that most steps have some."""
    cfg = CrosscoderTrainerConfig(
        total_steps=4,
        lr=3e-3,
        device="cpu",
        activation_scale_check="off",
        dead_feature_window_tokens=1,
        micro_batches=micro_batches,
    )
    sae = make_sae("topk_crosscoder", "cpu")
    return CrosscoderTrainer(sae, cfg, plan=sae.kernel_plan)


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_the_trainer_lists_the_next_steps_dead_features_before_this_steps_backward(micro_batches, monkeypatch):
    """The trainer counts where features fired before it queues the backward (one batch) or
    the optimizer (micro-batches), and starts the listing of the next step's dead features
    there; the next step's pass reads that listing, of the mask the trainer's
    ``dead_features`` gives at the step's start, and starts none of its own."""
    from crosslens.core.tensors import HostListing

    trainer = dead_listing_trainer(micro_batches)
    sae, events, passes = trainer.sae, [], []
    start, training_pass = HostListing.start, sae.training_pass
    monkeypatch.setattr(HostListing, "start", classmethod(lambda cls, mask: events.append("listed") or start(mask)))
    monkeypatch.setattr(
        sae,
        "training_pass",
        lambda x, mask=None, rows=None: passes.append((mask, rows)) or training_pass(x, mask, rows),
    )
    sae.W_enc.register_hook(lambda grad: events.append("backward"))
    n_dead = []
    for step, x_BSD in enumerate(batches(4, "cpu")):
        dead_F, events[:], passes[:] = trainer.dead_features, [], []
        ahead = trainer.dead_ahead
        trainer.step(x_BSD)
        mask, rows = passes[0]
        assert torch.equal(mask, dead_F) and all(p == (mask, rows) for p in passes)
        n_dead.append(int(dead_F.sum()))
        if step == 0:  # nothing was listed ahead of the first step: its pass lists the mask
            assert ahead is None and rows is None and events[0] == "listed"
        else:
            assert rows is ahead.rows and mask is ahead.dead_F and ahead.step == step
        assert trainer.dead_ahead.step == step + 1 and trainer.dead_ahead.rows.mask is trainer.dead_ahead.dead_F
        if micro_batches == 1:
            assert events[-2:] == ["listed", "backward"]
    assert max(n_dead[1:]) > 0, n_dead


def test_the_dead_features_listed_ahead_train_to_the_same_bytes():
    """A step that lists its own dead features and one that reads those the step before
    listed give the same weights, step after step."""
    runs = []
    for ahead in (True, False):
        trainer = dead_listing_trainer()
        for x_BSD in batches(4, "cpu"):
            if not ahead:
                trainer.dead_ahead = None
            trainer.step(x_BSD)
        runs.append({name: p.detach().clone() for name, p in trainer.sae.named_parameters()})
    assert all(torch.equal(runs[0][name], runs[1][name]) for name in runs[0])


@pytest.mark.parametrize("change", ["counts written", "window changed", "checkpoint loaded"])
def test_dead_features_counted_ahead_are_not_used_once_their_inputs_change(change, tmp_path, monkeypatch):
    """A caller that writes the firing counts between steps (marking features dead, say),
    changes the window, or loads a checkpoint gets the dead features of the counts as they then
    stand, not those counted during the step before."""
    import dataclasses

    trainer = dead_listing_trainer()
    x_BSD = batches(2, "cpu")
    trainer.step(x_BSD[0])
    if change == "checkpoint loaded":
        trainer.save_checkpoint(tmp_path / "ckpt")
        trainer.tokens_since_fired.fill_(0)  # the counts a later step would have had
        trainer.step(x_BSD[1])
        trainer.load_checkpoint(tmp_path / "ckpt")
    assert trainer.dead_ahead.holds(
        trainer.n_steps, trainer.tokens_since_fired, trainer.dead_feature_window_tokens
    ) == (change != "checkpoint loaded")
    if change == "counts written":
        trainer.tokens_since_fired.masked_fill_(dead_mask(trainer.sae), trainer.dead_feature_window_tokens + 1)
    elif change == "window changed":
        trainer.cfg = dataclasses.replace(trainer.cfg, dead_feature_window_tokens=10**9)
    want = trainer.dead_features
    passes, training_pass = [], trainer.sae.training_pass
    monkeypatch.setattr(
        trainer.sae,
        "training_pass",
        lambda x, mask=None, rows=None: passes.append((mask, rows)) or training_pass(x, mask, rows),
    )
    trainer.step(x_BSD[1])
    ((mask, rows),) = passes
    assert rows is None and torch.equal(mask, want)


def test_a_listing_of_another_tensor_than_the_dead_mask_is_refused():
    from crosslens.core.tensors import HostListing

    sae = make_sae("topk_crosscoder", "cpu")
    with pytest.raises(ValueError, match="dead_rows lists another tensor than dead_neuron_mask"):
        sae.training_pass(batches(1, "cpu")[0], dead_mask(sae), HostListing.start(dead_mask(sae)))


@NO_CUDA
@pytest.mark.parametrize("arch", ["topk_crosscoder", "batchtopk_crosscoder"])
def test_topk_with_dead_features_never_drains_the_device_on_cuda(arch):
    """Listing the dead features waits for the copy queued before the encode (an event), not
    for the whole queue: the step, auxiliary loss included, has no device-wide sync."""
    sae = make_sae(arch, "cuda")
    step_input = TrainStepInput(
        sae_in=batches(1, "cuda")[0],
        coefficients=sae_coefficients(sae),
        dead_neuron_mask=dead_mask(sae),
        n_training_steps=0,
        is_logging_step=False,
    )
    sae.training_forward_pass(step_input).loss.backward()  # compiles the kernels first
    torch.cuda.synchronize()
    with counted_cuda_syncs() as syncs:
        out = sae.training_forward_pass(step_input)
        out.loss.backward()
    assert syncs == [] and float(out.losses["auxiliary_reconstruction_loss"].detach()) > 0


@NO_CUDA
def test_the_jumprelu_step_from_pairs_syncs_once_on_cuda():
    """The window is summed by the plan's kernels (Triton's, or their eager twin without triton)
    in backward, with no read: the step's one sync is its open and window counts."""
    sae = make_sae("jumprelu_crosscoder", "cuda", l0_coefficient=0.3, sparse_step=True)
    x_BSD = batches(1, "cuda")[0]
    set_trained_sparsity(sae, x_BSD)
    step_input = TrainStepInput(
        sae_in=x_BSD,
        coefficients=sae_coefficients(sae),
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )
    sae.training_forward_pass(step_input).loss.backward()  # compiles the kernels first
    torch.cuda.synchronize()
    with counted_cuda_syncs() as syncs:
        sae.training_forward_pass(step_input).loss.backward()
    assert len(syncs) == 1, syncs


@pytest.mark.parametrize("arch", ["topk_crosscoder", "batchtopk_crosscoder"])
def test_topk_pairs_under_autocast_read_the_rounded_decoder_once_a_pass(arch, monkeypatch, pairs_path_with_eager_sums):
    """Under autocast the pairs' path reads ``W_dec`` rounded to bfloat16, one copy a pass
    (its auxiliary decode reads the same), where there are enough pairs to pay for it, and
    trains as the dense decode does under autocast, to bfloat16's precision."""
    from crosslens.crosscoders import topk_crosscoder

    copies: list[torch.dtype | None] = []
    original = sparse.autocast_copy

    def copy(W, n_pairs, plan=None, step_weights=None, block=None):
        out = original(W, n_pairs, plan, step_weights, block)
        copies.append(None if out is None else out.dtype)
        return out

    monkeypatch.setattr(topk_crosscoder, "autocast_copy", copy)
    pairs = pairs_path_with_eager_sums
    run(make_sae(arch, "cpu", pairs), batches(STEPS, "cpu"), "bfloat16")
    # the gradient check's pass in float32 (its auxiliary decode too: every fourth feature is
    # dead there), then every step; k 4 for 32 tokens is 128 pairs, twice the 64 rows
    assert copies == [None] + [torch.bfloat16] * STEPS
    # the curves without the auxiliary loss, whose dead-feature count jumps by whole features
    # at bfloat16's rounding differences
    _, _, losses, _ = run(make_sae(arch, "cpu", pairs, aux_loss_coefficient=0.0), batches(STEPS, "cpu"), "bfloat16")
    dense = make_sae(arch, "cpu", eager_plan("cpu"), sparse_decode=False, aux_loss_coefficient=0.0)
    _, _, dense_losses, _ = run(dense, batches(STEPS, "cpu"), "bfloat16")
    assert losses == pytest.approx(dense_losses, rel=5e-3)
    with torch.autocast("cpu", torch.bfloat16):
        W = torch.ones(F, 2)
        assert original(W, 2 * F - 1) is None and original(W, 2 * F).dtype == torch.bfloat16
    assert original(W, 10 * F) is None  # no autocast


# ---------------------------------------------------------------- one pass for W_dec's gradient
def nodes_into(loss: torch.Tensor, param: torch.Tensor) -> list[str]:
    """The graph's nodes that send a gradient to ``param``, seen through the views of it: two
    or more mean autograd writes one tensor of param's size for each and adds them up."""
    parents: dict = {}
    seen, todo = set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                parents.setdefault(child, []).append(node)
                todo.append(child)

    def senders(node) -> list[str]:
        if node.name().startswith("ViewBackward"):  # a view's gradient is its consumers'
            return [name for parent in parents.get(node, []) for name in senders(parent)]
        return [node.name()]

    leaf = next(node for node in parents if getattr(node, "variable", None) is param)
    return sorted(name for parent in parents[leaf] for name in senders(parent))


def step_loss(sae, x_BSD: torch.Tensor, dead_F: torch.Tensor | None = None) -> torch.Tensor:
    step_input = TrainStepInput(
        sae_in=x_BSD,
        coefficients=sae_coefficients(sae),
        dead_neuron_mask=dead_F,
        n_training_steps=0,
        is_logging_step=False,
    )
    return sae.training_forward_pass(step_input).loss


@pytest.mark.parametrize("arch", ["jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder"])
def test_the_sparse_steps_write_the_decoders_gradient_once(arch, request):
    """The step from pairs differentiates the decoder norms in its decode's node, and TopK's
    decodes its auxiliary code there too, so W_dec's gradient (the pairs' sums, the norms' part
    and the dead rows') is written once. TopK's decode through ``embedding_bag`` (a CPU's), the
    norms and the auxiliary decode are three nodes, whose gradients autograd adds, as are its
    dense decode, the norms and the auxiliary decode."""
    x_BSD = batches(1, "cpu")[0]
    if arch == "jumprelu_crosscoder":
        sparse = make_sae(arch, "cpu", l0_coefficient=0.3, sparse_step=True)
        set_trained_sparsity(sparse, x_BSD)
        assert nodes_into(step_loss(sparse, x_BSD), sparse.W_dec) == ["SparseDecodeBackward"]
        return
    for kw, decode in (({}, "EmbeddingBagBackward0"), ({"sparse_decode": False}, "AddmmBackward0")):
        sae = make_sae(arch, "cpu", **kw)
        assert nodes_into(step_loss(sae, x_BSD), sae.W_dec) == [decode, "_RowNormsBackward"]
        aux = nodes_into(step_loss(sae, x_BSD, dead_mask(sae)), sae.W_dec)
        assert aux == sorted([decode, "IndexSelectBackward0", "_RowNormsBackward"])
    pairs = make_sae(arch, "cpu", request.getfixturevalue("pairs_path_with_eager_sums"))  # with the eager sums
    assert nodes_into(step_loss(pairs, x_BSD), pairs.W_dec) == ["SparseDecodeBackward"]
    assert nodes_into(step_loss(pairs, x_BSD, dead_mask(pairs)), pairs.W_dec) == ["SparseDecodeBackward"]


def test_topk_without_its_auxiliary_loss_decodes_no_dead_features():
    """With ``aux_loss_coefficient`` 0 the dead features are neither listed nor decoded."""
    x_BSD = batches(1, "cpu")[0]
    sae = make_sae("topk_crosscoder", "cpu", aux_loss_coefficient=0.0)
    assert nodes_into(step_loss(sae, x_BSD, dead_mask(sae)), sae.W_dec) == [
        "EmbeddingBagBackward0",
        "_RowNormsBackward",
    ]


@NO_CUDA
@pytest.mark.parametrize("arch", ["jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder"])
def test_the_cuda_defaults_write_the_decoders_gradient_once(arch):
    """On CUDA, by default (the Triton kernels; JumpReLU from its pairs at a trained sparsity),
    each sparse step sends W_dec one gradient, with dead features for TopK's auxiliary decode."""
    jumprelu = arch == "jumprelu_crosscoder"
    # as in the default-path test above: L0 1% of d_sae and a narrow window, where the pairs pay
    extra = {"l0_coefficient": 0.3, "jumprelu_bandwidth": 0.002} if jumprelu else {"sparse_decode": None}
    sae = make_sae(arch, "cuda", **extra)
    x_BSD = batches(1, "cuda")[0]
    if jumprelu:
        set_trained_sparsity(sae, x_BSD, share=0.01)
    assert nodes_into(step_loss(sae, x_BSD, dead_mask(sae)), sae.W_dec) == ["SparseDecodeBackward"]


def test_the_rows_matmuls_read_operands_padded_to_an_aligned_count():
    """TopK's auxiliary rows (any number of dead features) reach cuBLAS as a multiple of
    ``ROW_ALIGNMENT`` rows, zeros after them, and their values with as many columns, zeros too:
    the products are the unpadded ones."""
    g = torch.Generator().manual_seed(0)
    W_FGD = torch.randn(F, 1, S * D, generator=g)
    rows_R, values_NR = torch.tensor([1, 4, 6]), torch.randn(5, 3, generator=g)
    rows_RK = sparse._rows(W_FGD, rows_R, None)
    padded_NR = sparse._padded_values(values_NR, 3)
    assert rows_RK.shape == (sparse.ROW_ALIGNMENT, S * D) and padded_NR.shape == (
        5,
        sparse.ROW_ALIGNMENT,
    )
    assert torch.equal(rows_RK[:3], W_FGD[rows_R, 0]) and rows_RK[3:].abs().max() == 0
    assert torch.equal(padded_NR[:, :3], values_NR) and padded_NR[:, 3:].abs().max() == 0
    assert sparse._padded_values(padded_NR, 3) is padded_NR  # already padded: as it is
    torch.testing.assert_close(sparse.dense_rows_decode(W_FGD, (rows_R, values_NR)), values_NR @ W_FGD[rows_R, 0])
