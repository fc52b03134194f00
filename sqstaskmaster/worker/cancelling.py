"""Cancelled tasks (through the status table): what becomes of their messages.

A cancel reaches a running task through its :class:`~sqstaskmaster.run.context.TaskStop`
(the worker's status writer sets it, :mod:`.status`); however the task then
ends (it returned after ``stop_requested``, or was stopped after the grace),
its outcome is ``cancelled``: ``notify`` gets a :class:`TaskCancelled`, and the
message is deleted at once, never retried or dead-lettered. A message
cancelled before any worker ran it is deleted unrun (:func:`delete_unrun`).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from ..errors import Notify, TaskCancelled
from ..ops import metrics
from ..ops.metrics import Outcome
from ..sqs.facts import failure_context, message_id_of, receive_count_of

logger = logging.getLogger(__name__)


def cancel_of(handler: Any) -> Any:
    """The handler's TaskStop if its task was cancelled, else None."""
    stop = getattr(getattr(handler, "execution", None), "stop", None)
    return stop if getattr(stop, "cancelled", False) else None


def settle_cancelled(
    handler: Any, message: Any, task: str, stop: Any, error: Optional[BaseException]
) -> TaskCancelled:
    """Report a cancelled task (notify, a log line) and delete its message at once."""
    if not isinstance(error, TaskCancelled):
        how = "it returned" if error is None else f"it ended with {type(error).__name__}"
        error = TaskCancelled(
            f"by {getattr(stop, 'cancelled_by', 'someone')}; {how} after the cancel reached it",
            task,
            message_id_of(message),
        )
    handler.notify_safely(error, failure_context(message))
    handler.delete_message()
    return error


def delete_unrun(
    message: Any, task: Optional[str], by: str, deletes: Any, notify: Notify
) -> TaskCancelled:
    """A message cancelled before it ran: notify, count, log, then delete it (batched)."""
    message_id = message_id_of(message)
    error = TaskCancelled(f"by {by}, before it ran", task, message_id)
    metrics.record_outcome(task, Outcome.CANCELLED)
    logger.warning(
        "task %s message %s receive %d: cancelled before it ran (by %s); deleted unrun",
        task,
        message_id,
        receive_count_of(message),
        by,
    )
    try:
        notify(error, context=failure_context(message))
    except Exception:
        logger.exception("notify raised while reporting %r", error)
    deletes.add(message, task)
    return error
