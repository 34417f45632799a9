"""How fast ``crosslens browse``'s live panels answer, and the memory they hold, against the goals.

On a CPU (the default), the pico demo run (``--run``; default ``$CROSSLENS_HOME/demo/crosscoder``,
which ``crosslens demo`` writes: 12 snapshots, 1,024 features): the real ``crosslens browse RUN
--port 0`` in a subprocess, asked over HTTP as its page asks, with texts of ``--tokens`` tokens
cut from the run's own token table (each text asked once, so no answer comes from the cache):

* the first text once the live panels are ready (their libraries imported and the crosscoder
  loaded in the background at start; the snapshot models load in this request), and from the
  process's start to that answer;
* a warm text: every feature's activation on each token at every snapshot (median of ``--runs``);
* warm steering: ``--new-tokens`` tokens without and with a feature at each snapshot (median);
* the browse process's peak resident memory (VmHWM) against the resident budget it prints.

``--gpu`` measures Ge et al.'s shape on CUDA instead: 32 random-init Pythia-160M snapshots in
bf16 (``benchmarks/stream_gpu.py``'s suite, written to ``--suite-dir``) and a random 24,576-feature
crosscoder at ``blocks.6.hook_resid_post``, through :class:`crosslens.live.LiveModels` with every
model resident: a 64-token text, warm, goal <= 2 s (``--small``: the same logic on the CPU at a
tiny shape, whose numbers mean nothing).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/live.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/live.py --gpu
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/live.py --gpu --small
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

GOALS_MS = {"first": 5000.0, "text": 300.0, "steer": 3000.0, "gpu_text": 2000.0}
GPU_HOOK = "blocks.6.hook_resid_post"
"""The hook of the --gpu crosscoder: the middle of Pythia-160M's 12 blocks."""


def texts(run: Path, n: int, length: int) -> tuple[list[str], Path]:
    """``n`` texts of exactly ``length`` tokens from the run's training token table (its rows without
    their BOS, one after another, decoded), and the suite's folder."""
    from crosslens.activations.store import ActivationStore
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.core.metadata import crosscoder_suite_record
    from crosslens.training.runfolder import run_store

    store = ActivationStore.open(run_store(run), verify="none")
    record = crosscoder_suite_record(run / "final")
    tokenizer = CheckpointSuite.local(record["root"]).tokenizer()
    stream = store.sequences[:, 1:].reshape(-1).tolist()  # the rows one after another, their BOS left out
    found = []
    for start in range(0, len(stream) - length, length):
        text = tokenizer.decode(stream[start : start + length])
        if len(tokenizer.encode(text, add_special_tokens=False)) == length:
            found.append(text)
        if len(found) == n:
            return found, Path(record["root"])
    raise SystemExit(f"{run}'s token table has fewer than {n} runs of {length} tokens that decode and encode alike")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ask(url: str, path: str, pid: int, **params: object) -> tuple[dict, float, float]:
    """The answer to one request, its milliseconds, and the CPU milliseconds the server spent on it
    (on a shared machine the wall time also holds the time others took)."""
    started, cpu = time.perf_counter(), cpu_seconds(pid)
    with urllib.request.urlopen(url + path + "?" + urllib.parse.urlencode(params), timeout=600) as response:
        payload = json.loads(response.read())
    return payload, 1000 * (time.perf_counter() - started), 1000 * (cpu_seconds(pid) - cpu)


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM) in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) * 1024


def verdict(name: str, times: list[float], goal: float) -> bool:
    median = statistics.median(times)
    met = median <= goal
    print(
        f"{name:<46} median {median:7.0f} ms   max {max(times):7.0f} ms   goal <= {goal:.0f} ms: "
        f"{'met' if met else 'NOT met'}   runs: {' '.join(f'{t:.0f}' for t in times)}"
    )
    return met


def start_browse(run: Path, extra: list[str]) -> tuple[subprocess.Popen, str, float]:
    """``crosslens browse RUN --port 0`` in a subprocess: the process, its URL, and when it started."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "crosslens", "browse", str(run), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    line = process.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if not match:
        process.kill()
        raise SystemExit(f"crosslens browse did not start: {line}{process.stdout.read()}")
    return process, match[0], started


def wait_ready(process: subprocess.Popen) -> str:
    """The line the browse process prints once the live panels are ready (or why not)."""
    for line in process.stdout:
        if line.startswith("live panels"):
            return line.strip()
    raise SystemExit("crosslens browse stopped before its live panels were ready")


def cpu(a: argparse.Namespace) -> None:
    run = Path(a.run).expanduser()
    found, root = texts(run, a.runs + 2, a.tokens)
    print(f"run: {run} (suite {root}); texts of {a.tokens} tokens from its token table")
    process, url, started = start_browse(run, ["--device", "cpu", *a.browse_args])
    print(f"serving after {time.perf_counter() - started:.1f} s")
    try:
        ready = wait_ready(process)
        ready_s = time.perf_counter() - started
        print(f"{ready}  ({ready_s:.1f} s after start)")
        if "unavailable" in ready:
            raise SystemExit(1)
        answer, first, _ = ask(url, "api/live/text", process.pid, text=found[0])
        print(f"first text answered {first + 1000 * ready_s:.0f} ms after the process started (imports included)")
        warm = [ask(url, "api/live/text", process.pid, text=text) for text in found[1 : a.runs + 1]]
        feature = answer["readings"]["-1"][0][0]
        prompt = " ".join(found[-1].split()[:8])
        settings = dict(prompt=prompt, strength=a.strength, tokens=a.new_tokens)
        ask(url, f"api/live/feature/{feature}/steer", process.pid, **settings)
        steer = [
            ask(url, f"api/live/feature/{feature}/steer", process.pid, **settings, seed=k) for k in range(a.steer_runs)
        ]
        status, _, _ = ask(url, "api/live/status", process.pid)
        ok = verdict("first text (the snapshot models load in it)", [first], GOALS_MS["first"])
        ok &= verdict(
            f"warm text, {a.tokens} tokens, every feature and snapshot", [w[1] for w in warm], GOALS_MS["text"]
        )
        inside = statistics.median(w[0]["ms"] for w in warm)
        print(
            f"  median in the models {inside:.0f} ms; the server's CPU per request {statistics.median(w[2] for w in warm):.0f} ms"
        )
        n = len(status["loads"])
        steer_name = f"warm steering, {a.new_tokens}+{a.new_tokens} tokens x {n} snapshots"
        ok &= verdict(steer_name, [s[1] for s in steer], GOALS_MS["steer"])
        print(f"  the server's CPU per request {statistics.median(s[2] for s in steer):.0f} ms")
        budget, peak = status["budget"], peak_rss(process.pid)
        fits = peak <= budget["limit"]
        print(
            f"peak RSS of browse {peak / 2**20:.0f} MiB; its resident budget {budget['limit'] / 2**20:.0f} MiB "
            f"({budget['base'] / 2**20:.0f} MiB before the models, models {budget['models'] / 2**20:.1f} MiB, "
            f"crosscoder {budget['crosscoder'] / 2**20:.1f} MiB, text cache {budget['text_cache'] / 2**20:.0f} MiB): "
            f"{'within' if fits else 'NOT within'}"
        )
        print("goals met" if ok and fits else "goals NOT met")
    finally:
        process.terminate()
        process.wait(30)


def gpu(a: argparse.Namespace) -> None:
    import torch

    if not (torch.cuda.is_available() or a.small):
        print("benchmarks/live.py --gpu: no CUDA device here; nothing measured (--small runs its logic on the CPU)")
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from stream_gpu import PYTHIA_160M, SMALL_MODEL, write_suite

    from crosslens.live import LiveConfig, LiveModels

    shape, S, d_sae, hook, n = (
        (SMALL_MODEL, 3, 64, "blocks.1.hook_resid_post", 16) if a.small else (PYTHIA_160M, 32, 24_576, GPU_HOOK, 64)
    )
    device = "cpu" if a.small else "cuda"
    root = Path(a.suite_dir) / ("small" if a.small else "pythia-160m")
    suite = None if (root / "suite" / f"step{S - 1}").is_dir() else write_suite(root / "suite", shape, S)
    run = random_run(root, suite, d_in=shape["hidden_size"], d_sae=d_sae, hook=hook)
    live = LiveModels(run, device=device, dtype="bfloat16", config=LiveConfig(resident_models=S))
    words = [f"w{i}" for i in range(3, shape["vocab_size"])]
    text = lambda k: " ".join(words[(n * k + i) % len(words)] for i in range(n))  # noqa: E731

    def timed(k: int) -> float:
        started = time.perf_counter()
        live.activations(text(k))
        if device == "cuda":
            torch.cuda.synchronize()
        return 1000 * (time.perf_counter() - started)

    print(f"first text ({S} models load): {timed(0) / 1000:.1f} s")
    times = [timed(k) for k in range(1, a.runs + 1)]
    verdict(f"{n}-token text, {S} snapshots, {d_sae:,} features on {device}", times, GOALS_MS["gpu_text"])


def random_run(root: Path, suite, *, d_in: int, d_sae: int, hook: str) -> Path:
    """A run folder holding a seeded random crosscoder over ``root/suite``'s snapshots at ``hook``."""
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.checkpoints.identity import snapshot_identity
    from crosslens.core.seeding import seeded
    from crosslens.crosscoders import ARCHITECTURES

    run = root / "run"
    if (run / "final" / "cfg.json").is_file():
        return run
    suite = suite or CheckpointSuite.local(root / "suite")
    sae_cls, cfg_cls = ARCHITECTURES["crosscoder"][:2]
    with seeded(0):
        crosscoder = sae_cls(cfg_cls(d_in=d_in, d_sae=d_sae, n_snapshots=len(suite)))
    record = suite.provenance()
    record["snapshots"] = [{**ref.to_dict(), "source": snapshot_identity(suite, ref) or {}} for ref in suite.snapshots]
    crosscoder.cfg.metadata.hook_name = hook
    crosscoder.cfg.metadata.suite = record
    crosscoder.save_model(str(run / "final"))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    home = Path(os.environ.get("CROSSLENS_HOME", "~/.cache/crosslens")).expanduser()
    parser.add_argument("--run", default=str(home / "demo" / "crosscoder"), help="the run folder (CPU rows)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per text")
    parser.add_argument("--runs", type=int, default=9, help="warm texts timed")
    parser.add_argument("--steer-runs", type=int, default=5, help="warm steering requests timed")
    parser.add_argument("--new-tokens", type=int, default=20, help="tokens generated per continuation")
    parser.add_argument("--strength", type=float, default=8.0, help="steering strength")
    parser.add_argument("--browse-args", nargs="*", default=[], help="more flags for crosslens browse")
    parser.add_argument("--gpu", action="store_true", help="Ge et al.'s shape on CUDA instead")
    parser.add_argument("--suite-dir", default="/tmp/crosslens-live-gpu", help="where --gpu writes its suite and run")
    parser.add_argument("--small", action="store_true", help="with --gpu: its logic on the CPU at a tiny shape")
    a = parser.parse_args()
    gpu(a) if a.gpu else cpu(a)


if __name__ == "__main__":
    main()
