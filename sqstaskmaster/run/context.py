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
import os
import time
from typing import Any, Callable, Optional

from ..errors import CheckpointRefusedError, WorkerShutdownError
from ..sqs.continuation import MAX_CHECKPOINT_BYTES, Carried
from ..sqs.facts import message_id_of, receive_count_of
from .checkpoint_box import CheckpointBox, child_box
from .waiting import StopSource

logger = logging.getLogger(__name__)


class TaskContext:
    """What a task knows of its run, and how it saves its progress.

    - ``state``: the last checkpoint (a JSON value), None before the first;
    - ``checkpoint(state)``: save one (see :meth:`checkpoint`);
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
    def stopping(self) -> bool:
        return self.worker.stopping or self.continuing()

    def interrupt_at(self) -> Optional[float]:
        times = [self.worker.interrupt_at()]
        if self.continue_at is not None:
            times.append(self.continue_at + self.grace_s)
        due = [at for at in times if at is not None]
        return min(due) if due else None

    def error(self) -> WorkerShutdownError:
        worker_at = self.worker.interrupt_at()
        if worker_at is not None and time.monotonic() >= worker_at:
            return self.worker.error()
        return WorkerShutdownError(
            f"this receive's run ended (continue_after) and the task did not return within "
            f"{self.grace_s:g} s"
        )

    def announce(self) -> None:
        self.worker.announce()
        if self.continuing() and not self._announced:
            self._announced = True
            logger.info(
                "%s: this receive's run has reached continue_after: the task is asked to stop "
                "(stop_requested), checkpoint and return within %.1f s; it goes on in a new "
                "message",
                self.label,
                self.grace_s,
            )
