"""Model and training loop of the pico suite (a tiny Pythia-architecture model); its
configuration is :mod:`crosslens.pico.config`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from jaxtyping import Int
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.progress import progress_bar
from crosslens.pico.config import PicoConfig


def make_model(config: PicoConfig, vocab_size: int) -> GPTNeoXForCausalLM:
    """A freshly initialised GPT-NeoX (Pythia's architecture: rotary, parallel residual, untied)."""
    hf_config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        intermediate_size=config.d_mlp,
        hidden_act="gelu",
        max_position_embeddings=config.model_context,
        rotary_pct=config.rotary_pct,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": config.rotary_pct},
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        initializer_range=0.02,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        architectures=["GPTNeoXForCausalLM"],
    )
    with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching the caller's RNG
        torch.manual_seed(config.seed)
        return GPTNeoXForCausalLM(hf_config)


def make_optimizer(config: PicoConfig, model: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW with Pythia's betas; no weight decay on biases and layer norms."""
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": matrices, "weight_decay": config.weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), eps=1e-8)


def learning_rate(config: PicoConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.n_steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def train(
    config: PicoConfig,
    model: GPTNeoXForCausalLM,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Int[torch.Tensor, "batch seq_len"]],
    on_checkpoint: Callable[[int], None],
    *,
    start_step: int = 0,
    progress: bool = True,
) -> None:
    """Run steps ``start_step .. n_steps``; ``on_checkpoint(step)`` sees the weights after ``step`` updates.

    ``on_checkpoint`` is called for every checkpoint step >= ``start_step`` (so a resumed
    run re-saves the checkpoint it resumed from only if it was never saved).
    """
    checkpoints = set(config.checkpoint_steps)
    bar = progress_bar(
        total=config.n_steps,
        initial=start_step,
        desc="pico: training",
        unit="step",
        show=progress,
        dynamic_ncols=True,
    )
    try:
        for step in range(start_step, config.n_steps + 1):
            if step in checkpoints:
                model.eval()
                on_checkpoint(step)
                model.train()
            if step == config.n_steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            ids_BL = batches(step)
            loss = model(input_ids=ids_BL, labels=ids_BL).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    finally:
        bar.close()
