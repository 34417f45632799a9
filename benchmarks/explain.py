"""What ``crosslens explain`` costs beyond its endpoint's answers, and how fast ``crosslens browse``
searches explanations by meaning.

1. **Own work per request.** ``explain_run`` over the pico demo run (its feature database, copied
   with its seals to a scratch folder) against the stand-in endpoint (:class:`crosslens.explain.StubEndpoint`,
   in a process of its own) answering at once. Printed: crosslens's own work per request (planning
   from the feature database, prompts, parsing, scoring bookkeeping, writes: the time ``explain_run``
   spends outside its awaits, which it measures), and for scale this process's whole CPU time per
   request (the openai client and the event loop included). Goal: own work <= 5 ms a request.
2. **Requests in flight.** The same against the stand-in answering after 200 ms, ``--concurrency
   16``: the mean number of requests in flight over the run (the integral of requests in flight
   over time, divided by the run's time). Goal: >= 14.
3. **Search by meaning** (``--search``): a synthetic feature database of Ge et al.'s shape (24,576
   features x 32 snapshots, tests/feature_db.py, as benchmarks/browse.py builds it) with 4
   synthetic explanations per feature (98,304), served by ``crosslens browse``; words typed into
   the list's meaning box in headless Chromium, from Enter to the ranked rows drawn. Goal: <= 300 ms.

    .venv/bin/python benchmarks/explain.py                      # 1 and 2 over the pico demo run
    .venv/bin/python benchmarks/explain.py --search             # 3 too (builds a 3 GB database once)
    .venv/bin/python benchmarks/explain.py --only-search        # 3 alone
    .venv/bin/python benchmarks/explain.py --run RUN --features 100
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from browse import chromium, database, default_budget, report, typed_search, visit
from explain_fixtures import write_synthetic_explanations
from feature_db import FeatureDbShape

from crosslens.core.paths import RUN_SEAL_NAME, crosslens_home
from crosslens.dashboards import schema
from crosslens.explain import ExplainConfig, explain_run

OWN_GOAL_MS, IN_FLIGHT_GOAL = 5.0, 14.0
MODEL = "stub"


def stub_process(delay: float) -> tuple[subprocess.Popen, str]:
    """The stand-in endpoint in a process of its own (its work is not crosslens's); its URL."""
    code = (
        "import sys, time\nfrom crosslens.explain.stub import StubEndpoint\n"
        f"stub = StubEndpoint(model={MODEL!r}, delay={delay}).start()\nprint(stub.url, flush=True)\ntime.sleep(1e9)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def scratch_run(run: Path) -> Path:
    """A scratch folder holding the run's feature database and the seals that vouch for it."""
    if not (run / schema.DATABASE_NAME).is_file():
        raise SystemExit(f"{run} has no feature database: build the demo (crosslens demo) or pass --run")
    folder = Path(tempfile.mkdtemp(prefix="crosslens-explain-bench-"))
    for name in (schema.DATABASE_NAME, schema.RECORD_NAME, RUN_SEAL_NAME):
        if (run / name).is_file():
            shutil.copy2(run / name, folder / name)
    return folder


def measure(run: Path, delay: float, concurrency: int, features: int) -> tuple:
    """(summary, requests, process CPU seconds) of one explain run against the stand-in."""
    process, url = stub_process(delay)
    folder = scratch_run(run)
    try:
        config = ExplainConfig(
            endpoint=url, model=MODEL, concurrency=concurrency, max_features=features, progress=False
        )
        cpu = time.process_time()
        summary = explain_run(folder, config)
        cpu = time.process_time() - cpu
    finally:
        process.kill()
        shutil.rmtree(folder, ignore_errors=True)
    return summary, summary.explain_requests + summary.score_requests, cpu


def own_work(run: Path, features: int) -> bool:
    summary, requests, cpu = measure(run, 0.0, 16, features)
    own = 1000 * summary.own_seconds / requests
    met = own <= OWN_GOAL_MS
    print(
        f"own work, endpoint answering at once: {own:.2f} ms a request (goal <= {OWN_GOAL_MS:.0f} ms: "
        f"{'met' if met else 'NOT met'}); whole process {1000 * cpu / requests:.2f} ms CPU and "
        f"{1000 * summary.wall_seconds / requests:.2f} ms wall a request; {requests} requests for {summary.features} features"
    )
    return met


def in_flight(run: Path, features: int) -> bool:
    summary, requests, _ = measure(run, 0.2, 16, features)
    met = summary.mean_in_flight >= IN_FLIGHT_GOAL
    print(
        f"endpoint answering after 200 ms, --concurrency 16: {summary.mean_in_flight:.2f} requests in flight on average "
        f"(goal >= {IN_FLIGHT_GOAL:.0f}: {'met' if met else 'NOT met'}); {requests} requests in {summary.wall_seconds:.1f} s"
    )
    return met


SEARCHES = [
    "plural nouns",
    "verbs",
    "numbers in dates",
    "cities",
    "negation",
    "french",
    "brackets",
    "legal terms",
    "questions",
    "colours",
    "time",
    "family",
    "sentence",
    "code comments",
    "dialogue",
]


def search(out: Path, runs: int) -> bool:
    from crosslens.browser import BrowseConfig, make_server

    shape = FeatureDbShape(
        n_features=24_576,
        n_snapshots=32,
        vocab_size=50_277,
        n_bins=32,
        tasks=("agreement", "ioi"),
        causal_fraction=0.02,
        pool=20,
        **default_budget(),
    )
    database(out, shape, rebuild=False)
    started = time.perf_counter()
    write_synthetic_explanations(out, per_feature=4)
    print(f"wrote 4 x {shape.n_features} synthetic explanations in {time.perf_counter() - started:.0f} s")
    server = make_server(out, BrowseConfig(port=0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = chromium()
    try:
        visit(driver, server.url, "results-rendered")
        queries = [SEARCHES[k % len(SEARCHES)] for k in range(runs)]
        times, baseline, server_ms = [], [], []
        for k, query in enumerate(queries):  # alternated with the list's search of context text, the baseline
            times.append(typed_search(driver, query, "meaning"))
            server_ms.append(float(driver.find_element("id", "timing").text.split()[0]))
            typed_search(driver, "", "meaning")
            baseline.append(typed_search(driver, ["the", "and", "of a", "ing"][k % 4], "q"))
            typed_search(driver, "", "q")
        found = server.database.facts.explained["explanations"]
        print(f"searched {found:,} explanations for: {', '.join(repr(q) for q in queries)}")
        met = report("search by meaning, typed", times)
        print(
            f"{'  of which in the server':<42} median {statistics.median(server_ms):6.1f} ms   max {max(server_ms):6.1f} ms"
        )
        report("baseline: search of context text, typed", baseline)
        return met
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run", default=str(crosslens_home() / "demo" / "crosscoder"), help="a run with a feature database"
    )
    parser.add_argument("--features", type=int, default=150, help="features explained in the own-work measurement")
    parser.add_argument("--flight-features", type=int, default=60, help="features explained at 200 ms an answer")
    parser.add_argument("--search", action="store_true", help="also time the search by meaning in Chromium")
    parser.add_argument("--only-search", action="store_true", help="time the search by meaning alone")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "crosslens-explain-search-bench"))
    args = parser.parse_args()
    run, ok = Path(args.run), True
    if not args.only_search:
        ok &= own_work(run, args.features)
        ok &= in_flight(run, args.flight_features)
    if args.search or args.only_search:
        ok &= search(Path(args.out), args.runs)
    print("goals met" if ok else "goals NOT met")


if __name__ == "__main__":
    main()
