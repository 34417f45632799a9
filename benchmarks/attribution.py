"""Benchmark: integrated gradients through a spliced crosscoder, batched vs looped.

Variants, all computing the same per-feature IE (differences are printed):

1. ``crosslens``: ``attribute_snapshot`` as shipped. The n path points are stacked along
   the batch axis (one forward/backward pass per batch of examples); the forward pass
   starts at the hook (``start_at_layer``); and because the activation at the hook is
   affine in (codes, error), the path runs in activation space and the gradient is pulled
   back through ``W_dec[:, s]`` once, so the cost hardly depends on d_sae.
2. ``crosslens, one pass per step``: the same route with ``steps_per_pass=1``: isolates
   the effect of batching the path points.
3. ``feature-space, batched``: path points batched, but every point's codes decoded
   (the textbook formulation): isolates the activation-space shortcut.
4. ``baseline loop``: the usual hand-written IG: n separate forward/backward passes per
   batch, each a full forward pass from the tokens with a hook that writes
   ``decode(f_k) + e_k`` into the hook point, gradients taken w.r.t. (f_k, e_k).

Prints wall time (best of interleaved repeats) and each variant's time relative to
``crosslens`` (goal: the baseline loop >= 3x slower at n = 10 on the pico suite).

    python benchmarks/attribution.py                   # the default pico suite (built if missing: minutes)
    python benchmarks/attribution.py --suite PATH      # any local suite (e.g. a small pico build)
    python benchmarks/attribution.py --random          # no suite: a random pico-shaped model

The crosscoder has random weights: timing does not depend on what it learned.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

import crosslens.crosscoders as crosscoders
from crosslens.causal import AttributionConfig, SnapshotCodec, integrated_gradients
from crosslens.causal.attribution import (
    attribute_snapshot,
    ig_endpoints,
    logit_diff,
)
from crosslens.causal.snapshot_models import collect_activations, run_from_hook
from crosslens.causal.splicing import exact_codes
from crosslens.tasks import get_task


def load_models(args: argparse.Namespace):
    """(a suite or a list of models in snapshot order, tokenizer, description)."""
    if args.random:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        from crosslens.pico.tokenizer import word_level_tokenizer
        from crosslens.tasks.grammar import PicoGrammar

        tokenizer = word_level_tokenizer(PicoGrammar().vocabulary())
        models = []
        for seed in range(args.n_snapshots):
            cfg = HookedTransformerConfig(
                n_layers=2,
                d_model=128,
                n_heads=4,
                d_head=32,
                d_mlp=512,
                n_ctx=64,
                d_vocab=len(tokenizer),
                act_fn="gelu",
                normalization_type="LN",
                positional_embedding_type="rotary",
                rotary_dim=8,
                seed=seed,
            )
            models.append(HookedTransformer(cfg).eval())
        return models, tokenizer, "random pico-shaped model (2 layers, d_model 128)"
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.pico import pico_suite

    suite = CheckpointSuite.local(args.suite) if args.suite else pico_suite()
    picked = suite.select(n=args.n_snapshots, spacing="log")
    return picked, picked.tokenizer(), f"{suite.model_id} ({len(picked)} of {len(suite)} snapshots)"


def random_crosscoder(models, acts_clean, task, args: argparse.Namespace):
    """A JumpReLU crosscoder with a unit-scale random code on normalised inputs (about half the
    features fire), its norm factors taken from the clean activations."""
    S, d_in, F = len(models), acts_clean.shape[-1], args.d_sae
    crosscoder = crosscoders.JumpReLUCrosscoder(crosscoders.JumpReLUCrosscoderConfig(d_in=d_in, d_sae=F, n_snapshots=S))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        crosscoder.W_enc.copy_(torch.randn(S, d_in, F, generator=generator) / (S * d_in) ** 0.5)
        crosscoder.W_dec.copy_(torch.randn(F, S, d_in, generator=generator) / F**0.5)
        crosscoder.threshold.fill_(0.0)
    mean_norms = acts_clean[task.feature_mask()].norm(dim=-1).mean(0)
    crosscoder.cfg.metadata.activation_norm_factors = (d_in**0.5 / mean_norms).tolist()
    crosscoder.cfg.metadata.hook_name = args.hook
    return crosscoder


def feature_space_ie(
    model, codec, task, inputs, args: argparse.Namespace, full_forward: bool, batched: bool
) -> torch.Tensor:
    """IG over (codes, error) with every path point decoded, reduced like attribute_snapshot."""
    positions_all = task.feature_mask()
    ie_sum = torch.zeros(args.d_sae, dtype=torch.float64)
    for start in range(0, len(task), args.batch_size):
        rows = slice(start, start + args.batch_size)
        part = task[rows]
        with torch.no_grad():
            f_clean, e_clean, f_patch, e_patch = ig_endpoints(
                codec,
                inputs["acts_clean"][rows],
                inputs["codes_clean"][rows],
                inputs["acts_patch"][rows],
                inputs["codes_patch"][rows],
                positions_all[rows],
            )
        batch, seq = part.clean_tokens.shape

        def metric_fn(f_K, e_K):
            k = f_K.shape[0]
            acts = (codec.decode(f_K) + e_K).reshape(k * batch, seq, -1)
            tokens, mask = part.clean_tokens.repeat(k, 1), part.mask.long().repeat(k, 1)
            if full_forward:
                with model.hooks(fwd_hooks=[(args.hook, lambda activation, hook: acts)]):
                    logits = model(tokens, attention_mask=mask)
            else:
                logits = run_from_hook(model, args.hook, acts, tokens, mask)
            last = logits[torch.arange(k * batch), part.last_pos.repeat(k)]
            return logit_diff(last, part.correct_ids.repeat(k), part.wrong_ids.repeat(k)).reshape(k, batch)

        result = integrated_gradients(
            metric_fn, f_clean, f_patch, e_clean, e_patch, n_steps=args.n_steps, batched=batched
        )
        n_positions = positions_all[rows].sum(1).clamp(min=1)
        ie_sum += (result.features.sum(1) / n_positions[:, None]).sum(0).double()
    return (ie_sum / len(task)).float()


def time_variants(variants: dict, repeats: int) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Each variant once to warm up, then interleaved repeats (so load from other processes hits
    all alike): the times and the last result of each."""
    for variant in variants.values():
        variant()
    times: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, torch.Tensor] = {}
    for _ in range(repeats):
        for name, variant in variants.items():
            start = time.perf_counter()
            results[name] = variant()
            times[name].append(time.perf_counter() - start)
    return times, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default=None, help="local suite folder (default: the pico suite)")
    parser.add_argument("--random", action="store_true", help="use a random pico-shaped model instead of a suite")
    parser.add_argument("--task", default="pico_agreement_pp")
    parser.add_argument("--n-examples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16, help="examples per pass")
    parser.add_argument("--n-steps", type=int, default=10)
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--n-snapshots", type=int, default=3)
    parser.add_argument("--hook", default="blocks.0.hook_resid_post")
    parser.add_argument("--repeats", type=int, default=5, help="best-of repeats per variant (interleaved)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    models, tokenizer, description = load_models(args)
    task = get_task(args.task, n=args.n_examples, seed=0).tokenize(tokenizer)
    snapshot = len(models) - 1
    model = models.load(snapshot) if hasattr(models, "load") else models[snapshot]
    acts_clean = collect_activations(models, args.hook, task.clean_tokens, task.mask.long())
    acts_patch = collect_activations(models, args.hook, task.corrupted_tokens, task.mask.long())
    crosscoder = random_crosscoder(models, acts_clean, task, args)
    inputs = {
        "acts_clean": acts_clean[:, :, snapshot],
        "acts_patch": acts_patch[:, :, snapshot],
        "codes_clean": exact_codes(crosscoder, acts_clean, snapshot),
        "codes_patch": exact_codes(crosscoder, acts_patch, snapshot),
    }
    codec = SnapshotCodec(crosscoder, snapshot)

    def crosslens_ie(steps_per_pass: int | None) -> torch.Tensor:
        config = AttributionConfig(n_steps=args.n_steps, batch_size=args.batch_size, steps_per_pass=steps_per_pass)
        return attribute_snapshot(
            model, crosscoder, task, snapshot=snapshot, hook=args.hook, config=config, **inputs
        ).ie

    variants = {
        "crosslens": lambda: crosslens_ie(None),
        "crosslens, one pass per step": lambda: crosslens_ie(1),
        "feature-space, batched": lambda: feature_space_ie(
            model, codec, task, inputs, args, full_forward=False, batched=True
        ),
        "baseline loop": lambda: feature_space_ie(model, codec, task, inputs, args, full_forward=True, batched=False),
    }
    times, results = time_variants(variants, args.repeats)

    print(
        f"model: {description}; hook {args.hook}; task {args.task}, {len(task)} examples, "
        f"seq {task.clean_tokens.shape[1]}"
    )
    print(
        f"crosscoder: jumprelu, d_sae {args.d_sae}; n_steps {args.n_steps}; {args.batch_size} examples per pass; "
        f"torch threads {torch.get_num_threads()}"
    )
    reference = results["crosslens"]
    best = {name: min(values) for name, values in times.items()}
    scale = float(reference.abs().max())
    print(f"{'variant':30s} {'best ms':>9s} {'x crosslens':>12s} {'max |IE diff|':>14s}")
    for name in variants:
        diff = float((results[name] - reference).abs().max())
        print(f"{name:30s} {best[name] * 1000:9.1f} {best[name] / best['crosslens']:11.2f}x {diff:14.2e}")
    print(f"(max |IE| {scale:.2e}; goal: baseline loop >= 3x the crosslens time)")


if __name__ == "__main__":
    main()
