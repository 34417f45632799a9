"""``crosslens browse RUN``: the run's feature database as a local web app, started the way
TensorBoard is: it prints its URL (``http://127.0.0.1:PORT/``) and serves until Ctrl-C. It listens
on 127.0.0.1 only and loads nothing from the network.

Its live panels (your text, and steering, at every snapshot) run the run's crosscoder and its
suite's snapshot models (:mod:`crosslens.live`), loaded on demand on ``--device``; ``--no-live``
serves the stored pages alone."""

from __future__ import annotations

import argparse
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosslens.browser.config import BrowseConfig
from crosslens.checkpoints.local import scan_local_suite
from crosslens.cli.common import CLIError, missing_path_error, resolve_suite
from crosslens.cli.flags import Subcommand, build, explicit
from crosslens.cli.options import DeviceFlags
from crosslens.core.errors import LiveUnavailableError
from crosslens.core.metadata import crosscoder_suite_record, trained_steps
from crosslens.core.model_specs import is_models_spec
from crosslens.core.paths import FINAL_DIRNAME, looks_like_path
from crosslens.live.config import RETRY, LiveConfig, limits

SUITE_FIX = "pass the suite the crosscoder was trained on, or leave --suite out for the one it records"


@dataclass
class BrowseFlags:
    run_dir: str = field(metadata={"positional": True, "metavar": "RUN"})
    """The run folder whose feature database (RUN/dashboards.sqlite, from crosslens dashboards) is served."""
    suite: str | None = None
    """The suite the live panels load the snapshot models from: a folder of checkpoints or a hub model id
    (default: the one the run's crosscoder records); its snapshots must be the crosscoder's."""


def browse(args: argparse.Namespace) -> int:
    from crosslens.browser import browse as serve

    config = build(BrowseConfig, explicit(args, BrowseConfig))
    live_config = build(LiveConfig, explicit(args, LiveConfig))
    if live_config.live and args.suite:
        check_suite_folder(args.suite, crosscoder_steps(args.run_dir))
    serve(
        args.run_dir,
        port=config.port,
        database=config.database,
        page_size=config.page_size,
        log_requests=config.log_requests,
        live=DeferredLive(args, live_config) if live_config.live else None,
    )
    return 0


def crosscoder_steps(run_dir: str) -> list[int] | None:
    """The steps of the snapshots RUN's crosscoder was trained on, as its cfg.json records them
    (read without torch or its weights); None where it records none."""
    return trained_steps(crosscoder_suite_record(Path(run_dir) / FINAL_DIRNAME))


def check_suite_folder(spec: str, steps: list[int] | None) -> None:
    """Refuse a ``--suite`` path that holds no suite, or not the crosscoder's ``steps``, before the
    server starts, where reading its folder is all it takes: the live models are made on first use,
    once the server runs, where a refusal cannot stop the command. A hub id, pico or a list of
    models is checked then: which steps a hub id's revisions are is its family's suite builder's to
    say, which imports torch and TransformerLens (seconds) and, online, lists the hub."""
    if is_models_spec(spec) or spec == "pico":
        return
    path = Path(spec).expanduser()
    if not path.exists():
        if looks_like_path(spec):
            raise missing_path_error(spec)
        return
    try:
        layout = scan_local_suite(path)
    except (ValueError, FileNotFoundError) as error:  # a layout that is no suite: a CrosslensError is a ValueError
        raise CLIError(no_suite(spec, error)) from None
    held = sorted(ref.step for ref in layout.snapshots)
    missing = [step for step in steps or () if step not in held]
    if missing:
        raise CLIError(
            f"--suite {spec}: the suite has no step{missing[0]}, which the crosscoder was trained on (it lacks "
            f"{len(missing)} of the crosscoder's {len(steps or ())} steps; its {len(held)} snapshots are at steps "
            f"{held[0]} to {held[-1]}); `crosslens suite list {spec}` lists them; {SUITE_FIX}"
        )


def no_suite(spec: str, error: Exception) -> str:
    """The one line for a ``--suite`` path whose folder holds no suite, with the fix."""
    return f"--suite {spec}: {' '.join(str(error).split())}; {SUITE_FIX}"


class DeferredLive:
    """The live panels' backend, made on first use: importing torch and TransformerLens takes seconds,
    and the stored pages are served meanwhile. Until then its status says it is loading; where it
    could not be made, why (the next request tries again)."""

    def __init__(self, args: argparse.Namespace, config: LiveConfig) -> None:
        self.args, self.config = args, config
        self._backend: Any = None
        self._problem: Exception | None = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._backend is None:
                try:
                    self._backend = live_answers(self.args, self.config)
                except Exception as error:
                    self._problem = error  # for the status, until a request makes it
                    raise
                self._problem = None
        return self._backend

    def status(self) -> dict[str, Any]:
        if self._backend is not None:
            return self._backend.status()
        state = "unavailable" if self._problem else "loading" if self._lock.locked() else "idle"
        problem = " ".join(str(self._problem).split()) if self._problem else None
        return {"state": state, "problem": problem, "limits": limits(self.config)}

    def prepare(self) -> None:
        self._get().prepare()

    def crosscoder(self) -> dict[str, Any]:
        return self._get().crosscoder()

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()

    def text(self, text: str, asker: str | None = None) -> dict[str, Any]:
        return self._get().text(text, asker)

    def heatmap(self, text: str, feature: int, asker: str | None = None) -> dict[str, Any]:
        return self._get().heatmap(text, feature, asker)

    def steer(self, feature: int, prompt: str, asker: str | None = None, **settings: Any) -> dict[str, Any]:
        return self._get().steer(feature, prompt, asker, **settings)


def live_answers(args: argparse.Namespace, config: LiveConfig) -> Any:
    """The live models of ``args.run_dir`` on ``--device`` in ``--dtype`` (unresolved here: :class:`LiveModels`
    resolves both as from Python), from ``--suite`` where given."""
    from crosslens.live import LiveAnswers, LiveModels

    suite = None
    if args.suite:
        try:
            suite = resolve_suite(
                args.suite, crosscoder_steps(args.run_dir), steps_from="the crosscoder was trained on"
            )
        except CLIError as error:  # its line names the flag
            raise LiveUnavailableError(f"{' '.join(str(error).split())}; {SUITE_FIX}") from None
        except (ValueError, FileNotFoundError) as error:  # a folder that is no suite (a CrosslensError is a ValueError)
            raise LiveUnavailableError(no_suite(args.suite, error)) from None
        except OSError as error:  # a file that could not be read this time: the flag is not at fault
            raise LiveUnavailableError(
                f"--suite {args.suite} could not be read ({' '.join(str(error).split())}); {RETRY}"
            ) from None
    fix = "pass the suite the crosscoder was trained on with --suite FOLDER|HUB_ID"
    models = LiveModels(args.run_dir, suite=suite, device=args.device, dtype=args.dtype, config=config, fix=fix)
    return LiveAnswers(models, say=lambda line: print(line, flush=True))


COMMAND = Subcommand(
    ("browse",),
    "browse every feature of a run in a local web app (http://127.0.0.1:PORT/), and ask its models about your text",
    (BrowseFlags, BrowseConfig, LiveConfig, DeviceFlags),
    browse,
)
