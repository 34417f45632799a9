"""Streaming crosscoder training end to end on one CUDA GPU, against the forward it rests on.

In one run, with nothing downloaded:

1. builds a local suite of ``--S`` random-init snapshots with Pythia-160M's shape (a
   GPTNeoXConfig, bf16 weights, a word-level tokenizer with a word per token id) and loads them
   as a :class:`ResidentSnapshotProvider` does (truncated after the hooked block);
2. the forward floor: one snapshot to the hook at ``--seqs x --seq-len`` tokens, eager,
   compiled, and compiled with attention through SDPA (the provider's path on CUDA;
   :func:`crosslens.activations.forward.forward_to_hook`), tokens/s and fraction of the
   measured bf16 matmul peak; the largest difference between the eager and SDPA activations;
3. provider tokens/s (all snapshots, batches of ``--batch`` tokens) and its fraction of the
   forward alone (the compiled per-snapshot rate / S);
4. end to end, provider -> ``CrosscoderTrainer.step`` under bf16 autocast at Ge et al.'s shape
   (S 32, d_in 768, d_sae 24576, batch 2048), JumpReLU and ReLU, the threshold or bias set to
   ``--l0`` on the first batch and held there (:data:`HOLD_LR`); tokens/s, the hours for
   ``--run-tokens`` (800M), and the L0 (JumpReLU: the active share) the timed steps ran at.
   The timed steps are ``--chunks`` whole chunks of the provider's, from the first batch of a
   chunk on: each chunk's forward (the harvest, or the wait for the prefetched one) is then
   timed with the steps it feeds. A run of steps inside one chunk times the steps alone.

Without CUDA it prints one line and exits 0; ``--small`` runs the same logic on the CPU at a
tiny shape in seconds (its numbers mean nothing; it checks that the script works).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/stream_gpu.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/stream_gpu.py --small

Writing the suite is CPU work: ``--suite-dir DIR --write-only`` in the background while another
benchmark times the GPU, then ``--suite-dir DIR --written`` here, saves its minute of device time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import active_share, make_trainer, matmul_peak, seconds_per_call, set_sparsity, sync

from crosslens.activations.forward import forward_to_hook, trunk_attention
from crosslens.activations.streaming import ResidentSnapshotProvider
from crosslens.checkpoints import CheckpointSuite

PYTHIA_160M = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "vocab_size": 50304,
    "max_position_embeddings": 2048,
    "rotary_pct": 0.25,
}
SMALL_MODEL = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "vocab_size": 64,
    "max_position_embeddings": 64,
    "rotary_pct": 0.25,
}
SMALL = {
    "S": 2,
    "hook": "blocks.1.hook_resid_post",
    "seqs": 4,
    "seq_len": 16,
    "batch": 32,
    "d_sae": 64,
    "l0": 8,
    "chunk_seqs": 8,
    "chunks": 2,
    "warmup": 1,
    "peak_n": 64,
    "rounds": 2,
    "backend": "aot_eager",
}
HOLD_LR = 1e-9
"""Learning rate of the streamed steps. Their trained state is synthetic (the threshold or
bias bisected on the first batch, Adam's moments fresh), and Adam's first steps move each
weight by about the learning rate in the sign of its gradient. On these snapshots'
activations, which share a direction, that moves every pre-activation the same way: at lr
1e-5 the JumpReLU L0 runs away within a dozen steps, past the plan's ``sparse_step_share``, and the
steps time the dense kernels instead of the step from pairs (``scripts/held_sparsity.py``
measures it). A trained run's sparsity is steady; this rate keeps the synthetic one so (each
row prints its L0 at the first and last timed step), and a step's work does not depend on it."""
ROWS = {
    "jumprelu": ("jumprelu_crosscoder", True, True),
    "relu": ("crosscoder", True, True),
    "no-prefetch": ("jumprelu_crosscoder", False, True),
    "fresh": ("jumprelu_crosscoder", True, False),
}
"""The end-to-end rows by name: (architecture, prefetch, trained). The fresh row is the rate of a
run's first steps, before its sparsity term has made the code sparse enough for the pairs."""


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer with a word for each token id: ``w3`` ... after the three specials,
    so that a text of random words is random tokens over the whole vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<unk>", "<pad>", *(f"w{i}" for i in range(3, vocab_size))])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


@torch.no_grad()
def write_suite(root: Path, shape: dict, n: int) -> CheckpointSuite:
    """``n`` random-init GPT-NeoX snapshots of ``shape`` in bf16, one folder each (``step{i}``)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(**shape, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    config.architectures = ["GPTNeoXForCausalLM"]
    model = GPTNeoXForCausalLM(config).to(torch.bfloat16).eval()
    tokenizer = word_tokenizer(shape["vocab_size"])
    for s in range(n):
        g = torch.Generator().manual_seed(s)
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim == 1:  # layer-norm gains
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
        model.save_pretrained(root / f"step{s}")
        tokenizer.save_pretrained(root / f"step{s}")
    return CheckpointSuite.local(root)


def written_suite(root: Path, n: int) -> CheckpointSuite:
    """The suite a ``--write-only`` run left in ``root``, refused unless all ``n`` snapshots are there."""
    missing = [f"step{s}" for s in range(n) if not (root / f"step{s}" / "config.json").is_file()]
    if missing:
        print(
            f"benchmarks/stream_gpu.py --written: {root} lacks {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}; run with --write-only first, or leave out --written",
            file=sys.stderr,
        )
        raise SystemExit(2)
    print(f"suite: {n} random-init snapshots, written earlier to {root}")
    return CheckpointSuite.local(root)


def forward_flops_per_token(model, seq_len: int) -> float:
    """Matmul FLOPs per token of the (truncated) model's blocks: 2 per block weight, plus causal attention."""
    block_weights = sum(p.numel() for block in model.blocks for p in block.parameters() if p.ndim >= 2)
    return 2 * block_weights + 2 * model.cfg.n_layers * seq_len * model.cfg.d_model


def forward_floor(model, a: argparse.Namespace, device: str, peak: float) -> float:
    """Prints the forward to the hook eager, compiled, and compiled with the trunk's attention
    through SDPA; returns the tokens/s (one snapshot) of the path the provider takes."""
    tokens = torch.randint(
        3, model.cfg.d_vocab, (a.seqs, a.seq_len), device=device, generator=torch.Generator(device).manual_seed(0)
    )
    flops = forward_flops_per_token(model, a.seq_len) * tokens.numel()
    paths = [("eager", False, "hooked"), ("compiled", True, "hooked"), ("compiled, SDPA attention", True, "sdpa")]
    rates = {}
    for label, compile, attention in paths[: 1 if not a.compile else 3]:
        run = lambda: forward_to_hook(model, tokens, a.hook, compile=compile, backend=a.backend, attention=attention)  # noqa: E731
        seconds = seconds_per_call(run, device, a.rounds)
        rates[compile, attention] = tokens.numel() / seconds
        print(
            f"forward to {a.hook}, {label:25s} {a.seqs} x {a.seq_len}: {rates[compile, attention]:12,.0f} tok/s per snapshot "
            f"({flops / seconds / peak:.0%} of the bf16 peak); {a.S} snapshots: {rates[compile, attention] / a.S:10,.0f} tok/s"
        )
    if a.compile:
        acts = {
            (compile, attention): forward_to_hook(
                model, tokens, a.hook, compile=compile, backend=a.backend, attention=attention
            ).float()
            for _, compile, attention in paths
        }
        eager = acts[False, "hooked"]
        print(
            f"compiled vs eager activations: max |difference| {float((acts[True, 'hooked'] - eager).abs().max()):.3g} (bf16); "
            f"compiled SDPA vs eager: {float((acts[True, 'sdpa'] - eager).abs().max()):.3g}"
        )
    provider_path = (a.compile and not a.small, trunk_attention(model, None))
    return rates.get(provider_path, rates[False, "hooked"])


def provider_rate(provider: ResidentSnapshotProvider, a: argparse.Namespace, device: str) -> float:
    """Tokens/s of batches served after the first chunk (which is harvested before timing starts)."""
    batches = provider.batches(0)
    next(batches)
    per_chunk = batches_per_chunk(a)
    sync(device)
    start, n = time.perf_counter(), 0
    for _ in range(2 * per_chunk):
        batch = next(batches)
        n += batch.shape[0]
    sync(device)
    batches.close()
    return n / (time.perf_counter() - start)


def batches_per_chunk(a: argparse.Namespace) -> int:
    """Crosscoder batches in one chunk of the provider's (``--chunk-seqs`` sequences)."""
    return a.chunk_seqs * a.seq_len // a.batch


def untimed_steps(warmup: int, per_chunk: int) -> int:
    """Steps before the timed ones, after the first batch (which sets the sparsity): the warm-up
    (each new count of pairs can compile a Triton specialisation), then the rest of the chunk it
    ends in, so that the timing starts with a chunk's first batch, where its forward runs."""
    served = 1 + warmup
    return warmup + (-served) % per_chunk


def end_to_end(
    provider: ResidentSnapshotProvider,
    arch: str,
    a: argparse.Namespace,
    device: str,
    trained: bool = True,
) -> tuple[float, str]:
    """Tokens/s of streamed training steps, and what the timed steps held: the L0 of the first
    and last, and (JumpReLU) the share of entries active on the first and last batch, which
    decides whether the step runs from the active pairs (``sparse_step_pays``);
    ``trained``: the threshold or bias set to ``--l0`` on the first batch, else
    freshly initialised (a run's first steps). The steps run at ``--lr`` (:data:`HOLD_LR`)."""
    trainer = make_trainer(arch, a, device, "bfloat16", lr=a.lr)
    batches = provider.batches(0)
    first = next(batches)
    if trained:
        set_sparsity(trainer, first, a.l0)
    share = active_share(trainer, first)
    del first
    per_chunk = batches_per_chunk(a)
    for _ in range(untimed_steps(a.warmup, per_chunk)):
        trainer.step(next(batches))
    sync(device)
    l0s = []  # the steps' L0 as device tensors, read after the timing (a read waits for the device)
    steps = a.chunks * per_chunk
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        trainer.step(batch)
        l0s.append(trainer.last_l0)
    sync(device)
    rate = steps * a.batch / (time.perf_counter() - start)
    batches.close()
    held = f"  L0 {float(l0s[0]):.0f} -> {float(l0s[-1]):.0f}"
    if share:
        held += f"; first batch {share.strip()}; last batch {active_share(trainer, batch).strip()}"
    return rate, held


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="the whole script on the CPU at a tiny shape")
    p.add_argument("--S", type=int, default=32, help="snapshots")
    p.add_argument("--hook", default="blocks.6.hook_resid_post")
    p.add_argument("--seqs", type=int, default=32, help="sequences per forward")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=2048, help="crosscoder batch, tokens")
    p.add_argument("--d-sae", type=int, default=24576)
    p.add_argument("--k", type=int, default=64)
    p.add_argument(
        "--micro-batches", type=int, default=1, help="micro-batches per crosscoder step (gradient accumulation)"
    )
    p.add_argument("--l0", type=float, default=100.0, help="the trained sparsity the threshold/bias is set to")
    p.add_argument(
        "--lr",
        type=float,
        default=HOLD_LR,
        help="learning rate of the streamed steps (default: one that holds the trained sparsity; HOLD_LR)",
    )
    p.add_argument(
        "--chunk-seqs", type=int, default=128, help="sequences per provider chunk (two are resident with prefetch)"
    )
    p.add_argument(
        "--chunks", type=int, default=3, help="timed end-to-end chunks per row: every step of each, and its forward"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=10,
        help="untimed end-to-end steps first: the kernels' compiles for the batches' shapes",
    )
    p.add_argument("--rounds", type=int, default=10, help="timed forwards (median)")
    p.add_argument("--peak-n", type=int, default=8192, help="matmul side for the bf16 peak")
    p.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled forward")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile the snapshot models' forward (provider and floor); --no-compile: eager only",
    )
    p.add_argument(
        "--row",
        choices=list(ROWS),
        action="append",
        help="end-to-end rows to time (repeatable; default all): e.g. --row fresh --seq-len 2048 "
        "--chunk-seqs 32 for the recipe's shape, which benchmarks/user_run.py runs",
    )
    p.add_argument("--run-tokens", type=float, default=800e6, help="tokens of the whole run, for the hours")
    p.add_argument(
        "--suite-dir", type=Path, default=None, help="where to write the suite (default: a temporary folder)"
    )
    p.add_argument(
        "--write-only",
        action="store_true",
        help="write the suite to --suite-dir and stop (CPU work another command's GPU timings can overlap)",
    )
    p.add_argument(
        "--written",
        action="store_true",
        help="take the suite an earlier --write-only run left in --suite-dir instead of writing it",
    )
    a = p.parse_args(argv)
    if not a.lr > 0:
        p.error(f"--lr {a.lr}: give a learning rate above 0 (the default, {HOLD_LR:g}, holds the trained sparsity)")
    if (a.write_only or a.written) and a.suite_dir is None:
        p.error("--write-only and --written name the suite's folder: add --suite-dir DIR")
    a.optimizer_state = "float32"
    if a.small:
        for key, value in SMALL.items():
            setattr(a, key, value)
    if a.chunks < 1 or (a.chunk_seqs * a.seq_len) % a.batch:
        p.error(
            f"--chunks {a.chunks}, --chunk-seqs {a.chunk_seqs} x --seq-len {a.seq_len} tokens and --batch {a.batch}: "
            "time at least one chunk, of a whole number of batches"
        )
    return a


def run(a: argparse.Namespace, device: str, root: Path) -> None:
    shape = SMALL_MODEL if a.small else PYTHIA_160M
    a.d_in = shape["hidden_size"]
    if a.write_only:
        start = time.perf_counter()
        write_suite(root, shape, a.S)
        print(
            f"suite: {a.S} random-init snapshots, d_model {shape['hidden_size']}, written to {root} in "
            f"{time.perf_counter() - start:.0f} s"
        )
        return
    suite = written_suite(root, a.S) if a.written else None
    peak = matmul_peak(a.peak_n, device, a.rounds)
    print(f"bf16 matmul peak: {peak / 1e12:,.1f} TFLOP/s")
    if suite is None:
        start = time.perf_counter()
        suite = write_suite(root, shape, a.S)
        print(
            f"suite: {a.S} random-init snapshots, d_model {shape['hidden_size']}, written in {time.perf_counter() - start:.0f} s"
        )
    n_seqs = 8 * a.chunk_seqs
    tokens = torch.randint(3, shape["vocab_size"], (n_seqs, a.seq_len), generator=torch.Generator().manual_seed(0))
    provider = ResidentSnapshotProvider(
        suite,
        a.hook,
        tokens,
        a.batch,
        model_dtype=torch.bfloat16,
        device=device,
        model_device=device,
        chunk_seqs=a.chunk_seqs,
        harvest_batch_size=a.seqs,
        compile=a.compile and not a.small,
    )
    start = time.perf_counter()
    models = provider.models()
    resident = sum(p.numel() * p.element_size() for m in models for p in m.parameters()) / 2**30
    print(
        f"loaded {len(models)} models ({models[0].cfg.n_layers} blocks each, {resident:.2f} GiB) in {time.perf_counter() - start:.0f} s"
    )
    forward = forward_floor(models[0], a, device, peak)
    rate = provider_rate(provider, a, device)
    label = "compiled" if a.compile and not a.small else "eager"
    print(
        f"provider: {rate:10,.0f} tok/s ({rate / (forward / a.S):.0%} of the {label} forward alone, "
        f"{trunk_attention(models[0], None)} attention)",
        flush=True,
    )
    print(f"each end-to-end row times {a.chunks} chunk(s) of {batches_per_chunk(a)} steps, their forwards included")
    for arch, prefetch, trained in (ROWS[row] for row in a.row or ROWS):
        provider.prefetch = prefetch
        rate, held = end_to_end(provider, arch, a, device, trained)
        label = f"{arch}{'' if trained else ', fresh'}"
        print(
            f"end to end, {label:36s} bf16, prefetch {'on ' if prefetch else 'off'}: {rate:10,.0f} tok/s; "
            f"{a.run_tokens / 1e6:,.0f}M tokens in {a.run_tokens / rate / 3600:.1f} h{held}",
            flush=True,
        )
    provider.close()


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if not a.small and not a.write_only and not torch.cuda.is_available():
        print("benchmarks/stream_gpu.py: no CUDA device here, nothing measured (--small runs its logic on the CPU)")
        return 0
    device = "cpu" if a.small else "cuda"
    print(
        f"shape: S {a.S}, hook {a.hook}, forward {a.seqs} x {a.seq_len}, d_sae {a.d_sae}, batch {a.batch}; device {device}"
    )
    if a.suite_dir is not None:
        run(a, device, a.suite_dir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(a, device, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
