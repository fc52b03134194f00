"""The 0.0.11 wire format, both ways: the body and the ``service_name`` attribute.

::

    body = {"task": "<name>", "kwargs": {...}}   # json.dumps, default separators,
                                                 # unknown types through str()
    MessageAttributes = {"service_name": {"StringValue": <sender>, "DataType": "String"}}

Byte for byte what 0.0.11 sends, so a mixed fleet shares a queue both ways.
:func:`decode` raises :class:`~sqstaskmaster.errors.MalformedBodyError` for
every body it cannot read (whatever the JSON decoder raised is its ``cause``);
:func:`validate` raises :class:`~sqstaskmaster.errors.InvalidTaskMessageError`
for a task that is not a string or kwargs that are not an object. Both are
:class:`~sqstaskmaster.errors.BodyError`.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple

from .errors import InvalidTaskMessageError, MalformedBodyError

#: The message attribute that names the sender of every 0.0.11 message.
SERVICE_NAME = "service_name"


def encode_body(task: Any, kwargs: Dict[str, Any]) -> str:
    """The message body 0.0.11 sends for ``task`` with ``kwargs``."""
    return json.dumps({"task": task, "kwargs": kwargs}, default=str)


def service_name_attribute(sender_name: str) -> Dict[str, Dict[str, str]]:
    """The ``service_name`` message attribute every 0.0.11 message carries."""
    return {SERVICE_NAME: {"StringValue": sender_name, "DataType": "String"}}


def decode(body: Any, message_id: Optional[str] = None) -> Tuple[Any, Any]:
    """``(task, kwargs)`` of a body, as 0.0.11 reads it (no type checks: see :func:`validate`).

    Raises MalformedBodyError, whose ``cause`` is the decoder's own error
    (``JSONDecodeError``, ``KeyError`` for a missing field, ``TypeError`` for a
    body that is not an object, ``RecursionError`` for one nested too deep).
    """
    try:
        content = json.loads(body)
    except Exception as error:  # every undecodable body is malformed, whatever was raised
        raise MalformedBodyError(message_id, body, error, decodes=False) from error
    try:
        return content["task"], content["kwargs"]
    except (KeyError, TypeError, IndexError) as error:
        raise MalformedBodyError(message_id, body, error, decodes=True) from error


def validate(task: Any, kwargs: Any, message_id: Optional[str] = None) -> Tuple[str, Dict]:
    """``(task, kwargs)`` unchanged when the task is a string and kwargs an object."""
    if not isinstance(task, str) or not isinstance(kwargs, dict):
        raise InvalidTaskMessageError(message_id, task, kwargs)
    return task, kwargs


def decode_task(body: Any, message_id: Optional[str] = None) -> Tuple[str, Dict]:
    """:func:`decode` then :func:`validate`: what a worker runs, or a BodyError."""
    task, kwargs = decode(body, message_id)
    return validate(task, kwargs, message_id)
