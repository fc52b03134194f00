"""A task's view of its run (:class:`TaskContext`), and the stop one task sees (:class:`TaskStop`).

A worker gives every task a context: a function task that declares a
keyword-only parameter ``context`` gets it, a MessageHandler subclass reads
``self.context``. Through it a task saves checkpoints, learns that it should
wrap up (``stop_requested``), and finds the state it saved before it was
stopped (``state``), in an earlier message of the same task (a continuation,
:mod:`sqstaskmaster.sqs.continuation`) or an earlier receive of this one.

The same object works on both sides of process isolation: in a task child a
checkpoint goes to the worker's shared memory at once and the stop request
is read from there (:mod:`.checkpoint_box`); in the worker process (signal
mode) both stay in the object. After the task, the worker reads what the
child saved (:meth:`TaskContext.absorb`) and settles the message with it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Callable, Optional, Tuple

from ..errors import CheckpointRefusedError, TaskCancelled, WorkerShutdownError
from ..ops.status_items import MAX_NOTE_CHARS, excerpt
from ..sqs.continuation import MAX_CHECKPOINT_BYTES, Carried
from ..sqs.facts import message_id_of, receive_count_of
from .checkpoint_box import CheckpointBox, child_box
from .waiting import StopSource

logger = logging.getLogger(__name__)


class TaskContext:
    """What a task knows of its run, and how it saves its progress.

    - ``state``: the last checkpoint (a JSON value), None before the first;
    - ``checkpoint(state)``: save one (see :meth:`checkpoint`);
    - ``progress(fraction, note)``: say how far the task is (see :meth:`progress`);
    - ``stop_requested``: True once the worker wants the task to wrap up (a warm
      stop, a Spot notice, the end of this receive's run for a resumable task);
    - ``message_id``, ``receive_count``, ``continuation`` (0 for a task's first
      message, then 1, 2, ...), ``first_message_id``, ``started_total_s``
      (seconds since the task's first message started), ``run_total_s``
      (seconds the task has run, all its messages together).
    """

    def __init__(
        self,
        message_id: Optional[str] = None,
        receive_count: int = 1,
        carried: Optional[Carried] = None,
        *,
        task: Optional[str] = None,
        notify: Optional[Callable[..., Any]] = None,
    ) -> None:
        carried = Carried() if carried is None else carried
        self.message_id = message_id
        self.receive_count = receive_count
        self.task = task
        self.continuation = carried.continuation
        self.first_message_id = carried.first_message_id or message_id
        self.carried = carried
        #: Checkpoints saved in this run (the worker counts a child's after the task).
        self.checkpoints = 0
        #: True once the task read ``stop_requested`` as True.
        self.stop_seen = False
        #: The stop this task sees, set by the worker (None: never asked to stop).
        self.stop: Optional[TaskStop] = None
        self._notify = notify
        self._state_text = carried.checkpoint
        self._state: Any = carried.state
        self._first_started = carried.first_started or time.time()
        self._run_started = time.monotonic()
        self._progress: Optional[Tuple[float, str]] = None
        #: The id of the continuation message this run was continued as (set by the worker).
        self.continued_as: Optional[str] = None

    @classmethod
    def of_message(
        cls,
        message: Any,
        task: Optional[str] = None,
        notify: Optional[Callable[..., Any]] = None,
        carried: Optional[Carried] = None,
    ) -> TaskContext:
        """The context of a task run from ``message``: what its attributes carry
        (``carried``, if the caller read them already)."""
        return cls(
            message_id_of(message),
            receive_count_of(message),
            Carried.of(message) if carried is None else carried,
            task=task,
            notify=notify,
        )

    # -- the task's side --------------------------------------------------------

    @property
    def state(self) -> Any:
        """The last checkpoint saved for this task (a JSON value), or None on its first run."""
        return self._state

    @property
    def started_total_s(self) -> float:
        """Seconds since the task's first message started (waits between messages included)."""
        return max(time.time() - self._first_started, 0.0)

    @property
    def run_total_s(self) -> float:
        """Seconds the task has run, its earlier messages' runs and this one together."""
        return self.carried.run_s + (time.monotonic() - self._run_started)

    @property
    def stop_requested(self) -> bool:
        """True once the worker wants the task to wrap up: checkpoint, then return."""
        box = child_box()
        if box is not None:
            asked = box.stop_requested()
        else:
            asked = self.stop is not None and self.stop.stopping
        if asked and not self.stop_seen:
            self.stop_seen = True
            logger.info(
                "task %s message %s: the task read stop_requested (after %d checkpoint(s) "
                "in this run)",
                self.task,
                self.message_id,
                self.checkpoints,
            )
        return asked

    def checkpoint(self, state: Any) -> bool:
        """Save ``state`` (a JSON value of at most 256 KiB) as the task's progress.

        Returns True once saved. A state JSON cannot carry (a set, an object, NaN)
        or one over :data:`MAX_CHECKPOINT_BYTES` is refused: logged as an error,
        passed to the task's ``notify``, False returned; the last checkpoint is
        kept and the task goes on. Keep a bigger state in a store of its own
        (S3, say) and checkpoint a pointer to it.
        """
        try:
            text = json.dumps(state, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as error:
            return self._refuse(f"JSON cannot carry it ({type(error).__name__}: {error})")
        size = len(text.encode("utf-8"))
        if size > MAX_CHECKPOINT_BYTES:
            return self._refuse(
                f"its JSON is {size} bytes, over the {MAX_CHECKPOINT_BYTES} bytes a checkpoint "
                "may hold"
            )
        box = child_box()
        if box is not None:
            self.checkpoints = box.write(text)
        else:
            self.checkpoints += 1
        self._state_text, self._state = text, json.loads(text)
        logger.debug(
            "task %s message %s: checkpoint %d saved (%d bytes)",
            self.task,
            self.message_id,
            self.checkpoints,
            size,
        )
        return True

    def progress(self, fraction: float, note: str = "") -> None:
        """Say how far the task is: ``fraction`` from 0 to 1, and a short ``note``.

        The worker writes it to its status table (``--status-table``) with its
        next heartbeat; a task in a forked child reports it through the
        worker's shared memory, so it reaches the table even if the child is
        killed. A fraction outside 0 to 1 is clamped (with a warning); a note
        is cut to 200 characters. Cheap: call it as often as you like.
        """
        value = float(fraction)
        if not math.isfinite(value):
            raise ValueError(f"progress must be a number from 0 to 1, got {fraction!r}")
        if not 0.0 <= value <= 1.0:
            logger.warning(
                "task %s message %s: progress %r is outside 0 to 1; clamped",
                self.task,
                self.message_id,
                fraction,
            )
            value = min(max(value, 0.0), 1.0)
        text = excerpt(str(note), MAX_NOTE_CHARS)
        box = child_box()
        if box is not None:
            box.set_progress(value, text)
        self._progress = (value, text)

    def _refuse(self, reason: str) -> bool:
        error = CheckpointRefusedError(self.task, self.message_id, reason)
        logger.error("%s", error)
        if self._notify is not None:
            self._notify(error, context={"message_id": self.message_id, "task": self.task})
        return False

    # -- the worker's side ------------------------------------------------------

    def run_ended(self) -> bool:
        """Whether this run of a resumable task reached its ``continue_after``."""
        return self.stop is not None and self.stop.continuing()

    def reported_progress(self, box: Optional[CheckpointBox] = None) -> Optional[Tuple[float, str]]:
        """The task's last progress (fraction, note): from ``box`` (the shared memory of
        the task's child, while an isolated task runs), else what it told this object."""
        if box is not None:
            shared = box.progress()
            if shared is not None:
                return shared
        return self._progress

    def absorb(self, box: CheckpointBox) -> None:
        """Take what the task's child saved in ``box`` (after the child ended)."""
        count, text, seen = box.read()
        if count and text is not None:
            self.checkpoints = count
            self._state_text, self._state = text, json.loads(text)
        self.stop_seen = self.stop_seen or seen

    def next_message(self, run_s: float) -> Carried:
        """What the continuation message carries, after this run of ``run_s`` seconds."""
        return Carried(
            checkpoint=self._state_text,
            first_message_id=self.first_message_id,
            continuation=self.continuation + 1,
            run_s=self.carried.run_s + max(run_s, 0.0),
            first_started=self._first_started,
        )

    def __repr__(self) -> str:
        return (
            f"TaskContext(task={self.task!r}, message_id={self.message_id!r}, "
            f"continuation={self.continuation}, checkpoints={self.checkpoints}, pid={os.getpid()})"
        )


def context_of(handler: Any) -> Optional[TaskContext]:
    """``handler.context`` if it is a TaskContext (a handler may own an attribute of that name)."""
    context = getattr(handler, "context", None)
    return context if isinstance(context, TaskContext) else None


class TaskStop:
    """The stop one task sees: its worker's warm or cold stop, or the end of this run.

    ``continue_at`` (a ``time.monotonic()`` value, None: none) is when a
    resumable task is asked to stop so that it goes on in a new message; like
    a warm stop, it then has ``grace_s`` seconds before it is stopped.
    Everything else is the worker's stop controller's (``worker``).
    """

    def __init__(
        self, worker: StopSource, continue_at: Optional[float], grace_s: float, label: str = "task"
    ) -> None:
        self.worker = worker
        self.label = label
        self.continue_at = continue_at
        self.grace_s = grace_s
        self._announced = False
        #: When (``time.monotonic()``) the task was found cancelled, and by whom.
        self.cancel_at: Optional[float] = None
        self.cancelled_by = ""
        self._cancel_announced = False
        self._cancel_names: Tuple[Optional[str], Optional[str]] = (None, None)

    @property
    def listener(self) -> Optional[Callable[[], None]]:
        return self.worker.listener

    @listener.setter
    def listener(self, value: Optional[Callable[[], None]]) -> None:
        self.worker.listener = value

    def continuing(self) -> bool:
        """Whether this run's end (``continue_at``) has come."""
        return self.continue_at is not None and time.monotonic() >= self.continue_at

    @property
    def cancelled(self) -> bool:
        """Whether the task was cancelled (through the status table)."""
        return self.cancel_at is not None

    def cancel(self, by: str, task: Optional[str], message_id: Optional[str]) -> None:
        """The task was cancelled (``by`` whom): ask it to stop, stop it after the grace.

        Safe from any thread: it only sets attributes. An isolated task's wait
        loop sees it within 50 ms; a signal-mode timer at its next firing (a
        heartbeat at the latest), which arms it for the stop; ``stop_requested``
        is true at once.
        """
        if self.cancel_at is not None:
            return
        self.cancelled_by = by
        self._cancel_names = (task, message_id)
        self.cancel_at = time.monotonic()

    @property
    def stopping(self) -> bool:
        return self.worker.stopping or self.continuing() or self.cancelled

    def interrupt_at(self) -> Optional[float]:
        times = [self.worker.interrupt_at()]
        if self.continue_at is not None:
            times.append(self.continue_at + self.grace_s)
        if self.cancel_at is not None:
            times.append(self.cancel_at + self.grace_s)
        due = [at for at in times if at is not None]
        return min(due) if due else None

    def error(self) -> WorkerShutdownError:
        if self.cancel_at is not None and time.monotonic() >= self.cancel_at + self.grace_s:
            task, message_id = self._cancel_names
            return TaskCancelled(
                f"by {self.cancelled_by}; the task did not return within {self.grace_s:g} s",
                task,
                message_id,
            )
        worker_at = self.worker.interrupt_at()
        if worker_at is not None and time.monotonic() >= worker_at:
            return self.worker.error()
        return WorkerShutdownError(
            f"this receive's run ended (continue_after) and the task did not return within "
            f"{self.grace_s:g} s"
        )

    def announce(self) -> None:
        self.worker.announce()
        if self.cancel_at is not None and not self._cancel_announced:
            self._cancel_announced = True
            logger.warning(
                "%s: cancelled by %s (status table): the task is asked to stop "
                "(stop_requested) and is stopped in %.1f s unless it returns; its message "
                "is deleted, not retried",
                self.label,
                self.cancelled_by,
                self.grace_s,
            )
        if self.continuing() and not self._announced:
            self._announced = True
            logger.info(
                "%s: this receive's run has reached continue_after: the task is asked to stop "
                "(stop_requested), checkpoint and return within %.1f s; it goes on in a new "
                "message",
                self.label,
                self.grace_s,
            )
