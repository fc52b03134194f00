"""One attempt at a message's task: enter its handler, run it, then settle the message.

The worker builds the handler (:mod:`sqstaskmaster.worker.loop`); this module runs
it (its exit only stops the task: ``caller_settles``) and hands how it ended to
:meth:`~sqstaskmaster.worker.settlement.Settlement.settle`, which decides and
carries out what becomes of the message, once. What a task
raises never ends the worker, save a KeyboardInterrupt (its message is handed
back first); ``sys.exit()`` in a task fails that task, as it does in isolation.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from ..errors import WorkerShutdownError
from ..ops import metrics
from ..sqs.facts import failure_context, message_id_of
from .batching import DeleteBatch
from .retry import RetryPolicy
from .settlement import Outcome, Settlement

logger = logging.getLogger(__name__)


def run_attempt(
    handler: Any,
    message: Any,
    task: str,
    count: int,
    *,
    settlement: Settlement,
    retry: RetryPolicy,
    protection: Any = None,
    shutdown_grace_s: float = 0.0,
    deletes: Optional[DeleteBatch] = None,
    status: Any = None,
) -> Outcome:
    """Run ``handler`` (built for ``message``, receive number ``count``); returns the outcome.

    ``protection`` (ECS scale-in protection hooks, or None) is asked to cover
    the hard timeout plus ``shutdown_grace_s`` before the task starts; when a
    stop arrives meanwhile, the task does not start and its message is handed
    back (visibility 0). ``deletes`` (the worker's batched deletes, or None:
    deleted at once) takes the message of a task that succeeded. ``status``
    (the worker's status table writer, or None) is told the task's end.
    """
    message_id = message_id_of(message)
    logger.info("task %s message %s receive %d: started", task, message_id, count)
    started = time.monotonic()
    interrupted: Optional[BaseException] = None
    result: Any = None
    if protection is not None:  # protected (or tried, within ~2 s) before it starts
        protection.busy(handler.hard_timeout + shutdown_grace_s, task, message_id)
        if _stopping(handler):  # a stop came while the agent was asked: do not start
            return settlement.not_started(message, task, "a stop came before the task started")
    metrics.task_started(task)
    handler.caller_settles = True  # settled below, once
    try:
        with handler:
            result = handler.run()
    except WorkerShutdownError as stop:
        # Raised outside the body (in the handler's entry or exit path).
        interrupted = stop
    except Exception as entry_error:
        # The handler could not be entered (its first visibility change
        # failed past botocore's retries): the body never ran. One
        # transient SQS error must not end the worker: retry it later.
        logger.exception(
            "task %s message %s receive %d: could not start the task", task, message_id, count
        )
        settlement.notify(entry_error, context=failure_context(message))
        interrupted = entry_error
    except SystemExit as exit_request:
        # sys.exit() in a task (signal mode) fails that task, as in isolation:
        # ending the worker would hand its message to the next worker to end.
        logger.error(
            "task %s message %s receive %d: the task called sys.exit(%r); "
            "counted as a failure, the worker goes on",
            task,
            message_id,
            count,
            exit_request.code,
        )
        interrupted = exit_request
    except BaseException as fatal:
        # KeyboardInterrupt from the task: hand back, then stop.
        settlement.settle(
            handler,
            message,
            task,
            count,
            fatal,
            retry,
            time.monotonic() - started,
            from_body=handler.finished,
            fatal=True,
        )
        if status is not None:
            status.ended(message, task, Outcome.HANDED_BACK, fatal)
        raise
    reported = handler.finished  # a failure of the body is reported by settle
    if handler.finished:
        error = handler.error
    elif interrupted is not None:
        error = interrupted
    else:
        reported = True
        # The handler's exit never reached MessageHandler.__exit__ (a subclass's
        # own __exit__ returned early): how the task ended is unknown, so the
        # message is not deleted; it is retried as a failure, reported. Its
        # timer (or child) is stopped here, since that exit never did it: no
        # heartbeat may follow the settlement.
        _leave_strategy(handler)
        error = RuntimeError(
            f"task {task} message {message_id}: the handler's __exit__ did not reach "
            "MessageHandler.__exit__, so how the task ended is unknown; retried"
        )
    duration_s = time.monotonic() - started
    outcome = settlement.settle(
        handler, message, task, count, error, retry, duration_s, from_body=reported, deletes=deletes
    )
    if status is not None:
        status.ended(message, task, outcome, error, result, duration_s)
    return outcome


def _stopping(handler: Any) -> bool:
    """Whether the worker is stopping: its stop controller reaches the task via the strategy."""
    stop = getattr(handler.execution, "stop", None)
    return stop is not None and stop.stopping


def _leave_strategy(handler: Any) -> None:
    """Stop and put back what the handler's execution strategy set up on entry, if still set."""
    entry = getattr(handler, "_strategy_entry", None)
    if entry is not None:
        handler._strategy_entry = None
        entry.leave()
        entry.restore()
