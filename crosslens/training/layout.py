"""Where a training run keeps its checkpoints, and how the newest resumable one is found.

``checkpoint_dir/step_00000100/`` holds a training checkpoint (``cfg.json``,
``sae_weights.safetensors`` and ``trainer_state.pt``); ``checkpoint_dir/final/`` the
inference crosscoder. Only a folder holding ``trainer_state.pt`` can be resumed from.
"""

from __future__ import annotations

from pathlib import Path

TRAINER_STATE_FILENAME = "trainer_state.pt"
CHECKPOINT_PREFIX = "step_"
FINAL_DIRNAME = "final"


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The resumable checkpoint with the highest step under ``checkpoint_dir``, if any."""
    root = Path(checkpoint_dir)
    found = [
        p
        for p in root.glob(f"{CHECKPOINT_PREFIX}*")
        if (p / TRAINER_STATE_FILENAME).exists() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return max(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]), default=None)
