"""``crosslens plan``: memory, disk, FLOPs, communication and time of a run, before running it."""

from __future__ import annotations

from dataclasses import dataclass, field

from crosslens.architectures import ARCHITECTURE_NAMES
from crosslens.commands.flags import int_list
from crosslens.cli.spec import Subcommand
from crosslens.training.config import AUTOCAST_CHOICES


@dataclass
class PlanFlags:
    recipe: str | None = None
    """A shipped recipe: its values take the place of the defaults below, and other flags override them."""
    list_recipes: bool = False
    """List the shipped recipes and exit."""
    list_models: bool = False
    """List the models whose sizes crosslens knows."""
    suite: str | None = None
    """'pico', a local suite folder or a hub model id."""
    steps: list[int] | None = field(default=None, metadata={"parse": int_list})
    """Comma-separated steps (their count is the snapshot count)."""
    n_snapshots: int | None = None
    """Snapshots the crosscoder reads (default: every one the suite lists, as harvest takes them; a suite only
    the hub lists needs this or --steps)."""
    hook: str | None = None
    """Hook the crosscoder reads."""
    n_tokens: int | None = None
    """Training tokens (default 1e8)."""
    d_sae: int | None = None
    """Shared features (default 16384)."""
    arch: str | None = field(default=None, metadata={"choices": ARCHITECTURE_NAMES})
    """Crosscoder architecture (default jumprelu_crosscoder)."""
    k: int | None = None
    """k of (batch)top-k (default 32)."""
    batch_size: int | None = None
    """Global tokens per step (default 4096)."""
    context: int | None = None
    """Tokens per sequence of the snapshot models (default 2048)."""
    world_size: int | None = None
    """Ranks (default 1)."""
    mesh: str | None = None
    """DATAxSNAPSHOT mesh, e.g. 2x4 (default: of the meshes whose data axis divides --batch-size, the one with
    the largest snapshot axis, preferring one that divides the snapshot count)."""
    tflops: float | None = None
    """Sustained TFLOP/s per rank (default: cuda 100, mps 5, cpu 0.5)."""
    link_gbps: float | None = None
    """All-reduce bandwidth per rank, GB/s (default: cuda 50, mps 10, cpu 1)."""
    json: bool = False
    """Print the plan as JSON."""
    device: str | None = None
    """Device kind the run will use: cpu, cuda, cuda:N or mps (default cuda; nothing is checked here)."""
    dtype: str | None = None
    """dtype of resident snapshot models (default float32)."""
    stream: bool = False
    """Also predict `crosslens train --stream` end to end on one GPU per rank, from the shares of the --gpu's peak
    that the snapshot models' forward and each architecture's step sustained on an H100."""
    micro_batches: int | None = field(default=None, metadata={"min": 1})
    """Micro-batches each rank's batch is trained in, as train --micro-batches (default 1): the activations
    counted are one micro-batch's."""
    gpu: str = "h100"
    """GPU (h100, h200 or a100) the --stream prediction and, on cuda, the fewest fitting --micro-batches are for."""
    autocast: str = field(default="auto", metadata={"choices": AUTOCAST_CHOICES})
    """Precision of the crosscoder step, as train --autocast ("auto": bfloat16 on cuda); bfloat16 adds its weight
    copies to the memory."""


COMMAND = Subcommand(
    ("plan",),
    "memory, disk, FLOPs, communication and time of a crosscoder run, before running it",
    (PlanFlags,),
    "crosslens.commands.plan:plan",
    description="Size a crosscoder run offline: per-rank parameter, optimizer and activation memory, "
    "resident snapshot models, store disk, FLOPs per token, communication per step, wall time.",
)
