"""A message moved to its queue's dead-letter queue at once (a task's ``Reject``).

The copy is sent first, then the original deleted: a failure between the two
leaves a duplicate in the dead-letter queue, never a loss.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from ..errors import BatchEntryError
from ..sqs.batch import EntryFailure
from ..sqs.facts import failure_context, message_id_of
from .retry import RetryPolicy

logger = logging.getLogger(__name__)


def move_to_dead_letter(
    settlement: Any, message: Any, task: Optional[str], count: int, why: str, policy: RetryPolicy
) -> bool:
    """Move the message to its queue's dead-letter queue now (through ``settlement``:
    its queues, notify and retry path); True if it was moved.

    Without a redrive policy (or when the move fails) the message takes the
    normal retry path, with a warning.
    """
    message_id = message_id_of(message)
    try:
        target = settlement.dead_letter_queue(message)
    except Exception as error:
        logger.exception(
            "task %s message %s: cannot read the queue's redrive policy", task, message_id
        )
        settlement.notify(error, context=failure_context(message))
        target = None
    if target is None:
        logger.warning(
            "task %s message %s receive %d: rejected (%s), but the queue has no "
            "dead-letter queue (redrive policy); retrying it as a failure instead. Give "
            "the queue a redrive policy to dead-letter rejected tasks at once.",
            task,
            message_id,
            count,
            why,
        )
        settlement.retry_later(message, task, count, why, policy)
        return False
    try:
        copy = {
            "Id": "0",
            "MessageBody": message.body,
            "MessageAttributes": getattr(message, "message_attributes", None) or {},
        }
        sent = target.send_batch([copy])
        _raise_if_failed(sent, "SendMessage to the dead-letter queue", message_id, task)
    except Exception as error:
        logger.exception(
            "task %s message %s: copy to dead-letter queue %s failed", task, message_id, target
        )
        settlement.notify(error, context=failure_context(message))
        settlement.retry_later(message, task, count, why, policy)
        return False
    try:
        deleted = settlement.queue_of(message).delete_batch([("0", message)])
        _raise_if_failed(deleted, "DeleteMessage", message_id, task)
    except Exception as error:
        # The copy is in the dead-letter queue; the original comes back and
        # is rejected again: a duplicate there, never a loss.
        logger.exception(
            "task %s message %s: copied to dead-letter queue %s, but the delete failed",
            task,
            message_id,
            target,
        )
        settlement.notify(error, context=failure_context(message))
        return False
    logger.warning(
        "task %s message %s receive %d: rejected (%s); moved to dead-letter queue %s",
        task,
        message_id,
        count,
        why,
        target,
    )
    return True


def _raise_if_failed(
    response: Mapping[str, Any], action: str, message_id: Optional[str], task: Optional[str]
) -> None:
    """Raise BatchEntryError for the one entry of a one-entry batched call SQS failed."""
    for entry in response.get("Failed") or ():
        failure = EntryFailure.of(entry)
        raise BatchEntryError(action, message_id, task, failure.code, failure.text)
