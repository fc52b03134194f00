"""The task status table's items: their attributes, states and limits (one place for both sides).

Workers write the items (:mod:`sqstaskmaster.worker.status`); users read them,
cancel tasks and wait for results (:mod:`sqstaskmaster.ops.status_table`, the
``tasks``, ``task`` and ``cancel`` commands). One item per task message, keyed
by its SQS message id:

====================  ====  ==========================================================
attribute             type  what
====================  ====  ==========================================================
message_id            S     the key: the SQS message id
task                  S     the task's name
queue                 S     the queue's name
state                 S     one of :data:`STATES`
first_message_id      S     a continuation's first message (absent on a first message)
continuation          N     0 for a task's first message, then 1, 2, ...
continued_as          S     the continuation message sent when this one ``continued``
host, pid             S, N  the worker that received it
ecs_task_arn          S     the ECS task that worker runs in, when known
receive_count         N     SQS's ApproximateReceiveCount at this receive
started_at            N     epoch seconds: this receive's task started
heartbeat_at          N     epoch seconds: the worker's last write while it ran
ended_at              N     epoch seconds: the task ended (absent while it runs)
updated_at            N     epoch seconds of the last write (the state index's sort key)
duration_s            N     seconds the task ran, once ended
progress              N     0 to 1, from ``context.progress(fraction, note)``
progress_note         S     at most :data:`MAX_NOTE_CHARS` characters
result                S     the return value as JSON text (at most :data:`MAX_RESULT_BYTES`)
result_dropped        S     why the return value is not stored (too big, not JSON)
error_type, error     S     the error's type and an excerpt of :data:`MAX_ERROR_CHARS`
kwargs                S     an excerpt of the kwargs' JSON (only with ``--status-kwargs``)
cancel_requested_at   N     epoch seconds: someone asked to cancel the task
cancel_requested_by   S     who (user@host, or what the caller of cancel() said)
expires_at            N     epoch seconds: DynamoDB's TTL deletes the item after it
====================  ====  ==========================================================

The index :data:`STATE_INDEX` (partition key ``state``, sort key
``updated_at``) lists the items of one state, newest first.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any, Dict, Mapping, Optional, Tuple

#: Every state an item can be in.
RUNNING = "running"
DONE = "done"
FAILED = "failed"
TIMED_OUT = "timed_out"
CANCELLED = "cancelled"
HANDED_BACK = "handed_back"
REFUSED = "refused"
CONTINUED = "continued"
STATES: Tuple[str, ...] = (
    RUNNING,
    DONE,
    FAILED,
    TIMED_OUT,
    CANCELLED,
    HANDED_BACK,
    REFUSED,
    CONTINUED,
)
#: States after which this message's task does not run again by itself: a
#: failed, timed-out or refused message may still be retried by SQS (a new
#: receive turns it ``running`` again), a handed-back one runs again, a
#: continued one goes on in ``continued_as``.
ENDED: Tuple[str, ...] = (DONE, FAILED, TIMED_OUT, CANCELLED, REFUSED)

#: Every attribute an item may have, in the order of the table above.
ATTRIBUTES: Tuple[str, ...] = (
    "message_id",
    "task",
    "queue",
    "state",
    "first_message_id",
    "continuation",
    "continued_as",
    "host",
    "pid",
    "ecs_task_arn",
    "receive_count",
    "started_at",
    "heartbeat_at",
    "ended_at",
    "updated_at",
    "duration_s",
    "progress",
    "progress_note",
    "result",
    "result_dropped",
    "error_type",
    "error",
    "kwargs",
    "cancel_requested_at",
    "cancel_requested_by",
    "expires_at",
)
#: The attributes that hold epoch seconds.
TIME_ATTRIBUTES: Tuple[str, ...] = (
    "started_at",
    "heartbeat_at",
    "ended_at",
    "updated_at",
    "cancel_requested_at",
    "expires_at",
)
#: The attribute DynamoDB's TTL reads.
TTL_ATTRIBUTE = "expires_at"

KEY = "message_id"
STATE_INDEX = "state-updated_at"
#: Items expire (DynamoDB's TTL on ``expires_at``) this long after their last write.
DEFAULT_TTL_DAYS = 14
MAX_RESULT_BYTES = 4096
MAX_ERROR_CHARS = 500
MAX_NOTE_CHARS = 200
MAX_KWARGS_CHARS = 1000


def table_definition(name: str) -> Dict[str, Any]:
    """``CreateTable``'s arguments: on-demand billing, the key and the state index."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": KEY, "AttributeType": "S"},
            {"AttributeName": "state", "AttributeType": "S"},
            {"AttributeName": "updated_at", "AttributeType": "N"},
        ],
        "KeySchema": [{"AttributeName": KEY, "KeyType": "HASH"}],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": STATE_INDEX,
                "KeySchema": [
                    {"AttributeName": "state", "KeyType": "HASH"},
                    {"AttributeName": "updated_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    }


def key(message_id: str) -> Dict[str, Dict[str, str]]:
    """The item's key, in DynamoDB's attribute-value form."""
    return {KEY: {"S": message_id}}


def to_attribute(value: Any) -> Dict[str, Any]:
    """One Python value (str, bool, int, float, None) as a DynamoDB attribute value."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float, Decimal)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"a status attribute cannot hold {value!r}")
        return {"N": _number_text(value)}
    if isinstance(value, str):
        return {"S": value}
    raise TypeError(f"a status attribute cannot hold a {type(value).__name__}")


def from_attribute(value: Mapping[str, Any]) -> Any:
    """A DynamoDB attribute value as a Python value (numbers: int when whole, else float)."""
    if "S" in value:
        return value["S"]
    if "N" in value:
        number = Decimal(value["N"])
        return int(number) if number == number.to_integral_value() else float(number)
    if "BOOL" in value:
        return bool(value["BOOL"])
    if "NULL" in value:
        return None
    return {kind: inner for kind, inner in value.items()}  # a type we never write


def to_item(fields: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Fields (None values left out) in DynamoDB's attribute-value form."""
    return {name: to_attribute(value) for name, value in fields.items() if value is not None}


def from_item(item: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """An item in DynamoDB's attribute-value form as plain fields."""
    return {name: from_attribute(value) for name, value in item.items()}


def _number_text(value: Any) -> str:
    if isinstance(value, float):
        return repr(round(value, 3))
    return str(value)


def result_fields(value: Any) -> Dict[str, Any]:
    """``result`` (JSON text) when JSON carries ``value`` in :data:`MAX_RESULT_BYTES`,
    else ``result_dropped`` (why it is not stored). None stores nothing."""
    if value is None:
        return {}
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except Exception as error:  # TypeError, ValueError (NaN, a cycle), RecursionError (deep)
        return {"result_dropped": f"not stored: JSON cannot carry it ({type(error).__name__})"}
    size = len(text.encode("utf-8"))
    if size > MAX_RESULT_BYTES:
        return {"result_dropped": f"not stored: its JSON is {size} bytes, over {MAX_RESULT_BYTES}"}
    return {"result": text}


def error_fields(error: Optional[BaseException]) -> Dict[str, Any]:
    """``error_type`` and ``error`` (an excerpt of at most :data:`MAX_ERROR_CHARS`)."""
    if error is None:
        return {}
    return {"error_type": type(error).__name__, "error": excerpt(str(error), MAX_ERROR_CHARS)}


def excerpt(text: str, most: int) -> str:
    """``text`` cut to at most ``most`` characters, an ellipsis marking a cut."""
    return text if len(text) <= most else text[: most - 1] + "\u2026"


def kwargs_excerpt(kwargs: Mapping[str, Any]) -> str:
    """The kwargs' JSON (what JSON cannot carry as its repr), cut to :data:`MAX_KWARGS_CHARS`."""
    return excerpt(json.dumps(dict(kwargs), default=repr, sort_keys=True), MAX_KWARGS_CHARS)
