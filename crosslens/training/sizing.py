"""What a crosscoder run will cost, before spending anything (``crosslens plan`` prints it).

For a suite (model sizes), a hook, a token budget, a step count, ``d_sae``, an architecture and a
``data x snapshot`` device mesh, :func:`make_plan` computes, per rank:

- crosscoder parameters, gradients and Adam state. ``W_enc [S, D, F]``, ``W_dec [F, S, D]``
  and ``b_dec [S, D]`` are sharded over the snapshot axis (a rank holds ``S_r`` snapshots);
  ``b_enc [F]`` and the JumpReLU ``threshold [F]`` are replicated. All float32.
- activation memory of one training step in ``micro_batches`` (estimate, :func:`~crosslens.training.memory.activation_bytes`; on cuda the fewest that fit);
- the resident snapshot models a streaming rank keeps (its ``S_r`` models), whole and
  truncated after the hooked block;
- disk for an activation store in each dtype: ``tokens x S x d_in x bytes``;
- FLOPs per token: the crosscoder's training step (``10 SDF``, see :func:`crosscoder_flops`) and the snapshot models'
  forward passes up to the hook (harvest or streaming);
- communication per step (ring all-reduce): on the snapshot axis the ``[B_local, F]``
  float32 pre-activation, summed in the forward pass and its gradient in the backward
  pass, plus ``[F]`` terms; on the data axis the gradient of the rank's parameter shard;
- wall time at a stated sustained throughput (``tflops``).

Nothing here loads a model or imports torch: sizes come from
:mod:`crosslens.training.model_sizes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from crosslens.activations.budget import TokenBudget, chunk_buffer_bytes, chunk_tokens_for
from crosslens.architectures import ARCHITECTURE_NAMES, uses_k
from crosslens.checkpoints.shape import ModelShape
from crosslens.core.devices import DTYPE_BYTES, GPUS, DeviceError, device_spelling
from crosslens.core.hooks import block_index, hook_problem, hook_width
from crosslens.training.config import (
    AUTOCAST_CHOICES,
    ArchitectureConfig,
    CrosscoderRunnerConfig,
    checkpoint_interval,
    checkpoints_on_disk,
    micro_batch_error,
    resolved_autocast,
)
from crosslens.training.memory import F32, checkpoint_bytes, parameter_counts, training_memory
from crosslens.training.model_sizes import PlanError, known_model, model_shape_for

DEFAULT_TFLOPS = {"cpu": 0.5, "mps": 5.0, "cuda": 100.0}
"""Assumed *sustained* float32/TF32 throughput per rank, TFLOP/s, when ``--tflops`` is not
given. cuda: 100 (an A100's TF32 peak is 156 and an H100 SXM's about 495 dense; large
crosscoder matmuls sustain a fraction of that); mps: 5 (Apple M-series GPU); cpu: 0.5
(a multi-core server CPU). State your own with ``--tflops``."""


DEFAULT_LINK_GBPS = {"cpu": 1.0, "mps": 10.0, "cuda": 50.0}
"""Assumed all-reduce bandwidth per rank, GB/s, when ``--link-gbps`` is not given. cuda: 50
(400 Gb/s InfiniBand between nodes; NVLink inside one node is several times faster);
cpu: 1 (gloo over a 10 Gb/s network or shared memory); mps: 10."""


@dataclass
class PlanConfig:
    """What to plan: model, snapshots, hook, data, crosscoder, mesh, device. The defaults of the
    settings ``harvest`` and ``train`` share are theirs (:class:`~crosslens.activations.budget.TokenBudget`,
    :class:`~crosslens.training.config.CrosscoderRunnerConfig`), so a plan of a command's flags
    sizes the run that command makes."""

    model: ModelShape
    """Sizes of the snapshots' model."""
    n_snapshots: int
    """S: snapshots the crosscoder reads."""
    hook: str
    """Hook the crosscoder reads."""
    n_tokens: int = TokenBudget.n_tokens
    """Tokens harvested, each at every snapshot: an activation store's (its disk, harvest's
    forwards), or the token table ``train --stream`` cycles through."""
    d_sae: int = ArchitectureConfig.d_sae
    """F: shared features."""
    architecture: str = ArchitectureConfig.architecture
    """Crosscoder architecture."""
    batch_size: int = CrosscoderRunnerConfig.train_batch_size_tokens
    """Global tokens per optimizer step (split over the data axis)."""
    n_steps: int = CrosscoderRunnerConfig.n_steps
    """Optimizer steps: ``n_steps * batch_size`` training tokens, which may revisit the harvested ones."""
    checkpoint_every: int | None = CrosscoderRunnerConfig.checkpoint_every
    """Steps between the run's checkpoints (0: none; None: train's default cadence)."""
    keep_checkpoints: int = CrosscoderRunnerConfig.keep_checkpoints
    """Newest checkpoints the run keeps (0: every one)."""
    k: int = ArchitectureConfig.k
    """Active features per token of (batch)top-k crosscoders."""
    data_parallel: int = 1
    """Size of the mesh's data axis."""
    snapshot_parallel: int = CrosscoderRunnerConfig.snapshot_parallel
    """Size of the mesh's snapshot axis."""
    device: str = "cuda"
    """Device kind of every rank (cpu, cuda, mps): picks the default throughput."""
    tflops: float | None = None
    """Sustained TFLOP/s per rank; None: ``DEFAULT_TFLOPS[device kind]``."""
    link_gbps: float | None = None
    """All-reduce bandwidth per rank in GB/s; None: ``DEFAULT_LINK_GBPS[device kind]``."""
    model_dtype: str = "float32"
    """dtype of resident snapshot models (streaming)."""
    seq_len: int = TokenBudget.seq_len
    """Tokens per sequence the snapshot models run on (attention FLOPs)."""
    heldout_tokens: int | None = TokenBudget.heldout_tokens
    """Tokens harvested beside ``n_tokens`` and kept out of training; None: the
    :class:`~crosslens.activations.budget.TokenBudget` default share."""
    name: str = ""
    """Label of the plan (a recipe name, or the suite)."""
    micro_batches: int = CrosscoderRunnerConfig.micro_batches
    """Micro-batches each rank's batch is trained in (``train --micro-batches``)."""
    gpu: str = "h100"
    """GPU (:data:`~crosslens.core.devices.GPUS`) the fewest fitting micro-batches are counted for, on cuda."""
    autocast: str = CrosscoderRunnerConfig.autocast_dtype
    """Precision of the crosscoder step, as ``train --autocast``: "auto" is bfloat16 on cuda."""

    @property
    def autocast_on(self) -> bool:
        """Whether the step runs under bfloat16 autocast (its weight copies count in memory)."""
        return resolved_autocast(self.autocast, self.device.split(":")[0]) == "bfloat16"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURE_NAMES:
            raise PlanError(f"unknown architecture {self.architecture!r}; choose one of {ARCHITECTURE_NAMES} (--arch)")
        for flag, value, least in (
            ("--n-snapshots", self.n_snapshots, 1),
            ("--n-tokens", self.n_tokens, 1),
            ("--d-sae", self.d_sae, 1),
            ("--batch-size", self.batch_size, 1),
            ("--n-steps", self.n_steps, 1),
            ("--seq-len", self.seq_len, 2),
            ("--heldout-tokens", self.heldout_tokens, 0),
            ("--k", self.k, 1),
        ):
            if value is not None and value < least:
                raise PlanError(f"{flag} must be >= {least}, got {value}")
        if uses_k(self.architecture) and self.k > self.d_sae:
            raise PlanError(f"--k must be at most --d-sae ({self.d_sae}) for a top-k crosscoder, got {self.k}")
        if self.data_parallel < 1 or self.snapshot_parallel < 1:
            raise PlanError("mesh axes must be >= 1 (--mesh DATAxSNAPSHOT)")
        if self.snapshot_parallel > self.n_snapshots:
            raise PlanError(
                f"the snapshot axis ({self.snapshot_parallel}) exceeds the {self.n_snapshots} snapshots; "
                "put the extra ranks on the data axis (--mesh DATAxSNAPSHOT)"
            )
        if self.data_parallel > self.batch_size:
            raise PlanError(f"the data axis ({self.data_parallel}) exceeds --batch-size {self.batch_size}")
        if self.batch_size % self.data_parallel:  # train gives every data rank an equal slice of each batch
            raise PlanError(
                uneven_batch_error(self.data_parallel, self.snapshot_parallel, self.n_snapshots, self.batch_size)
            )
        if self.micro_batches < 1 or (self.batch_size // self.data_parallel) % self.micro_batches:
            raise PlanError(micro_batch_error(self.batch_size // self.data_parallel, self.micro_batches))
        if self.autocast not in AUTOCAST_CHOICES:
            raise PlanError(f"--autocast must be one of {AUTOCAST_CHOICES}, got {self.autocast!r}")
        if self.gpu not in GPUS:
            raise PlanError(f"no memory figure for GPU {self.gpu!r}; choose one of {sorted(GPUS)} (--gpu)")
        problem = hook_problem(self.hook, None)  # harvest's check; the block range is checked below, naming the model
        if problem:
            raise PlanError(f"--hook {problem}")
        layer = block_index(self.hook)
        if layer is not None and layer >= self.model.n_layers:
            raise PlanError(
                f"--hook {self.hook} names block {layer}, but {self.model.name} has {self.model.n_layers} (0..{self.model.n_layers - 1})"
            )
        if self.model.n_ctx is not None and self.seq_len > self.model.n_ctx:
            raise PlanError(
                f"--seq-len {self.seq_len} is longer than {self.model.name}'s context of {self.model.n_ctx} tokens; "
                f"pass --seq-len {self.model.n_ctx} or less"
            )
        if self.model_dtype not in DTYPE_BYTES:
            raise PlanError(f"model dtype must be one of {sorted(DTYPE_BYTES)} (--dtype)")
        try:
            self.device = device_spelling(self.device)
        except DeviceError as error:
            raise PlanError(str(error)) from None
        if self.tflops is not None and not self.tflops > 0:
            raise PlanError(f"--tflops must be > 0, got {self.tflops}")
        if self.link_gbps is not None and not self.link_gbps > 0:
            raise PlanError(f"--link-gbps must be > 0, got {self.link_gbps}")

    @property
    def world_size(self) -> int:
        return self.data_parallel * self.snapshot_parallel

    @property
    def budget(self) -> TokenBudget:
        """The token table harvest builds: whole rows, for training and held out."""
        return TokenBudget(self.n_tokens, self.seq_len, self.heldout_tokens)

    @property
    def training_tokens(self) -> int:
        """Tokens the crosscoder trains on (SAELens's ``training_tokens``): ``n_steps * batch_size``."""
        return self.n_steps * self.batch_size


def default_mesh(world_size: int, n_snapshots: int, batch_size: int | None = None) -> tuple[int, int]:
    """``(data, snapshot)`` for ``world_size`` ranks: the largest snapshot axis (memory shrinks
    with it) that divides both the world size and the snapshot count, the rest data. With
    ``batch_size``, a mesh whose data axis divides the batch comes first (train refuses the
    others), even if its snapshot axis splits the snapshots unevenly (train accepts that)."""

    def preference(s: int) -> tuple[bool, bool, int]:
        fits_batch = batch_size is None or batch_size % (world_size // s) == 0
        return fits_batch, n_snapshots % s == 0, s

    axes = [s for s in range(1, min(world_size, n_snapshots) + 1) if world_size % s == 0]
    best = max(axes, key=preference)
    return world_size // best, best


def uneven_batch_error(data: int, snapshot: int, n_snapshots: int, batch_size: int) -> str:
    """Why a ``data x snapshot`` mesh cannot split ``batch_size``, and the meshes or batch sizes that can."""
    world = data * snapshot
    fits = [d for d in range(world, 0, -1) if world % d == 0 and batch_size % d == 0 and world // d <= n_snapshots]
    fixes = [f"--mesh {fits[0]}x{world // fits[0]} (the same {world} ranks)"] if fits else []
    lower = batch_size // data * data
    fixes += [f"--batch-size {lower}" if lower else f"--batch-size {data}"]
    return (
        f"--mesh {data}x{snapshot}: train splits each batch evenly over the data axis, and {batch_size} tokens "
        f"(--batch-size) do not split over {data} data ranks; use a data axis that divides the batch, e.g. "
        + " or ".join(fixes)
    )


SHARDED = ("W_enc", "W_dec", "b_dec")


def crosscoder_flops(S: int, D: int, F: int, *, k: int | None = None) -> int:
    """Training FLOPs per token of a crosscoder step (multiply-adds count 2).

    Dense: forward ``2SDF`` (encode) + ``2SDF`` (decode); backward ``2SDF`` for dW_enc,
    ``2SDF`` for dW_dec and ``2SDF`` for the code's gradient, none for the input: ``10 SDF``.
    With ``k`` (a top-k code decoded from its active pairs): ``4 SDF + 6 k S D``, the work
    a TopK step does where ``sparse_decode`` holds. Times in the plan count the dense figure
    at a measured share of the peak (``GPUS``), so the sparse path's saving shows in that share.
    """
    if k is None:
        return 10 * S * D * F
    return 4 * S * D * F + 6 * k * S * D


def ring_allreduce_bytes(payload: int, n: int) -> int:
    """Bytes each rank sends in a ring all-reduce of ``payload`` bytes over ``n`` ranks."""
    return 0 if n <= 1 else int(2 * (n - 1) * payload / n)


def make_plan(cfg: PlanConfig) -> dict[str, Any]:
    """Every figure of the plan, as a JSON-able dict (bytes, FLOPs, seconds)."""
    m = cfg.model
    S, F = cfg.n_snapshots, cfg.d_sae
    D = hook_width(cfg.hook, m.d_model, m.d_mlp)
    Pd, Ps = cfg.data_parallel, cfg.snapshot_parallel
    S_r = math.ceil(S / Ps)
    B_r = math.ceil(cfg.batch_size / Pd)
    layer = block_index(cfg.hook)
    layers_run = m.n_layers if layer is None else layer + 1

    counts = parameter_counts(S_r, D, F, cfg.architecture)
    whole = sum(parameter_counts(S, D, F, cfg.architecture).values())
    n_params_rank = sum(counts.values())
    param_bytes = n_params_rank * F32
    flops = _flop_counts(cfg, S, D, layers_run)
    comm = _communication_bytes(cfg, param_bytes, B_r, cfg.n_steps)
    return {
        "name": cfg.name or m.name,
        "inputs": _plan_inputs(cfg, D),
        "mesh": {
            "data": Pd,
            "snapshot": Ps,
            "world_size": cfg.world_size,
            "snapshots_per_rank": S_r,
            "batch_per_rank": B_r,
        },
        "parameters": {
            "per_rank": counts,
            "per_rank_total": n_params_rank,
            "whole_crosscoder": whole,
            "sharded_over_snapshot_axis": list(SHARDED),
            "replicated": [k for k in counts if k not in SHARDED],
        },
        "memory_bytes": _memory_bytes(cfg, param_bytes, S_r, B_r, D, layer),
        "disk_bytes": _disk_bytes(cfg, D),
        "checkpoints": _checkpoint_figures(cfg, whole),
        "flops": flops,
        "communication_bytes": comm,
        "seconds": _seconds(cfg, flops, comm, S_r),
    }


def _rates(cfg: PlanConfig) -> tuple[float, float]:
    """The device's TFLOP/s and the link's GB/s: the configured ones, else the device kind's defaults."""
    kind = cfg.device.split(":")[0]
    tflops = cfg.tflops if cfg.tflops is not None else DEFAULT_TFLOPS[kind]
    link_gbps = cfg.link_gbps if cfg.link_gbps is not None else DEFAULT_LINK_GBPS[kind]
    return tflops, link_gbps


def _plan_inputs(cfg: PlanConfig, D: int) -> dict[str, Any]:
    """What the plan was computed from: the model, the run's settings and the rates assumed."""
    m = cfg.model
    budget = cfg.budget
    harvested, heldout = budget.table_tokens, budget.heldout_table_tokens
    S, F = cfg.n_snapshots, cfg.d_sae
    tflops, link_gbps = _rates(cfg)
    return {
        "model": m.name,
        "model_source": m.source,
        "d_model": m.d_model,
        "n_layers": m.n_layers,
        "vocab": m.vocab,
        "n_params": m.n_params,
        "hook": cfg.hook,
        "d_in": D,
        "n_snapshots": S,
        "n_tokens": cfg.n_tokens,
        "d_sae": F,
        "architecture": cfg.architecture,
        "k": cfg.k,
        "batch_size": cfg.batch_size,
        "n_steps": cfg.n_steps,
        "training_tokens": cfg.training_tokens,
        "seq_len": cfg.seq_len,
        "harvested_tokens": harvested,
        "heldout_tokens": heldout,
        "model_dtype": cfg.model_dtype,
        "device": cfg.device,
        "tflops": tflops,
        "autocast": "bfloat16" if cfg.autocast_on else "none",
        "tflops_assumed": cfg.tflops is None,
        "link_gbps": link_gbps,
        "link_gbps_assumed": cfg.link_gbps is None,
    }


def _disk_bytes(cfg: PlanConfig, D: int) -> dict[str, int]:
    """The store and its held-out split on disk, in each dtype, and one snapshot's in float16."""
    tokens = cfg.budget.table_tokens + cfg.budget.heldout_table_tokens
    disk = {name: tokens * cfg.n_snapshots * D * nbytes for name, nbytes in DTYPE_BYTES.items()}
    disk["per_snapshot_float16"] = tokens * D * 2
    return disk


def _checkpoint_figures(cfg: PlanConfig, whole: int) -> dict[str, Any]:
    """How often the run checkpoints, how many it keeps, and each one's bytes: the float32
    weights and Adam's two moments (float32, or bfloat16 ones) of the ``whole`` crosscoder."""
    every = checkpoint_interval(cfg.n_steps, cfg.checkpoint_every)
    count = cfg.n_steps // every if every else 0
    kept, at_once = checkpoints_on_disk(count, cfg.keep_checkpoints)
    return {
        "every": every,
        "count": count,
        "kept": kept,
        "at_once": at_once,
        "bytes_each": {option: checkpoint_bytes(whole, option) for option in ("float32", "bfloat16")},
    }


def _seconds(cfg: PlanConfig, flops: dict[str, int], comm: dict[str, int], S_r: int) -> dict[str, float]:
    """Seconds of training (from the store, or streaming), harvest and communication."""
    tflops, link_gbps = _rates(cfg)
    S = cfg.n_snapshots
    share = (1 / cfg.data_parallel) * (S_r / S)  # of the work, for the rank with the most snapshots
    rate = tflops * 1e12
    seconds = {
        "train_from_store": flops["crosscoder_train_total"] * share / rate,
        "harvest": flops["snapshot_models_forward_harvest"] / cfg.world_size / rate,
    }
    # every rank of the data axis harvests the whole chunk its snapshots give, and trains on its rows of it
    forward_share = S_r / S
    seconds["train_streaming"] = (
        seconds["train_from_store"] + flops["snapshot_models_forward_streaming"] * forward_share / rate
    )
    seconds["communication"] = comm["sent_per_rank_total"] / (link_gbps * 1e9)
    return seconds


def _memory_bytes(cfg: PlanConfig, param_bytes: int, S_r: int, B_r: int, D: int, layer: int | None) -> dict[str, Any]:
    """Memory of one rank: training state, a batch's activations, resident snapshot models."""
    m = cfg.model
    gpu = cfg.gpu if cfg.device.split(":")[0] == "cuda" else None
    memory = training_memory(S_r, D, cfg.d_sae, B_r, cfg.architecture, cfg.micro_batches, gpu, cfg.autocast_on)
    truncated = m.params_through_layer(layer) if layer is not None else m.n_params
    memory["resident_models_full"] = S_r * m.n_params * DTYPE_BYTES[cfg.model_dtype]
    memory["resident_models_truncated"] = S_r * truncated * DTYPE_BYTES[cfg.model_dtype]
    memory["stream_chunks"] = chunk_buffer_bytes(chunk_tokens_for(cfg.seq_len), S_r, D, DTYPE_BYTES[cfg.model_dtype])
    memory["total_streaming"] = memory["total_training"] + memory["resident_models_truncated"] + memory["stream_chunks"]
    return memory


def _flop_counts(cfg: PlanConfig, S: int, D: int, layers_run: int) -> dict[str, int]:
    """FLOPs of the crosscoder's training and of the snapshot models' forward passes."""
    m, F, budget = cfg.model, cfg.d_sae, cfg.budget
    cc_flops = crosscoder_flops(S, D, F)
    cc_flops_sparse_decode = crosscoder_flops(S, D, F, k=cfg.k)
    nonembed_run = layers_run * m.params_per_layer
    model_flops = S * (2 * nonembed_run + 2 * layers_run * cfg.seq_len * m.d_model)
    flops = {
        "crosscoder_train_per_token": cc_flops,
        "snapshot_models_forward_per_token": int(model_flops),
        "crosscoder_train_total": cc_flops * cfg.training_tokens,
        # a store is harvested once with its held-out rows; a stream harvests every batch it trains
        # on, again each epoch, and then (counted whole: an upper bound) the held-out rows it reports on
        "snapshot_models_forward_harvest": int(model_flops * (budget.table_tokens + budget.heldout_table_tokens)),
        "snapshot_models_forward_streaming": int(model_flops * (cfg.training_tokens + budget.heldout_table_tokens)),
    }
    if uses_k(cfg.architecture):
        flops["crosscoder_train_per_token_sparse_decode"] = cc_flops_sparse_decode
    return flops


def _communication_bytes(cfg: PlanConfig, param_bytes: int, B_r: int, n_steps: int) -> dict[str, int]:
    """Communication per step, per rank, on the snapshot and data axes of the mesh."""
    F, Pd, Ps = cfg.d_sae, cfg.data_parallel, cfg.snapshot_parallel
    preact = B_r * F * F32
    small = F * F32 * (3 if cfg.architecture == "jumprelu_crosscoder" else 2)
    snapshot_payload = 2 * preact + small if Ps > 1 else 0
    grad_payload = param_bytes if Pd > 1 else 0
    comm = {
        "snapshot_axis_payload": snapshot_payload,
        "snapshot_axis_sent_per_rank": ring_allreduce_bytes(2 * preact + small, Ps),
        "data_axis_payload": grad_payload,
        "data_axis_sent_per_rank": ring_allreduce_bytes(param_bytes, Pd),
    }
    comm["sent_per_rank_per_step"] = comm["snapshot_axis_sent_per_rank"] + comm["data_axis_sent_per_rank"]
    comm["sent_per_rank_total"] = comm["sent_per_rank_per_step"] * n_steps
    return comm


def stream_prediction(plan: dict[str, Any], gpu: str = PlanConfig.gpu) -> dict[str, Any]:
    """``train --stream``'s time on one ``gpu`` per rank, from the FLOPs per token at the shares of
    :data:`~crosslens.core.devices.GPUS`: provider and trainer share the GPU, so their seconds per token add.
    ``hours`` times every step at a trained crosscoder's sparsity, ``fresh_hours`` at a fresh one's,
    which a run's first steps take: how many is not known before the run (its L0 curve says).

    The forward's share was measured with 16-bit snapshot models. Float32 models run their matmuls
    off the tensor cores, at no more than the GPU's float32 peak: for them the forward's rate is that
    bound (``forward_bound``), so the tokens/s are a ceiling and the hours a floor."""
    if gpu not in GPUS:
        raise PlanError(f"no utilisation figures for GPU {gpu!r}; choose one of {sorted(GPUS)} (--gpu)")
    if not plan["inputs"]["device"].startswith("cuda"):
        raise PlanError(f"the stream prediction is for a GPU: plan for device cuda, not {plan['inputs']['device']}")
    if plan["inputs"]["autocast"] != "bfloat16":
        raise PlanError(
            "the stream prediction times the crosscoder step under bfloat16 autocast, as measured for every "
            "architecture; drop --autocast none for it (benchmarks/gpu.py times the float32 step)"
        )
    device, flops, mesh = GPUS[gpu], plan["flops"], plan["mesh"]
    peak = device.peak_tflops * 1e12
    forward_bound = plan["inputs"]["model_dtype"] == "float32"
    forward_rate = device.float32_tflops * 1e12 if forward_bound else peak * device.forward
    crosscoder_share = device.crosscoder[plan["inputs"]["architecture"]]
    forward_share = mesh["snapshots_per_rank"] / plan["inputs"]["n_snapshots"]  # data ranks harvest alike
    share = forward_share / mesh["data"]
    fresh_share = device.fresh.get(plan["inputs"]["architecture"], crosscoder_share)

    def step_seconds(step_share: float) -> float:  # per token, at that share of the peak
        return flops["crosscoder_train_per_token"] * share / (peak * step_share)

    seconds_per_token = {
        "forward": flops["snapshot_models_forward_per_token"] * forward_share / forward_rate,
        "crosscoder": step_seconds(crosscoder_share),
    }
    tokens_per_second = 1 / sum(seconds_per_token.values())
    fresh_tokens_per_second = 1 / (seconds_per_token["forward"] + step_seconds(fresh_share))
    tokens = plan["inputs"]["training_tokens"]
    return {
        "gpu": gpu,
        "peak_tflops": device.peak_tflops,
        "measured_on": device.measured_on,
        "forward_fraction": forward_rate / peak,
        "forward_bound": forward_bound,
        "crosscoder_fraction": crosscoder_share,
        "tokens_per_second": tokens_per_second,
        **{f"{part}_tokens_per_second": 1 / seconds for part, seconds in seconds_per_token.items()},
        "hours": tokens / tokens_per_second / 3600,
        "fresh_crosscoder_fraction": fresh_share,
        "fresh_tokens_per_second": fresh_tokens_per_second,
        "fresh_hours": tokens / fresh_tokens_per_second / 3600,
    }


def plan_config_from_recipe(recipe: Any, **overrides: Any) -> PlanConfig:
    """A :class:`PlanConfig` for a :class:`~crosslens.training.recipes.Recipe`; ``overrides`` win
    (None values are ignored). Without ``n_steps`` the plan sees its token budget once at the
    batch size in force, as ``train --recipe`` does."""
    model = known_model(recipe.model) or model_shape_for(recipe.model)
    values: dict[str, Any] = dict(
        model=model,
        n_snapshots=recipe.n_snapshots,
        hook=recipe.hook,
        n_tokens=recipe.n_tokens,
        d_sae=recipe.d_sae,
        architecture=recipe.architecture,
        batch_size=recipe.batch_size,
        seq_len=recipe.context,
        name=recipe.name,
    )
    if recipe.k is not None:
        values["k"] = recipe.k
    values.update({k: v for k, v in overrides.items() if v is not None})
    values.setdefault("n_steps", recipe.steps_at(values["batch_size"], values["n_tokens"]))
    return PlanConfig(**values)
