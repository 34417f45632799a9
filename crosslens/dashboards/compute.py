"""``crosslens dashboards RUN``: every feature's dashboard at every snapshot, computed in one pass
over the tokens and written to ``RUN/dashboards.sqlite`` with its sealed record.

:func:`compute_dashboards` checks everything it is handed before the pass (a finished run with a
final crosscoder; a store, or streamed snapshot models, of the crosscoder's snapshots, hook and
suite; attribution files of this crosscoder; what the run folder already holds), prints the
predicted database size, runs the pass (resuming a saved one), and writes the database to a
temporary file, renames it into place and seals it last. The printed real size closes it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from crosslens.core.errors import run_again
from crosslens.core.hashing import crosscoder_sha256
from crosslens.core.locks import exclusive_lock
from crosslens.core.metadata import metadata_value, saved_metadata
from crosslens.core.model_specs import check_model_pair
from crosslens.core.paths import FINAL_DIRNAME
from crosslens.core.progress import progress_bar
from crosslens.dashboards import schema
from crosslens.dashboards.accumulate import PassState, apply_updates, histogram_edges, token_keys, update_reading
from crosslens.dashboards.causal import CausalScores, find_tables, read_causal, unread_sections
from crosslens.dashboards.config import (
    DEFAULT_N_TOKENS,
    Budget,
    DashboardsConfig,
    DashboardsError,
    DashboardsInterrupted,
    format_size,
    predict_database_bytes,
    resolve_budget,
)
from crosslens.dashboards.database import (
    DatabaseContent,
    feature_rows,
    feature_snapshot_rows,
    snapshot_rows,
    write_database,
)
from crosslens.dashboards.emergence_rows import (
    emergence_meta,
    emergence_rows,
    emergence_snapshot_rows,
    lineage_rows,
    relative_rows,
    run_emergence,
)
from crosslens.dashboards.logits import logit_effects, raw_directions, vocabulary_pieces
from crosslens.dashboards.partial import existing_database, load_partial, remove_partial, save_partial
from crosslens.dashboards.readings import Readings
from crosslens.dashboards.record import emergence_sha256, trained_run_sha256, write_record
from crosslens.dashboards.rows import ReadingStats, context_rows, quantile_contexts, search_texts, top_contexts
from crosslens.dashboards.sources import StoreTokens, StreamSource, StreamTokens, TokenSource, recorded_suite

LOCK_NAME = "dashboards.lock"
SAVE_EVERY_S = 600.0
"""A pass saves its accumulators this often (seconds), beside the saves on a stop."""


def compute_dashboards(
    run_dir: str | os.PathLike,
    *,
    store: Any = None,
    stream: StreamSource | None = None,
    config: DashboardsConfig | None = None,
    suite: Any = None,
    device: str | torch.device | None = None,
    model_dtype: str = "float32",
    progress: bool = True,
) -> Path:
    """Compute the feature database of the finished run in ``run_dir`` and return its path.

    Args:
        store: an :class:`~crosslens.activations.store.ActivationStore` or its folder, holding the
            crosscoder's snapshots at its hook (default: the store the run was trained on, as its
            run.json records it, when there).
        stream: read the tokens from the suite's snapshot models instead, kept resident
            (:class:`~crosslens.dashboards.sources.StreamSource`); no store is needed.
        config: the budget and settings (:class:`DashboardsConfig`; default: all defaults).
        suite: the suite the crosscoder was trained on, for the snapshots' unembeddings and the
            tokenizer (default: the one its record names; a stream brings its own).
        device: where the pass runs (default: CUDA when there is a GPU).
        model_dtype: the dtype streamed snapshot models run in.
        progress: show a progress bar.

    A database of the same inputs already in place is returned as it is (computed again with
    ``config.overwrite``). Ctrl-C during the pass saves it in ``RUN/dashboards.partial/`` and raises
    :class:`DashboardsInterrupted`; the same call without ``overwrite`` continues it to the same
    bytes. Bad input raises :class:`DashboardsError` (one line, with the fix).
    """
    from crosslens.core.devices import resolve_device
    from crosslens.crosscoders.saved import load_crosscoder_folder

    run_dir = Path(run_dir)
    config = config if config is not None else DashboardsConfig()
    if store is not None and stream is not None:
        raise DashboardsError("pass a store or a stream of snapshot models, not both (--store or --stream)")
    if stream is not None and not isinstance(stream, StreamSource):
        raise DashboardsError(
            f"stream is {type(stream).__name__}; pass a StreamSource (the suite's models and the token table), "
            "or a store's folder as store="
        )
    check_run_folder(run_dir)
    record = saved_metadata(run_dir / FINAL_DIRNAME).get("suite") or {}
    check_model_pair(record, len(record.get("snapshots") or []), str(run_dir), DashboardsError)  # before the lock file
    device = resolve_device(device)

    def busy(holder: str) -> None:
        raise DashboardsError(f"another crosslens dashboards ({holder}) is writing {run_dir}; wait for it to finish")

    with exclusive_lock(run_dir / LOCK_NAME, on_busy=busy):
        crosscoder = load_crosscoder_folder(run_dir / FINAL_DIRNAME, device=str(device), dtype="float32").eval()
        source = open_source(run_dir, crosscoder, store, stream, suite, device, model_dtype)
        try:
            return _compute(run_dir, crosscoder, source, config, device, progress)
        finally:
            source.close()


def check_run_folder(run_dir: Path) -> None:
    """Refuse a folder that is not a finished run with a final crosscoder, or whose crosscoder cannot
    read activations yet, naming the fix (before the lock file is made)."""
    from crosslens.training.runfolder import check_run, finished_run_problem, norm_factors_problem

    problem = finished_run_problem(run_dir)
    if problem is not None:
        raise DashboardsError(problem)
    check_run(run_dir)
    problem = norm_factors_problem(run_dir)
    if problem is not None:
        raise DashboardsError(problem)


# --------------------------------------------------------------------------- the token source
def open_source(
    run_dir: Path, crosscoder: Any, store: Any, stream: StreamSource | None, suite: Any, device, model_dtype: str
) -> TokenSource:
    """The token source, checked against the crosscoder's record (snapshots, hook, width, suite)."""
    from crosslens.activations.partners import check_recorded_partner, snapshot_problem
    from crosslens.core.hooks import crosscoder_hook

    record = metadata_value(crosscoder, "suite") or {}
    hook = metadata_value(crosscoder, "hook_name")
    if stream is not None:
        hook = crosscoder_hook(crosscoder, stream.hook) if stream.hook else hook
        offered = stream.suite.provenance()["snapshots"]
        problem = snapshot_problem(record.get("snapshots") or offered, offered, require_identity=False)
        if problem:
            raise DashboardsError(
                f"the streamed suite {stream.suite.model_id} is not the crosscoder's: {problem}; pass the suite and --steps it was trained on"
            )
        source = StreamTokens(stream, hook, device, model_dtype)
        problem = snapshot_problem(
            record.get("snapshots") or source.provenance, _loaded(source), require_identity=False
        )
        if problem:
            source.close()
            raise DashboardsError(
                f"the streamed suite {stream.suite.model_id} is not the crosscoder's: {problem}; pass the suite it was trained on"
            )
        return source
    opened = _open_store(run_dir, store)
    check_recorded_partner(crosscoder, opened, None, used_by="crosslens dashboards")
    hook = hook if hook in opened.hooks else opened.resolve_hook(None)
    if suite is None:
        try:
            suite = recorded_suite(record)
        except Exception as error:  # noqa: BLE001 - any failure to find the suite has the same fix
            raise DashboardsError(f"{error}; pass the suite the crosscoder was trained on (--suite)") from None
    return StoreTokens(opened, hook, suite)


def _loaded(source: StreamTokens) -> list[dict]:
    source.models()
    return source.provenance


def _open_store(run_dir: Path, store: Any) -> Any:
    """The store handed over (opened, its files checked), else the one the run trained on."""
    from crosslens.activations.store import ActivationStore
    from crosslens.training.runfolder import run_store, streamed_store_command

    if isinstance(store, ActivationStore):
        return store
    if store is not None:
        return ActivationStore.open(store)
    path = run_store(run_dir)  # refuses another store written where the run's was
    if path is None:
        harvest = streamed_store_command(run_dir)
        hint = f" (a streamed run: `{harvest}` writes a store of its tokens)" if harvest else ""
        raise DashboardsError(
            f"{run_dir} names no store to read tokens from{hint}; pass a store of the run's snapshots (--store STORE), "
            "or stream the snapshot models (--stream with the suite and token flags)"
        )
    return ActivationStore.open(path)


def partners(run_dir: Path, source: TokenSource, record: dict[str, Any], causal: CausalScores) -> dict[str, Any]:
    """What the database is computed from, by identity: recorded with it and compared on every call."""
    suite = {
        "model_id": record.get("model_id"),
        "snapshots": [
            {key: entry.get(key) for key in ("revision", "step", "weights_sha256")}
            for entry in record.get("snapshots") or []
        ],
    }
    return {
        "run": trained_run_sha256(run_dir),
        "crosscoder": crosscoder_sha256(run_dir),
        "tokens": source.record(),
        "suite": suite,
        "attribution": dict(sorted(causal.sources.items())),
    }


# --------------------------------------------------------------------------- the pass
@contextmanager
def stop_after_batch() -> Iterator[list[int]]:
    """For the ``with`` block, the first SIGINT or SIGTERM only asks the pass to stop after the batch
    it is in (the list it yields then holds the signal); a second one stops it at once. Either way
    the pass is saved up to its last whole batch. Signals act as usual outside the main thread."""
    asked: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def handle(signum: int, _frame: object) -> None:
        if asked:
            raise KeyboardInterrupt
        asked.append(signum)
        print(
            f"\n{signal.Signals(signum).name}: stopping after this batch and saving the pass so far (send it again "
            "to stop at once; the pass is saved up to its last whole batch either way)",
            file=sys.stderr,
        )

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield asked
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@torch.inference_mode()
def run_pass(
    source: TokenSource,
    readings: Readings,
    state: PassState,
    plan: list[tuple[int, int]],
    budget: Budget,
    *,
    seed: int,
    device: torch.device,
    total: int,
    progress: bool,
    save: Any,
    replacing: str | None = None,
) -> PassState:
    """Fold batches ``state.position`` .. of ``plan`` into ``state``; on a stop, save what is done
    (``save(state)``) and raise :class:`DashboardsInterrupted` (naming ``replacing``, the flag that
    started the pass over, as one to leave out to continue it)."""
    holder = [state]
    bar = progress_bar(total=total, initial=state.tokens, unit="tok", unit_scale=True, desc="dashboards", show=progress)
    last_save = time.monotonic()
    try:
        with stop_after_batch() as stop:
            for index in range(state.position, len(plan)):
                if stop:
                    raise DashboardsInterrupted("", signum=stop[0])
                batch = source.read(*plan[index], device)
                current = holder[0]
                if current.edges_B1.numel() == 0:
                    edges = histogram_edges((code for _, code in readings.codes(batch.acts_NSD)), budget.n_bins)
                    current = replace(current, edges_B1=edges.to(device))
                updates = [
                    update_reading(current, j, code, batch, budget.window, token_keys(batch.row_ids_N, j, seed))
                    for j, code in readings.codes(batch.acts_NSD)
                ]
                holder[0] = apply_updates(current, updates, int(batch.row_ids_N.numel()))
                bar.update(int(batch.row_ids_N.numel()))
                if time.monotonic() - last_save > SAVE_EVERY_S:
                    save(holder[0])
                    last_save = time.monotonic()
    except BaseException as error:
        bar.close()
        if holder[0].position > 0:
            folder = save(holder[0])
            if isinstance(error, KeyboardInterrupt):
                done = holder[0].tokens
                raise DashboardsInterrupted(
                    f"interrupted after {done:,} of {total:,} tokens; the pass so far is saved in {folder}: "
                    f"{run_again('crosslens dashboards', replacing)} to continue it",
                    signum=getattr(error, "signum", 2),
                ) from None
        raise
    bar.close()
    return holder[0]


# --------------------------------------------------------------------------- one call
def _compute(
    run_dir: Path, crosscoder: Any, source: TokenSource, config: DashboardsConfig, device, progress: bool
) -> Path:
    record = metadata_value(crosscoder, "suite") or {}
    F, S = int(crosscoder.cfg.d_sae), int(crosscoder.cfg.n_snapshots)
    revisions = [str(entry.get("revision")) for entry in record.get("snapshots") or []] or [
        f"snapshot{s}" for s in range(S)
    ]
    tokenizer = source_suite(source).tokenizer()
    budget = resolve_budget(config, F, S, vocab_size=len(tokenizer))
    causal = read_causal(find_tables(run_dir, config.attribution), run_dir, revisions, crosscoder)
    for name in unread_sections(run_dir, [task[0] for task in causal.tasks]):
        print(
            f"note: {run_dir} has an attribution section for {name} but no IE table of it was found; pass its "
            "`crosslens attribute --out` file with --attribution for its causal scores"
        )
    plan, total = source.plan(int(config.n_tokens or DEFAULT_N_TOKENS), int(config.batch_size))
    settings = {**budget.to_dict(), "n_tokens": total, "batch_size": int(config.batch_size), "seed": int(config.seed)}
    emergence = run_emergence(run_dir)  # refused here, before the pass, where it is of another crosscoder
    # the emergence check fills the database's emergence tables, not the pass: a pass stopped before
    # `crosslens analyze` wrote it again goes on, and the database reads the check written last
    inputs = {"partners": partners(run_dir, source, record, causal), "settings": settings}
    database = run_dir / schema.DATABASE_NAME
    if existing_database(run_dir, inputs, config.overwrite) == "current":
        print(
            f"feature database: {database} is up to date (same run, tokens and budget); pass --overwrite to compute it again"
        )
        return database
    state = load_partial(run_dir, inputs, device, config.overwrite)
    predicted = predict_database_bytes(F, S, budget, vocab_size=len(tokenizer), n_causal_rows=len(causal.causal))
    print(
        f"dashboards: {F:,} features x {S} snapshots (and the crosscoder's own code) over {total:,} tokens; per feature "
        f"and snapshot the top {budget.top_k} and {budget.n_quantile} quantile contexts of +-{budget.window} tokens, "
        f"{budget.n_logits} logits each way; predicted database size at most {format_size(predicted)}"
    )
    if state is not None:
        print(f"continuing the saved pass at {state.tokens:,} of {total:,} tokens")
    logits = snapshot_logits(crosscoder, source, budget.n_logits, device)  # each model once, before the long pass
    readings = Readings(crosscoder)
    start = state or PassState.empty(
        readings.n_readings, F, budget.top_k, budget.reservoir, budget.window, budget.n_bins, device
    )
    state = run_pass(
        source,
        readings,
        start,
        plan,
        budget,
        seed=int(config.seed),
        device=device,
        total=total,
        progress=progress,
        save=lambda s: save_partial(run_dir, s, inputs),
        replacing="--overwrite" if config.overwrite else None,
    )
    if state.position > start.position:
        save_partial(run_dir, state, inputs)  # the pass is kept until its database is sealed
    if emergence_sha256(run_dir) != emergence[1]:  # written again during the pass
        emergence = run_emergence(run_dir)
    content = _content(crosscoder, source, state, budget, causal, revisions, tokenizer, inputs, logits, emergence)
    tmp = run_dir / f".{schema.DATABASE_NAME}.tmp"
    write_database(tmp, content)
    (run_dir / schema.RECORD_NAME).unlink(missing_ok=True)
    os.replace(tmp, database)
    write_record(run_dir, {**inputs["partners"], "emergence": emergence[1]}, settings, state.tokens)
    remove_partial(run_dir)
    print(
        f"feature database: {database}, {format_size(database.stat().st_size)} (predicted at most {format_size(predicted)})"
    )
    return database


def source_suite(source: TokenSource) -> Any:
    return source.source.suite if isinstance(source, StreamTokens) else source.suite  # type: ignore[attr-defined]


@torch.inference_mode()
def _content(
    crosscoder, source, state, budget, causal, revisions, tokenizer, inputs, logits, emergence
) -> DatabaseContent:
    from crosslens.analysis.diffing import set_diffing_classes
    from crosslens.analysis.evolution_analysis import EvolutionAnalysis

    stats = ReadingStats.of(state)
    result = emergence[0]
    # classed dead by the firing the emergence check was made with (analyze's sample), where it holds one,
    # so that a latent is not dead in the report and the check but persistent here; the densities are the pass's
    frequency = stats.frequency() if result is None or result.frequency is None else result.frequency
    analysis = EvolutionAnalysis.from_crosscoder(crosscoder, frequency=frequency)
    # a base model and its fine-tune: no training order for classes through time
    diffing = set_diffing_classes(analysis, crosscoder, result)
    verdicts = None if diffing is None or diffing.latent_scaling is None else diffing.latent_scaling.verdicts
    table_QL = source.token_table().numpy()
    top, quantile = top_contexts(state, table_QL, budget.window), quantile_contexts(state, table_QL, budget)
    pieces = vocabulary_pieces(tokenizer)
    meta = {**_meta(crosscoder, inputs, state, budget, revisions), "emergence": emergence_meta(*emergence)}
    events, members = lineage_rows(result)
    return DatabaseContent(
        meta=meta,
        snapshots=snapshot_rows(analysis, revisions),
        vocabulary=pieces,
        features=feature_rows(analysis, stats, causal.relevance_F),
        feature_snapshots=feature_snapshot_rows(analysis, stats, state.hist_SFB.cpu().numpy(), logits),
        contexts=context_rows(top, quantile),
        tasks=causal.tasks,
        causal=causal.causal,
        search=search_texts(top, pieces),
        emergence=emergence_rows(result, verdicts),
        emergence_snapshots=emergence_snapshot_rows(result),
        lineage_events=events,
        lineage_members=members,
        relatives=relative_rows(result),
    )


@torch.inference_mode()
def snapshot_logits(crosscoder: Any, source: TokenSource, n_logits: int, device) -> list[tuple]:
    """Each snapshot's logit effects (:func:`logit_effects`), its model loaded once; a store's suite
    whose snapshot is not the crosscoder's is refused."""
    from crosslens.activations.partners import snapshot_problem

    recorded = (metadata_value(crosscoder, "suite") or {}).get("snapshots") or []
    out = []
    for s, model in source.snapshot_models(device):
        info = getattr(model, "crosslens_snapshot", None)
        if isinstance(source, StoreTokens) and info is not None and s < len(recorded):
            problem = snapshot_problem([recorded[s]], [info.to_dict()], require_identity=False)
            if problem:
                raise DashboardsError(
                    f"the suite's {problem}, not the crosscoder's; pass the suite it was trained on (--suite)"
                )
        out.append(logit_effects(model, raw_directions(crosscoder, s).to(device), n_logits))
    return out


def _meta(crosscoder: Any, inputs: dict, state: PassState, budget: Budget, revisions: list[str]) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        crosslens_version = version("crosslens")
    except PackageNotFoundError:
        crosslens_version = "unknown"
    cfg, partners = crosscoder.cfg, inputs["partners"]
    return {
        "format": schema.FORMAT,
        "crosslens_version": crosslens_version,
        "run": partners["run"],
        "crosscoder": {
            "architecture": cfg.architecture(),
            "d_sae": int(cfg.d_sae),
            "d_in": int(cfg.d_in),
            "n_snapshots": int(cfg.n_snapshots),
            "hook_name": metadata_value(crosscoder, "hook_name"),
            "weights_sha256": partners["crosscoder"],
        },
        "suite": {
            "family": (metadata_value(crosscoder, "suite") or {}).get("family"),
            "model_id": partners["suite"]["model_id"],
            "snapshots": revisions,
        },
        "tokens": partners["tokens"],
        "n_tokens": state.tokens,
        "budget": {"n_tokens": state.tokens, **budget.to_dict(), "seed": inputs["settings"]["seed"]},
        "histogram_edges": [float(e) for e in state.edges_B1.cpu().tolist()],
        "activation": "per-snapshot mode (SnapshotCodec.encode_single) at snapshots 0..S-1, the crosscoder's own code at -1",
        "attribution": partners["attribution"],
    }
