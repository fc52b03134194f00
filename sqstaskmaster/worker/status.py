"""A worker process's writes to its task status table (``--status-table``).

One item per task message (:mod:`sqstaskmaster.ops.status_items`), written:

- at each poll, one ``BatchGetItem`` for the messages it received: one
  someone cancelled before it ran is deleted unrun (:meth:`StatusWriter.screen`);
- when a task has run :data:`START_AFTER_S`, its ``running`` item
  (``UpdateItem``), then one ``UpdateItem`` per heartbeat period with the
  heartbeat time and the task's progress; each answers with the item, so a
  cancel is read at no extra request (and delivered to the task's stop);
- when it ends, its final state: an ``UpdateItem`` for a task that had its
  start written, else the whole item, batched (``BatchWriteItem`` of up to 25,
  within :data:`FLUSH_AFTER_S`): a short task costs a fraction of a request.

Every write runs in a helper thread among the worker's chores, one request at
a time; nothing here raises into a task or delays its deadline. A failure is
logged once per kind and counted (:mod:`sqstaskmaster.ops.status_requests`);
after a timeout or an unreachable table, the table is left alone for
:data:`PAUSE_S` (final states wait, heartbeat writes are skipped).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from types import SimpleNamespace
from typing import Any, Deque, Dict, List, Optional, Tuple

from ..errors import Notify, TaskCancelled
from ..ops import status_requests as requests
from ..ops.metrics import Outcome
from ..ops.status_items import (
    CANCELLED,
    DEFAULT_TTL_DAYS,
    FAILED,
    RUNNING,
    error_fields,
    result_fields,
)
from ..run.background import BackgroundCall, InlineFallback
from ..run.checkpoint_box import box_for_children
from ..sqs.facts import message_id_of
from .cancelling import delete_unrun
from .status_record import (
    CLEARED_ON_START,
    STATE_OF,
    WHOLE_ITEM_STATES,
    Identity,
    TaskRecord,
    queue_name,
    task_name,
)

logger = logging.getLogger(__name__)

#: A task's ``running`` item is written once it has run this long (s); a shorter one
#: gets one write, when it ends.
START_AFTER_S = 1.0
#: Ended tasks' items are written at most this long (s) after the first of them ended.
FLUSH_AFTER_S = 0.25
#: After a timeout or an unreachable table, no request for this long (s).
PAUSE_S = 30.0
#: Final states kept while the table cannot be written; older ones are dropped (logged).
MAX_PENDING = 1000

_Update = Tuple[TaskRecord, Dict[str, Any], Tuple[str, ...], bool]  # record, SET, REMOVE, final


def writer_for(worker: Any) -> Optional[StatusWriter]:
    """The status table writer of ``worker`` (its ``status_table`` setting), or None."""
    table = worker.status_table
    if not table:
        return None
    if isinstance(table, str):
        table = SimpleNamespace(name=table, client=requests.writer_client(worker.session))
    identity = Identity(queue_name(worker.queue_url), worker.status_kwargs)
    writer = StatusWriter(
        table, identity=identity, heartbeat_s=worker.heartbeat_s, notify=worker.notify
    )
    logger.info("task states are written to status table %s", writer.name)
    return writer


class StatusWriter:
    """Writes one worker process's tasks to ``table`` (a StatusTable: ``name``, ``client``)."""

    def __init__(
        self,
        table: Any,
        *,
        identity: Identity,
        heartbeat_s: float,
        notify: Notify,
    ) -> None:
        self.name = str(table.name)
        self.client = table.client
        self.identity = identity
        self.heartbeat_s = max(float(heartbeat_s), 0.5)
        self.notify = notify
        self.ttl_s = DEFAULT_TTL_DAYS * 86400
        self.failures = requests.FailureLog(self.name)
        self.requests = 0  # DynamoDB requests made (for tests and benchmarks)
        self._running: Optional[TaskRecord] = None
        self._ended_id: Optional[str] = None  # the last message ended() wrote
        self._updates: Deque[_Update] = collections.deque()
        self._puts: List[Dict[str, Any]] = []
        self._first_pending = 0.0
        self._paused_until = 0.0
        # Reentrant: a signal-mode timer may do the chores inline (no thread to be had).
        self._lock = threading.RLock()
        self._call: Optional[BackgroundCall] = None
        self._fallback = InlineFallback(f"status table {self.name}")

    # -- the worker's side (main thread) -----------------------------------------

    def screen(self, messages: List[Any], deletes: Any) -> List[Any]:
        """The received ``messages`` that are to run: those cancelled before they ran are
        deleted unrun (through ``deletes``) and left out. One request (up to 100 messages)."""
        ids = [message_id_of(message) for message in messages]
        if not messages or self._paused():
            return messages
        try:
            self.requests += 1
            found = requests.get_batch(
                self.client,
                self.name,
                [i for i in ids if i],
                ("cancel_requested_at", "cancel_requested_by"),
            )
        except Exception as error:
            self._failed("looking for cancelled messages (BatchGetItem)", error)
            return messages
        self.failures.worked()
        keep = []
        for message, message_id in zip(messages, ids):
            mark = requests.cancel_mark(found.get(message_id or ""))
            if mark is None:
                keep.append(message)
                continue
            task = task_name(message)
            cancelled = delete_unrun(message, task, mark[1], deletes, self.notify)
            self._end(self._record(message, task), CANCELLED, error=cancelled)
        return keep

    def begin(
        self, message: Any, task: str, kwargs: Any, context: Any, stop: Any, isolated: bool
    ) -> None:
        """A task starts: its running item is written once it has run :data:`START_AFTER_S`."""
        record = self._record(message, task, kwargs)
        record.context, record.stop = context, stop
        record.box = box_for_children() if isolated else None
        record.fields["started_at"] = time.time()
        with self._lock:
            self._running = record

    def ended(
        self,
        message: Any,
        task: Optional[str],
        outcome: Outcome,
        error: Optional[BaseException] = None,
        result: Any = None,
        duration_s: Optional[float] = None,
    ) -> None:
        """A message's outcome is settled: its final state is written soon."""
        with self._lock:  # no heartbeat write of it is queued after this
            record, self._running = self._running, None
        if record is None or record.message_id != message_id_of(message):
            record = self._record(message, task)
        self._ended_id = record.message_id
        if outcome is Outcome.CANCELLED and not isinstance(error, TaskCancelled):
            by = getattr(record.stop, "cancelled_by", "") or "someone"
            error = TaskCancelled(f"by {by}", task, record.message_id)
        self._end(record, STATE_OF.get(outcome, FAILED), error, result, duration_s)

    def settled(self, message: Any, outcome: Outcome, refusal: Any = None) -> None:
        """After each message: its final state unless :meth:`ended` wrote it (refused, not
        started); ``refusal``: (id(message), error) of the last refusal, if any."""
        if self._ended_id == message_id_of(message):
            self._ended_id = None
            return
        error = refusal[1] if refusal is not None and refusal[0] == id(message) else None
        self.ended(message, task_name(message), outcome, error)
        self._ended_id = None

    # -- the chores' side (any thread) ----------------------------------------------

    def due_at(self) -> Optional[float]:
        """When a write is due (``time.monotonic()``); None while one is in flight."""
        if self._call is not None and not self._call.finished:
            return None
        times = []
        record = self._running
        if record is not None:
            times.append(max(record.next_write, self._paused_until))
        if self._updates or self._puts:
            full = len(self._puts) >= requests.MAX_BATCH_WRITE
            flush_at = self._first_pending + (0.0 if full else FLUSH_AFTER_S)
            times.append(max(flush_at, self._paused_until))
        return min(times) if times else None

    def run_due(self) -> None:
        """Start the writes that are due, in a helper thread; returns at once."""
        now = time.monotonic()
        with self._lock:
            if self._call is not None and not self._call.finished:
                return
            record = self._running
            if record is not None and now >= record.next_write:
                # On the heartbeats' own schedule: one write per heartbeat period, sent now.
                periods = (now - record.begun) // self.heartbeat_s + 1
                record.next_write = record.begun + periods * self.heartbeat_s
                if now >= self._paused_until:
                    self._queue_write(record)
                    self.flush()
                    return
            due = self.due_at()
            if due is not None and due <= now:
                self.flush()

    def flush(self) -> None:
        """Start sending every queued write now, in a helper thread (also before a poll)."""
        with self._lock:  # one send at a time: a message's writes land in order
            call = self._call
            if (self._updates or self._puts) and not self._paused():
                if call is None or call.finished:
                    self._call = BackgroundCall(
                        self.send, self.name, self._fallback, "status write", routine=True
                    )

    def close(self, timeout_s: float = 5.0) -> None:
        """On the worker's way out: send what is left (for at most ``timeout_s``)."""
        call = self._call
        if call is not None:
            call.join(timeout_s)
        if self._updates or self._puts:
            self._paused_until = 0.0
            self.send()
        left = len(self._updates) + len(self._puts)
        if left:
            logger.warning(
                "status table %s: %d task state(s) could not be written before the worker stopped",
                *(self.name, left),
            )

    def send(self) -> None:
        """Send every queued write (one request each; whole items 25 a request)."""
        while True:
            with self._lock:
                if not self._updates and not self._puts:
                    return
                if self._updates:
                    update, puts = self._updates.popleft(), []
                else:
                    update, puts = None, self._puts[: requests.MAX_BATCH_WRITE]
                    del self._puts[: len(puts)]
                if not self._updates and not self._puts:
                    self._first_pending = 0.0
            if self._paused():
                self._requeue(update, puts)
                return
            try:
                self.requests += 1
                if update is not None:
                    self._send_update(*update)
                else:
                    left = requests.put_batch(self.client, self.name, puts)
                    if left:
                        self._requeue(None, left)
                        return  # DynamoDB is busy: the rest waits for the next flush
            except Exception as error:
                kind = self._failed("writing task states", error)
                if update is not None and not update[3]:
                    if update[2]:  # the start's write: the next heartbeat's makes it again
                        update[0].start_sent = False
                    continue  # a heartbeat's write: the next one says the same
                if kind in requests.PAUSING_KINDS or kind == "throttled":
                    self._requeue(update, puts)
                    return
                ids = [update[0].message_id] if update else [p["message_id"] for p in puts]
                logger.warning(
                    "status table %s: final state of message(s) %s not written (%s)",
                    *(self.name, ", ".join(ids), kind),
                )
                continue
            self.failures.worked()

    # -- inside ---------------------------------------------------------------

    def _record(self, message: Any, task: Optional[str], kwargs: Any = None) -> TaskRecord:
        return self.identity.record(message, task, kwargs, START_AFTER_S)

    def _queue_write(self, record: TaskRecord) -> None:
        """The running task's start (or heartbeat) write; it reads a cancel request back."""
        fields = record.live_fields(self.ttl_s)
        remove: Tuple[str, ...] = ()
        if not record.start_sent:
            record.start_sent = True
            fields = {**record.fields, "state": RUNNING, **fields}
            remove = CLEARED_ON_START
        self._enqueue_update(record, fields, remove, False)

    def _end(
        self,
        record: TaskRecord,
        state: str,
        error: Optional[BaseException] = None,
        result: Any = None,
        duration_s: Optional[float] = None,
    ) -> None:
        now = time.time()
        fields: Dict[str, Any] = {
            "state": state,
            "ended_at": now,
            "updated_at": now,
            "expires_at": int(now) + self.ttl_s,
            "duration_s": None if duration_s is None else round(duration_s, 3),
            **error_fields(error),
            **result_fields(result),
        }
        fields.update(record.progress_fields())
        if record.context is not None:
            fields["continued_as"] = getattr(record.context, "continued_as", None)
        item = {**record.fields, **fields}
        if record.start_sent or state not in WHOLE_ITEM_STATES:
            # An update keeps a cancel asked meanwhile; all fields (the start may have failed).
            stale = tuple(name for name in CLEARED_ON_START if item.get(name) is None)
            self._enqueue_update(record, item, () if record.start_sent else stale, True)
            return
        with self._lock:
            if not self._updates and not self._puts:
                self._first_pending = time.monotonic()
            self._puts.append({k: v for k, v in item.items() if v is not None})
            self._trim()

    def _enqueue_update(
        self, record: TaskRecord, fields: Dict[str, Any], remove: Tuple[str, ...], final: bool
    ) -> None:
        with self._lock:
            if not self._updates and not self._puts:
                self._first_pending = time.monotonic()
            self._updates.append((record, fields, remove, final))
            self._trim()

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

    def _send_update(
        self, record: TaskRecord, fields: Dict[str, Any], remove: Tuple[str, ...], final: bool
    ) -> None:
        item = requests.update(self.client, self.name, record.message_id, fields, remove, True)
        mark = requests.cancel_mark(item)
        if mark is None:
            return
        if not final and record.stop is not None and record is self._running:
            record.stop.cancel(mark[1], record.task, record.message_id)
        next_id = fields.get("continued_as")
        if final and next_id:
            # Cancelled while it continued: its continuation is cancelled too.
            self.requests += 1
            requests.update(
                self.client,
                self.name,
                next_id,
                {"cancel_requested_at": mark[0], "cancel_requested_by": mark[1]},
            )
            logger.warning(
                "task %s message %s: cancelled as it continued: its continuation %s is too",
                *(record.task, record.message_id, next_id),
            )

    def _requeue(self, update: Any, puts: List[Dict[str, Any]]) -> None:
        with self._lock:
            if update is not None:
                self._updates.appendleft(update)
            self._puts[:0] = puts
            if self._updates or self._puts:
                self._first_pending = self._first_pending or time.monotonic()

    def _paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def _failed(self, doing: str, error: BaseException) -> str:
        kind = self.failures.failed(doing, error)
        if kind in requests.PAUSING_KINDS:
            self._paused_until = time.monotonic() + PAUSE_S
        return kind
