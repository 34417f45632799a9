"""Flags several subcommands share, declared once: the device and dtype, and which snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field

from crosslens.commands.flags import int_list


@dataclass
class DeviceFlags:
    """Where a command computes."""

    device: str | None = None
    """cpu, cuda, cuda:N or mps (default: cuda if available, else mps, else cpu)."""
    dtype: str | None = None
    """dtype of the snapshot models: float32/fp32 (default), bfloat16/bf16, float16/fp16; crosscoder
    parameters stay float32."""


@dataclass
class SuiteFlags:
    """Which suite, and which of its snapshots."""

    suite: str | None = None
    """'pico' (the embedded suite, built if missing), a local folder of checkpoints, or a hub model id:
    EleutherAI/pythia-*, allenai/OLMo-*-hf, allenai/OLMo-2-*, allenai/Olmo-3-*, bigscience/bloom-*-intermediate;
    for OLMo-2/3 add @ingredientK to pick one stage-2 ingredient (default: pico)."""
    steps: list[int] | None = field(default=None, metadata={"parse": int_list})
    """Comma-separated training steps to use (default: all, or --n-snapshots spaced)."""
    n_snapshots: int | None = field(default=None, metadata={"min": 1})
    """Pick this many snapshots, dense early and sparse late (log spacing)."""
