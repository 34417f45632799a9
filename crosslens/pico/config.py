"""What determines a pico suite: :class:`PicoConfig`, its checkpoint schedule, and where a
config's suite lives and whether it is built there.

Nothing here imports torch, so ``crosslens suite build --help`` shows these defaults, and a plan
sizes the suite, without loading the trainer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from crosslens.checkpoints.local import SUITE_FILE
from crosslens.core.bounds import check_bounds
from crosslens.core.paths import crosslens_home

FORMAT_VERSION = 1
"""Bump when the grammar, tokenizer or training code changes what a config builds (old caches go stale)."""

MODEL_ID = "crosslens/pico"
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
STATE_DIR = "_build"
"""Sub-folder of a suite's root holding an unfinished build's state (``state.pt``)."""


def pythia_like_schedule(n_steps: int, log_until: int, every: int) -> tuple[int, ...]:
    """Checkpoint steps: 0, then powers of two up to ``log_until``, then every ``every`` steps, then ``n_steps``.

    Pythia's own schedule has the same shape (0, 1, 2, 4, ..., 512, then every 1000).
    """
    steps = {0, n_steps}
    power = 1
    while power <= min(log_until, n_steps):
        steps.add(power)
        power *= 2
    steps.update(step for step in range(every, n_steps, every) if step > log_until)
    return tuple(sorted(steps))


@dataclass(frozen=True)
class PicoConfig:
    """Everything that determines a pico suite (the build is deterministic given this). A field's
    ``min`` is checked here and by the ``crosslens suite build`` flag that sets it."""

    seed: int = 0
    """Seeds the weights' initialisation and every text sample."""
    corpus: tuple[str, ...] | str | None = None
    """None: crosslens's grammar. A list of local text files (their bytes enter the config hash), or
    "dataset:NAME:COLUMN" (only the name does: pass force=True after changing the dataset)."""
    n_layers: int = field(default=2, metadata={"min": 1})
    """Transformer blocks."""
    d_model: int = field(default=128, metadata={"min": 1})
    """Residual stream width."""
    n_heads: int = field(default=4, metadata={"min": 1})
    """Attention heads per block."""
    d_mlp: int = field(default=512, metadata={"min": 1})
    """MLP hidden width."""
    rotary_pct: float = 0.25
    """Fraction of each head's dimensions that get rotary position embeddings (Pythia: 0.25)."""
    seq_len: int = field(default=64, metadata={"min": 8})
    """Tokens per training row, BOS included (at least a sentence)."""
    batch_size: int = field(default=32, metadata={"min": 1})
    """Rows per optimizer step."""
    n_steps: int = field(default=640, metadata={"min": 1})
    """Optimizer steps."""
    lr: float = 1e-2
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 32
    """Linear warm-up from 0 to ``lr``; then cosine decay to ``lr * min_lr_ratio``."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak (Pythia: 0.1)."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices (not on biases or layer norms)."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    log_checkpoints_until: int = field(default=64, metadata={"min": 1})
    """Checkpoints at 0, 1, 2, 4, ... up to this step ..."""
    checkpoint_every: int = field(default=48, metadata={"min": 1})
    """... then every this many steps, and at the last step."""
    n_eval_pairs: int = field(default=200, metadata={"min": 1})
    """Minimal pairs per task evaluated at every checkpoint."""
    n_eval_sequences: int = field(default=64, metadata={"min": 1})
    """Held-out rows of ``seq_len`` for the held-out loss."""
    bpe_vocab_size: int = field(default=4096, metadata={"min": 300})
    """Vocabulary of the BPE tokenizer trained on a user corpus (the grammar uses one token per word);
    at least the 256 byte tokens plus some merges."""
    eval_pairs: str | None = None
    """A file of minimal pairs (BLiMP or crosslens JSONL, or CLAMS text) scored at every checkpoint
    besides the built-in tasks; multi-token continuations are scored by summed log-probability.
    Its bytes enter the config hash."""

    def __post_init__(self) -> None:
        if isinstance(self.corpus, list):
            object.__setattr__(self, "corpus", tuple(str(path) for path in self.corpus))
        if isinstance(self.corpus, tuple) and not self.corpus:
            raise ValueError("PicoConfig.corpus is an empty list; pass None for the grammar or some text files")
        check_bounds(self, "PicoConfig.")
        if self.d_model % self.n_heads:
            raise ValueError(f"PicoConfig.d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if not 0 < self.rotary_pct <= 1:
            raise ValueError(f"PicoConfig.rotary_pct={self.rotary_pct} must be in (0, 1]")
        if not self.lr > 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("PicoConfig needs lr > 0, warmup_steps >= 0 and 0 <= min_lr_ratio <= 1")
        if len(self.checkpoint_steps) < 16:
            raise ValueError(
                f"PicoConfig gives only {len(self.checkpoint_steps)} checkpoints ({self.checkpoint_steps}); "
                "a suite needs >= 16: raise n_steps or lower checkpoint_every"
            )

    @property
    def checkpoint_steps(self) -> tuple[int, ...]:
        """The steps saved as snapshots (log-spaced early, then linear)."""
        return pythia_like_schedule(self.n_steps, self.log_checkpoints_until, self.checkpoint_every)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def model_context(self) -> int:
        """The most tokens a pico model reads (its ``max_position_embeddings``, TransformerLens's ``n_ctx``)."""
        return max(2048, self.seq_len)

    @classmethod
    def small(cls, **overrides) -> "PicoConfig":
        """A smaller, faster configuration (tests; benchmarks/README.md, "The demo", times it).

        It learns simple agreement, goes through the nearest-noun phase, and is most of the
        way out of it by its last step.
        """
        settings = dict(
            d_model=64,
            d_mlp=256,
            batch_size=16,
            n_steps=480,
            warmup_steps=24,
            log_checkpoints_until=32,
            checkpoint_every=32,
            n_eval_pairs=64,
            n_eval_sequences=8,
        )
        return cls(**{**settings, **overrides})

    @classmethod
    def long(cls, **overrides) -> "PicoConfig":
        """2.4x the default's training, for a later phase to form in. Indirect-object
        identification stays at chance through it at this grammar and schedule
        (benchmarks/README.md, "The demo").
        """
        settings = dict(n_steps=1536, log_checkpoints_until=128, checkpoint_every=96)
        return cls(**{**settings, **overrides})

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if isinstance(self.corpus, tuple):
            out["corpus"] = list(self.corpus)
        if out["eval_pairs"] is None:  # absent, so configs from before the field keep their hash
            del out["eval_pairs"]
        return out

    def config_hash(self) -> str:
        """A short content hash of the config, the format version and any corpus files' bytes."""
        digest = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, **self.to_dict()}, sort_keys=True).encode())
        if isinstance(self.corpus, tuple):
            for path in self.corpus:
                if Path(path).is_file():
                    digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
        if self.corpus is not None:  # user corpora: documents split and held out by crosslens.pico.corpus v2
            digest.update(b"user-corpus-v2")
        if self.eval_pairs is not None and Path(self.eval_pairs).is_file():
            digest.update(hashlib.sha256(Path(self.eval_pairs).read_bytes()).digest())
        return digest.hexdigest()[:12]


def default_root(config: PicoConfig) -> Path:
    """Where a config's suite lives by default: ``$CROSSLENS_HOME/suites/pico-<config hash>``."""
    return crosslens_home() / "suites" / f"pico-{config.config_hash()}"


def pico_manifest(root: str | Path) -> dict | None:
    """``root``'s suite.json when a pico build wrote it (its ``model_id`` and a ``build`` record
    with the config hash), else None: a suite.json of any other local suite is not ours to
    rebuild or delete."""
    try:
        manifest = json.loads((Path(root) / SUITE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("model_id") != MODEL_ID:
        return None
    build = manifest.get("build")
    if not isinstance(build, dict) or not isinstance(build.get("config_hash"), str):
        return None
    return manifest


def foreign_folder(root: str | Path) -> bool:
    """Whether ``root`` is a non-empty folder holding neither a pico suite nor an interrupted pico
    build: a build writes nothing there and, even when forced, deletes nothing."""
    root = Path(root)
    if not root.is_dir() or not any(root.iterdir()):
        return False
    # a build's state folder, even one stopped before its first state landed, marks a build of ours
    return pico_manifest(root) is None and not (root / STATE_DIR).is_dir()


def is_built(root: str | Path, config: PicoConfig | None = None) -> bool:
    """Whether ``root`` holds a complete pico suite (built from ``config``, when given)."""
    root = Path(root)
    manifest = pico_manifest(root)
    if manifest is None:
        return False
    if config is not None and manifest["build"]["config_hash"] != config.config_hash():
        return False
    return all(
        (root / snapshot["revision"] / name).is_file()
        for snapshot in manifest["snapshots"]
        for name in CHECKPOINT_FILES
    )
