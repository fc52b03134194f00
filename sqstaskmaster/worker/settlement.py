"""What becomes of a message once its task ran (or could not run): decided and done here, once.

The vocabulary is :class:`~sqstaskmaster.ops.metrics.Outcome` (log fields and
metric labels alike). For a task a worker ran, :meth:`Settlement.settle`
decides from how the handler's body ended, and carries it out:

- delete: a message whose task succeeded is queued to the worker's batched deletes;
- retry later: its visibility is set to the retry backoff (``RetryPolicy``),
  so the queue's redrive policy dead-letters it after ``maxReceiveCount``;
- retry at: the task asked for its next delivery (``Retry(delay_s)``);
- hand back: visibility 0, at once (shutdown; a wait that ate its receive's 12 hours);
- refuse: never run (unknown task, invalid body, a hard timeout no receive's 12 hours can hold):
  notify, log, retry later;
- dead-letter now: a permanent failure (``Reject``): a copy goes to the
  redrive policy's dead-letter queue, then the message is deleted.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Optional, Tuple

from ..errors import (
    HARD_TIMEOUT_TEXT,
    ChildTaskError,
    HardTimeoutError,
    MalformedBodyError,
    Notify,
    Reject,
    Retry,
    TaskCancelled,
    WorkerShutdownError,
)
from ..ops import metrics
from ..ops.metrics import Outcome as Outcome
from ..run.context import context_of
from ..sqs.facts import (
    budget_left_s,
    capped_visibility,
    failure_context,
    message_id_of,
    receive_count_of,
)
from ..sqs.queue import Queue, queue_of
from .batching import DeleteBatch
from .cancelling import cancel_of, settle_cancelled
from .continuing import continuation_outcome, continue_task
from .dead_letter import move_to_dead_letter
from .retry import RetryPolicy

logger = logging.getLogger(__name__)


def classify(error: Optional[BaseException], throws: Tuple[type, ...] = ()) -> Outcome:
    """The outcome of a task that ran and ended with ``error`` (None: success)."""
    if error is None:
        return Outcome.DONE
    if isinstance(error, TaskCancelled):
        return Outcome.CANCELLED
    if isinstance(error, WorkerShutdownError):
        return Outcome.HANDED_BACK
    if isinstance(error, Retry):
        return Outcome.RETRIED_BY_TASK
    if isinstance(error, Reject) or getattr(error, "rejected", False) is True:
        return Outcome.REJECTED
    if throws and isinstance(error, throws):
        return Outcome.REJECTED
    if isinstance(error, HardTimeoutError) or _is_0_0_11_hard_timeout(error):
        return Outcome.TIMED_OUT
    return Outcome.FAILED


def _is_0_0_11_hard_timeout(error: BaseException) -> bool:
    """A plain TimeoutError with 0.0.11's text: a subclass's own ``_handle_alarm`` raised it.

    Any other TimeoutError (a socket's, a future's, an isolated task's own) is
    the task's failure, not its hard timeout.
    """
    return (
        isinstance(error, TimeoutError)
        and not isinstance(error, ChildTaskError)
        and str(error) == HARD_TIMEOUT_TEXT
    )


class Settlement:
    """Decides (:meth:`settle`) and carries out what becomes of a message.

    SQS errors are logged and notified, never raised.
    """

    def __init__(self, notify: Notify) -> None:
        self.notify = notify
        # Called before a hand-back (a worker flushes its batched deletes).
        self.before_hand_back: Optional[Callable[[], None]] = None
        # The queue the worker polls (None: each message's own, see queue_of).
        self.queue: Optional[Queue] = None
        # Queue URL -> its dead-letter queue's URL (None: no redrive policy).
        self._dead_letter_queues: Dict[Queue, Optional[Queue]] = {}
        # (id(message), seconds) of the last visibility change SQS accepted.
        self._last_visibility: Optional[Tuple[int, int]] = None
        #: (id(message), error) of the last message refused (for the status table).
        self.last_refusal: Optional[Tuple[int, BaseException]] = None

    def settle(
        self,
        handler: Any,
        message: Any,
        task: str,
        count: int,
        error: Optional[BaseException],
        policy: RetryPolicy,
        duration_s: float,
        *,
        from_body: bool = True,
        fatal: bool = False,
        deletes: Optional[DeleteBatch] = None,
    ) -> Outcome:
        """Decide what becomes of ``handler``'s message, whose task ended with ``error``; do it.

        ``from_body``: ``error`` came out of the task (through the handler's
        exit), so a failure is reported through the handler's ``notify`` and
        its "Failed for message" log line, as 0.0.11's exit did. ``fatal``: a
        KeyboardInterrupt the caller raises again: the message is handed back.
        A done message is queued to ``deletes`` (the worker's batched deletes;
        a failed delete goes to the handler's ``notify``), else deleted at once.
        """
        outcome = Outcome.HANDED_BACK if fatal else classify(error, handler.throws)
        if from_body and error is not None and not isinstance(error, (Retry, WorkerShutdownError)):
            handler.report_failure(error)
        context = context_of(handler)
        why = "stopped by shutdown"
        cancelled = None if fatal else cancel_of(handler)
        if cancelled is not None or outcome is Outcome.CANCELLED:
            outcome = Outcome.CANCELLED
            error = settle_cancelled(handler, message, task, cancelled, error)
        elif context is not None:
            if not fatal:
                outcome, changed = continuation_outcome(outcome, context)
                why = changed or why
            if outcome is Outcome.CONTINUED and not continue_task(
                self.queue_of(message),
                message,
                task,
                count,
                context,
                duration_s,
                self.notify,
                handler.sqs_timeout,
            ):
                # Not at once (visibility 0): a continuation SQS refuses would be
                # refused each time; the retry delay and the redrive policy bound it.
                outcome = Outcome.FAILED
        if context is not None:
            metrics.checkpoints_saved(task, context.checkpoints)
        self.record(task, outcome, duration_s)
        if fatal:
            self.hand_back(message, task, f"{type(error).__name__} while running")
            return outcome
        logger.info(
            "task %s message %s receive %d: %s in %.3f s%s",
            task,
            message_id_of(message),
            count,
            outcome.phrase,
            duration_s,
            "" if error is None else f" ({type(error).__name__}: {error})",
        )
        if outcome is Outcome.CANCELLED:
            pass  # deleted at once by settle_cancelled
        elif outcome is Outcome.CONTINUED:
            # At once, not batched: until it is gone, a crash would bring it back
            # beside its continuation (the task would run twice).
            handler.delete_message()
        elif outcome is Outcome.DONE:
            if deletes is None:
                handler.delete_message()
            else:
                deletes.add(message, task, handler.notify_safely)
        elif outcome is Outcome.HANDED_BACK:
            self.hand_back(message, task, why)
        elif outcome is Outcome.RETRIED_BY_TASK and isinstance(error, Retry):
            self.retry_at(message, task, count, error.delay_s)
        elif outcome is Outcome.REJECTED:
            self.dead_letter(message, task, count, f"{type(error).__name__}: {error}", policy)
        else:
            self.retry_later(message, task, count, outcome.phrase, policy)
        return outcome

    @staticmethod
    def record(task: Optional[str], outcome: Outcome, duration_s: Optional[float] = None) -> None:
        """Count the outcome (metrics) and put it in the log fields; ``duration_s`` if it ran."""
        metrics.record_outcome(task, outcome, duration_s)

    def malformed(
        self, message: Any, malformed: MalformedBodyError, count: int, policy: RetryPolicy
    ) -> None:
        """A body no task can be read from: notify, one log line (an excerpt), retry later."""
        self.last_refusal = (id(message), malformed)
        self.record(None, Outcome.INVALID)
        self.notify(malformed.reported(), context=failure_context(message))
        logger.error("message %s receive %d: refused: %s", message_id_of(message), count, malformed)
        self.retry_later(message, None, count, "undecodable", policy)

    def unbuilt(
        self,
        message: Any,
        task: str,
        count: int,
        kwargs: Any,
        error: Exception,
        policy: RetryPolicy,
    ) -> None:
        """The task's handler could not be built (its constructor raised): a failure, retried."""
        self.last_refusal = (id(message), error)
        logger.error(
            "task %s message %s receive %d: cannot build its handler with kwargs %s",
            task,
            message_id_of(message),
            count,
            kwargs,
            exc_info=error,
        )
        self.notify(error, context=failure_context(message))
        self.record(task, Outcome.FAILED)
        self.retry_later(message, task, count, "handler construction failed", policy)

    def set_visibility(self, message: Any, seconds: int) -> bool:
        """Change the message's visibility; False (after logging and notify) if SQS refused."""
        try:
            self.queue_of(message).change_visibility(message, int(seconds))
        except Exception as error:
            logger.exception(
                "failed to set visibility of message %s to %s s", message_id_of(message), seconds
            )
            self.notify(error, context=failure_context(message))
            return False
        self._last_visibility = (id(message), int(seconds))
        return True

    def visibility_given(self, message: Any) -> Optional[int]:
        """The visibility timeout last set on ``message`` here (its retry delay), if any.

        Asked once, after the message's outcome: the record is cleared.
        """
        last, self._last_visibility = self._last_visibility, None
        return last[1] if last is not None and last[0] == id(message) else None

    def retry_later(
        self, message: Any, task: Optional[str], count: int, why: str, policy: RetryPolicy
    ) -> None:
        """Visible again after the retry backoff for receive number ``count``.

        Never past the message's 12-hour budget: SQS would refuse the change.
        """
        wanted = policy.delay(count)
        delay = capped_visibility(wanted, budget_left_s(message))
        self.set_visibility(message, delay)
        logger.warning(
            "task %s message %s receive %d: %s; visible again in %d s (retry backoff%s)",
            task,
            message_id_of(message),
            count,
            why,
            delay,
            "" if delay >= wanted else f" of {wanted} s, capped by the 12-hour budget",
        )

    def retry_at(self, message: Any, task: Optional[str], count: int, delay_s: float) -> int:
        """Visible again after ``delay_s`` (the task's ``Retry``), capped by SQS; returns it."""
        budget = budget_left_s(message, since=time.time())
        delay = capped_visibility(delay_s, budget)
        self.set_visibility(message, delay)
        logger.info(
            "task %s message %s receive %d: the task asked to retry; visible again in %d s "
            "(asked %.1f s)",
            task,
            message_id_of(message),
            count,
            delay,
            delay_s,
        )
        return delay

    def not_started(self, message: Any, task: str, why: str) -> Outcome:
        """A task that will not start now (``why``): its message is handed back."""
        self.record(task, Outcome.HANDED_BACK)
        self.hand_back(message, task, why)
        return Outcome.HANDED_BACK

    def hand_back(self, message: Any, task: Optional[str], why: str) -> None:
        """Visible again at once (visibility 0)."""
        if self.before_hand_back is not None:
            self.before_hand_back()
        self.set_visibility(message, 0)
        logger.warning(
            "task %s message %s receive %d: %s; handed back (visibility 0)",
            task,
            message_id_of(message),
            receive_count_of(message),
            why,
        )

    def refuse(
        self,
        message: Any,
        error: Exception,
        task: Optional[str],
        count: int,
        policy: RetryPolicy,
        outcome: Outcome = Outcome.REFUSED,
    ) -> None:
        """Never run: notify, log, and leave the message to the backoff and redrive policy."""
        self.last_refusal = (id(message), error)
        self.record(task, outcome)
        self.notify(error, context=failure_context(message))
        logger.error(
            "task %s message %s receive %d: refused: %s", task, message_id_of(message), count, error
        )
        self.retry_later(message, task, count, type(error).__name__, policy)

    def dead_letter(
        self, message: Any, task: Optional[str], count: int, why: str, policy: RetryPolicy
    ) -> bool:
        """Move the message to its queue's dead-letter queue now; True if it was moved
        (:func:`.dead_letter.move_to_dead_letter`)."""
        return move_to_dead_letter(self, message, task, count, why, policy)

    def queue_of(self, message: Any) -> Queue:
        """The queue that settles ``message``: the worker's, else the message's own."""
        return queue_of(message) if self.queue is None else self.queue

    def dead_letter_queue(self, message: Any) -> Optional[Queue]:
        """The dead-letter queue of the message's queue (asked once per queue), or None."""
        queue = self.queue_of(message)
        if queue not in self._dead_letter_queues:
            self._dead_letter_queues[queue] = queue.dead_letter_queue()
        return self._dead_letter_queues[queue]
