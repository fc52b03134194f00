"""The status table's outbox: a worker process's queued writes and the one send at a time.

Writes are queued by :class:`~sqstaskmaster.worker.status.StatusWriter` (updates
one request each, whole items batched 25 a request) and sent in a helper thread
(:class:`~sqstaskmaster.run.background.BackgroundCall`, ``routine``): one send
at a time, so one message's writes land in the order they were queued; a send
stops after :data:`SEND_BUDGET_S` and leaves the rest for the next. A failed
request is logged once per kind and counted
(:class:`~sqstaskmaster.ops.status_requests.FailureLog`); after a timeout or an
unreachable table the outbox stays shut for :data:`PAUSE_S` (final states
wait, up to :data:`MAX_PENDING`; heartbeat writes are dropped).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from ..ops import status_requests as requests
from ..run.background import BackgroundCall, InlineFallback
from ..sqs.batch import PASS_THROUGH
from .status_record import TaskRecord

logger = logging.getLogger(__name__)

#: Ended tasks' items are written at most this long (s) after the first of them ended
#: (besides before each poll); isolated tasks' the longer, to go out while a poll waits.
FLUSH_AFTER_S = 0.25
ISOLATED_FLUSH_AFTER_S = 1.0
#: After a timeout or an unreachable table, no request for this long (s).
PAUSE_S = 30.0
#: Final states kept while the table cannot be written; older ones are dropped (logged).
MAX_PENDING = 1000
#: A send starts no new request after this long (s): the rest waits for the next send.
SEND_BUDGET_S = 1.0

Update = Tuple[TaskRecord, Dict[str, Any], Tuple[str, ...], bool]  # record, SET, REMOVE, final


class Outbox:
    """Queued writes to table ``name`` through ``client`` (see the module docstring).

    ``running(record)`` says whether ``record`` is the task running now: a
    cancel read back from its heartbeat write is delivered to its stop.
    """

    def __init__(self, name: str, client: Any, running: Callable[[TaskRecord], bool]) -> None:
        self.name = name
        self.client = client
        self.running = running
        self.failures = requests.FailureLog(name)
        self.requests = 0  # DynamoDB requests made (for tests and benchmarks)
        self._updates: Deque[Update] = collections.deque()
        self._puts: List[Dict[str, Any]] = []
        self._first_pending = 0.0
        self._paused_until = 0.0
        # Reentrant: a signal-mode timer may do the chores inline (no thread to be had).
        self.lock = threading.RLock()
        self._call: Optional[BackgroundCall] = None
        self._fallback = InlineFallback(f"status table {name}")

    # -- queueing (any thread) ------------------------------------------------------

    def update(
        self, record: TaskRecord, fields: Dict[str, Any], remove: Tuple[str, ...], final: bool
    ) -> None:
        with self.lock:
            self._mark_pending()
            self._updates.append((record, fields, remove, final))
            self._trim()

    def put(self, item: Dict[str, Any]) -> None:
        with self.lock:
            self._mark_pending()
            self._puts.append({k: v for k, v in item.items() if v is not None})
            self._trim()

    def _mark_pending(self) -> None:
        if not self._updates and not self._puts:
            self._first_pending = time.monotonic()

    def _trim(self) -> None:
        """Drop the oldest writes past :data:`MAX_PENDING` (the table is down), saying so."""
        extra = len(self._updates) + len(self._puts) - MAX_PENDING
        for _ in range(max(extra, 0)):
            self._puts.pop(0) if self._puts else self._updates.popleft()
        if extra > 0:
            logger.warning(
                "status table %s: %d task state write(s) dropped: more than %d wait while the "
                "table cannot be written",
                *(self.name, extra, MAX_PENDING),
            )

    # -- sending --------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._updates) + len(self._puts)

    @property
    def in_flight(self) -> bool:
        return self._call is not None and not self._call.finished

    @property
    def paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def due_at(self, after_s: float = FLUSH_AFTER_S) -> Optional[float]:
        """When the queued writes are due (``time.monotonic()``): ``after_s`` after the
        first of them, at once for a full batch; None if none is, or a send is on."""
        if self.in_flight or not self.pending:
            return None
        full = len(self._puts) >= requests.MAX_BATCH_WRITE
        return max(self._first_pending + (0.0 if full else after_s), self._paused_until)

    def flush(self) -> None:
        """Start sending every queued write now, in a helper thread, unless one is on."""
        with self.lock:
            if self.pending and not self.paused and not self.in_flight:
                self._call = BackgroundCall(
                    self.send, self.name, self._fallback, "status write", routine=True
                )

    def wait_idle(self, limit_s: float) -> None:
        """Wait (at most ``limit_s``) for a send still on: before a task forks."""
        call = self._call
        if call is not None and not call.done:
            call.join(limit_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """On the worker's way out: send what is left (waiting at most ``timeout_s`` for a
        send still on); what cannot be sent is counted in a warning."""
        self.wait_idle(timeout_s)
        if self.pending and not self.in_flight and not self.paused:  # (a known-dead table: not)
            self.send(budget_s=timeout_s)
        if self.pending:
            logger.warning(
                "status table %s: %d task state(s) could not be written before the worker stopped",
                *(self.name, self.pending),
            )

    def send(self, budget_s: float = SEND_BUDGET_S) -> None:
        """Send queued writes (updates first, in order; whole items 25 a request) until
        none is left or ``budget_s`` has passed."""
        end = time.monotonic() + budget_s
        while time.monotonic() < end and not self.paused:
            with self.lock:
                if self._updates:
                    update, puts = self._updates.popleft(), []
                elif self._puts:
                    update, puts = None, _unique(self._puts[: requests.MAX_BATCH_WRITE])
                    del self._puts[: requests.MAX_BATCH_WRITE]
                else:
                    return
            started = time.monotonic()
            try:
                self.requests += 1
                if update is not None:
                    self._send_update(*update)
                else:
                    left = requests.put_batch(self.client, self.name, puts)
                    if left:
                        self._requeue(None, left)
                        return  # DynamoDB is busy: the rest waits for the next send
            except PASS_THROUGH:  # a deadline or a stop raised into an inline send
                self._requeue(update, puts)
                raise
            except Exception as error:
                if self._failed(error, update, puts):
                    return  # tried again at the next send
                continue
            took = time.monotonic() - started
            if took > requests.SLOW_ANSWER_S:
                self.pause_after("writing task states", requests.SlowAnswer(took))
                return
            self.failures.worked()

    def _failed(self, error: Exception, update: Optional[Update], puts: List[Any]) -> bool:
        """Log and count a failed write; True if it is queued again."""
        kind = self.failures.failed("writing task states", error)
        if kind in requests.PAUSING_KINDS:
            self._paused_until = time.monotonic() + PAUSE_S
        if update is not None and not update[3]:
            if update[2]:  # the start's write: the next heartbeat's makes it again
                update[0].start_sent = False
            return False  # a heartbeat's write: the next one says the same
        if kind in requests.PAUSING_KINDS or kind == "throttled":
            self._requeue(update, puts)
            return True
        ids = [update[0].message_id] if update else [p["message_id"] for p in puts]
        logger.warning(
            "status table %s: final state of message(s) %s not written (%s)",
            *(self.name, ", ".join(ids), kind),
        )
        return False

    def pause_after(self, doing: str, error: Exception) -> None:
        """A request made elsewhere (the check for cancels) failed: log, count, maybe pause."""
        if self.failures.failed(doing, error) in requests.PAUSING_KINDS:
            self._paused_until = time.monotonic() + PAUSE_S

    def _send_update(
        self, record: TaskRecord, fields: Dict[str, Any], remove: Tuple[str, ...], final: bool
    ) -> None:
        item = requests.update(self.client, self.name, record.message_id, fields, remove, True)
        mark = requests.cancel_mark(item)
        if mark is None:
            return
        if not final and record.stop is not None and self.running(record):
            record.stop.cancel(mark[1], record.task, record.message_id)
        next_id = fields.get("continued_as")
        if final and next_id:
            # Cancelled while it continued: its continuation is cancelled too.
            self.requests += 1
            marks = {"cancel_requested_at": mark[0], "cancel_requested_by": mark[1]}
            requests.update(self.client, self.name, next_id, marks)
            logger.warning(
                "task %s message %s: cancelled as it continued: its continuation %s is too",
                *(record.task, record.message_id, next_id),
            )

    def _requeue(self, update: Optional[Update], puts: List[Dict[str, Any]]) -> None:
        with self.lock:
            if update is not None:
                self._updates.appendleft(update)
            self._puts[:0] = puts
            if self.pending and not self._first_pending:
                self._first_pending = time.monotonic()


def _unique(items: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One item per key, the last queued (BatchWriteItem refuses a batch with two)."""
    return list({item["message_id"]: item for item in items}.values())
