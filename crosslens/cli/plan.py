"""``crosslens plan``: memory, disk, FLOPs, communication and time of a run, before running it.

The settings ``plan`` shares with ``harvest`` and ``train`` are their flags, with their names and
their defaults (``default_from`` the configs those commands build), so a plan of a command's flags
sizes the run that command makes."""

from __future__ import annotations

from dataclasses import dataclass, field

from crosslens.architectures import ARCHITECTURE_NAMES
from crosslens.cli.common import DeviceFlags, SuiteFlags, TokenBudgetFlags
from crosslens.cli.spec import Subcommand
from crosslens.training.config import AUTOCAST_CHOICES, ArchitectureConfig, CrosscoderRunnerConfig

RUNNER = CrosscoderRunnerConfig


@dataclass
class PlanFlags:
    recipe: str | None = None
    """A shipped recipe: its values take the place of the defaults below, and other flags override them."""
    list_recipes: bool = False
    """List the shipped recipes and exit."""
    list_models: bool = False
    """List the models whose sizes crosslens knows."""
    hook: str | None = None
    """Hook the crosscoder reads."""
    architecture: str | None = field(
        default=None, metadata={"flag": "--arch", "choices": ARCHITECTURE_NAMES, "default_from": (ArchitectureConfig, "architecture")}
    )  # fmt: skip
    """Crosscoder architecture, as train --arch."""
    d_sae: int | None = field(default=None, metadata={"default_from": (ArchitectureConfig, "d_sae")})
    """Shared features, as train --d-sae."""
    k: int | None = field(default=None, metadata={"default_from": (ArchitectureConfig, "k")})
    """k of (batch)top-k, as train --k."""
    n_steps: int | None = field(default=None, metadata={"default_from": (RUNNER, "n_steps")})
    """Optimizer steps, as train --n-steps (a --recipe's: its token budget at --batch-size)."""
    checkpoint_every: int | None = field(default=None, metadata={"min": 0})
    """Steps between checkpoints, as train --checkpoint-every (default: about 20 a run, at least 500 steps apart)."""
    keep_checkpoints: int | None = field(default=None, metadata={"min": 0, "default_from": (RUNNER, "keep_checkpoints")})
    """Newest checkpoints kept, as train --keep-checkpoints (0: every one)."""
    batch_size: int | None = field(default=None, metadata={"flag": "--batch-size", "default_from": (RUNNER, "train_batch_size_tokens")})
    """Global tokens per step, as train --batch-size."""
    micro_batches: int | None = field(default=None, metadata={"default_from": (RUNNER, "micro_batches")})
    """Micro-batches each rank's batch is trained in, as train --micro-batches: the activations counted
    are one micro-batch's."""
    autocast: str | None = field(default=None, metadata={"choices": AUTOCAST_CHOICES, "default_from": (RUNNER, "autocast_dtype")})
    """Precision of the crosscoder step, as train --autocast ("auto": bfloat16 on cuda); bfloat16 adds its weight
    copies to the memory."""
    world_size: int | None = field(default=None, metadata={"min": 1})
    """Ranks of the torchrun job (default: --snapshot-parallel)."""
    snapshot_parallel: int | None = field(default=None, metadata={"default_from": (RUNNER, "snapshot_parallel")})
    """Ranks on the snapshot axis, as train --snapshot-parallel; the rest of --world-size split each batch."""
    mesh: str | None = None
    """DATAxSNAPSHOT mesh, e.g. 2x4: --world-size and --snapshot-parallel in one."""
    tflops: float | None = None
    """Sustained TFLOP/s per rank (default: cuda 100, mps 5, cpu 0.5)."""
    link_gbps: float | None = None
    """All-reduce bandwidth per rank, GB/s (default: cuda 50, mps 10, cpu 1)."""
    json: bool = False
    """Print the plan as JSON."""
    device: str | None = None
    """Device kind the run will use: cpu, cuda, cuda:N or mps (default cuda; nothing is checked here)."""
    stream: bool = False
    """Also predict `crosslens train --stream` end to end on one GPU per rank, from the shares of the --gpu's peak
    that the snapshot models' forward and each architecture's step sustained there (the A100's: an H100's), at a
    trained crosscoder's sparsity and, where it is slower, a fresh one's."""
    gpu: str = "h100"
    """GPU (h100, h200 or a100) the --stream prediction and, on cuda, the fewest fitting --micro-batches are for."""


COMMAND = Subcommand(
    ("plan",),
    "memory, disk, FLOPs, communication and time of a crosscoder run, before running it",
    (PlanFlags, SuiteFlags, TokenBudgetFlags, DeviceFlags),
    "crosslens.commands.plan:plan",
    description="Size a crosscoder run offline: per-rank parameter, optimizer and activation memory, "
    "resident snapshot models, store disk, FLOPs per token, communication per step, wall time. "
    "The flags harvest and train share with it mean what they mean there, with their defaults.",
)
