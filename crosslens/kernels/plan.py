"""Which kernels a training step runs, and their tunings: one explicit plan per run.

A crosscoder's training step and the trainer's Adam have a reference implementation (plain
torch ops) and, per device, the fast paths the plan names: the Triton kernels of
:mod:`crosslens.kernels.triton_sparse` and :mod:`crosslens.kernels.triton_adam` on CUDA,
``torch.compile`` for the elementwise chains, and JumpReLU's steps that avoid its per-snapshot
code (:meth:`KernelPlan.jumprelu_paths`: the step takes the first of them that pays for its
batch). :class:`KernelPlan` names every such choice and every size they are tuned by. It is
resolved once per run from the device and the run's settings (:meth:`KernelPlan.resolve`),
printed by ``crosslens train``, recorded in ``run.json`` and handed explicitly to the trainer,
the optimizer and the crosscoder
(:meth:`~crosslens.crosscoders.base.CrosscoderMixin.use_kernel_plan`). Tests and benchmarks
that want another path build another plan (``dataclasses.replace(plan, backend="eager")``);
nothing reads a module-wide switch. docs/DESIGN.md ("What runs where") lists what each device's
default plan runs; ``tests/test_kernel_plan.py`` holds the two equal.

Every choice computes the same values as the reference, to the order of float sums: the
tests hold each fast path against its eager twin.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

import torch

BACKENDS = ("triton", "eager")
"""The two implementations of crosslens's own kernels: Triton's, and each one's eager twin."""

ADAMS = ("kernel", "torch")
"""Float32-moment Adam: crosslens's one-pass :class:`~crosslens.training.optim.KernelAdam`, or
torch's Adam (fused where the device has the kernel)."""

WINDOW_MODES = ("per_snapshot", "matmul", "gathered")
"""How the dense JumpReLU step on a CPU sums the threshold's window
(:class:`~crosslens.kernels.jumprelu_entry_classes.EntryClasses`)."""

JUMPRELU_PATHS = ("pairs", "split", "entry classes", "per snapshot")
"""The implementations of JumpReLU's gated decode, by the name a training pass records
(``JumpReLUTrainingCrosscoder.pass_paths``): from the active pairs
(:mod:`crosslens.kernels.jumprelu_pairs`), split between the shared code's matmul and the pairs
(:mod:`crosslens.kernels.jumprelu_split`), by entry classes (:mod:`crosslens.kernels.jumprelu_entry_classes`),
and from the per-snapshot code, the reference (:mod:`crosslens.kernels.jumprelu_dense`)."""

_PATH_WORDS = {
    "pairs": "from the active pairs",
    "split": "split between the shared code and the pairs",
    "entry classes": "by entry classes",
    "per snapshot": "from the per-snapshot code",
}
"""How a run's printout names each of :data:`JUMPRELU_PATHS`."""

COMPILE_ENV = "CROSSLENS_COMPILE_KERNELS"
"""``1`` or ``0`` in the environment: compile the step's elementwise chains on every device, or
on none (the default compiles on CUDA where Triton is there)."""


@dataclass(frozen=True)
class WindowTile:
    """One launch shape of the JumpReLU window sums (``triton_sparse._window_dots``)."""

    tokens: int
    """Tokens of a tile (``BLOCK_N``)."""
    features: int
    """Features of a tile (``BLOCK_F``)."""
    depth: int
    """The ``d_in`` slice of each step of its inner product (``BLOCK_K``)."""
    warps: int
    """Warps of one program. The epilogue holds four ``tokens x features`` tiles (the dot
    products, ``h``, the window and the distances) in registers: a tile too large for its warps
    spills to the stack (``tests/test_triton_compiles.py`` fails on any spill)."""
    stages: int
    """Loads in flight along ``d_in`` (Triton's software pipeline)."""


@dataclass(frozen=True)
class KernelPlan:
    """Every implementation choice and tuning of a training step (see the module docstring).

    The choices come first; the sizes after them are tunings whose defaults were measured
    (``benchmarks/README.md``) and which change no value a step computes beyond the order of
    its float sums."""

    backend: str = "eager"
    """``"triton"`` or ``"eager"``: the sparse step's gather-sum kernels, the JumpReLU window sums
    and entry masks. ``"triton"`` on a CPU needs ``TRITON_INTERPRET=1`` (tests)."""
    compile: bool = False
    """Run the step's elementwise chains (JumpReLU's gate blocks, the reconstruction losses)
    through ``torch.compile``."""
    adam: str = "torch"
    """Float32-moment Adam: ``"kernel"`` (crosslens's one pass per parameter) or ``"torch"``."""
    adam_backend: str = "eager"
    """``"triton"`` or ``"eager"``: the pass of crosslens's Adams (:class:`KernelAdam` and the
    bfloat16-state Adam)."""
    handoff_norms: bool = False
    """The optimizer's pass also writes the decoder's row norms for the next step (where its
    pass is the Triton kernel, which sums them as it writes each row)."""
    jumprelu_sparse: bool | None = None
    """JumpReLU's step from the active pairs: always (True), never (False), or where it pays
    (None: on CUDA, or on any device with :attr:`jumprelu_split`, at most
    :attr:`sparse_step_share` of the entries open)."""
    jumprelu_split: bool = False
    """Where the JumpReLU step from all the pairs does not pay: decode the entries open at every
    snapshot (outside the threshold's window) with the shared code's one matmul and the rest
    from their pairs (:mod:`crosslens.kernels.jumprelu_split`), where the rest are few
    enough (:attr:`split_rest_share`), instead of the per-snapshot code ``[S, N, F]`` (CUDA's
    default). Needs ``jumprelu_sparse`` None (True takes the pairs always, False never)."""
    topk_sparse_decode: bool | None = None
    """TopK and BatchTopK decode from their kept pairs (True) or with the dense matmul (False);
    None: where ``k / d_sae`` is at most :attr:`topk_sparse_density`."""
    topk_pairs_kernels: bool | None = None
    """TopK's sparse decode through the pairs' sums of :attr:`backend` (True), whose node also
    differentiates the decoder norms, or through ``embedding_bag`` (False); None: the pairs'
    sums on the Triton backend, ``embedding_bag`` on the eager one (its own backward is faster
    than the eager sums there). A micro-batched step takes the pairs' sums whatever this says:
    ``embedding_bag`` writes a decoder-sized gradient per micro-batch."""

    sparse_step_share: float = 1 / 32
    """Largest share of (token, feature) entries open at some snapshot for which the JumpReLU
    step works from the pairs rather than with the dense kernels: each open entry is gathered,
    decoded and differentiated at every snapshot, which costs about what the dense step does
    near 4% open; a trained crosscoder is well inside, a fresh one (about 30% open) outside."""
    split_rest_share: float = 1 / 64
    """Largest share of (token, feature) entries open at some snapshot but not open everywhere
    outside the window for which the split step (``jumprelu_split``) reads them from pairs: the
    split step pays the shared code's matmuls and scores on top of the pairs, so it needs
    fewer of them than the step from all the pairs does (:attr:`sparse_step_share`). The default
    is estimated from the costs of the dense step and of the step from the pairs;
    ``benchmarks/gpu.py``'s young rows time the split step against the dense one."""
    gather_share: float = 1 / 16
    """Largest share of entries the dense CPU step gathers for work per snapshot; above it,
    mixed gates fall back to the per-snapshot code and the window is summed with matmuls."""
    window_mode: str | None = None
    """Force one way of summing the window in the dense CPU step (:data:`WINDOW_MODES`); None
    chooses by :attr:`gather_share`."""
    padding_limit: float = 2.0
    """Pack the entries open at every snapshot into padded rows where the ``[F, P]`` matrix has
    at most this many slots per entry (0: always gather, ``inf``: always pad)."""
    cpu_block_elements: int = 1 << 22
    """Elements of one ``[S, block, F]`` block of per-snapshot work on a CPU: 16 MiB in float32,
    about half of a 32 MiB L3 cache."""
    device_block_elements: int = 1 << 28
    """The same off the CPU: 1 GiB in float32, where each elementwise kernel already runs at
    memory bandwidth and the snapshot models of a streamed run keep their room."""
    row_block_elements: int = 1 << 19
    """Elements of one ``[features, S, P]`` block of padded-row work on a CPU (2 MiB: its
    temporaries stay in cache)."""
    code_grad_block_elements: int = 1 << 18
    """Elements of one ``[features, N]`` block of the dense CPU step's code gradient and window
    sums (1 MiB in float32: a snapshot's product is summed and masked while it is in cache)."""
    sparse_entry_chunk: int = 1 << 20
    """Elements ``pairs * D`` gathered at once for the dense CPU step's per-pair work."""
    pair_chunk_elements: int = 1 << 22
    """Elements ``pairs * G * D`` of one gathered block of the eager gather-sums."""
    read_copy_pairs: int = 2
    """Pairs per decoder row from which a sparse step under autocast reads its rows from a
    rounded copy of the decoder (6 bytes an element to make; 2 saved per pair)."""
    topk_sparse_density: float = 1 / 16
    """TopK decodes from its kept pairs where ``k / d_sae`` is at most this (unless its config
    says otherwise)."""
    column_block: int = 1024
    """Columns of one program of the Triton row gather (decode and decoder gradient)."""
    gather_warps: int = 4
    """Warps of one program of the row gather."""
    pair_block: int = 32
    """Pairs of one program of the Triton per-pair dot products."""
    pair_columns: int = 64
    """Columns of each pair that program reads at a time."""
    window_tile: WindowTile = field(
        default_factory=lambda: WindowTile(tokens=128, features=128, depth=64, warps=8, stages=4)
    )
    """The window sums' launch for a half-precision gradient (tensor cores) whose ``d_in`` and
    token count are multiples of 16."""
    window_tile_narrow: WindowTile = field(
        default_factory=lambda: WindowTile(tokens=64, features=64, depth=32, warps=8, stages=3)
    )
    """The launch for a float32 gradient (exact FMAs) or unaligned rows, where the wide tile
    spills to the stack."""
    noise_block: int = 1 << 16
    """Elements of the bfloat16-state Adam's rounding noise mixed at a time on a CPU (its two
    int64 buffers stay in cache)."""

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("backend", self.backend, BACKENDS),
            ("adam_backend", self.adam_backend, BACKENDS),
            ("adam", self.adam, ADAMS),
            ("window_mode", self.window_mode, (None, *WINDOW_MODES)),
        ):
            if value not in allowed:
                raise ValueError(f"KernelPlan.{name}={value!r}: pick one of {', '.join(map(repr, allowed))}")
        if self.jumprelu_split and self.jumprelu_sparse is not None:
            takes = "always takes the pairs" if self.jumprelu_sparse else "never takes them"
            raise ValueError(
                f"KernelPlan.jumprelu_split=True needs jumprelu_sparse=None (the step chooses where the pairs pay); "
                f"jumprelu_sparse={self.jumprelu_sparse} {takes} and never splits: set jumprelu_split=False"
            )

    @classmethod
    def resolve(cls, device: str | torch.device, *, compile: bool | None = None, **overrides: Any) -> KernelPlan:
        """The default plan for ``device``: the Triton kernels, crosslens's Adam, the optimizer's
        norms, compiled elementwise chains and JumpReLU's split step on CUDA where triton is
        installed (the split step where ``overrides`` leave ``jumprelu_sparse`` None: a step from the
        pairs always or never does not split); the eager twins and torch's Adam elsewhere.
        ``compile`` None takes :data:`COMPILE_ENV` where it is set; ``overrides`` replace fields."""
        fast = torch.device(device).type == "cuda" and triton_installed()
        backend = "triton" if fast else "eager"
        plan = cls(
            backend=backend,
            compile=fast if compile is None else compile,
            adam="kernel" if fast else "torch",
            adam_backend=backend,
            handoff_norms=fast,
            jumprelu_split=fast and overrides.get("jumprelu_sparse") is None,
        )
        if compile is None:
            plan = dataclasses.replace(plan, compile=_compile_from_environment(plan.compile))
        return dataclasses.replace(plan, **overrides) if overrides else plan

    def jumprelu_paths(self, device_type: str, autocast: bool) -> tuple[str, ...]:
        """The implementations of JumpReLU's gated decode (:data:`JUMPRELU_PATHS`) a step on
        ``device_type`` (under ``autocast`` or not) may take, in the order it tries them: the first
        that pays for the batch runs, and the per-snapshot reference, last, always can. From the
        pairs always (``jumprelu_sparse``), or where they pay on CUDA or with ``jumprelu_split``;
        split where the plan says; by entry classes without autocast (whose matmul dtypes their
        gathered updates do not follow)."""
        if self.jumprelu_sparse:
            return ("pairs",)
        paths: list[str] = []
        if self.jumprelu_sparse is None and (device_type == "cuda" or self.jumprelu_split):
            paths += ["pairs", "split"] if self.jumprelu_split else ["pairs"]
        if not autocast:
            paths.append("entry classes")
        return (*paths, "per snapshot")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for ``run.json``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> KernelPlan:
        """The plan :meth:`to_dict` wrote. A record whose ``jumprelu_sparse`` is set reads its
        ``jumprelu_split`` as False: the step never split there, and runs recorded the flag so."""
        record = dict(record)
        if record.get("jumprelu_sparse") is not None:
            record["jumprelu_split"] = False
        for name in ("window_tile", "window_tile_narrow"):
            if isinstance(record.get(name), dict):
                record[name] = WindowTile(**record[name])
        return cls(**record)

    def describe(self, device_type: str, autocast: bool = False) -> str:
        """One line for the printout of a run on ``device_type`` (under ``autocast`` or not): the
        choices, not the tunings; JumpReLU's step as :meth:`jumprelu_paths` has it there."""
        *tried, last = (_PATH_WORDS[path] for path in self.jumprelu_paths(device_type, autocast))
        jumprelu = ", else ".join([f"{words} where it pays" for words in tried] + [last])
        if self.jumprelu_sparse:
            jumprelu += " always"
        topk = {True: "always", False: "never", None: "where k is sparse enough"}[self.topk_sparse_decode]
        topk += {True: ", through the pairs' sums", False: ", through embedding_bag", None: ""}[self.topk_pairs_kernels]
        adam = "crosslens's one-pass Adam" if self.adam == "kernel" else "torch's Adam"
        return (
            f"kernels: {self.backend}; elementwise chains {'compiled' if self.compile else 'eager'}; "
            f"{adam} ({self.adam_backend} pass{', writing the decoder norms' if self.handoff_norms else ''}); "
            f"JumpReLU step {jumprelu}; TopK decode from its pairs {topk}"
        )

    def block_elements(self, device: torch.device, on_cpu: int | None = None) -> int:
        """Elements of one block of per-snapshot work on ``device``: on a CPU ``on_cpu`` (each
        kind of block has its own cache budget there; :attr:`cpu_block_elements` by default),
        :attr:`device_block_elements` elsewhere."""
        if device.type != "cpu":
            return self.device_block_elements
        return self.cpu_block_elements if on_cpu is None else on_cpu


def _compile_from_environment(default: bool) -> bool:
    value = os.environ.get(COMPILE_ENV)
    if value in ("0", "1"):
        return value == "1"
    if value:
        import warnings

        warnings.warn(f"{COMPILE_ENV}={value!r} is ignored: set 1 (compile everywhere) or 0 (nowhere)", stacklevel=3)
    return default


@functools.cache
def triton_installed() -> bool:
    """Whether triton can be imported (it is no dependency of the package)."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def default_plan(device_type: str) -> KernelPlan:
    """:meth:`KernelPlan.resolve` for a device type, once a process: what a crosscoder used outside
    a trainer (inference, a test calling a kernel) runs."""
    return KernelPlan.resolve(device_type)


def plan_for(device: torch.device | str, plan: KernelPlan | None) -> KernelPlan:
    """``plan``, or the device's default where None."""
    return plan if plan is not None else default_plan(torch.device(device).type)
