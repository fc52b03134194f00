"""MessageHandler: run one SQS message's task under a heartbeat and a hard timeout.

0.0.11's contract in short::

    with MyHandler(message, sqs_timeout=30, alarm_timeout=25, hard_timeout=300) as handler:
        handler.run()

On entry the message's visibility is set to ``sqs_timeout`` and a timer starts;
every ``alarm_timeout`` seconds, while ``running()`` is true, the visibility is
extended again (the heartbeat); at ``hard_timeout`` seconds after construction
``TimeoutError`` interrupts ``run()``. On a clean exit the message is deleted;
on an error it is reported through ``notify``, logged, and left for SQS to
redeliver. Inside the package ``alarm_timeout`` is called ``heartbeat_s``.

A worker settles the messages of the handlers it runs itself
(``caller_settles``, :mod:`sqstaskmaster.worker.settlement`): the exit then
only stops the task and records how it ended.

0.0.11's subclass and test-patch surface is kept: ``_message``,
``_start_time``, ``_run_time()``, ``_handle_alarm(signum, frame)`` (every
timer firing goes through it) and ``_extend_timeout(seconds)`` (every
heartbeat and entry visibility change goes through it).
"""

from __future__ import annotations

import abc
import logging
import time
from time import monotonic
from types import FrameType, TracebackType
from typing import Any, Dict, Optional, Tuple, Type

from botocore.exceptions import BotoCoreError, ClientError

from .errors import (
    HARD_TIMEOUT_TEXT,
    ChildTaskError,
    HardTimeoutError,
    Retry,
    TaskStuckError,
    WorkerShutdownError,
)
from .ops import metrics
from .run.context import TaskContext
from .run.strategies import Entry, Execution, Forked, InProcess, protected_codes
from .sqs.facts import budget_left_s, failure_context, message_id_of

logger = logging.getLogger(__name__)

# Entry skips its visibility change only if the message stays invisible this
# many seconds past the first heartbeat.
ENTRY_VISIBILITY_MARGIN_S = 1.0


class MessageHandler(abc.ABC):
    """Base class for the code that handles one message; see the module docstring.

    Subclasses implement :meth:`run`, :meth:`running` and :meth:`notify`.
    ``sqs_timeout``, ``alarm_timeout`` and ``hard_timeout`` are seconds.

    With ``isolate = True`` on a subclass, ``run()`` runs in a forked child
    process while this process heartbeats and enforces the hard timeout
    without signals (see :mod:`sqstaskmaster.run.strategies`); ``kill_grace_s`` is
    the seconds between SIGTERM and SIGKILL when that child is stopped.
    ``execution`` sets the strategy directly.
    """

    isolate: bool = False
    kill_grace_s: float = 1.0
    #: The execution strategy (run.strategies.InProcess or Forked); None:
    #: chosen from ``isolate``. A worker sets it on each handler it runs.
    execution: Optional[Execution] = None
    #: Exception types that mark a permanent failure, as ``errors.Reject`` does.
    throws: Tuple[type, ...] = ()
    #: Set by a caller that settles the message itself (a worker): the exit
    #: then neither deletes nor reports; it swallows an Exception (the caller reads
    #: ``error``) and lets any other BaseException through.
    caller_settles: bool = False
    #: A resumable task may have a hard timeout past 12 hours: its whole run, across
    #: continuation messages (README, "Tasks longer than 12 hours").
    resumable: bool = False
    #: Its checkpoints and stop requests (:class:`~sqstaskmaster.run.context.TaskContext`).
    context: Optional[TaskContext] = None

    def __init__(self, message: Any, sqs_timeout: int, alarm_timeout: int, hard_timeout: int):
        if alarm_timeout <= 0:
            raise ValueError("Alarm timeout must be an integer greater than zero")
        if sqs_timeout <= 0:
            raise ValueError("SQS timeout must be an integer greater than zero")
        if hard_timeout <= 0:
            raise ValueError("Hard timeout must be an integer greater than zero")
        if alarm_timeout + 1 >= sqs_timeout:
            raise ValueError(
                f"Alarm timeout {alarm_timeout:d} is to long to reset "
                f"the sqs timeout {sqs_timeout:d}"
            )
        self._message = message
        self.sqs_timeout = sqs_timeout
        self.alarm_timeout = alarm_timeout
        self.hard_timeout = hard_timeout
        # The hard-timeout clock starts here, at construction, as in 0.0.11.
        # The deadline is kept on the monotonic clock (a wall-clock step must
        # not move it) but follows any change a subclass or test makes to
        # _start_time. `monotonic` is imported by name so that tests patching
        # this module's `time` (as 0.0.11's did) only steer _start_time.
        self._start_time = time.time()
        self._constructed_at = self._start_time
        self._start_monotonic = monotonic()
        #: The execution strategy's state while entered (None outside the block).
        self._strategy_entry: Optional[Entry] = None
        # When the caller knows the message is invisible until a given
        # time.monotonic() (it was just received with VisibilityTimeout =
        # sqs_timeout), entry skips its own visibility change if the first
        # heartbeat comes in time anyway: one request less per task.
        self.visible_until: Optional[float] = None
        # Set on leaving: a heartbeat still in flight (isolation runs them in a
        # helper thread) must not undo the caller's hand-back or backoff.
        self._heartbeats_stopped = False
        # Set by __exit__: the exception the body ended with (None on success).
        self.error: Optional[BaseException] = None
        self.finished = False

    # -- the subclass's part ------------------------------------------------

    @abc.abstractmethod
    def run(self) -> Any:
        """Do the task's work."""

    @abc.abstractmethod
    def running(self) -> bool:
        """Whether the task is still making progress; checked before each heartbeat."""

    @abc.abstractmethod
    def notify(self, exception: BaseException, context: Optional[Dict[str, Any]] = None) -> None:
        """Report an error to a notification service; errors are already logged."""

    # -- helpers ------------------------------------------------------------

    @property
    def heartbeat_s(self) -> int:
        """Seconds between heartbeats: ``alarm_timeout``, by its name inside the package."""
        return self.alarm_timeout

    @property
    def message_id(self) -> Optional[str]:
        """The id of the message being handled (None for a message without one)."""
        return message_id_of(self._message)

    @property
    def deadline(self) -> float:
        """The hard deadline as a ``time.monotonic()`` value, judged from ``_start_time``."""
        moved_s = self._start_time - self._constructed_at
        return self._start_monotonic + moved_s + self.hard_timeout

    def elapsed(self) -> float:
        """Seconds on the hard-timeout clock (since construction, or the moved ``_start_time``)."""
        return monotonic() - (self.deadline - self.hard_timeout)

    def _run_time(self) -> float:
        """Seconds since ``_start_time`` by the wall clock (0.0.11's name and meaning)."""
        return time.time() - self._start_time

    def _past_hard_timeout(self) -> bool:
        # _run_time() as in 0.0.11, or the monotonic deadline the timer is
        # armed for (the wall clock may lag it by a hair when the timer fires).
        return self._run_time() >= self.hard_timeout or monotonic() >= self.deadline

    def notify_safely(
        self, exception: BaseException, context: Optional[Dict[str, Any]] = None
    ) -> None:
        """``notify(exception, context=context)``; what notify raises is logged, not raised."""
        try:
            self.notify(exception, context=context)
        except Exception:
            logger.exception(
                "notify raised while reporting %r for message %s", exception, self.message_id
            )

    def visibility_budget_left(self) -> float:
        """Seconds of visibility SQS still grants this message (12 hours from its receive).

        SQS refuses to extend a message's visibility past 12 hours after the
        receive that returned its receipt handle; a TaskManager keeps the
        clock read just before that ReceiveMessage call with the message
        (:func:`sqstaskmaster.sqs.facts.mark_received`). For a message received
        otherwise the handler's construction is used.
        """
        return budget_left_s(self._message, self._constructed_at)

    def _extend_timeout(self, seconds: int) -> None:
        """``self._message.change_visibility(VisibilityTimeout=seconds)`` (0.0.11's name).

        Every heartbeat and the entry visibility change come through here, in
        signal mode and isolated alike, so an override sees them all. Never
        asks for more than the 12-hour budget has left: ``seconds`` is capped
        to it, and nothing is sent once it is used up. Errors propagate.
        """
        timeout = min(seconds, int(self.visibility_budget_left()))
        if timeout <= 0:
            logger.warning(
                "message %s has used its 12-hour visibility budget; not extending",
                self.message_id,
            )
            return
        if timeout < seconds:
            logger.info(
                "message %s: visibility %s s capped to the %s s left of its 12-hour budget",
                self.message_id,
                seconds,
                timeout,
            )
        self._message.change_visibility(VisibilityTimeout=timeout)

    def extend_visibility(self) -> bool:
        """The heartbeat's extension: ``_extend_timeout(sqs_timeout)``; errors are reported.

        Returns False when SQS (or the network) refused the change, True otherwise.
        """
        if self._heartbeats_stopped:
            logger.debug("message %s: handler left; heartbeat dropped", self.message_id)
            return True
        try:
            self._extend_timeout(self.sqs_timeout)
        except (ClientError, BotoCoreError) as error:
            # A network error past botocore's retries is not fatal either: the
            # next heartbeat still comes before the visibility runs out.
            logger.exception(
                "failed to extend visibility of message %s to %s s",
                self.message_id,
                self.sqs_timeout,
            )
            self.notify_safely(error, failure_context(self._message))
            return False
        return True

    def heartbeat(self) -> None:
        """One heartbeat: check ``running()`` (else raise TaskStuckError), extend the visibility."""
        if not self.running():
            raise TaskStuckError(
                f"Handler is stuck on message {self.message_id}: running() returned False "
                f"after {self.elapsed():.1f} s, so the heartbeat stopped",
                self.message_id,
                self.elapsed(),
            )
        logger.debug("heartbeat for message %s after %.1f s", self.message_id, self.elapsed())
        # A subclass's extend_visibility may return None: only False is a failure.
        metrics.heartbeat(ok=self.extend_visibility() is not False)

    def _handle_alarm(self, signum: int, frame: Optional[FrameType]) -> None:
        """The SIGALRM handler (0.0.11's name); every timer firing calls it, and so may tests.

        Past ``hard_timeout`` (by ``_run_time()``) it raises the hard timeout.
        Otherwise, if ``running()``, it extends the visibility through
        ``_extend_timeout(sqs_timeout)`` (an SQS error is notified and logged)
        and re-arms; if not, it raises the "Handler is stuck on" RuntimeError.
        """
        if self._past_hard_timeout():
            self.on_deadline()
        self.heartbeat()
        entry = self._strategy_entry
        if entry is not None:
            entry.rearm()

    def on_deadline(self) -> None:
        """The hard deadline has come: raise HardTimeoutError."""
        elapsed = self.elapsed()
        logger.error(
            "message %s hit its hard timeout of %s s after %.3f s",
            self.message_id,
            self.hard_timeout,
            elapsed,
        )
        raise HardTimeoutError(HARD_TIMEOUT_TEXT, self.hard_timeout, elapsed)

    def set_entry_visibility(self) -> None:
        """On entry: set the visibility to ``sqs_timeout``, unless it is known to last.

        It is skipped only when ``visible_until`` says the message stays
        invisible past the first heartbeat (``alarm_timeout`` from now) with a
        second to spare; 0.0.11-style use, which leaves it None, always sets it.
        Never more than the 12-hour budget has left (SQS would refuse it).
        """
        if self.visible_until is not None:
            left = self.visible_until - monotonic()
            if left >= self.heartbeat_s + ENTRY_VISIBILITY_MARGIN_S:
                logger.debug(
                    "message %s stays invisible %.1f s more; no visibility change on entry",
                    self.message_id,
                    left,
                )
                return
        self._extend_timeout(self.sqs_timeout)

    def delete_message(self) -> None:
        """Delete the message after success; an SQS or network error is reported, not raised.

        The message then comes back after its visibility timeout and runs
        again: SQS delivers at least once, so tasks must be idempotent.
        """
        try:
            self._message.delete()
        except (ClientError, BotoCoreError) as error:
            logger.exception("failed to delete message %s", self._message)
            self.notify_safely(error, failure_context(self._message))

    def report_failure(self, exception: BaseException) -> None:
        """notify and log a failed task (with its traceback); the message is left to SQS."""
        self.notify_safely(exception, failure_context(self._message))
        # An isolated child's traceback was logged as it was reported; one per task.
        trace = None if isinstance(exception, ChildTaskError) else exception.__traceback__
        logger.exception(
            "Failed for message: %s", self._message, exc_info=(type(exception), exception, trace)
        )

    # -- the rest of the execution strategy's view (run.strategies.TaskHandler) ------

    @property
    def label(self) -> str:
        """The handler in log lines: its class and message id."""
        return f"{type(self).__name__} message {self.message_id}"

    def on_alarm(self, signum: int, frame: Optional[FrameType]) -> None:
        """A firing of the signal-mode timer: ``self._handle_alarm(signum, frame)``.

        Looked up at each firing, so an override (or a patch) of
        ``_handle_alarm`` made after entry is honoured too.
        """
        self._handle_alarm(signum, frame)

    def execution_strategy(self) -> Execution:
        """How ``run()`` runs: ``execution``, else Forked if ``isolate``, else InProcess."""
        if self.execution is not None:
            return self.execution
        return Forked(self.kill_grace_s) if self.isolate else InProcess()

    # -- the context manager --------------------------------------------------

    def __enter__(self) -> MessageHandler:
        self._heartbeats_stopped = False
        entry = self._strategy_entry = self.execution_strategy().enter(
            self, protected_codes(MessageHandler, type(self))
        )
        try:
            self.set_entry_visibility()
        except BaseException:
            self._strategy_entry = None
            entry.leave()
            entry.restore()
            raise
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool:
        self._heartbeats_stopped = True
        entry, self._strategy_entry = self._strategy_entry, None
        if entry is not None:
            entry.leave()
        try:
            self.finished = True
            self.error = exc
            if isinstance(exc, HardTimeoutError):
                # Stopped now: the isolated child is reaped, or the alarm was caught.
                metrics.hard_timeout_overshoot(time.monotonic() - self.deadline)
            if self.caller_settles:
                return isinstance(exc, Exception)
            return self._settle(exc)
        finally:
            # Last, so a timer the caller had pending cannot fire mid-delete.
            if entry is not None:
                entry.restore()

    def _settle(self, exc: Optional[BaseException]) -> bool:
        """0.0.11's end of a handler used on its own; returns whether ``exc`` is swallowed."""
        if exc is None:
            self.delete_message()
            return False
        if isinstance(exc, Retry):
            logger.info("message %s: %s; not deleted", self.message_id, exc)
            return True
        if isinstance(exc, WorkerShutdownError):
            # Not the task's failure (a cold stop, a grace run out): no notify.
            logger.warning(
                "message %s: task stopped by the worker's shutdown (%s); not deleted",
                self.message_id,
                exc,
            )
            return True
        self.report_failure(exc)
        return isinstance(exc, Exception)
