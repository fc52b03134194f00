"""What a worker writes of one task message to its status table, and who it is.

:class:`TaskRecord` holds one message's item as this worker writes it (its
fields, the task's context and stop while it runs); :class:`Identity` is the
worker itself (host, pid, queue, ECS task). The writes themselves are
:mod:`.status`'s.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.request
from typing import Any, Dict, Optional

from ..ops.metrics import Outcome
from ..ops.status_items import (
    CANCELLED,
    CONTINUED,
    DONE,
    FAILED,
    HANDED_BACK,
    REFUSED,
    TIMED_OUT,
    kwargs_excerpt,
)
from ..sqs.continuation import Carried
from ..sqs.facts import message_id_of, receive_count_of

logger = logging.getLogger(__name__)

#: The item's state for each outcome (Outcome: the worker's log and metric vocabulary).
STATE_OF = {
    Outcome.DONE: DONE,
    Outcome.FAILED: FAILED,
    Outcome.REJECTED: FAILED,
    Outcome.RETRIED_BY_TASK: FAILED,
    Outcome.TIMED_OUT: TIMED_OUT,
    Outcome.REFUSED: REFUSED,
    Outcome.UNKNOWN: REFUSED,
    Outcome.INVALID: REFUSED,
    Outcome.HANDED_BACK: HANDED_BACK,
    Outcome.CONTINUED: CONTINUED,
    Outcome.CANCELLED: CANCELLED,
}

#: A short task's final state in these is one whole item, batched (its message is gone).
WHOLE_ITEM_STATES = (DONE, CANCELLED)

#: What a message's new receive clears of its item (a retry after a failure).
CLEARED_ON_START = (
    "ended_at",
    "duration_s",
    "result",
    "result_dropped",
    "error_type",
    "error",
    "continued_as",
    "progress",
    "progress_note",
)


class TaskRecord:
    """One message's item as this worker writes it.

    ``next_write`` (``time.monotonic()``) is when its next write is due: the
    start's ``start_after_s`` after it began, then one per heartbeat period.
    """

    def __init__(self, message_id: str, fields: Dict[str, Any], start_after_s: float) -> None:
        self.message_id = message_id
        self.fields = fields  # what the item says of the task and its worker
        self.stop: Any = None  # the task's TaskStop (a cancel is delivered to it)
        self.context: Any = None  # its TaskContext (its progress is read from it)
        self.box: Any = None  # the checkpoint box of its child (isolated tasks)
        self.begun = time.monotonic()
        self.next_write = self.begun + start_after_s
        self.start_sent = False  # its running item is written (or on its way)

    @property
    def task(self) -> Optional[str]:
        return self.fields.get("task")

    def live_fields(self, ttl_s: int) -> Dict[str, Any]:
        """A running task's heartbeat write: the time, its expiry and its progress."""
        now = time.time()
        fields = {"heartbeat_at": now, "updated_at": now, "expires_at": int(now) + ttl_s}
        return {**fields, **self.progress_fields()}

    def progress_fields(self) -> Dict[str, Any]:
        """``progress`` and ``progress_note`` as the task last reported them (if it did)."""
        progress = None if self.context is None else self.context.reported_progress(self.box)
        if progress is None:
            return {}
        return {"progress": progress[0], "progress_note": progress[1] or None}


class Identity:
    """The worker process that writes: its host, pid, ECS task and queue."""

    def __init__(self, queue: str, store_kwargs: bool = False) -> None:
        self.queue = queue
        self.store_kwargs = store_kwargs
        self.host = socket.gethostname()
        self.ecs_task_arn = ecs_task_arn()

    def record(
        self, message: Any, task: Optional[str], kwargs: Any, start_after_s: float
    ) -> TaskRecord:
        """A new record of ``message`` (task ``task``, received by this worker process)."""
        message_id = message_id_of(message) or ""
        carried = Carried.of(message)
        fields: Dict[str, Any] = {
            "message_id": message_id,
            "task": task,
            "queue": self.queue,
            "host": self.host,
            "pid": os.getpid(),
            "ecs_task_arn": self.ecs_task_arn,
            "receive_count": receive_count_of(message),
        }
        if carried.continuation:
            fields["first_message_id"] = carried.first_message_id
            fields["continuation"] = carried.continuation
        if self.store_kwargs and kwargs is not None:
            fields["kwargs"] = kwargs_excerpt(kwargs)
        return TaskRecord(message_id, fields, start_after_s)


def queue_name(queue_url: Optional[str]) -> str:
    """A queue's name: the last part of its URL."""
    return (queue_url or "").rstrip("/").rsplit("/", 1)[-1]


def ecs_task_arn() -> Optional[str]:
    """The ECS task this process runs in (from the task metadata endpoint), or None."""
    uri = os.environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if not uri:
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/task", timeout=1.0) as answer:
            arn = json.loads(answer.read().decode("utf-8")).get("TaskARN")
    except Exception as error:
        logger.info("the ECS task metadata endpoint did not give the task ARN: %r", error)
        return None
    return str(arn) if arn else None
