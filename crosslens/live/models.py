"""A run's crosscoder and its suite's snapshot models, asked about your own text and steered, from
Python and for the browser's live panels (:class:`LiveModels`).

Nothing loads when the object is made. :meth:`LiveModels.prepare` (or the first question) loads the
crosscoder, finds its suite (the one it records, or the one handed over) and checks it against the
crosscoder's record; the snapshot models load as questions need them (:mod:`crosslens.live.resident`).
Questions are computed one at a time, on one worker thread of their own: a model is never loaded
twice by two questions at once nor runs two requests' hooks at once, and the tensors of every
question come from one thread's heap (a server's many request threads would each keep their own).
A question of a ``kind`` (the browser's text, heatmap, steering) takes the place of one of its kind
still waiting its turn, whose asker is told so: a page asks again as its reader types, and only the
newest answer is drawn. :meth:`LiveModels.close` refuses the questions waiting and lets the models
go. :meth:`LiveModels.status` answers without waiting.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from crosslens.activations.partners import crosscoder_record_problem, snapshot_problem
from crosslens.activations.tokens import MAX_UNKNOWN_SHARE, unknown_share, unknown_words
from crosslens.checkpoints.identity import snapshot_identity
from crosslens.checkpoints.suite import CheckpointSuite
from crosslens.core.bounds import whole_number
from crosslens.core.devices import model_dtype, resident_bytes, resolve_device, resolve_dtype
from crosslens.core.errors import (
    CrosslensError,
    LiveInputError,
    LiveMismatchError,
    LiveSupersededError,
    LiveUnavailableError,
)
from crosslens.core.hashing import crosscoder_sha256
from crosslens.core.metadata import CFG_NAME, metadata_value
from crosslens.core.paths import FINAL_DIRNAME, final_weights
from crosslens.crosscoders.saved import load_crosscoder_folder
from crosslens.dashboards.logits import vocabulary_pieces
from crosslens.dashboards.readings import Readings
from crosslens.dashboards.sources import recorded_suite
from crosslens.live.config import (
    RETRY,
    STEER_MODE,
    STEER_SEED,
    STEER_TEMPERATURE,
    STEER_TOKENS,
    LiveConfig,
    limits,
    snapshot_list,
    steering_settings,
)
from crosslens.live.resident import ResidentModels
from crosslens.live.steering import SteeredSnapshot, Steering, continue_twice, direction, steering_hook
from crosslens.live.text import TextActivations, text_codes
from crosslens.training.runfolder import norm_factors_problem

T = TypeVar("T")

SUITE_FIX = (
    "pass the suite the crosscoder was trained on (crosslens browse --suite FOLDER|HUB_ID, "
    "suite=CheckpointSuite.local(FOLDER) in Python)"
)


@dataclass
class _Opened:
    """What :meth:`LiveModels.prepare` loads once."""

    crosscoder: Any
    weights_sha256: str
    """The sha256 of the weights file as it was loaded (:func:`~crosslens.core.hashing.crosscoder_sha256`)."""
    readings: Readings
    models: ResidentModels
    hook: str
    steps: tuple[int, ...]
    pieces: list[str]
    bos: int
    base_bytes: int


class LiveModels:
    """``run_dir``'s crosscoder (``RUN/final``) and its suite's snapshot models, for questions about a text.

    Args:
        run_dir: a finished ``crosslens train`` run folder.
        suite: the suite to load the snapshot models from (a :class:`~crosslens.checkpoints.CheckpointSuite`);
            default: the one the crosscoder records. Its snapshots must be the crosscoder's.
        device: where the models and the crosscoder run (default: CUDA when there is a GPU).
        dtype: the snapshot models' dtype (default: bfloat16 on CUDA, as a harvest's, else float32:
            :func:`~crosslens.core.devices.model_dtype`, which ``crosslens browse`` reads too); the
            crosscoder stays float32.
        config: the bound on resident models and the requests' limits (:class:`~crosslens.live.LiveConfig`).
        fix: the advice a suite that cannot be loaded ends with.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        suite: Any = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        config: LiveConfig | None = None,
        fix: str = SUITE_FIX,
    ) -> None:
        if suite is not None and not isinstance(suite, CheckpointSuite):
            raise LiveInputError(_suite_problem(suite))
        self.run_dir = Path(run_dir)
        self.config = config if config is not None else LiveConfig()
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(model_dtype(str(self.device), dtype))
        self.fix = fix
        self._suite = suite
        self._lock = threading.Lock()
        self._queue = threading.Lock()
        """Guards the worker (made on the first question after :meth:`close`) and the questions asked."""
        self._worker: ThreadPoolExecutor | None = None
        self._asked: set[Future] = set()
        self._waiting: dict[str, Future] = {}
        """The newest question of each kind (which a newer one cancels where it has not started)."""
        self._superseded: set[Future] = set()
        self._opened: _Opened | None = None
        self._refusal: str | None = None
        """Why the models are not the crosscoder's, once checked: every later question is refused so."""
        self._failure: str | None = None
        """Why the last question could not load what it needed (tried again by the next one)."""
        self._phase = "idle"
        self._texts: OrderedDict[str, TextActivations] = OrderedDict()

    # ------------------------------------------------------------------ opening
    def prepare(self) -> None:
        """Load the crosscoder and find its suite, checked against its record (no snapshot model
        loads yet). Raises :class:`~crosslens.core.errors.LiveUnavailableError` naming the fix: where
        the suite was found not to be the crosscoder's (:class:`~crosslens.core.errors.LiveMismatchError`),
        the same again on every later question; where a file could not be read, this once. With the
        models already open it clears the last question's failure to load: a page prepares before it
        offers the panels again, and the next question loads afresh what that one could not."""
        if self._refusal is not None:
            raise LiveMismatchError(self._refusal)
        if self._opened is None:
            self._ask(lambda opened: None)
        else:
            self._failure = None  # the next question loads again what the last one could not

    def _ask(self, question: Callable[[_Opened], T], kind: str | None = None) -> T:
        """``question(opened)``, computed on the worker thread after any question asked before it. A
        question of a ``kind`` cancels the one of its kind still waiting, whose asker gets
        :class:`~crosslens.core.errors.LiveSupersededError`."""
        with self._queue:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crosslens-live")
            future = self._worker.submit(self._answer, question)
            self._asked.add(future)
            older = self._waiting.pop(kind, None) if kind is not None else None
            if kind is not None:
                self._waiting[kind] = future
            if older is not None:
                self._superseded.add(older)  # before its asker can see it cancelled
                if not older.cancel():  # it has started: it is answered
                    self._superseded.discard(older)
        try:
            return future.result()
        except CancelledError:
            with self._queue:
                superseded = future in self._superseded
            if superseded:
                raise LiveSupersededError(
                    "a newer question of its kind, from the same asker, came before this one's turn; it is answered instead"
                ) from None
            raise LiveUnavailableError(
                "the live models were closed before this question's turn came; ask again"
            ) from None
        finally:
            with self._queue:
                self._asked.discard(future)
                self._superseded.discard(future)
                if kind is not None and self._waiting.get(kind) is future:
                    del self._waiting[kind]

    def _answer(self, question: Callable[[_Opened], T]) -> T:
        """On the worker: the models opened, ``config.threads`` CPU threads; a suite found not to be
        the crosscoder's makes every later question refused the same way, a failure to load only
        this one (the status says it until a question gets through, or :meth:`prepare` finds the
        models open)."""
        with self._lock:
            try:
                opened = self._open()
                with self._threads():
                    answer = question(opened)
            except LiveMismatchError as error:
                self._refusal = str(error)
                raise
            except LiveUnavailableError as error:
                self._failure = str(error)
                raise
            self._failure = None
            return answer

    def _open(self) -> _Opened:
        if self._refusal is not None:
            raise LiveMismatchError(self._refusal)
        if self._opened is not None:
            return self._opened
        self._phase = "loading the crosscoder"
        try:
            self._opened = self._load()
        finally:
            self._phase = "idle"
        return self._opened

    def _load(self) -> _Opened:
        final = self.run_dir / FINAL_DIRNAME
        if not (final / CFG_NAME).is_file():
            raise LiveUnavailableError(_no_crosscoder(self.run_dir))
        problem = norm_factors_problem(self.run_dir)
        if problem is not None:
            raise LiveUnavailableError(problem)
        base = resident_bytes() or 0
        try:
            sha = crosscoder_sha256(self.run_dir) if final_weights(self.run_dir).is_file() else None
            crosscoder = load_crosscoder_folder(final, device=str(self.device), dtype="float32").eval()
            if sha is None or crosscoder_sha256(self.run_dir) != sha:  # written while it loaded: not the hashed bytes
                raise LiveUnavailableError(f"the crosscoder in {final} changed while it was loaded; {RETRY}")
        except (CrosslensError, FileNotFoundError) as error:
            raise LiveUnavailableError(str(error)) from None
        except OSError as error:
            raise LiveUnavailableError(
                f"the crosscoder in {final} could not be read ({' '.join(str(error).split())}); {RETRY}"
            ) from None
        problem = crosscoder_record_problem(crosscoder)
        if problem:
            raise LiveUnavailableError(f"the crosscoder in {final} {problem}, so its snapshot models cannot be found")
        record, hook = metadata_value(crosscoder, "suite"), metadata_value(crosscoder, "hook_name")
        suite = self._checked_suite(record)
        models = ResidentModels(
            suite,
            record["snapshots"],
            hook,
            crosscoder.cfg.d_in,
            device=self.device,
            dtype=self.dtype,
            capacity=self.config.resident_models,
            fix=self.fix,
        )
        tokenizer = models.tokenizer
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return _Opened(
            crosscoder=crosscoder,
            weights_sha256=sha,
            readings=Readings(crosscoder),
            models=models,
            hook=hook,
            steps=tuple(int(entry["step"]) for entry in record["snapshots"]),
            pieces=vocabulary_pieces(tokenizer),
            bos=int(bos if bos is not None else 0),
            base_bytes=base,
        )

    def _checked_suite(self, record: dict[str, Any]) -> Any:
        """The suite to load from: the one handed over (at the crosscoder's steps), else the recorded one;
        its snapshots' names and files checked against the record before any model loads."""
        recorded = record["snapshots"]
        try:
            suite = self._suite if self._suite is not None else recorded_suite(record)
            steps = [int(entry["step"]) for entry in recorded]
            if list(suite.steps) != steps and set(steps) <= set(suite.steps):
                suite = suite.select(steps=steps)
            offered = [{**ref.to_dict(), "source": snapshot_identity(suite, ref) or {}} for ref in suite.snapshots]
        except (ValueError, FileNotFoundError) as error:
            raise LiveUnavailableError(
                f"the crosscoder's snapshot models cannot be found ({' '.join(str(error).split())}); {self.fix}"
            ) from None
        except OSError as error:
            raise LiveUnavailableError(
                f"the crosscoder's snapshot models could not be read ({' '.join(str(error).split())}); {RETRY}"
            ) from None
        problem = snapshot_problem(recorded, offered, require_identity=False)
        if problem:
            raise LiveMismatchError(f"the suite {suite.model_id} is not the crosscoder's: {problem}; {self.fix}")
        return suite

    # ------------------------------------------------------------------ what it is
    @property
    def n_snapshots(self) -> int:
        return self._ask(lambda opened: int(opened.crosscoder.cfg.n_snapshots))

    @property
    def d_sae(self) -> int:
        return self._ask(lambda opened: int(opened.crosscoder.cfg.d_sae))

    def crosscoder(self) -> dict[str, Any]:
        """What identifies the crosscoder the questions are asked of (JSON), as a feature database
        records it: its ``run``, the sha256 of its weights file as it was loaded (``weights_sha256``:
        :func:`~crosslens.core.hashing.crosscoder_sha256`; a run trained again since keeps answering
        from, and naming, the weights loaded), ``d_sae`` and its snapshots' ``revisions``."""

        def identity(opened: _Opened) -> dict[str, Any]:
            snapshots = metadata_value(opened.crosscoder, "suite")["snapshots"]
            return {
                "run": str(self.run_dir),
                "weights_sha256": opened.weights_sha256,
                "d_sae": int(opened.crosscoder.cfg.d_sae),
                "revisions": [str(entry["revision"]) for entry in snapshots],
            }

        return self._ask(identity)

    def status(self) -> dict[str, Any]:
        """Where the live models stand (JSON), answered at once even while a question is computed."""
        opened, problem = self._opened, self._refusal or self._failure
        state = "unavailable" if problem else "ready" if opened else "loading" if self._phase != "idle" else "idle"
        status: dict[str, Any] = {
            "state": state,
            "problem": problem,
            "busy": self._lock.locked(),
            "queued": sum(not (f.running() or f.done()) for f in list(self._asked)),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "capacity": self.config.resident_models,
            "limits": limits(self.config),
        }
        if opened is not None:
            status |= {
                "suite": opened.models.suite.model_id,
                "hook": opened.hook,
                "resident": opened.models.resident,
                "loads": list(opened.models.loads),
                "budget": self.budget(),
            }
        return status

    def budget(self) -> dict[str, int] | None:
        """Bytes the live models may hold resident at most (None until the first model has loaded):
        the crosscoder and its per-snapshot views, the resident models, one more being loaded or used
        past the bound (twice, while its checkpoint converts), and the cache of texts."""
        opened = self._opened
        if opened is None or opened.models.model_bytes is None:
            return None
        tensors = [*opened.crosscoder.parameters(), *(p for sae in opened.readings.saes for p in sae.parameters())]
        crosscoder = sum(t.numel() * t.element_size() for t in tensors)
        model = opened.models.model_bytes
        resident = min(self.config.resident_models, len(opened.steps))
        models = (resident + 2) * model
        limit = opened.base_bytes + crosscoder + models + self.text_cache_bytes()
        return {
            "base": opened.base_bytes,
            "crosscoder": crosscoder,
            "model": model,
            "models": models,
            "text_cache": self.text_cache_bytes(),
            "limit": limit,
        }

    def text_cache_bytes(self) -> int:
        """Most bytes the kept texts' activations take (a few texts of the longest length)."""
        opened = self._opened
        if opened is None:
            return 0
        per_text = (len(opened.steps) + 1) * self.config.max_text_tokens * int(opened.crosscoder.cfg.d_sae) * 4
        return self.config.cached_texts * per_text

    # ------------------------------------------------------------------ your text
    def tokenize(self, text: str, *, what: str = "text") -> list[int]:
        """``text``'s token ids, as a harvest tokenizes it (without the BOS the models read first)."""
        if not isinstance(text, str):
            raise LiveInputError(f"the {what} is {type(text).__name__}, not text: pass one string")
        if not text.strip():
            raise LiveInputError(f"the {what} is empty: type a few words")
        if len(text) > self.config.max_text_chars:
            raise LiveInputError(
                f"the {what} has {len(text):,} characters: at most {self.config.max_text_chars:,} are read at once; "
                "shorten it"
            )
        self.prepare()
        ids = self._opened.models.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise LiveInputError(f"the {what} {text[:40]!r} is no token of this suite's tokenizer: type some words")
        self._check_known(ids, text, what)
        if len(ids) > self.config.max_text_tokens:
            raise LiveInputError(
                f"the {what} is {len(ids):,} tokens: at most {self.config.max_text_tokens} are read at once; shorten it"
            )
        return [int(i) for i in ids]

    def _check_known(self, ids: list[int], text: str, what: str) -> None:
        """Refuse text the snapshot models would read mostly as the unknown token, as a harvest refuses
        a corpus (:data:`~crosslens.activations.tokens.MAX_UNKNOWN_SHARE`), naming the words."""
        tokenizer = self._opened.models.tokenizer
        share = unknown_share(tokenizer, ids)
        if share <= MAX_UNKNOWN_SHARE:
            return
        unknown = list(dict.fromkeys(unknown_words(tokenizer, text)))
        named = f" ({', '.join(repr(w) for w in unknown[:6])}{', ...' if len(unknown) > 6 else ''})" if unknown else ""
        raise LiveInputError(
            f"{share:.0%} of the {what}'s tokens{named} are unknown to this suite's tokenizer, which the models "
            f"read as {tokenizer.unk_token}; at most {MAX_UNKNOWN_SHARE:.0%} is accepted: use words of its "
            f"vocabulary ({len(tokenizer):,} tokens)"
        )

    @staticmethod
    def _fits(opened: _Opened, n_positions: int, what: str) -> None:
        """Refuse ``n_positions`` positions (BOS included) past the models' context."""
        n_ctx = opened.models.context()
        if n_positions > n_ctx:
            raise LiveInputError(
                f"{what} take {n_positions} positions with the first token, past the models' context of {n_ctx}; "
                "shorten it"
            )

    def activations(self, text: str, *, kind: str | None = None) -> TextActivations:
        """Every feature's activation on each token of ``text``, for the crosscoder's code and at every
        snapshot (:class:`~crosslens.live.TextActivations`). The same text gives the same numbers;
        the last few texts are kept, so asking again costs nothing (the arrays are read-only, shared
        by every asker: copy one to change it). ``kind``: a name for this kind of
        question, where a newer one of the kind is to take its place while it waits its turn
        (it then raises :class:`~crosslens.core.errors.LiveSupersededError`)."""
        ids = self.tokenize(text)
        return self._ask(lambda opened: self._text(opened, text, ids), kind)

    def _text(self, opened: _Opened, text: str, ids: list[int]) -> TextActivations:
        kept = self._texts.get(text)
        if kept is not None:
            self._texts.move_to_end(text)
            return kept
        self._fits(opened, len(ids) + 1, f"the text's {len(ids)} tokens")
        tokens_L = torch.tensor([opened.bos, *ids], device=self.device)
        crosscoder_NF, snapshots_SNF = text_codes(opened.models, opened.readings, tokens_L, opened.hook)
        token_ids = np.asarray(ids, dtype=np.int64)
        for array in (token_ids, crosscoder_NF, snapshots_SNF):
            array.flags.writeable = False  # the kept answer is handed to every asker: none may change another's
        answer = TextActivations(
            text=text,
            token_ids=token_ids,
            tokens=[opened.pieces[i] if i < len(opened.pieces) else f"<{i}>" for i in ids],
            crosscoder_NF=crosscoder_NF,
            snapshots_SNF=snapshots_SNF,
            steps=opened.steps,
        )
        if self.config.cached_texts:
            self._texts[text] = answer
            while len(self._texts) > self.config.cached_texts:
                self._texts.popitem(last=False)
        return answer

    # ------------------------------------------------------------------ steering
    def steer(
        self,
        feature: int,
        prompt: str,
        *,
        strength: float,
        mode: str = STEER_MODE,
        n_tokens: int = STEER_TOKENS,
        temperature: float = STEER_TEMPERATURE,
        seed: int = STEER_SEED,
        snapshots: list[int] | None = None,
        kind: str | None = None,
    ) -> Steering:
        """Each snapshot's continuation of ``prompt``, without and with ``feature`` steered
        (:mod:`crosslens.live.steering`: ``mode`` ``"add"`` adds ``strength`` times its snapshot's
        decoder direction at the crosscoder's hook, ``"clamp"`` sets its activation to ``strength``).
        ``temperature`` 0 is greedy; above 0, tokens are drawn with ``seed``. ``snapshots``: which
        (default: every one); ``kind``: as :meth:`activations`'."""
        strength, n_tokens, temperature, seed = steering_settings(
            self.config, strength, mode, n_tokens, temperature, seed
        )
        snapshots = snapshot_list(snapshots)
        ids = self.tokenize(prompt, what="prompt")

        def continuations(opened: _Opened) -> tuple[list[str], list[SteeredSnapshot]]:
            S, F = len(opened.steps), int(opened.crosscoder.cfg.d_sae)
            index = _check_index(feature, F, "feature")
            chosen = list(range(S)) if snapshots is None else [_check_index(s, S, "snapshot") for s in snapshots]
            self._fits(opened, len(ids) + 1 + n_tokens, f"the prompt's {len(ids)} tokens and {n_tokens} new ones")
            prompt_L = torch.tensor([opened.bos, *ids])
            return [opened.pieces[i] for i in ids], [
                self._steer_one(opened, index, s, prompt_L, mode, strength, n_tokens, temperature, seed) for s in chosen
            ]

        prompt_tokens, rows = self._ask(continuations, kind)
        return Steering(
            feature=int(feature),
            prompt=prompt,
            prompt_tokens=prompt_tokens,
            mode=mode,
            strength=strength,
            n_tokens=n_tokens,
            temperature=temperature,
            seed=seed,
            snapshots=rows,
        )

    def _steer_one(self, opened: _Opened, feature: int, s: int, prompt_L, mode, strength, n_tokens, temperature, seed):
        with opened.models.use(s) as model:
            hook_fn = steering_hook(opened.readings, feature, s, mode, float(strength), model.cfg.dtype)
            both = continue_twice(
                model, prompt_L, opened.hook, hook_fn, n_tokens, temperature=temperature, seed=seed
            ).tolist()
        piece = lambda i: opened.pieces[i] if i < len(opened.pieces) else f"<{i}>"  # noqa: E731
        return SteeredSnapshot(
            snapshot=s,
            step=opened.steps[s],
            plain_ids=both[0],
            steered_ids=both[1],
            plain=[piece(i) for i in both[0]],
            steered=[piece(i) for i in both[1]],
            direction_norm=float(direction(opened.readings, feature, s).norm()),
        )

    @contextmanager
    def _threads(self) -> Iterator[None]:
        """torch's thread count for one question on a CPU (``config.threads``), restored after it."""
        threads = self.config.threads
        if self.device.type != "cpu" or threads is None:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def close(self) -> None:
        """Refuse the questions waiting their turn, wait for the one being computed, and let the
        resident models and the crosscoder go (a later question loads them again). The worker thread
        ends with it, so a process that stops (``crosslens browse`` on Ctrl-C) waits for one question,
        not the queue."""
        with self._queue:
            worker, self._worker = self._worker, None
            self._waiting.clear()
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            if self._opened is not None:
                self._opened.models.close()
            self._opened, self._refusal, self._failure = None, None, None
            self._texts.clear()


def _no_crosscoder(run_dir: Path) -> str:
    """Why ``run_dir`` holds no crosscoder to load, naming the run folder to pass where it is its ``final``."""
    if not run_dir.exists():
        return f"{run_dir} does not exist: pass the run folder `crosslens train` wrote"
    if run_dir.name == FINAL_DIRNAME and (run_dir / CFG_NAME).is_file():
        parent = run_dir.parent if len(run_dir.parts) > 1 else run_dir.absolute().parent
        return f"{run_dir} is a run's crosscoder folder, not its run folder: pass the run folder, {parent}"
    return f"{run_dir} holds no trained crosscoder ({FINAL_DIRNAME}/{CFG_NAME}): pass the run folder `crosslens train` wrote"


def _suite_problem(suite: Any) -> str:
    """Why ``suite`` cannot be a :class:`LiveModels` suite, with the call that makes one of it."""
    folder = repr(str(suite)) if isinstance(suite, (str, os.PathLike)) else "FOLDER"
    return (
        f"suite={suite!r} is a {type(suite).__name__}, not a CheckpointSuite: pass suite=CheckpointSuite.local({folder}) "
        "for a folder of checkpoints or CheckpointSuite.pythia(HUB_ID) for a hub id (from crosslens.checkpoints), "
        "or leave suite out for the one the crosscoder records"
    )


def _check_index(value: Any, size: int, what: str) -> int:
    """``value`` as an index below ``size``: any integer, a NumPy one or a one-element tensor's (a
    feature read off a table), never a bool."""
    index = whole_number(value)
    if index is None or not 0 <= index < size:
        raise LiveInputError(f"{what} {value!r}: this crosscoder has {what}s 0 to {size - 1}")
    return index
