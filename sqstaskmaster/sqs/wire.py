"""The 0.0.11 wire format, both ways: the body and the ``service_name`` attribute.

::

    body = {"task": "<name>", "kwargs": {...}}   # json.dumps, default separators,
                                                 # unknown types through str()
    MessageAttributes = {"service_name": {"StringValue": <sender>, "DataType": "String"}}

Byte for byte what 0.0.11 sends, so a mixed fleet shares a queue both ways.

Encoding: :func:`encode_body` is 0.0.11's ``submit`` and accepts what 0.0.11
accepts. :func:`encode_task` (the producer API's) writes the same bytes but
refuses, before anything is sent, what no worker can run: a task name that is
not a non-empty str, NaN or infinity anywhere in kwargs (not JSON), and kwargs
nested deeper than :data:`MAX_KWARGS_DEPTH` (json's decoder raises
``RecursionError`` near Python's recursion limit).

Decoding: :func:`decode` raises :class:`~sqstaskmaster.errors.MalformedBodyError`
for every body it cannot read (whatever the JSON decoder raised is its
``cause``); :func:`validate` raises
:class:`~sqstaskmaster.errors.InvalidTaskMessageError` for a task that is not a
string or kwargs that are not an object; both are
:class:`~sqstaskmaster.errors.BodyError`. :func:`parse_json` (0.0.11's
``task_generator`` path) turns whatever the decoder raises into a
:class:`~sqstaskmaster.errors.DecodeError`, a BodyError too.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from ..errors import (
    DecodeError,
    EncodeError,
    InvalidTaskMessageError,
    InvalidTaskNameError,
    MalformedBodyError,
)

#: The message attribute that names the sender of every 0.0.11 message.
SERVICE_NAME = "service_name"
#: Deepest kwargs nesting the producer API sends (``{}`` is 1, ``{"a": []}`` 2).
#: json decodes one level per interpreter frame, up to Python's recursion limit
#: (1,000 by default) less the frames already on the stack; half of it leaves
#: the worker ample room.
MAX_KWARGS_DEPTH = 500


def encode_body(task: Any, kwargs: Dict[str, Any]) -> str:
    """The message body 0.0.11 sends for ``task`` with ``kwargs``."""
    return json.dumps({"task": task, "kwargs": kwargs}, default=str)


def service_name_attribute(sender_name: str) -> Dict[str, Dict[str, str]]:
    """The ``service_name`` message attribute every 0.0.11 message carries."""
    return {SERVICE_NAME: {"StringValue": sender_name, "DataType": "String"}}


def task_label(task: str, limit: int = 100) -> str:
    """A task name as logs and metric labels show it: at most ``limit`` characters.

    A registered name is short; an unknown one is whatever a producer sent.
    """
    return task if len(task) <= limit else task[:limit] + "..."


def task_label_of(body: Any) -> Optional[str]:
    """The task a message body names, as log lines show it; None if it names none readable."""
    try:
        return task_label(decode_task(body)[0])
    except Exception:  # an undecodable body: it is refused when it runs
        return None


def check_task_name(task: Any, index: Optional[int] = None) -> None:
    """Raise InvalidTaskNameError unless ``task`` is a non-empty str."""
    if not isinstance(task, str) or not task:
        raise InvalidTaskNameError(task, index)


def encode_task(task: Any, kwargs: Dict[str, Any], index: Optional[int] = None) -> str:
    """``encode_body(task, kwargs)``, refusing what a worker could not decode or run.

    Raises InvalidTaskNameError for a bad task name and EncodeError for kwargs
    that are circular, hold NaN or infinity, or nest deeper than
    MAX_KWARGS_DEPTH. ``index`` is the message's position in a batch, for
    error texts.
    """
    check_task_name(task, index)
    try:
        body = json.dumps({"task": task, "kwargs": kwargs}, default=str, allow_nan=False)
    except ValueError as error:
        found = _first_non_finite(kwargs)
        if found is None:
            raise EncodeError(task, error, index=index) from error
        where, value = found
        reason = ValueError(f"{where} is {value!r}, which JSON cannot carry")
        raise EncodeError(task, reason, index=index) from error
    except (TypeError, RecursionError) as error:
        raise EncodeError(task, error, index=index) from error
    # Every level opens a bracket, so few brackets prove shallow kwargs cheaply.
    if body.count("[") + body.count("{") > MAX_KWARGS_DEPTH:
        if _depth(kwargs, MAX_KWARGS_DEPTH) > MAX_KWARGS_DEPTH:
            reason = ValueError(
                f"kwargs nest more than {MAX_KWARGS_DEPTH} levels deep, more than a worker "
                "is sure to decode"
            )
            raise EncodeError(task, reason, index=index)
    return body


def parse_json(body: Any) -> Any:
    """``json.loads(body)``; anything the decoder raises becomes a DecodeError."""
    try:
        return json.loads(body)
    except Exception as error:  # RecursionError, TypeError (None), MemoryError: all malformed
        raise DecodeError(body, error) from error


def _children(value: Any, where: str) -> Iterator[Tuple[str, Any]]:
    """The nested values json would encode, each with its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{where}[{key!r}]", item
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            yield f"{where}[{position}]", item


def _depth(kwargs: Any, limit: int) -> int:
    """Nesting depth of dicts, lists and tuples, counted up to ``limit + 1`` levels.

    Level by level, so a value json has encoded (no cycles) is walked once,
    and very deep kwargs stop the walk early.
    """
    containers = (dict, list, tuple)
    level = [kwargs] if isinstance(kwargs, containers) else []
    depth = 0
    while level and depth <= limit:
        depth += 1
        below: list = []
        for value in level:
            items = value.values() if isinstance(value, dict) else value
            below.extend(item for item in items if isinstance(item, containers))
        level = below
    return depth


def _first_non_finite(kwargs: Any) -> Optional[Tuple[str, float]]:
    """Path and value of the first NaN or infinity (a value or a dict key) in kwargs."""
    seen = set()
    stack = [("kwargs", kwargs)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return where, value
        if isinstance(value, (dict, list, tuple)):
            if id(value) in seen:  # shared, or a cycle (which json reported)
                continue
            seen.add(id(value))
            if isinstance(value, dict):
                for key in value:
                    if isinstance(key, float) and not math.isfinite(key):
                        return f"a key of {where}", key
            stack.extend(reversed(list(_children(value, where))))
    return None


def decode(
    body: Any,
    message_id: Optional[str] = None,
    on_malformed: Optional[Callable[[MalformedBodyError], None]] = None,
) -> Tuple[Any, Any]:
    """``(task, kwargs)`` of a body, as 0.0.11 reads it (no type checks: see :func:`validate`).

    Raises MalformedBodyError, whose ``cause`` is the decoder's own error
    (``JSONDecodeError``, ``KeyError`` for a missing field, ``TypeError`` for a
    body that is not an object, ``RecursionError`` for one nested too deep).
    ``on_malformed`` is called with it first, while the decoder's error is
    being handled (so ``logger.exception`` there logs that error, as 0.0.11 did).
    """
    try:
        content = json.loads(body)
    except Exception as error:  # every undecodable body is malformed, whatever was raised
        raise _malformed(message_id, body, error, False, on_malformed) from error
    try:
        return content["task"], content["kwargs"]
    except (KeyError, TypeError, IndexError) as error:
        raise _malformed(message_id, body, error, True, on_malformed) from error


def _malformed(
    message_id: Optional[str],
    body: Any,
    error: BaseException,
    decodes: bool,
    on_malformed: Optional[Callable[[MalformedBodyError], None]],
) -> MalformedBodyError:
    malformed = MalformedBodyError(message_id, body, error, decodes=decodes)
    if on_malformed is not None:
        on_malformed(malformed)
    return malformed


def validate(task: Any, kwargs: Any, message_id: Optional[str] = None) -> Tuple[str, Dict]:
    """``(task, kwargs)`` unchanged when the task is a string and kwargs an object."""
    if not isinstance(task, str) or not isinstance(kwargs, dict):
        raise InvalidTaskMessageError(message_id, task, kwargs)
    return task, kwargs


def decode_task(body: Any, message_id: Optional[str] = None) -> Tuple[str, Dict]:
    """:func:`decode` then :func:`validate`: what a worker runs, or a BodyError."""
    task, kwargs = decode(body, message_id)
    return validate(task, kwargs, message_id)
