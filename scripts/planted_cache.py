"""The crosscoders the planted grid trains, and the cache that keeps them.

Each architecture trains at the defaults a user gets (:func:`crosslens.training.planted.train_planted`),
the small event families with their own latents and batch (:data:`SMALL_TRAINING`). ``--cache DIR``
of ``scripts/planted_emergence.py`` (and of the scripts that read its grid) keeps each trained
crosscoder as ``GENERATOR-ARCH-seedN-HASH.pt``, with the settings it was trained with: every argument
``train_planted`` took, resolved, the architecture's defaults and the planted set's config, HASH
theirs. A crosscoder trained under other settings (another protocol, or defaults since changed), or
with training fields other than the architecture's training config gives now (a field's default or
name since changed), is never read as this one's, and said so.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import time
from pathlib import Path

import torch

import crosslens.crosscoders as crosscoders
from crosslens.analysis.planted_generators import EVENT_GENERATORS
from crosslens.architectures import defaults_for, uses_k
from crosslens.core.hashing import json_sha256
from crosslens.training.factory import changed_training_fields
from crosslens.training.planted import planted_crosscoder, planted_training_arguments, train_planted
from crosslens.training.runner import differing_settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from planted_generators import build_planted

SMALL = tuple(EVENT_GENERATORS)
"""The families planted on a small set (:mod:`crosslens.analysis.planted_generators`' ``_SMALL``)."""
SMALL_TRAINING = {"d_sae": 64, "batch_size": 256}
"""Their crosscoders: 64 latents (2.7 per planted feature, as 128 for 48) on batches of 256 tokens,
the rest ``train_planted``'s defaults (3000 steps)."""


def training(generator: str, protocol: dict | None = None) -> dict:
    """``train_planted``'s arguments for ``generator``: the small families' own, then ``protocol``
    (``batch_size``, ``n_steps``, ``k``) where given."""
    return {**(SMALL_TRAINING if generator in SMALL else {}), **(protocol or {})}


def train_arguments(generator: str, arch: str, planted, protocol: dict | None = None) -> dict:
    """Every keyword ``train_planted`` trains ``arch`` on ``generator``'s ``planted`` set with (but
    ``seed``), each resolved: its own defaults, read from its signature so that a changed default
    changes them, then :func:`training`'s, then what the ones left None take
    (:func:`~crosslens.training.planted.planted_training_arguments`)."""
    skip = ("seed", "init", "plan")
    given = {
        name: p.default
        for name, p in inspect.signature(train_planted).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in skip
    }
    given.update(training(generator, protocol))
    resolved = planted_training_arguments(planted, arch, **given)
    return {name: resolved[name] for name in given}


def cache_settings(generator: str, arch: str, seed: int, protocol: dict | None = None, planted=None) -> dict:
    """What a cached crosscoder records of how it was trained, to be reused only alike: the
    arguments it was trained with (:func:`train_arguments`), the architecture's defaults beside
    them and the planted set's config (``planted`` built here where not given)."""
    planted = planted or build_planted(generator, seed, {})
    defaults = {k: v for k, v in dataclasses.asdict(defaults_for(arch)).items() if k not in ("source", "module")}
    return {
        "generator": generator,
        "arch": arch,
        "seed": seed,
        "training": train_arguments(generator, arch, planted, protocol),
        "architecture_defaults": defaults,
        "planted": dataclasses.asdict(planted.config),
    }


def cache_path(settings: dict, cache: Path) -> Path:
    """Where ``cache`` keeps the crosscoder trained under ``settings``, named by a hash of them."""
    return cache / f"{settings['generator']}-{settings['arch']}-seed{settings['seed']}-{json_sha256(settings)[:12]}.pt"


def differences(saved: dict, settings: dict) -> str:
    """The settings ``saved`` (a cached crosscoder's) holds otherwise than ``settings``, one phrase."""
    found = differing_settings(saved, settings)
    return "; ".join(found[:4]) + (f"; and {len(found) - 4} more" if len(found) > 4 else "")


def other_settings(settings: dict, cache: Path) -> list[str]:
    """The crosscoders ``cache`` holds of the same generator, architecture and seed trained under
    other settings than ``settings``, each with how they differ."""
    stem = f"{settings['generator']}-{settings['arch']}-seed{settings['seed']}"
    found = sorted({*cache.glob(f"{stem}.pt"), *cache.glob(f"{stem}-*.pt")} - {cache_path(settings, cache)})
    return [
        f"{path.name}: {differences(torch.load(path, weights_only=False).get('settings', {}), settings)}"
        for path in found
    ]


def cached(
    generator: str, arch: str, seed: int, cache: Path | None, protocol: dict | None = None, planted=None
) -> dict | None:
    """What ``cache`` holds of the crosscoder trained alike (settings, cfg, state, seconds), or None:
    the same settings (:func:`cache_settings`), and for TopK and BatchTopK a config of their ``k``."""
    return None if cache is None else cached_as(cache_settings(generator, arch, seed, protocol, planted), cache)


def cached_as(settings: dict, cache: Path) -> dict | None:
    """:func:`cached` for the crosscoder trained under ``settings``."""
    path = cache_path(settings, cache)
    if not path.is_file():
        return None
    saved = torch.load(path, weights_only=False)
    if saved.get("settings") != settings:
        print(
            f"{path} was trained under other settings than its name says ({differences(saved.get('settings', {}), settings)}); not reused"
        )
        return None
    if uses_k(settings["arch"]) and saved["cfg"]["k"] != settings["training"]["k"]:
        return None
    changed = training_fields_changed(saved, settings)
    if changed:
        print(f"{path} was trained with other training fields ({', '.join(changed)}) than this code builds; not reused")
        return None
    return saved


def training_fields_changed(saved: dict, settings: dict) -> list[str]:
    """The training fields (the training config's fields that its inference config lacks) in which
    the cached crosscoder ``saved`` differs from the one ``train_planted`` builds now under
    ``settings``, a field either lacks included: the settings hold the arguments it is trained with,
    not the defaults and names of the architecture's training config."""
    planted = settings["planted"]
    built = planted_crosscoder(
        settings["arch"],
        settings["training"],
        d_in=planted["d_in"],
        n_snapshots=planted["n_snapshots"],
        n_steps=settings["training"]["n_steps"],
        device="meta",
    )
    return changed_training_fields(saved["cfg"], built.cfg)


def trained(generator: str, arch: str, seed: int, planted, cache: Path | None, protocol: dict | None = None):
    """The crosscoder ``train_planted`` gives, from ``cache`` when it holds one trained alike; one
    trained under other settings is not reused, and said so."""
    settings = cache_settings(generator, arch, seed, protocol, planted)
    saved = None if cache is None else cached_as(settings, cache)
    if saved is not None:
        train_cls, train_cfg_cls = crosscoders.ARCHITECTURES[arch][2:4]
        crosscoder = train_cls(train_cfg_cls.from_dict(saved["cfg"]))
        crosscoder.load_state_dict(saved["state"])
        return crosscoder.eval(), saved["seconds"]
    for other in [] if cache is None else other_settings(settings, cache):
        print(f"training {generator} {arch} seed {seed} again: {cache} holds it under other settings ({other})")
    start = time.perf_counter()
    crosscoder = train_planted(planted, arch, seed=seed, **settings["training"])
    seconds = time.perf_counter() - start
    if cache is not None:
        path = cache_path(settings, cache)
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = {"settings": settings, "cfg": crosscoder.cfg.to_dict(), "state": crosscoder.state_dict()}
        # a name of this process's own: two processes training the same run never share a partial file
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save({**saved, "seconds": seconds}, partial)
        os.replace(partial, path)
    return crosscoder, seconds
