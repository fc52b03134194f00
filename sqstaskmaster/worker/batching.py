"""A worker's batched SQS calls: deletes of finished tasks, and prefetched messages waiting.

- :class:`DeleteBatch`: a finished task's message is queued, not deleted at
  once; ``DeleteMessageBatch`` deletes up to 10 per request. The queue is
  flushed :data:`FLUSH_AFTER_S` after its oldest entry came in (or as soon as
  it holds 10), before every poll, before a hand-back and when the worker
  stops. A failed entry is tried again, then logged and notified: its
  message comes back after its visibility timeout and runs again.
- :class:`Waiting`: messages received by one poll (``prefetch``) that wait
  for their turn. They are kept invisible with ``ChangeMessageVisibilityBatch``
  on the heartbeat schedule, never past the 12-hour budget, and handed back
  (visibility 0, one request) when the worker stops; those of a FIFO group
  whose message did not succeed are handed back at once. A queue whose
  messages never lapse (``redelivers`` false) needs no heartbeats.

Each message goes through the queue it was received from
(:class:`sqstaskmaster.sqs.queue.Queue`), given with it, or else found from
the message itself (:func:`sqstaskmaster.sqs.queue.queue_of`).
- :class:`Chores`: both, as the execution strategies see them: ``due_at()``
  and ``run_due()``, called between tasks and while a task runs (from a
  forked task's wait loop, or a signal-mode task's timer).

So a crash (kill -9) between a task's end and its flush makes that task run
again: the window is at most :data:`FLUSH_AFTER_S` plus one request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from ..errors import Notify
from ..sqs import wire
from ..sqs.batch import PASS_THROUGH, BatchCall, QueuedMessage
from ..sqs.facts import MAX_BATCH_ENTRIES, group_of, message_id_of, receive_count_of, visibility_for
from ..sqs.queue import Queue, queue_of

logger = logging.getLogger(__name__)

#: A finished task's message is deleted at most this long (s) after it was queued.
FLUSH_AFTER_S = 0.05
#: A waiting message is run only if it stays invisible this much longer (s).
LAPSE_MARGIN_S = 1.0

__all__ = ["FLUSH_AFTER_S", "LAPSE_MARGIN_S", "Chores", "DeleteBatch", "Waiting"]


class DeleteBatch:
    """Finished tasks' messages, deleted in batches of up to 10 (see the module docstring)."""

    #: The queue the messages came from (None: each one's own, see queue_of).
    queue: Optional[Queue] = None

    def __init__(
        self,
        notify: Notify,
        flush_after_s: float = FLUSH_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.flush_after_s = flush_after_s
        self._clock = clock
        self._pending: List[QueuedMessage] = []
        self._notifiers: Dict[int, Notify] = {}
        self._first_at = 0.0
        # A forked task's wait loop flushes from a helper thread.
        self._lock = threading.Lock()
        self._delete = BatchCall(
            "DeleteMessageBatch",
            notify,
            "the message comes back after its visibility timeout and its task runs again",
        )
        self.requests = 0  # DeleteMessageBatch calls made (for tests and benchmarks)

    def __len__(self) -> int:
        return len(self._pending)

    def add(
        self, message: Any, task: Optional[str] = None, notify: Optional[Notify] = None
    ) -> None:
        """Delete ``message`` soon, through :attr:`queue` (None: the message's own).

        A failure goes to ``notify`` (the task's handler's), else to the batch's.
        """
        with self._lock:
            if not self._pending:
                self._first_at = self._clock()
            self._pending.append((self.queue or queue_of(message), message, task))
            if notify is not None:
                self._notifiers[id(message)] = notify

    def due_at(self) -> Optional[float]:
        """When the next flush is due (a ``time.monotonic()`` value), or None if none is."""
        if not self._pending:
            return None
        if len(self._pending) >= MAX_BATCH_ENTRIES:
            return self._first_at
        return self._first_at + self.flush_after_s

    def flush(self) -> None:
        """Delete every queued message now; failures are reported (log and notify)."""
        with self._lock:
            while self._pending:
                chunk = self._pending[:MAX_BATCH_ENTRIES]
                self.requests += 1
                self._delete(chunk, self._notifiers)
                # Removed only once carried out or reported.
                del self._pending[: len(chunk)]
                for _, message, _ in chunk:
                    self._notifiers.pop(id(message), None)
                if self._pending:
                    self._first_at = self._clock()


class _Held:
    """One waiting message: its queue, until when it is invisible, its last heartbeat,
    whether it lapsed."""

    __slots__ = ("queue", "message", "visible_until", "beat_at", "lapsed")

    def __init__(self, queue: Queue, message: Any, visible_until: float, beat_at: float) -> None:
        self.queue = queue
        self.message = message
        self.visible_until = visible_until
        self.beat_at = beat_at
        self.lapsed = False


class Waiting:
    """Prefetched messages waiting their turn, kept invisible on the heartbeat schedule.

    A message whose visibility lapsed (a heartbeat SQS refused, its 12-hour
    budget used up, or a visibility that ran out) is never run or handed back
    here: SQS delivers it again, perhaps to another worker (and the messages
    of its FIFO group waiting here are handed back, to run after it).
    """

    #: The queue the messages come from (None: each one's own, see queue_of).
    queue: Optional[Queue] = None

    def __init__(
        self,
        sqs_timeout: int,
        heartbeat_s: float,
        notify: Notify,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sqs_timeout = sqs_timeout
        self.heartbeat_s = heartbeat_s
        self._clock = clock
        self._held: Deque[_Held] = deque()
        # When the next heartbeat is due (read without the lock, from a timer).
        self._next_beat: Optional[float] = None
        self._lock = threading.Lock()
        self._extend = BatchCall(
            "ChangeMessageVisibilityBatch",
            notify,
            "it may become visible before its turn: it is not run here",
        )
        self._hand_back = BatchCall(
            "ChangeMessageVisibilityBatch",
            notify,
            "it comes back when its visibility timeout ends",
        )
        self.requests = 0  # ChangeMessageVisibilityBatch calls made

    def __len__(self) -> int:
        return len(self._held)

    def add(self, messages: Sequence[Any], received_at: float) -> None:
        """Messages just received with VisibilityTimeout = ``sqs_timeout`` at ``received_at``.

        A message of a queue that does not redeliver never lapses.
        """
        with self._lock:
            for message in messages:
                source = self.queue or queue_of(message)
                until = received_at + self.sqs_timeout if source.redelivers else math.inf
                self._held.append(_Held(source, message, until, received_at))
            self._plan()

    def take(self) -> Optional[Tuple[Any, float]]:
        """The next message and until when it is invisible; None when none waits.

        A message whose visibility lapsed is dropped (with a warning), not
        returned; the waiting messages of its FIFO group are handed back.
        """
        while True:
            with self._lock:
                if not self._held:
                    return None
                held = self._held.popleft()
                self._plan()
                if not held.lapsed and held.visible_until > self._clock() + LAPSE_MARGIN_S:
                    return held.message, held.visible_until
            _warn_lapsed(held, "not run here")
            group = group_of(held.message)
            if group is not None:
                why = f"message {message_id_of(held.message)} of its FIFO group {group} lapsed"
                self.hand_back_all(why, group=group)

    def due_at(self) -> Optional[float]:
        """When the waiting messages' next heartbeat is due, or None if none waits."""
        return self._next_beat

    def _plan(self) -> None:
        self._next_beat = min((h.beat_at for h in self._held), default=None)
        if self._next_beat is not None:
            self._next_beat += self.heartbeat_s

    def extend(self) -> None:
        """One heartbeat for every waiting message (one request per 10)."""
        with self._lock:
            now = self._clock()
            by_seconds: Dict[int, List[_Held]] = {}
            for held in self._held:
                held.beat_at = now
                if held.lapsed or not held.queue.redelivers:
                    continue  # a message that never lapses needs no heartbeat
                seconds = visibility_for(held.message, self.sqs_timeout)
                if seconds > 0:
                    by_seconds.setdefault(seconds, []).append(held)
                else:
                    held.lapsed = True
                    _warn_lapsed(held, "its 12-hour visibility budget is used up")
            for seconds, group in by_seconds.items():
                self.requests += -(-len(group) // MAX_BATCH_ENTRIES)
                done = self._extend([(h.queue, h.message, None) for h in group], seconds=seconds)
                extended = {id(message) for message in done}
                for held in group:
                    if id(held.message) in extended:
                        held.visible_until = now + seconds
                    elif self._extend.final_codes.get(id(held.message)):
                        held.lapsed = True  # SQS says it is no longer ours to extend
            self._plan()
            logger.debug("heartbeat for %d waiting messages", len(self._held))

    def hand_back_all(
        self, why: str, group: Optional[str] = None, visible_in_s: int = 0
    ) -> List[Any]:
        """Visibility 0 for every waiting message (one request per 10); returns them.

        With ``group``, only those of that FIFO group (after one of it did not
        succeed, so that it runs 1, 1, 2, 3), visible again in ``visible_in_s``
        (when that one is). One whose visibility lapsed is left alone (it may
        be another worker's now). Each goes back through its queue (a queue
        that does not redeliver puts it back in line).
        """
        with self._lock:
            held_now = [h for h in self._held if group in (None, group_of(h.message))]
            self._held = deque(h for h in self._held if h not in held_now)
            self._plan()
        now = self._clock()
        ours = [h for h in held_now if not h.lapsed and h.visible_until > now]
        for held in held_now:
            if held not in ours:
                _warn_lapsed(held, "not handed back")
        entries: List[QueuedMessage] = [(h.queue, h.message, None) for h in ours]
        seconds = min([visible_in_s] + [visibility_for(m, visible_in_s) for _, m, _ in entries])
        done: List[Any] = []
        if entries:
            self.requests += -(-len(entries) // MAX_BATCH_ENTRIES)
            done = self._hand_back(entries, seconds=seconds)
        for message in done:
            logger.warning(
                "task %s message %s receive %d: %s; handed back (visibility %d)",
                wire.task_label_of(message.body),
                message_id_of(message),
                receive_count_of(message),
                why,
                seconds,
            )
        return [h.message for h in held_now]


def _warn_lapsed(held: _Held, what: str) -> None:
    logger.warning(
        "message %s receive %d waited for its turn, but its visibility lapsed or may have "
        "(its last heartbeat failed, or ran out); %s: SQS delivers it again",
        message_id_of(held.message),
        receive_count_of(held.message),
        what,
    )


class Chores:
    """What a worker has to do besides the running task: flush deletes, heartbeat the waiting.

    Called between tasks and while one runs (see :mod:`sqstaskmaster.run.strategies`);
    ``run_due`` never raises but for a hard deadline or a stop raised into it.
    """

    def __init__(self, deletes: DeleteBatch, waiting: Waiting, notify: Notify) -> None:
        self.deletes = deletes
        self.waiting = waiting
        self.notify = notify
        # ECS scale-in protection hooks (due_at(), run_due()): a failed enable tried again.
        self.protection: Any = None
        # The status table's writer (sqstaskmaster.worker.status), or None: its run_due
        # starts its own helper thread, so a slow table never holds the others up.
        self.status: Any = None

    def _sources(
        self, status: bool = True
    ) -> List[Tuple[Optional[float], Callable[[], None], str]]:
        sources = [
            (self.deletes.due_at(), self.deletes.flush, "flush of finished tasks' deletes"),
            (self.waiting.due_at(), self.waiting.extend, "heartbeat of waiting messages"),
        ]
        protection = self.protection
        if protection is not None:
            sources.append(
                (protection.due_at(), protection.run_due, "ECS task scale-in protection retry")
            )
        writer = self.status
        if writer is not None and status:
            sources.append((writer.due_at(), writer.run_due, "status table writes"))
        return sources

    def due_at(self) -> Optional[float]:
        """The earliest time one of them is due (``time.monotonic()``), or None."""
        times = [at for at, _, _ in self._sources() if at is not None]
        return min(times) if times else None

    def run_due(self, status: bool = True) -> None:
        """Do whatever is due now; errors are logged and notified. ``status=False``
        (between tasks) leaves the status table's writes to the next task's chores
        or the next poll: a write started just before a task forks would hold it up."""
        now = time.monotonic()
        for due, action, what in self._sources(status):
            if due is not None and due <= now:
                self._guarded(action, what)

    def flush(self) -> None:
        """Delete every finished task's message now (before a poll, a hand-back, an exit)."""
        self._guarded(self.deletes.flush, "flush of finished tasks' deletes")

    def _guarded(self, action: Callable[[], None], what: str) -> None:
        try:
            action()
        except PASS_THROUGH:
            raise
        except Exception as error:
            logger.exception("%s failed", what)
            try:
                self.notify(error, context={"action": what})
            except Exception:
                logger.exception("notify raised while reporting %r", error)
