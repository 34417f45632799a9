"""Latent scaling and lineage: the batched pass against a loop over latents on the same tokens,
measured in the same run on the same machine.

1. On a finished run (default: the pico demo's, ``$CROSSLENS_HOME/demo/crosscoder`` and the store
   it trained on), ``--n-tokens`` tokens sampled from the store (seeded) and held in memory:
   ``latent_scaling`` (one pass, every latent and snapshot from sums of matmuls) and ``lineage_of``
   (relatives by one matmul per snapshot, then events), against ``per_latent_scaling`` (each
   latent's contribution and targets formed token by token) and ``per_latent_relatives`` (each
   latent's cosines and top-k alone) over the same tokens. ``--loop-latents N`` times the loop on a
   seeded sample of N latents and extrapolates to d_sae (printed as such); the default loops over
   every latent. The two agree to float tolerance (printed). Goal: the batched >= 20x faster.
2. ``--ge-shape``: the batched pass at Ge et al.'s shape (24,576 latents x 32 snapshots x d_in
   768, a random JumpReLU crosscoder) over ``--ge-tokens`` streamed random tokens (default 1M),
   then lineage: seconds and the peak memory of each (on a GPU the memory allocated, on a CPU the
   process's resident memory, the crosscoder's weights included). On a CPU, where 1M tokens take
   hours, pass a few thousand: the time for 1M is then extrapolated from the pass's rate, plus the
   result's time, which does not grow with the tokens (printed as such); nor does the memory.
   JumpReLU's per-snapshot codes are held in pieces sized by the device (``per_snapshot_piece``),
   so a CPU's peak is not a GPU's.

Both sides run on ``--threads`` torch threads (default 1: on a shared CPU, other processes make
multi-threaded small operations wait for each other).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/latent_scaling.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/latent_scaling.py --run RUN --n-tokens 8192 --loop-latents 128
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/latent_scaling.py --ge-shape --device cuda
    .venv/bin/python benchmarks/latent_scaling.py --ge-shape --ge-tokens 1024 --batch-size 1024 --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from harvest import peak_rss_mb

from crosslens.activations import ActivationStore
from crosslens.analysis.composition import CoFiring, composition_pairs
from crosslens.analysis.evolution_analysis import EvolutionAnalysis
from crosslens.analysis.lineage_events import LineageConfig, lineage_of
from crosslens.analysis.probes import firing_frequency, reads_normalized
from crosslens.analysis.relatives import per_latent_relatives, unit_rows
from crosslens.analysis.scaling import (
    LatentScalingConfig,
    latent_scaling,
    per_latent_scaling,
    per_snapshot_piece,
    scaling_from_sums,
    training_space_sums,
)
from crosslens.core.devices import peak_memory, reset_peak_memory
from crosslens.core.paths import crosslens_home
from crosslens.crosscoders.folding import training_space_decoder
from crosslens.crosscoders.saved import load_crosscoder_folder
from crosslens.training.runfolder import run_store

GE_SHAPE = {"d_sae": 24_576, "n_snapshots": 32, "d_in": 768}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def demo_comparison(args: argparse.Namespace) -> None:
    run = Path(args.run)
    crosscoder = load_crosscoder_folder(run / "final", device="cpu", dtype="float32").eval()
    store = ActivationStore.open(args.store or run_store(run), verify="size")
    hook = store.hooks[0]
    idx = torch.randperm(store.n_tokens, generator=torch.Generator().manual_seed(0))[: args.n_tokens].sort().values
    acts_NSD = store.read(hook, idx, normalize=reads_normalized(crosscoder))
    F, S = int(crosscoder.cfg.d_sae), int(crosscoder.cfg.n_snapshots)
    print(f"{run}: {F} latents x {S} snapshots x d_in {crosscoder.cfg.d_in}, {len(acts_NSD):,} tokens in memory")
    analysis = EvolutionAnalysis.from_crosscoder(crosscoder, frequency=firing_frequency(acts_NSD, crosscoder))
    config = LatentScalingConfig(n_tokens=len(acts_NSD))
    # the pass also counts the firing together that lineage's splits by composition read
    cofiring = CoFiring.zeros(*composition_pairs(analysis, LineageConfig()))
    batched, batched_s = timed(lambda: latent_scaling(crosscoder, acts_NSD, config=config, cofiring=cofiring))
    lineage, lineage_s = timed(lambda: lineage_of(analysis, cofiring=cofiring))
    latents = list(range(F))
    if args.loop_latents and args.loop_latents < F:
        latents = sorted(torch.randperm(F, generator=torch.Generator().manual_seed(1))[: args.loop_latents].tolist())
    looped, loop_s = timed(lambda: per_latent_scaling(crosscoder, acts_NSD, latents, config=config))
    unit, present = unit_rows(analysis.W_dec), analysis.present & ~analysis.lifetimes.dead[:, None]
    (relatives, _), relatives_loop_s = timed(lambda: per_latent_relatives(unit, present, 5, latents))
    scale = F / len(latents)
    loop_total = (loop_s + relatives_loop_s) * scale
    diff = float((batched.amplitude[latents] - looped.amplitude[latents]).abs().max())
    error_diff = float((batched.error_amplitude[latents] - looped.error_amplitude[latents]).abs().max())
    same = bool(torch.equal(relatives[latents], lineage.relatives[latents]))
    print(f"batched: latent scaling {batched_s:.2f} s + lineage {lineage_s:.2f} s = {batched_s + lineage_s:.2f} s")
    print(
        f"per-latent loop over {len(latents)} of {F} latents: latent scaling {loop_s:.2f} s + relatives "
        f"{relatives_loop_s:.2f} s"
        + (f", x{scale:.1f} = {loop_total:.1f} s for every latent (extrapolated)" if scale > 1 else "")
    )
    print(f"agreement: amplitudes to {diff:.2e}, error amplitudes to {error_diff:.2e}; relatives identical: {same}")
    ratio = loop_total / (batched_s + lineage_s)
    print(f"speed-up: {ratio:.1f}x (goal >= 20x): {'met' if ratio >= 20 else 'MISSED'}")
    print(f"lineage: {lineage.counts()}; contested needs the analysis' thresholds: see crosslens analyze")


def ge_shape(args: argparse.Namespace) -> None:
    cuda = str(args.device).startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("Ge et al.'s shape (24,576 x 32 x 768): not measured, --device cuda but no CUDA GPU here")
        return
    import crosslens.crosscoders as crosscoders

    sae_cls, cfg_cls = crosscoders.ARCHITECTURES["jumprelu_crosscoder"][:2]
    torch.manual_seed(0)
    crosscoder = sae_cls(cfg_cls(**GE_SHAPE)).to(args.device).eval()
    with torch.no_grad():
        crosscoder.W_dec.normal_(0, 0.02)
        crosscoder.W_enc.normal_(0, 0.02)
        crosscoder.threshold.fill_(0.05)
    weights = sum(t.numel() * t.element_size() for t in crosscoder.state_dict().values()) / 2**30
    B, S, D = args.batch_size, GE_SHAPE["n_snapshots"], GE_SHAPE["d_in"]
    gen = torch.Generator(device=args.device).manual_seed(0)
    batches = (torch.randn(B, S, D, device=args.device, generator=gen) for _ in range(max(1, args.ge_tokens // B)))
    device = torch.device(args.device)
    config = LatentScalingConfig(n_tokens=args.ge_tokens, batch_size=B)
    analysis = EvolutionAnalysis.from_crosscoder(crosscoder)
    reset_peak(device)
    cofiring = CoFiring.zeros(*composition_pairs(analysis, LineageConfig()), device)
    (sums, reference_FS), pass_s = timed(
        lambda: (training_space_sums(crosscoder, batches, config=config, cofiring=cofiring), synced(device))[0]
    )
    scaling, result_s = timed(
        lambda: (scaling_from_sums(sums, training_space_decoder(crosscoder).float(), reference_FS), synced(device))[0]
    )
    scaling_peak = peak_gib(device)
    reset_peak(device)
    _, lineage_s = timed(lambda: (lineage_of(analysis, device=device, cofiring=cofiring), synced(device))[0])
    lineage_peak = peak_gib(device)
    where = torch.cuda.get_device_name() if cuda else f"a CPU, {torch.get_num_threads()} threads"
    what = "GPU memory allocated" if cuda else "resident memory (the process's, weights included)"
    n = scaling.n_tokens
    piece = per_snapshot_piece(device, S, GE_SHAPE["d_sae"])
    print(
        f"Ge et al.'s shape (JumpReLU, 24,576 x 32 x 768, batches of {B}, per-snapshot codes in pieces of {piece} "
        f"tokens) on {where}; the crosscoder's weights {weights:.2f} GiB"
    )
    million_s = (1 << 20) / n * pass_s + result_s
    print(
        f"  latent scaling over {n:,} tokens: {pass_s + result_s:.1f} s: the pass {pass_s:.1f} s "
        f"({n / pass_s:,.0f} tokens/s), the result from its sums {result_s:.1f} s (row norms and carrier "
        f"cosines, once whatever the tokens)"
        + (
            ""
            if n >= 1 << 20
            else f"; 1M tokens at this rate: {million_s:,.0f} s ({million_s / 3600:.2f} h), extrapolated"
        )
        + f"; peak {what} {scaling_peak:.2f} GiB = {scaling_peak / weights:.2f}x the weights"
    )
    print(
        f"  lineage: {lineage_s:.1f} s, peak {what} {lineage_peak:.2f} GiB = {lineage_peak / weights:.2f}x the weights"
    )


def synced(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """A fresh peak count: torch's on a GPU; on a CPU (Linux) the process's resident high-water mark,
    which writing 5 to /proc/self/clear_refs resets."""
    synced(device)
    if device.type == "cuda":
        reset_peak_memory(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as error:
        raise SystemExit(f"cannot reset the peak resident memory here ({error}); run it on Linux") from error


def peak_gib(device: torch.device) -> float:
    """The peak since :func:`reset_peak`, in GiB."""
    return peak_memory(device) / 2**30 if device.type == "cuda" else peak_rss_mb() / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=str(crosslens_home() / "demo" / "crosscoder"))
    parser.add_argument("--store", help="default: the store the run trained on")
    parser.add_argument("--n-tokens", type=int, default=16_384)
    parser.add_argument("--loop-latents", type=int, help="latents the loop times (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--ge-shape", action="store_true", help="time Ge et al.'s shape instead (on a CPU, pass a few --ge-tokens)"
    )
    parser.add_argument("--ge-tokens", type=int, default=1 << 20)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.ge_shape:
        ge_shape(args)
        return
    demo_comparison(args)


if __name__ == "__main__":
    main()
