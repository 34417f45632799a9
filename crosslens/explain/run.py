"""``crosslens explain RUN``: every selected feature explained at its code and at each phase of its
life, each explanation scored, and the drift between phases, from what ``crosslens dashboards``
stored (no activation is computed again).

Work is planned one feature at a time (:func:`crosslens.explain.contexts.plan_feature`) and sent
through at most ``concurrency`` requests at once: a feature's explanations first, each one's
detection scores as soon as it is stored (so a feature is finished, and its drift known, while the
next ones are asked for). Everything stored is skipped when the same command runs again, so
Ctrl-C and the same command ask nothing twice; failed requests are recorded and asked again by the
next run. :func:`dry_run` counts what a run would send and sends nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosslens.core.errors import run_again
from crosslens.core.progress import progress_bar
from crosslens.dashboards.config import DashboardsError
from crosslens.dashboards.explanation_schema import EXPLANATIONS_NAME
from crosslens.dashboards.record import open_database, read_record
from crosslens.dashboards.schema import DATABASE_NAME
from crosslens.explain.client import Traffic, public_url
from crosslens.explain.config import ExplainConfig, ExplainError
from crosslens.explain.contexts import (
    FeatureContexts,
    FeaturePlan,
    Judged,
    held_out_passages,
    plan_feature,
    score_prompt,
)
from crosslens.explain.kept import SOURCE, refuse_other_models, warn_of_other_passages
from crosslens.explain.prompts import (
    PROMPT_FORMAT,
    AnswerError,
    detect_messages,
    estimate_tokens,
    explain_messages,
    parse_explanation,
    parse_judgements,
)
from crosslens.explain.scoring import DriftRule, detection
from crosslens.explain.store import Binding, ExplanationStore, group_explanations, refused, store_problem

ASKS = 2
"""Times one explanation or score is asked for within a run: an answer that cannot be read is asked once more."""

ASSUMED_EXPLANATION = "a short phrase of about twelve words naming what the feature responds to in text"
"""Stands for an explanation not yet written when a dry run counts the tokens of its detection prompts."""


@dataclass
class Work:
    """One request to make: an explanation of a reading, or a score of one on a reading."""

    kind: str
    plan: FeaturePlan
    snapshot: int
    source: str = SOURCE
    scored_on: int | None = None
    explanation: tuple[int, str] | None = None
    """(id, text) of the explanation a score judges."""
    judged: Judged | None = None


@dataclass
class Timer:
    """crosslens's own time (planning, prompts, parsing, writes), apart from waiting for answers;
    a timed block inside another counts once."""

    seconds: float = 0.0
    depth: int = 0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        started = time.perf_counter()
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                self.seconds += time.perf_counter() - started


@dataclass
class Summary:
    """What a run (or a dry run) did, or would do."""

    features: int = 0
    explain_requests: int = 0
    score_requests: int = 0
    traffic: Traffic = field(default_factory=Traffic)
    """What the endpoint was sent and answered (a dry run: the prompt tokens it would be sent, estimated)."""
    unscorable: int = 0
    """Scores not asked: the reading to judge has no held-out silent stretch (or no held-out activating context)."""
    failures: int = 0
    """Explanations and scores this run asked for and did not get (each a row of the failures table): what the
    same command asks for again. The file's other failures are of features, phases or scores it does not ask."""
    stored: dict[str, int] = field(default_factory=dict)
    own_seconds: float = 0.0
    wall_seconds: float = 0.0
    mean_in_flight: float = 0.0


class Explainer:
    """One run's selection of features, its feature database and its explanations file."""

    def __init__(self, run_dir: str | Path, config: ExplainConfig) -> None:
        self.run_dir, self.config = Path(run_dir), config
        try:
            open_database(self.run_dir).close()  # every check of the feature database, once
            record = read_record(self.run_dir)
        except DashboardsError as error:
            raise ExplainError(str(error)) from None
        # read from the thread that sends the requests, which may not be this one (run_async)
        uri = f"{(self.run_dir / DATABASE_NAME).resolve().as_uri()}?mode=ro"
        self.database = sqlite3.connect(uri, uri=True, check_same_thread=False)
        try:
            self._read(record)
        except BaseException:  # a refused run (too many snapshots) leaves no connection open behind it
            self.database.close()
            raise

    def _read(self, record: dict[str, Any]) -> None:
        """What the run reads from its feature database and sealed ``record``, once."""
        config = self.config
        self.contexts = FeatureContexts(self.database)
        self.n_features = self.database.execute("SELECT count(*) FROM features").fetchone()[0]
        budget = self._meta("budget") or {}
        self.span = max(1, int(budget.get("window") or 6))
        self.score_prompt = score_prompt(self.span, config.n_examples, config.seed)
        """``scores.prompt`` of this run's scores: the prompt format and what chooses the passages judged."""
        self.binding = Binding(
            database_sha256=record.get("database_sha256"),
            run=(record.get("partners") or {}).get("run"),
            n_features=self.n_features,
            n_snapshots=self.contexts.n_snapshots,
        )
        # the weights sha256 of the crosscoder whose features the database numbers: explanations
        # imported from an export of another crosscoder describe other features under the same numbers
        made_for = (self._meta("crosscoder") or {}).get("weights_sha256")
        self.crosscoder: str | None = made_for or (record.get("partners") or {}).get("crosscoder")
        self.rule = DriftRule(config.drift_min_score, config.drift_min_drop)
        self.timer = Timer()

    def _meta(self, key: str) -> Any:
        row = self.database.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def close(self) -> None:
        self.database.close()

    # ------------------------------------------------------------------ selection and plans
    def selected(self) -> list[tuple[int, int | None, int | None]]:
        """(feature, emergence snapshot, peak snapshot) of the features to explain, lowest ids first."""
        config, args = self.config, []
        known = {row[0] for row in self.database.execute("SELECT DISTINCT class FROM features")}
        unknown = sorted(set(config.classes or ()) - known)
        if unknown:
            raise ExplainError(f"--classes {','.join(unknown)}: this run's classes are {', '.join(sorted(known))}")
        if config.classes:
            where = [f"class IN ({', '.join('?' * len(config.classes))})"]
            args += list(config.classes)
        else:
            where = ["class != 'dead'"]
        if config.features:
            beyond = [high for _, high in config.features if high >= self.n_features]
            if beyond:
                raise ExplainError(
                    f"--features names feature {beyond[0]}; this run has features 0 to {self.n_features - 1}"
                )
            where.append("(" + " OR ".join("feature BETWEEN ? AND ?" for _ in config.features) + ")")
            args += [bound for pair in config.features for bound in pair]
        limit = f" LIMIT {int(config.max_features)}" if config.max_features else ""
        sql = f"SELECT feature, emergence_snapshot, peak_snapshot FROM features WHERE {' AND '.join(where)} ORDER BY feature"
        return self.database.execute(sql + limit, args).fetchall()

    def plans(self, selected: list, stored: dict) -> Iterator[FeaturePlan]:
        """Each selected feature's plan, with the readings of explanations stored for it."""
        for feature, emergence, peak in selected:
            extra = sorted({snapshot for snapshot, _ in stored.get(feature, {})})
            with self.timer():
                plan = plan_feature(self.contexts, feature, emergence, peak, self.config.phases, extra)
            yield plan

    def works(self, plan: FeaturePlan, stored: dict, scored: set) -> tuple[list[Work], int]:
        """The requests a feature still needs (explanations missing; scores of stored explanations
        missing), and how many of its scores cannot be asked. ``stored``: feature -> {(snapshot,
        source): (id, text)}."""
        mine = stored.get(plan.feature, {})
        works = [Work("explain", plan, s) for s in plan.explained if (s, SOURCE) not in mine]
        unscorable = 0
        for (snapshot, source), explanation in sorted(mine.items()):
            if snapshot not in plan.readings:
                continue
            more, missing = self.score_works(plan, snapshot, source, explanation, scored)
            works += more
            unscorable += missing
        return works, unscorable

    def score_works(
        self, plan: FeaturePlan, snapshot: int, source: str, explanation: tuple[int, str], scored: set
    ) -> tuple[list[Work], int]:
        """The scores an explanation still needs, and how many of its targets cannot be scored."""
        works, missing = [], 0
        for target in plan.targets(snapshot, self.config.drift):
            if (explanation[0], target) in scored or target not in plan.readings:
                continue
            judged = self.judged(plan, target)
            if judged is None:
                missing += 1
                continue
            works.append(Work("score", plan, snapshot, source, target, explanation, judged))
        return works, missing

    def judged(self, plan: FeaturePlan, reading: int) -> Judged | None:
        if reading not in plan.judged:
            with self.timer():
                plan.judged[reading] = held_out_passages(
                    plan.readings[reading], self.span, self.config.n_examples, self.config.seed, plan.feature
                )
        return plan.judged[reading]

    def messages(self, work: Work) -> list[dict[str, str]]:
        with self.timer():
            if work.kind == "explain":
                return explain_messages([c.window for c in work.plan.readings[work.snapshot].shown])
            assert work.explanation is not None and work.judged is not None
            return detect_messages(work.explanation[1], work.judged.passages)


def dry_run(run_dir: str | Path, config: ExplainConfig) -> Summary:
    """What ``crosslens explain`` would send for ``config``, counted without sending anything:
    requests, and prompt tokens estimated at 4 characters a token (the endpoint's tokenizer is not
    at hand); detection prompts of explanations not yet written are counted with a twelve-word one.
    With ``config.overwrite`` nothing stored counts (the run deletes it); without it, an explanations
    file the run would refuse is refused here too."""
    explainer = Explainer(run_dir, config)
    try:
        selected = explainer.selected()
        stored, scored = ({}, set()) if config.overwrite else read_stored(explainer.run_dir, explainer.binding)
        refuse_other_models(explainer.run_dir / EXPLANATIONS_NAME, selected, config)
        warn_of_other_passages(explainer.run_dir / EXPLANATIONS_NAME, selected, config, explainer.score_prompt)
        summary = Summary(
            features=len(selected), stored=dict(explanations=sum(map(len, stored.values())), scores=len(scored))
        )
        for plan in explainer.plans(selected, stored):
            works, unscorable = explainer.works(plan, stored, scored)
            summary.unscorable += unscorable
            for work in works:
                count_dry(explainer, work, summary, scored)
        return summary
    finally:
        explainer.close()


def count_dry(explainer: Explainer, work: Work, summary: Summary, scored: set) -> None:
    """Add ``work`` to a dry run's counts (an explanation with the scores it would lead to)."""
    summary.traffic.prompt_tokens += estimate_tokens(explainer.messages(work))
    if work.kind == "score":
        summary.score_requests += 1
        return
    summary.explain_requests += 1
    assumed = (-1, ASSUMED_EXPLANATION)
    more, missing = explainer.score_works(work.plan, work.snapshot, SOURCE, assumed, scored)
    summary.unscorable += missing
    for follow in more:
        summary.score_requests += 1
        summary.traffic.prompt_tokens += estimate_tokens(explainer.messages(follow))


def read_stored(run_dir: Path, binding: Binding) -> tuple[dict, set]:
    """The explanations (grouped by feature) and scores already in RUN/explanations.sqlite, read
    without opening it for writing; :class:`ExplainError` where a run would refuse the file."""
    path = run_dir / EXPLANATIONS_NAME
    problem = store_problem(path, binding)
    if problem is not None:
        raise refused(path, problem)
    if not path.is_file():
        return {}, set()
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        stored = group_explanations(connection.execute("SELECT feature, snapshot, source, id, text FROM explanations"))
        return stored, set(connection.execute("SELECT explanation, scored_on FROM scores"))
    except sqlite3.DatabaseError as error:
        raise refused(path, f"not a readable SQLite file ({error})") from None
    finally:
        connection.close()


def explain_run(run_dir: str | Path, config: ExplainConfig) -> Summary:
    """Ask for every missing explanation and score of the selected features, storing each as it
    arrives into ``RUN/explanations.sqlite``; returns what was done. Raises :class:`ExplainError`
    (or its :class:`~crosslens.explain.client.EndpointError`) naming the fix, before anything is
    written where it can; on Ctrl-C it stores what was answered and raises KeyboardInterrupt saying so,
    and on any other error it stores what was answered and raises ExplainError naming the error."""
    from crosslens.explain.client import Endpoint

    explainer = Explainer(run_dir, config)
    session = None
    try:
        selected = explainer.selected()  # a typo in --features or --classes, before --overwrite deletes the file
        endpoint = Endpoint(config)
        path = explainer.run_dir / EXPLANATIONS_NAME
        problem = None if config.overwrite else store_problem(path, explainer.binding)
        if problem is not None:
            raise refused(path, problem)
        session = Session(explainer, endpoint, selected)
        again = run_again(replacing="--overwrite" if config.overwrite else None)
        try:
            summary = run_async(session.run)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"interrupted: {session.kept(path)}; {again} to go on (nothing stored is asked again)"
            ) from None
        except ExplainError:
            raise
        except Exception as error:  # a run stopped by the unforeseen still says what it kept
            what = " ".join(endpoint.redact(str(error)).split())
            raise ExplainError(
                f"stopped by {type(error).__name__}: {what}; {session.kept(path)}; once that is fixed, {again} "
                "to go on (nothing stored is asked again)"
            ) from error
        session.store.close(compact=summary.stored.get("failures") == 0)
        session.store = None
        warn_of_other_passages(path, selected, config, explainer.score_prompt)  # once the endpoint took the run
        return summary
    finally:
        if session is not None and session.store is not None:
            session.store.close()
        explainer.close()


def run_async(start: Callable[[], Awaitable[Summary]]) -> Summary:
    """``asyncio.run(start())``; where an event loop already runs in this thread (a Jupyter
    kernel), in a thread of its own, which Ctrl-C (the kernel's interrupt) stops as it stops a run."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(start())
    loop = asyncio.new_event_loop()
    task = loop.create_task(start())
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = loop.run_until_complete(task)
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = error
        finally:
            loop.close()

    thread = threading.Thread(target=target, name="crosslens-explain", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        loop.call_soon_threadsafe(task.cancel)
        thread.join()
        raise
    if isinstance(outcome.get("error"), asyncio.CancelledError):
        raise KeyboardInterrupt
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class Session:
    """One run's requests, sent through the endpoint from an asyncio loop."""

    def __init__(self, explainer: Explainer, endpoint: Any, selected: list[tuple[int, int | None, int | None]]) -> None:
        self.explainer, self.endpoint, self.selected = explainer, endpoint, selected
        self.store: ExplanationStore | None = None
        """Opened once the endpoint has answered (a refusal leaves the explanations file as it was)."""
        self.config = explainer.config
        self.summary = Summary()
        self.pending: dict[int, int] = {}
        self.order = itertools.count()
        self.queue: asyncio.PriorityQueue = asyncio.PriorityQueue()
        self.bar: Any = None
        self.endpoint_recorded = False

    async def run(self) -> Summary:
        started = time.perf_counter()
        explainer = self.explainer
        try:
            await self.endpoint.preflight()
            # after the endpoint said it serves the model (a typo is named as that), before any request
            refuse_other_models(explainer.run_dir / EXPLANATIONS_NAME, self.selected, self.config)
            self.store = self.open_store()
            with explainer.timer():
                self.stored, self.scored = self.store.explanations(), self.store.scores()
            self.summary.features = len(self.selected)
            self.bar = progress_bar(total=len(self.selected), desc="explain", unit="feature", show=self.config.progress)
            await self.drive(self.selected)
        finally:
            if self.bar is not None:
                self.bar.close()
            if self.store is not None:
                self.store.commit()
            await self.endpoint.close()
        return self.finish(started)

    def kept(self, path: Path) -> str:
        """What a stopped run stored, for its message."""
        try:
            counts = self.store.counts() if self.store is not None else {"explanations": 0, "scores": 0}
        except sqlite3.Error:
            return f"what was answered before is stored in {path}"
        return f"{counts['explanations']} explanations and {counts['scores']} scores are stored in {path}"

    def open_store(self) -> ExplanationStore:
        config = self.config
        store = ExplanationStore(self.explainer.run_dir, self.explainer.binding, overwrite=config.overwrite)
        store.set_meta({"prompt_format": PROMPT_FORMAT})
        with self.explainer.timer():
            store.set_drift_rule(self.explainer.rule)
        return store

    def record_endpoint(self) -> None:
        """``meta.endpoint``: the endpoint and model this run asks, written with its first request,
        so that a run that asks nothing leaves the record of the one that wrote the answers."""
        if not self.endpoint_recorded:
            with self.explainer.timer():
                self.store.set_meta(
                    {"endpoint": {"url": public_url(self.config.endpoint or ""), "model": self.config.model}}
                )
            self.endpoint_recorded = True

    def finish(self, started: float) -> Summary:
        summary = self.summary
        summary.wall_seconds = time.perf_counter() - started
        summary.traffic = traffic = self.endpoint.traffic
        summary.own_seconds = self.explainer.timer.seconds  # the store's writes happen inside timed blocks
        summary.mean_in_flight = traffic.in_flight_seconds / summary.wall_seconds if summary.wall_seconds else 0.0
        summary.stored = self.store.counts()
        return summary

    async def drive(self, selected: list) -> None:
        """Plan features as room frees up; stop at the first error that fails every request."""
        loop = asyncio.get_running_loop()
        fatal: asyncio.Future = loop.create_future()
        room = asyncio.Event()
        workers = [asyncio.create_task(self.worker(fatal, room)) for _ in range(self.config.concurrency)]

        async def produce() -> None:
            for plan in self.explainer.plans(selected, self.stored):
                self.add_feature(plan)
                while self.queue.qsize() >= 4 * self.config.concurrency:
                    room.clear()
                    await room.wait()
            await self.queue.join()

        producer = asyncio.create_task(produce())
        try:
            await asyncio.wait({producer, fatal}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*workers, producer):
                task.cancel()
            await asyncio.gather(*workers, producer, return_exceptions=True)
        if fatal.done():
            raise fatal.exception()  # type: ignore[misc]
        producer.result()

    def add_feature(self, plan: FeaturePlan) -> None:
        with self.explainer.timer():
            self.store.set_phases(plan)
            works, unscorable = self.explainer.works(plan, self.stored, self.scored)
        self.summary.unscorable += unscorable
        self.pending[plan.feature] = 0
        for work in works:
            self.put(work)
        if not works:
            self.feature_done(plan.feature)

    def put(self, work: Work) -> None:
        self.pending[work.plan.feature] += 1
        self.queue.put_nowait((0 if work.kind == "score" else 1, next(self.order), work))

    def feature_done(self, feature: int) -> None:
        with self.explainer.timer():
            self.store.update_drift([feature], self.explainer.rule)
        del self.pending[feature]
        self.bar.update(1)
        traffic = self.endpoint.traffic
        self.bar.set_postfix(
            requests=traffic.sent, failed=traffic.failed, tokens=traffic.prompt_tokens + traffic.completion_tokens
        )

    async def worker(self, fatal: asyncio.Future, room: asyncio.Event) -> None:
        """Send the queued works one at a time; any error stops the run through ``fatal`` (a worker
        that ended otherwise would leave the producer waiting for its works forever)."""
        while True:
            _, _, work = await self.queue.get()
            room.set()
            try:
                await (self.explain(work) if work.kind == "explain" else self.score(work))
                self.pending[work.plan.feature] -= 1
                if self.pending[work.plan.feature] == 0 and not fatal.done():
                    self.feature_done(work.plan.feature)
            except Exception as error:  # noqa: BLE001 - drive raises it, stopping the run
                if not fatal.done():
                    fatal.set_exception(error)
                return
            finally:
                self.queue.task_done()

    async def ask(self, work: Work, parse: Any) -> tuple[Any, Any] | None:
        """The parsed answer to ``work`` (asked once more if it cannot be read), or None with the
        failure recorded."""
        from crosslens.explain.client import RequestFailed

        self.record_endpoint()
        messages = self.explainer.messages(work)
        error = ""
        for _ in range(ASKS):
            try:
                answer = await self.endpoint.ask(messages)
            except RequestFailed as failed:
                error = str(failed)
                break
            try:
                with self.explainer.timer():
                    return parse(answer), answer
            except AnswerError as bad:
                error = self.endpoint.redact(str(bad))
        target = work.snapshot if work.scored_on is None else work.scored_on
        with self.explainer.timer():
            self.store.add_failure(work.plan.feature, work.snapshot, work.kind, target, work.source, error)
        self.summary.failures += 1
        return None

    async def explain(self, work: Work) -> None:
        self.summary.explain_requests += 1
        found = await self.ask(work, lambda answer: parse_explanation(answer.text))
        if found is None:
            return
        text, answer = found
        with self.explainer.timer():
            reading = work.plan.readings[work.snapshot]
            row_id, _ = self.store.add_explanation(
                work.plan.feature,
                work.snapshot,
                SOURCE,
                text,
                model=self.config.model,
                prompt=PROMPT_FORMAT,
                examples=reading.examples,
                tokens=(answer.prompt_tokens, answer.completion_tokens),
            )
            more, missing = self.explainer.score_works(work.plan, work.snapshot, SOURCE, (row_id, text), self.scored)
        self.summary.unscorable += missing
        for follow in more:
            self.put(follow)

    async def score(self, work: Work) -> None:
        self.summary.score_requests += 1
        assert work.judged is not None and work.explanation is not None and work.scored_on is not None
        judged = work.judged
        found = await self.ask(work, lambda answer: parse_judgements(answer.text, len(judged.passages)))
        if found is None:
            return
        predictions, _ = found
        with self.explainer.timer():
            counts = detection(judged.activating, predictions)
            self.store.add_score(
                work.explanation[0],
                work.plan.feature,
                work.scored_on,
                counts,
                model=self.config.model,
                prompt=self.explainer.score_prompt,
            )
