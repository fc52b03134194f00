"""The ``sqstaskmaster worker`` options, generated from the fields of WorkerSettings.

Each setting's :class:`~sqstaskmaster.worker.settings.Flag` gives its option
(name, help, choices); the option's type comes from the field's type and its
help's ``{default}`` from the field's default. Every option defaults to None:
an option not given keeps the value the app's Worker has.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Dict, Optional

from ..worker.settings import FLAG, Flag, WorkerSettings


def _option_type(annotation: Any) -> Optional[type]:
    """``int`` or ``float`` for a field of that type (or Optional of it); None: a string."""
    if typing.get_origin(annotation) is typing.Union:
        kinds = [kind for kind in typing.get_args(annotation) if kind is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else None
    return annotation if annotation in (int, float) else None


def _add(parser: Any, dest: str, flag: Flag, annotation: Any, default: Any) -> None:
    """The option(s) of one setting (or one part of a setting)."""
    text = flag.help.format(default=default) if flag.help is not None else None
    if annotation is bool:
        # Two flags, one for each value; None (neither given) keeps the Worker's.
        pair = parser.add_mutually_exclusive_group()
        if flag.off is not None:
            pair.add_argument(
                flag.off, dest=dest, action="store_false", default=None, help=flag.off_help
            )
        pair.add_argument(flag.name, dest=dest, action="store_true", default=None, help=text)
        return
    names = [flag.name] + ([flag.short] if flag.short else [])
    # Named after the option, as argparse would without a dest (a list of choices shows them).
    metavar = None if flag.choices else flag.name.lstrip("-").replace("-", "_").upper()
    parser.add_argument(
        *names,
        dest=dest,
        type=_option_type(annotation),
        choices=flag.choices,
        metavar=metavar,
        help=text,
    )


def _flags(owner: type) -> Any:
    """(field name, its Flag, its type) of each field of ``owner`` that has a Flag."""
    types = typing.get_type_hints(owner)
    for item in dataclasses.fields(owner):
        flag = item.metadata.get(FLAG)
        if flag is not None:
            yield item.name, flag, types[item.name]


def add_setting_options(parser: argparse.ArgumentParser) -> None:
    """One option per setting (a setting with parts: one per part, dest ``setting.part``)."""
    defaults = WorkerSettings()
    for name, flag, annotation in _flags(WorkerSettings):
        default = getattr(defaults, name)
        if flag.parts is None:
            _add(parser, name, flag, annotation, default)
            continue
        types = typing.get_type_hints(annotation)
        for part, part_flag in flag.parts.items():
            _add(parser, f"{name}.{part}", part_flag, types[part], getattr(default, part))


def add_endpoint_option(parser: argparse.ArgumentParser) -> None:
    """The worker's ``--endpoint-url`` option, for the other commands that reach SQS."""
    for name, flag, annotation in _flags(WorkerSettings):
        if name == "endpoint_url":
            _add(parser, name, flag, annotation, None)


def setting_changes(args: argparse.Namespace, current: WorkerSettings) -> Dict[str, Any]:
    """The settings the options give (None: not given); a setting with parts is built whole.

    Raises ValueError for a part's value its class refuses (a negative retry delay).
    """
    changes: Dict[str, Any] = {}
    for name, flag, _annotation in _flags(WorkerSettings):
        if flag.parts is None:
            changes[name] = getattr(args, name)
            continue
        given = {part: getattr(args, f"{name}.{part}") for part in flag.parts}
        kept = {part: value for part, value in given.items() if value is not None}
        changes[name] = dataclasses.replace(getattr(current, name), **kept)
    return changes
