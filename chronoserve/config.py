"""``chronoserve serve``'s configuration: the command line, ``CHRONOSERVE_*`` environment variables,
a TOML file, and the defaults, in that order of precedence, with where each setting came from.

Every ``serve`` option can be set in all three places, under one name:

- on the command line: ``--max-queue 2048``;
- in the environment: ``CHRONOSERVE_MAX_QUEUE=2048`` (the option's name in capitals, ``-`` as ``_``);
- in a TOML file (``--config serve.toml``, or ``CHRONOSERVE_CONFIG``): ``max-queue = 2048`` (or
  ``max_queue``), at the top level or in a ``[serve]`` table; lists (``models = ["a", "b"]``) stand
  for the comma-separated values the command line takes.

A value from the environment or the file goes through the very parser of the command line's option
(its type and choices), so it is checked the same way, and an error names where the value came
from. Switches (``--no-warmup``) take ``true``/``false`` (``1``/``0``, ``yes``/``no``, ``on``/``off``
in the environment). ``serve --print-config`` prints the effective settings as a TOML file that
can be fed back with ``--config``, each with its source in a comment.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._cli_common import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the backport, a dependency before 3.11
    import tomli as tomllib

#: The environment variables' prefix.
PREFIX = "CHRONOSERVE_"
#: Variables of that prefix that are not ``serve`` options (read elsewhere, or the file's path).
NOT_OPTIONS = frozenset({"CHRONOSERVE_CONFIG", "CHRONOSERVE_CACHE", "CHRONOSERVE_THIRD_PARTY_OUTPUT"})
#: Options that say where the configuration is, or what to do with it: never set from a source.
META = frozenset({"config", "print_config"})
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass
class Configuration:
    """The effective ``serve`` settings (``values``, by option ``dest``) and where each came from."""

    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    """``command line``, ``CHRONOSERVE_X``, the file's path, or ``default``, by ``dest``."""
    ignored: list[str] = field(default_factory=list)
    """``CHRONOSERVE_*`` variables that are no ``serve`` option (nor read elsewhere)."""

    def namespace(self) -> argparse.Namespace:
        return argparse.Namespace(**self.values)

    def to_toml(self, options: Sequence[argparse.Action], redact: Callable[[str], bool] = lambda dest: False) -> str:
        """The settings as a TOML file ``--config`` reads back, each line's source in a comment."""
        lines = ["# chronoserve serve: the effective settings (CLI > environment > file > defaults)"]
        for action in options:
            dest = action.dest
            if dest in META or dest not in self.values:
                continue
            value = self.values[dest]
            name = action.option_strings[-1].lstrip("-")
            source = self.sources.get(dest, "default")
            if value is None:
                lines.append(f"# {name} = (none)  # {source}")
                continue
            shown = '"<redacted>"' if redact(dest) else _toml_value(value)
            lines.append(f"{name} = {shown}  # {source}")
        for variable in self.ignored:
            lines.append(f"# ignored: {variable} is not a serve option")
        return "\n".join(lines) + "\n"


def serve_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options of a ``serve`` parser that a source may set (not ``--help``, not positional)."""
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def resolve(
    parser: argparse.ArgumentParser,
    parsed: argparse.Namespace,
    argv: Sequence[str],
    environ: Mapping[str, str] | None = None,
) -> Configuration:
    """The effective settings of ``serve``: ``parsed`` (``parser`` applied to ``argv``, the words
    after ``serve``), with every option not given on the command line taken from the environment,
    then from the file (``--config``, else ``CHRONOSERVE_CONFIG``), else its default."""
    environ = os.environ if environ is None else environ
    actions = [a for a in serve_actions(parser) if a.dest not in META]
    by_dest = {a.dest: a for a in actions}
    explicit = _explicit(parser, argv)
    values = dict(vars(parsed))
    sources = {dest: "command line" if dest in explicit else "default" for dest in by_dest}

    path = getattr(parsed, "config", None) or environ.get("CHRONOSERVE_CONFIG")
    if path:
        where = "--config" if getattr(parsed, "config", None) else "CHRONOSERVE_CONFIG"
        for dest, raw in _read_file(Path(path), where, by_dest).items():
            if dest not in explicit:
                values[dest] = _convert(parser, by_dest[dest], raw, f"{path}: {_name(by_dest[dest])}")
                sources[dest] = str(path)

    ignored = []
    for variable in sorted(v for v in environ if v.startswith(PREFIX) and v not in NOT_OPTIONS):
        dest = variable[len(PREFIX) :].lower()
        action = by_dest.get(dest)
        if action is None:
            ignored.append(variable)
            continue
        if dest not in explicit:
            values[dest] = _convert(parser, action, environ[variable], variable)
            sources[dest] = variable
    return Configuration(values, sources, ignored)


def _name(action: argparse.Action) -> str:
    return action.option_strings[-1].lstrip("-")


def _explicit(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The ``dest`` of every option ``argv`` gives (parsed again with no defaults at all)."""
    bare = argparse.ArgumentParser(add_help=False, allow_abbrev=parser.allow_abbrev)
    for action in serve_actions(parser):
        kwargs: dict[str, Any] = {"dest": action.dest, "default": argparse.SUPPRESS}
        if action.nargs == 0:
            kwargs["action"] = "store_const"
            kwargs["const"] = True
        else:
            kwargs["nargs"] = action.nargs
        bare.add_argument(*action.option_strings, **kwargs)
    known, _ = bare.parse_known_args(list(argv))
    return set(vars(known))


def _read_file(path: Path, where: str, by_dest: Mapping[str, argparse.Action]) -> dict[str, Any]:
    """The file's settings by ``dest``; an unknown key is an error naming it (and what was meant)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{where}: cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: {path} is not valid TOML: {exc}") from None
    table = data.pop("serve", None)
    if table is not None:
        if not isinstance(table, dict):
            raise UsageError(f"{path}: [serve] must be a table")
        clash = sorted(set(table) & set(data))
        if clash:
            raise UsageError(f"{path}: {clash[0]} is set both at the top level and in [serve]")
        data.update(table)
    known = {_name(a) for a in by_dest.values()}
    out: dict[str, Any] = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in by_dest or dest in META:
            close = difflib.get_close_matches(key.replace("_", "-"), sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"{path}: {key} is not a serve option{hint}")
        if isinstance(value, dict):
            raise UsageError(f"{path}: {key}: expected a value, not a table")
        out[dest] = value
    return out


def _convert(parser: argparse.ArgumentParser, action: argparse.Action, raw: Any, where: str) -> Any:
    """``raw`` (a string from the environment, a TOML value) as the command line's option makes it."""
    if action.nargs == 0:  # a switch: store_true / store_false
        if isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
            raw = raw.strip().lower() in _TRUE
        if not isinstance(raw, bool):
            raise UsageError(f"{where}: expected true or false, got {raw!r}")
        return action.const if raw else action.default
    if isinstance(raw, bool):
        raise UsageError(f"{where}: expected a value, not {str(raw).lower()}")
    if isinstance(raw, list):
        if not all(isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in raw):
            raise UsageError(f"{where}: expected a list of names or numbers")
        raw = ",".join(str(item) for item in raw)
    text = str(raw)
    try:
        return parser._get_values(action, [text])  # the option's own type and choices
    except argparse.ArgumentError as exc:
        raise UsageError(f"{where}: {exc.message}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f'"{value}"'
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and all(isinstance(v, int) for v in value):  # MIN:MAX
            return json.dumps(f"{value[0]}:{value[1]}")
        return json.dumps(",".join(str(v) for v in value))
    return json.dumps(str(value))
