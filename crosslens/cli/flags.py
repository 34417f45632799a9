"""Command-line flags generated from config dataclasses: a setting is one field; and what a
subcommand is (:class:`Subcommand`): its words, its help, and the dataclasses its flags come from.

Each field of a dataclass becomes one flag, ``--field-name`` unless its metadata names
another (``field(..., metadata={"flag": "--batch-size"})``); the docstring under the field is
its ``--help`` and the field's default is shown beside it, so defaults are written once, in
the dataclass. A docstring that names another number the code reads names its constant in
braces, ``{NAME}`` (the field's module's) or ``{causal.defaults.NAME}`` (a module of crosslens), with
a format spec where wanted (``{EFFECT_FLOOR_SHARE:.0%}``); the help shows its value. A field whose type is itself a dataclass (a nested config, as SAELens nests
``sae`` and ``logger``) contributes its own fields. Metadata keys:

- ``flag``: the flag's name; a ``--no-...`` flag on a bool field that defaults to True, or to None
  (unset: the config decides), turns it off.
- ``choices``: the allowed values.
- ``min`` (and ``strictly``): numbers below it (or equal, with ``strictly``) are refused where parsed;
  ``max`` (and ``max_strictly``) as the config is built (:mod:`crosslens.core.bounds`), in a message
  that :func:`name_flags` writes with the flag.
- ``cli``: False keeps a field off the command line (library-only settings).
- ``positional``: the field is a positional argument, shown as its ``metavar``.
- ``default_from``: ``(config class, field name)``, for a flag that sets a field of a config
  the command builds itself (``suite build`` and ``PicoConfig``): its help shows that field's default
  (unless its docstring says the default in words), and that field's ``min`` is the flag's; a
  field without a docstring of its own shows that field's.
- ``parse``, ``action``, ``nargs``, ``metavar``: passed to argparse as ``type``, ``action``, ``nargs``
  and ``metavar``.

Every generated flag parses to None when absent, so a command can tell what the user set
(explicit flags win over a recipe's values, which win over the dataclass defaults).
Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import inspect
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Subcommand:
    """One ``crosslens`` subcommand."""

    words: tuple[str, ...]
    """The command's words: ("train",) or ("suite", "build")."""
    help: str
    """One line for ``crosslens --help``."""
    flags: tuple[type, ...]
    """Dataclasses whose fields are the flags, in order; a field name an earlier one declares is
    taken from the earlier one (a command overriding a shared flag's meaning)."""
    run: Callable[[argparse.Namespace], int]
    """The function of the command's module that runs it with the parsed namespace."""
    description: str | None = None
    """Longer text for the command's own ``--help``."""


def _number_at_least(minimum: float, kind: type = int, *, strictly: bool = False) -> Callable[[str], Any]:
    """An argparse ``type`` accepting numbers of ``kind`` >= ``minimum`` (> with ``strictly``)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = _whole_number(text) if kind is int else None
            if value is None:
                raise argparse.ArgumentTypeError(
                    f"{text!r} is not {'an integer' if kind is int else 'a number'}"
                ) from None
        if value < minimum or (strictly and value == minimum) or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"must be {'>' if strictly else '>='} {minimum}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _whole_number(text: str) -> int | None:
    """``1e6``, ``2.5e5``: a count written in scientific notation, when it is a whole number."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value == value and abs(value) != float("inf") and value.is_integer() else None


def int_list(text: str) -> list[int]:
    """Comma-separated non-negative integers, such as training steps ``0,1000,2000``."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated steps such as 0,1000,2000, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected one or more steps >= 0, got {text!r}")
    return values


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass ``cls`` (and its bases), one line each."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = _constants_shown(" ".join(after.value.value.split()), klass)
    return docs


_CONSTANT = re.compile(r"\{((?:[a-z_]+\.)*)([A-Z][A-Z0-9_]*)(?::([^{}]*))?\}")
"""A constant a field docstring names: ``{NAME}``, ``{package.module.NAME}``, each with an
optional ``:format_spec``."""


def _constants_shown(doc: str, klass: type) -> str:
    """``doc`` with each constant it names in braces replaced by the constant's value, so that a
    flag's help says the number the code reads; a name no module defines is refused here, when the
    parser is built."""

    def value(match: re.Match) -> str:
        where, name, spec = match.groups()
        module = importlib.import_module("crosslens." + where[:-1]) if where else sys.modules[klass.__module__]
        if not hasattr(module, name):
            raise NameError(
                f"the docstring of a field of {klass.__qualname__} names {name}, which {module.__name__} lacks"
            )
        return format(getattr(module, name), spec or "")

    return _CONSTANT.sub(value, doc)


def _value_type(hint: Any) -> tuple[Any, bool]:
    """(the type a flag parses to, whether the field accepts None)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return hint, False


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def _flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def iter_fields(cls: type) -> Iterator[tuple[tuple[str, ...], dataclasses.Field, Any, type]]:
    """(path of field names, field, resolved type, the dataclass declaring the field) of every
    command-line field of ``cls``, nested dataclasses expanded in place."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            for path, sub, sub_hint, owner in iter_fields(hint):  # type: ignore[arg-type]
                yield (f.name, *path), sub, sub_hint, owner
        else:
            yield (f.name,), f, hint, cls


def add_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """One flag per command-line field of dataclass ``cls`` (nested configs expanded);
    ``skip`` leaves out fields by name (another dataclass of the command declares them)."""
    for path, f, hint, owner in iter_fields(cls):
        if f.name not in skip:
            _add_one(parser, f, hint, _field_doc(f, owner), dest="__".join(path))


def _field_doc(f: dataclasses.Field, owner: type) -> str:
    """The docstring under field ``f`` of ``owner``, else under the field its ``default_from`` names."""
    doc = field_docs(owner).get(f.name, "")
    if not doc and "default_from" in f.metadata:
        source, name = f.metadata["default_from"]
        doc = field_docs(source).get(name, "")
    return doc


def field_flags(classes: tuple[type, ...]) -> dict[str, str]:
    """Field name -> the flag that sets it, for every command-line field of ``classes`` (the
    first class declaring a name wins, as in :func:`add_flags`), but positional fields and
    ``--no-...`` flags, which set their field to False."""
    out: dict[str, str] = {}
    for cls in classes:
        for _, f, _, _ in iter_fields(cls):
            flag = _flag_name(f)
            if not f.metadata.get("positional") and not flag.startswith("--no-"):  # --no-X sets the field False
                out.setdefault(f.name, flag)
    return out


_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_CHANGED_SETTING = re.compile(r"(?:(?<=differs in )|(?<=; ))([A-Za-z_][\w.]*): (?=[^;]* in the run, )")
"""A setting in :func:`crosslens.training.runner.differing_settings`'s list, before its values."""
_BESIDE_FLAG = r" \(`(--[^`]+)`\)"
"""The flag :func:`crosslens.core.errors.keyword_and_flag` writes beside a keyword, as its group 1."""


def name_flags(message: str, flags: dict[str, str]) -> str:
    """A config's validation message with the fields it names written as their flags, for the
    command line: ``lr_decay_fraction must be in [0, 1), got 1.5`` becomes ``--lr-decay-fraction
    must be in [0, 1), got 1.5`` (and ``micro_batches (--micro-batches)`` becomes ``--micro-batches``).

    Only a message that starts with a field name is one: it then names snake_case fields anywhere
    (and a one-word field only as its first word, where it cannot be an ordinary word of prose).
    So is each setting a resume finds changed (``differs in sae.d_sae: 64 in the run, 32 now;
    ...``), named by its last part's flag where one sets it. A field named beside its flag (``n_tokens
    (`--n-tokens`)``, ``store_dtype="bfloat16" (`--store-dtype bfloat16`)``) becomes that flag alone.
    Anything else is returned unchanged."""
    message = _CHANGED_SETTING.sub(lambda m: flags.get(m.group(1).rsplit(".", 1)[-1], m.group(1)) + ": ", message)
    first = _IDENTIFIER.match(message)
    if first is None or first.group() not in flags:
        return message
    if "_" not in first.group() and not message[first.end() :].startswith((" must", " (--", " (`--")):
        return message
    names = sorted((name for name in flags if "_" in name), key=len, reverse=True)
    rest = message[first.end() :]
    if names:
        alternatives = "|".join(map(re.escape, names))
        beside = re.compile(rf"(?<![\w./-])(?:{alternatives})(?:=\S+)?{_BESIDE_FLAG}")
        rest = beside.sub(lambda m: m.group(1), rest)
        pattern = re.compile(rf"(?<![\w./-])({alternatives})(?: \(--[\w-]+\))?(?![\w/-])")
        rest = pattern.sub(lambda m: flags[m.group(1)], rest)
    lead = re.match(rf" \(--[\w-]+\)|{_BESIDE_FLAG}", rest)
    return flags[first.group()] + (rest[lead.end() :] if lead else rest)


def field_defaults(classes: tuple[type, ...]) -> dict[str, Any]:
    """dest -> the dataclass default of every command-line field of ``classes`` (the first
    class declaring a field name wins, as in :func:`add_flags`)."""
    out: dict[str, Any] = {}
    for cls in classes:
        for path, f, _, _ in iter_fields(cls):
            dest = "__".join(path)
            default = default_of(f)
            if dest not in out and default is not MISSING:
                out[dest] = default
    return out


def _add_one(parser: argparse.ArgumentParser, f: dataclasses.Field, hint: Any, doc: str, *, dest: str) -> None:
    value_type, _ = _value_type(hint)
    default = default_of(f)
    meta = f.metadata
    flag = _flag_name(f)
    help_text = doc.replace("%", "%%")
    if value_type is bool:
        turns_off = flag.startswith("--no-") and default is not False
        action = "store_false" if turns_off else "store_true"
        parser.add_argument(flag, dest=dest, action=action, default=None, help=help_text)
        return
    kwargs: dict[str, Any] = {"dest": dest, "default": None, "metavar": flag.lstrip("-").replace("-", "_").upper()}
    origin = typing.get_origin(value_type)
    source = _default_source(f)
    if source is not None and "min" in source.metadata:
        meta = {"min": source.metadata["min"], **meta}
    if "parse" in meta:
        kwargs["type"] = _keeping_its_message(meta["parse"])
    elif "action" in meta:
        kwargs["action"] = meta["action"]
    elif "nargs" in meta:
        pass
    elif origin in (list, tuple):
        kwargs["type"] = int_list
    elif value_type in (int, float) and "min" in meta:
        kwargs["type"] = _number_at_least(meta["min"], value_type, strictly=meta.get("strictly", False))
    elif value_type in (int, float):
        kwargs["type"] = _number_at_least(float("-inf"), value_type)
    if "choices" in meta:
        kwargs["choices"] = list(meta["choices"])
        kwargs.pop("metavar")  # argparse then shows the choices themselves, {zero,mean}, in usage and help
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    if "nargs" in meta:
        kwargs["nargs"] = meta["nargs"]
    if meta.get("positional"):
        kwargs.pop("dest")
        kwargs.pop("default")
        parser.add_argument(dest, help=help_text, **kwargs)
        return
    if default is MISSING:
        kwargs["required"] = True
    elif "(default" in doc:  # the docstring says it in words (a computed default)
        pass
    elif source is not None:
        help_text = f"{help_text} (default: {_show(default_of(source))})".strip()
    elif doc and default is not None:
        help_text = f"{help_text} (default: {_show(default)})".strip()
    parser.add_argument(flag, help=help_text, **kwargs)


def _keeping_its_message(parse: Any) -> Any:
    """``parse`` as an argparse ``type`` whose refusal prints the parser's own message (argparse
    turns a ValueError into "invalid <name> value" and drops the message, with its fix)."""

    def parse_flag(text: str) -> Any:
        try:
            return parse(text)
        except argparse.ArgumentTypeError:
            raise
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse_flag.__name__ = getattr(parse, "__name__", "value")
    return parse_flag


def _default_source(f: dataclasses.Field) -> dataclasses.Field | None:
    """The config field a flag's ``default_from`` names: its default and its ``min`` are the flag's."""
    if "default_from" not in f.metadata:
        return None
    owner, name = f.metadata["default_from"]
    return next(g for g in dataclasses.fields(owner) if g.name == name)


def explicit(args: argparse.Namespace, cls: type, *, prefix: str = "") -> dict[str, Any]:
    """The fields of ``cls`` the user set on the command line, nested configs as dicts (the
    ``crosslens`` parser records which flags were given in ``args.explicit``)."""
    given = getattr(args, "explicit", None)
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        dest = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            sub = explicit(args, hints[f.name], prefix=f"{dest}__")
            if sub:
                out[f.name] = sub
        elif (dest in given) if given is not None else getattr(args, dest, None) is not None:
            out[f.name] = getattr(args, dest)
    return out


def build(cls: type, *layers: dict[str, Any]) -> Any:
    """``cls`` built from ``layers`` of settings, later layers winning field by field (nested
    configs merged field by field too); fields no layer sets keep their defaults."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in merged.items():
        hint = hints.get(key)
        kwargs[key] = build(hint, value) if dataclasses.is_dataclass(hint) and isinstance(value, dict) else value
    return cls(**kwargs)
