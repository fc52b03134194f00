"""What a continuation message carries on the wire: the task's checkpoint and its history.

A task that must stop before it is done (its receive's 12 hours, a warm stop,
a Spot notice) and saved a checkpoint goes on in a new message: the same body
(0.0.11's, unchanged: a 0.0.11 worker runs it from the start), with these
SQS message attributes (:class:`Carried`):

- ``sqstaskmaster.checkpoint``: the last checkpoint, as JSON text (String);
- ``sqstaskmaster.first_message_id``: the id of the task's first message (String);
- ``sqstaskmaster.continuation``: 1 for the first continuation, then 2, ... (Number);
- ``sqstaskmaster.run_s``: seconds the task has run, all its messages together (Number);
- ``sqstaskmaster.first_started``: when its first message started, Unix seconds (Number).

In a FIFO queue the continuation keeps the message group; its deduplication id
is made from the first message's id and the continuation number
(:func:`deduplication_id`), so a second send of the same continuation is dropped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Mapping, Optional

#: The largest checkpoint a task may save: its JSON text, UTF-8, in bytes.
MAX_CHECKPOINT_BYTES = 256 * 1024

PREFIX = "sqstaskmaster."
CHECKPOINT = PREFIX + "checkpoint"
FIRST_MESSAGE_ID = PREFIX + "first_message_id"
CONTINUATION = PREFIX + "continuation"
RUN_S = PREFIX + "run_s"
FIRST_STARTED = PREFIX + "first_started"
NAMES = (CHECKPOINT, FIRST_MESSAGE_ID, CONTINUATION, RUN_S, FIRST_STARTED)


@dataclass(frozen=True)
class Carried:
    """A task's history as its message carries it; a first message carries nothing.

    ``checkpoint`` is JSON text (None: no checkpoint yet); ``state`` is its value,
    read once, here.
    """

    checkpoint: Optional[str] = None
    first_message_id: Optional[str] = None
    continuation: int = 0
    run_s: float = 0.0
    first_started: Optional[float] = None
    #: Why a checkpoint the message carries could not be read (then ``checkpoint`` is None).
    problem: Optional[str] = field(default=None, compare=False)
    state: Any = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Raises ValueError for a checkpoint that is no JSON.
        state = None if self.checkpoint is None else json.loads(self.checkpoint)
        object.__setattr__(self, "state", state)

    @classmethod
    def of(cls, message: Any) -> Carried:
        """What ``message`` (a received message, or a stand-in) carries; a bad value is ignored."""
        attributes = getattr(message, "message_attributes", None)
        if not isinstance(attributes, Mapping):
            return cls()
        history = cls(
            first_message_id=_string(attributes, FIRST_MESSAGE_ID),
            continuation=max(int(_number(attributes, CONTINUATION) or 0), 0),
            run_s=max(_number(attributes, RUN_S) or 0.0, 0.0),
            first_started=_number(attributes, FIRST_STARTED),
        )
        checkpoint = _string(attributes, CHECKPOINT)
        if checkpoint is None:
            if CHECKPOINT not in attributes:
                return history
            return replace(history, problem="its checkpoint attribute has no string value")
        try:
            return replace(history, checkpoint=checkpoint)
        except ValueError as error:
            return replace(history, problem=f"its checkpoint attribute is no JSON ({error})")

    def attributes(self) -> Dict[str, Dict[str, str]]:
        """These facts as SQS ``MessageAttributes`` (only the ones that are set)."""
        found: Dict[str, Dict[str, str]] = {
            CONTINUATION: {"DataType": "Number", "StringValue": str(self.continuation)},
            RUN_S: {"DataType": "Number", "StringValue": f"{self.run_s:.3f}"},
        }
        if self.checkpoint is not None:
            found[CHECKPOINT] = {"DataType": "String", "StringValue": self.checkpoint}
        if self.first_message_id:
            found[FIRST_MESSAGE_ID] = {"DataType": "String", "StringValue": self.first_message_id}
        if self.first_started is not None:
            found[FIRST_STARTED] = {
                "DataType": "Number",
                "StringValue": f"{self.first_started:.3f}",
            }
        return found


def others(attributes: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """A message's own attributes, without the ones of this module (a continuation sets them)."""
    return {name: dict(value) for name, value in (attributes or {}).items() if name not in NAMES}


def deduplication_id(first_message_id: str, continuation: int) -> str:
    """A FIFO deduplication id for continuation number ``continuation`` of a task."""
    digest = hashlib.sha256(f"{first_message_id}:{continuation}".encode()).hexdigest()
    return f"continuation-{continuation}-{digest[:48]}"


def _string(attributes: Mapping[str, Any], name: str) -> Optional[str]:
    value = attributes.get(name)
    if isinstance(value, Mapping) and isinstance(value.get("StringValue"), str):
        return str(value["StringValue"])
    return None


def _number(attributes: Mapping[str, Any], name: str) -> Optional[float]:
    text = _string(attributes, name)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None
