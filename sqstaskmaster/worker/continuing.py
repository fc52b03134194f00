"""A task that must stop before it is done goes on in a continuation message.

:func:`continuation_outcome` turns how a task with a :class:`~sqstaskmaster.run.context.TaskContext`
ended into its outcome: stopped (a warm stop, its receive's ``continue_after``)
after saving a checkpoint in this run, or returning after it read
``stop_requested`` with one saved: ``continued``. Returning after a stop
request without a checkpoint of this run is no success: the work is not
done, so the message is handed back (it runs again from what it carries).

:func:`send_continuation` sends the continuation (:mod:`sqstaskmaster.sqs.continuation`):
the same body, the checkpoint and the task's history in message attributes,
the same FIFO group with a deduplication id of its own. The caller deletes
the current message only once the send succeeded: a failed send leaves the
message to be handed back, never lost.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

from ..errors import BatchEntryError, MessageTooLargeError, Notify
from ..ops.metrics import Outcome
from ..run.context import TaskContext
from ..sqs import continuation
from ..sqs.batch import EntryFailure
from ..sqs.facts import (
    MAX_MESSAGE_ATTRIBUTES,
    MAX_MESSAGE_BYTES,
    failure_context,
    group_of,
    message_id_of,
    message_size,
    visibility_for,
)
from ..sqs.queue import Queue

logger = logging.getLogger(__name__)


def continuation_outcome(outcome: Outcome, context: TaskContext) -> Tuple[Outcome, Optional[str]]:
    """The outcome of a task with ``context`` that ended as ``outcome``, and why if it changed.

    A resumable task whose run reached ``continue_after`` is continued even
    without a checkpoint of this run: its continuation carries the checkpoint
    it started from and the time it ran, so its hard timeout bounds it.
    """
    goes_on = context.checkpoints > 0 or context.run_ended()
    if outcome is Outcome.DONE and context.stop_seen:
        if goes_on:
            return Outcome.CONTINUED, None
        return (
            Outcome.HANDED_BACK,
            "the task returned after it was asked to stop, with no checkpoint saved in this "
            "run; it runs again from what its message carries",
        )
    if outcome is Outcome.HANDED_BACK and goes_on:
        return Outcome.CONTINUED, None
    return outcome, None


def entry(
    queue: Queue, message: Any, task: str, context: TaskContext, run_s: float, limit: int
) -> dict:
    """The SendMessageBatch entry of the continuation of ``message``; raises if SQS would refuse
    it (``limit``: the queue's MaximumMessageSize)."""
    carried = context.next_message(run_s)
    attributes = continuation.others(getattr(message, "message_attributes", None))
    own = len(attributes)
    attributes.update(carried.attributes())
    if len(attributes) > MAX_MESSAGE_ATTRIBUTES:
        raise ValueError(
            f"the continuation of message {message_id_of(message)} would have "
            f"{len(attributes)} message attributes, over SQS's {MAX_MESSAGE_ATTRIBUTES}: "
            f"the task's message has {own} of its own"
        )
    size = message_size(message.body, attributes)
    if size > limit:
        raise MessageTooLargeError(task, size, limit, None)
    sent = {"Id": "0", "MessageBody": message.body, "MessageAttributes": attributes}
    group = group_of(message)
    if group is not None:  # a FIFO queue's, or a fair standard queue's tenant
        sent["MessageGroupId"] = group
        if str(getattr(queue, "url", "")).endswith(".fifo"):
            sent["MessageDeduplicationId"] = continuation.deduplication_id(
                carried.first_message_id or "", carried.continuation
            )
    return sent


def size_limit(queue: Queue) -> int:
    """The queue's MaximumMessageSize (SQS's largest when it cannot be read)."""
    try:
        value = queue.queue_attributes(["MaximumMessageSize"]).get("MaximumMessageSize")
        return int(value) if value else MAX_MESSAGE_BYTES
    except Exception:
        logger.warning(
            "cannot read the queue's MaximumMessageSize; taking SQS's %d bytes",
            MAX_MESSAGE_BYTES,
            exc_info=True,
        )
        return MAX_MESSAGE_BYTES


def send_continuation(
    queue: Queue, message: Any, task: str, context: TaskContext, run_s: float
) -> str:
    """Send the continuation of ``message`` to ``queue``; its message id. Raises on failure."""
    response = queue.send_batch([entry(queue, message, task, context, run_s, size_limit(queue))])
    for failed in response.get("Failed") or ():
        failure = EntryFailure.of(failed)
        raise BatchEntryError(
            "SendMessage (continuation)", message_id_of(message), task, failure.code, failure.text
        )
    sent = response.get("Successful") or [{}]
    return str(sent[0].get("MessageId", "?"))


def continue_task(
    queue: Queue,
    message: Any,
    task: str,
    count: int,
    context: TaskContext,
    run_s: float,
    notify: Notify,
    cover_s: int,
) -> bool:
    """Send the continuation of ``message``; False (logged, notified) if it could not be
    sent: the caller then retries the message later.

    First the message is kept invisible ``cover_s`` more seconds (its heartbeats
    have stopped): long enough to send and delete, so it cannot come back beside
    its continuation.
    """
    try:
        queue.change_visibility(message, visibility_for(message, cover_s))
    except Exception as error:
        logger.warning(
            "task %s message %s: could not extend its visibility before its continuation "
            "is sent (%r); sending anyway",
            task,
            message_id_of(message),
            error,
        )
        notify(error, context=failure_context(message))
    try:
        sent = send_continuation(queue, message, task, context, run_s)
    except Exception as error:
        logger.exception(
            "task %s message %s receive %d: the continuation message could not be sent; "
            "the message is retried after the retry delay, from the checkpoint it carries",
            task,
            message_id_of(message),
            count,
        )
        notify(error, context=failure_context(message))
        return False
    context.continued_as = sent
    logger.info(
        "task %s message %s receive %d: continued as message %s (continuation %d, "
        "%d checkpoint(s) in this run, %.1f s run in all)",
        task,
        message_id_of(message),
        count,
        sent,
        context.continuation + 1,
        context.checkpoints,
        context.carried.run_s + run_s,
    )
    return True
