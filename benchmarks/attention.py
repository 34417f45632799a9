"""The forward to the hook with TransformerLens's attention against the trunk with SDPA.

One random-init snapshot of Pythia-160M's width (GPT-NeoX, d_model 768, 12 heads) is written as
a local suite, loaded truncated after the hooked block, and run to ``--hook`` on ``--seqs x
--seq-len`` tokens with each attention (:func:`crosslens.activations.forward.forward_to_hook`,
``attention="hooked"`` and ``"sdpa"``), on ``--device`` (CUDA when there is one) in ``--dtype``.
It prints tokens/s of each (the median of ``--rounds``), the ratio, and the largest difference
between the two paths' activations. Nothing is downloaded.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/attention.py                   # CPU: 2 blocks, fp32
    python3 benchmarks/attention.py --hook blocks.6.hook_resid_post --dtype bfloat16 --seqs 32 --compile
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import seconds_per_call
from stream_gpu import PYTHIA_160M, write_suite

from crosslens.activations.forward import forward_to_hook, keep_first_blocks, stop_layer_for


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16"], help="default: bfloat16 on CUDA, float32 on a CPU"
    )
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--seqs", type=int, default=4, help="sequences per forward")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3, help="timed forwards per path (median)")
    p.add_argument("--compile", action="store_true", help="both trunks under torch.compile (inductor)")
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32"))
    with tempfile.TemporaryDirectory() as tmp:
        n_blocks = stop_layer_for([a.hook])
        suite = write_suite(Path(tmp), dict(PYTHIA_160M, num_hidden_layers=n_blocks), 1)
        model = keep_first_blocks(suite.load(0, device=a.device, dtype=dtype), n_blocks)
    tokens = torch.randint(3, model.cfg.d_vocab, (a.seqs, a.seq_len), generator=torch.Generator().manual_seed(0)).to(
        a.device
    )
    print(
        f"forward to {a.hook} ({n_blocks} blocks of d_model {model.cfg.d_model}), {a.seqs} x {a.seq_len} tokens, "
        f"{a.device}, {str(dtype).removeprefix('torch.')}{', compiled' if a.compile else ''}"
    )
    rates, acts = {}, {}
    for attention in ("hooked", "sdpa"):
        run = lambda: forward_to_hook(model, tokens, a.hook, compile=a.compile, attention=attention)  # noqa: E731
        rates[attention] = tokens.numel() / seconds_per_call(run, a.device, a.rounds)
        acts[attention] = run().float()
        print(f"  attention {attention:6s}: {rates[attention]:12,.0f} tok/s")
    diff = float((acts["sdpa"] - acts["hooked"]).abs().max())
    print(
        f"  SDPA / TransformerLens's attention: {rates['sdpa'] / rates['hooked']:.2f}x; "
        f"max |difference| {diff:.3g} (activations' max |x| {float(acts['hooked'].abs().max()):.3g})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
