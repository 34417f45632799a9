"""How long converting a published crosscoder of the Gemma release's shape takes, and how much
memory, against the goals: at most 30 s on a 2-core CPU, peak RSS at most twice the source file.

The Gemma-2-2B model-diffing releases hold 16,384 latents x 2 models x 2,304 dims in float32 (about
604 MB of weights). This script writes a random crosscoder of that shape in each format's files
(Kissane's ``cfg.json`` + ``cc_weights.pt``; dictionary_learning's ``config.json`` +
``model.safetensors``, whose decoder is transposed on the way), then converts each in a fresh
Python process (``crosslens.pretrained``'s conversion, as ``from_pretrained`` runs it, into an empty
cache) and reports, per format:

* the conversion's seconds (the call), and the process's (imports included);
* the process's peak RSS (``ru_maxrss``, imports included) over the source file's size;
* that the converted weights are the source's (a sample of rows compared).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/convert.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/convert.py --latents 2048   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

GOAL_SECONDS = 30.0
GOAL_RSS_OVER_FILE = 2.0
SHAPE = {"latents": 16384, "models": 2, "d_in": 2304}


def write_source(folder: Path, fmt: str, latents: int, models: int, d_in: int) -> Path:
    """A random crosscoder of that shape in ``fmt``'s files; returns its weights file."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    W_enc = torch.randn(models, d_in, latents, generator=g)
    W_dec = torch.randn(latents, models, d_in, generator=g)
    b_enc, b_dec = torch.randn(latents, generator=g), torch.randn(models, d_in, generator=g)
    if fmt == "kissane":
        cfg = {"d_in": d_in, "dict_size": latents, "enc_dtype": "fp32", "hook_point": "blocks.14.hook_resid_pre"}
        (folder / "cfg.json").write_text(json.dumps(cfg))
        torch.save({"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}, folder / "cc_weights.pt")
        return folder / "cc_weights.pt"
    cfg = {"activation_dim": d_in, "dict_size": latents, "num_layers": models}
    (folder / "config.json").write_text(json.dumps(cfg))
    decoder = W_dec.permute(1, 0, 2).contiguous()
    del W_dec
    state = {"encoder.weight": W_enc, "encoder.bias": b_enc, "decoder.weight": decoder, "decoder.bias": b_dec}
    save_file(state, str(folder / "model.safetensors"))
    return folder / "model.safetensors"


def child(folder: str) -> None:
    """Run in a fresh process: convert the crosscoder in ``folder``; print the call's seconds."""
    from crosslens.pretrained.card import converted_card
    from crosslens.pretrained.convert import convert_once
    from crosslens.pretrained.formats import local_files
    from crosslens.pretrained.tensors import ConvertOptions

    start = time.perf_counter()
    files = local_files(Path(folder))
    out = convert_once(files, ConvertOptions(n_snapshots=SHAPE["models"]), provenance={}, card=converted_card)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "out": str(out), "peak_rss_bytes": peak}))


def same_rows(source: Path, converted: Path, fmt: str) -> bool:
    """The converted W_dec's first, middle and last latents are the source's."""
    from safetensors import safe_open

    with safe_open(str(converted / "sae_weights.safetensors"), framework="pt") as f:
        W_dec = f.get_slice("W_dec")
        rows = [0, W_dec.get_shape()[0] // 2, W_dec.get_shape()[0] - 1]
        mine = [W_dec[i : i + 1] for i in rows]
    if fmt == "kissane":
        theirs = torch.load(source, mmap=True, weights_only=True)["W_dec"]
        want = [theirs[i : i + 1] for i in rows]
    else:
        with safe_open(str(source), framework="pt") as f:
            decoder = f.get_slice("decoder.weight")
            want = [decoder[:, i : i + 1].permute(1, 0, 2) for i in rows]
    return all(torch.equal(a, b) for a, b in zip(mine, want))


def measure(fmt: str, root: Path, shape: dict[str, int]) -> dict[str, float]:
    source = write_source(root / fmt, fmt, shape["latents"], shape["models"], shape["d_in"])
    env = {**os.environ, "CROSSLENS_HOME": str(root / f"home-{fmt}"), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(root / fmt)], env=env, capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - start
    result = json.loads(done.stdout.strip().splitlines()[-1])
    file_bytes = source.stat().st_size
    return {
        "seconds": result["seconds"],
        "process_seconds": wall,
        "peak_rss_bytes": result["peak_rss_bytes"],
        "file_bytes": file_bytes,
        "same": same_rows(source, Path(result["out"]), fmt),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=("kissane", "dictionary_learning"), action="append")
    parser.add_argument("--latents", type=int, default=SHAPE["latents"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    shape = {**SHAPE, "latents": args.latents}
    formats = args.format or ["kissane", "dictionary_learning"]
    print(f"converting {shape['latents']:,} latents x {shape['models']} models x {shape['d_in']:,} (float32)")
    print(
        f"{'format':<20} {'seconds':>8} {'/ 30 s':>7} {'process s':>10} {'peak RSS':>10} {'/ file':>7} {'/ 2x file':>9}  same"
    )
    ok = True
    for fmt in formats:
        with tempfile.TemporaryDirectory(prefix="crosslens-convert-") as scratch:
            m = measure(fmt, Path(scratch), shape)
        over_file = m["peak_rss_bytes"] / m["file_bytes"]
        print(
            f"{fmt:<20} {m['seconds']:>8.1f} {m['seconds'] / GOAL_SECONDS:>7.2f} {m['process_seconds']:>10.1f} "
            f"{m['peak_rss_bytes'] / 2**20:>8.0f}Mi {over_file:>7.2f} {over_file / GOAL_RSS_OVER_FILE:>9.2f}  {m['same']}"
        )
        ok &= m["process_seconds"] <= GOAL_SECONDS and over_file <= GOAL_RSS_OVER_FILE and m["same"]
    print("goals: <= 30 s, peak RSS <= 2x the file; met" if ok else "goals: <= 30 s, peak RSS <= 2x the file; NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
