"""A worker process's writes to its task status table (``--status-table``).

One item per task message (:mod:`sqstaskmaster.ops.status_items`), written:

- at each poll, one ``BatchGetItem`` for the messages it received: one
  someone cancelled before it ran is deleted unrun (:meth:`StatusWriter.screen`);
  a message that waited in the prefetch is looked at again (one ``GetItem``)
  when its turn comes, if the poll's look is over :data:`LOOK_AGAIN_AFTER_S` old;
- when a task has run :data:`START_AFTER_S`, its ``running`` item
  (``UpdateItem``), then one ``UpdateItem`` per heartbeat period with the
  heartbeat time and the task's progress; each answers with the item, so a
  cancel is read at no extra request (and delivered to the task's stop);
- when it ends, its final state: an ``UpdateItem`` (which keeps a cancel asked
  meanwhile), or, for a short task done or cancelled, the whole item, batched
  (``BatchWriteItem`` of up to 25): a short task costs a fraction of a request.

The writes go through the :class:`~.status_outbox.Outbox`, sent in a helper
thread beside the task; the looks for cancels run in the worker's main thread
between tasks, with the same short timeouts. Nothing here raises into a task
or the worker's loop: what fails is logged once per kind and counted.
"""

from __future__ import annotations

import functools
import logging
import time
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

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
from ..run.checkpoint_box import box_for_children
from ..sqs import wire
from ..sqs.facts import message_id_of
from .cancelling import delete_unrun
from .status_outbox import FLUSH_AFTER_S, ISOLATED_FLUSH_AFTER_S, Outbox
from .status_record import (
    CLEARED_ON_START,
    STATE_OF,
    WHOLE_ITEM_STATES,
    Identity,
    TaskRecord,
    queue_name,
)

logger = logging.getLogger(__name__)

#: A task's ``running`` item is written once it has run this long (s); a shorter one
#: gets one write, when it ends.
START_AFTER_S = 1.0
#: A message whose poll-time look for a cancel is older than this (s) is looked at again.
LOOK_AGAIN_AFTER_S = 1.0
#: The longest the worker waits, before it takes the next isolated task, for a write still on.
IDLE_WAIT_S = 10.0
_CANCEL_FIELDS = ("cancel_requested_at", "cancel_requested_by")

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _never_raises(default: Any = None) -> Callable[[_Method], _Method]:
    """A StatusWriter method called from the worker's loop: what it raises is logged once
    per kind and counted, never raised (the task and the loop go on)."""

    def wrap(method: _Method) -> _Method:
        @functools.wraps(method)
        def guarded(self: StatusWriter, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except Exception as error:
                self.outbox.failures.failed(method.__name__.strip("_"), error)
                return args[0] if default == "first" else default

        return guarded  # type: ignore[return-value]

    return wrap


def writer_for(worker: Any) -> Optional[StatusWriter]:
    """The status table writer of ``worker`` (its ``status_table`` setting), or None."""
    table = worker.status_table
    if not table:
        return None
    if isinstance(table, str):
        client = requests.writer_client(worker.session)
    else:  # a StatusTable (or name and client): its client, unless its timeouts are long
        client = requests.bounded_client(table.client, getattr(table, "session", None))
        table = table.name
    identity = Identity(queue_name(worker.queue_url), worker.status_kwargs)
    writer = StatusWriter(
        SimpleNamespace(name=table, client=client),
        identity=identity,
        heartbeat_s=worker.heartbeat_s,
        notify=worker.notify,
    )
    writer._isolated = bool(worker.isolate)
    logger.info("task states are written to status table %s", writer.name)
    return writer


class StatusWriter:
    """Writes one worker process's tasks to ``table`` (``name`` and a DynamoDB ``client``)."""

    def __init__(self, table: Any, *, identity: Identity, heartbeat_s: float, notify: Notify):
        self.name = str(table.name)
        self.client = table.client
        self.identity = identity
        self.heartbeat_s = max(float(heartbeat_s), 0.5)
        self.notify = notify
        self.ttl_s = DEFAULT_TTL_DAYS * 86400
        self.outbox = Outbox(self.name, self.client, lambda record: record is self._running)
        self._running: Optional[TaskRecord] = None
        self._ended_id: Optional[str] = None  # the last message ended() wrote
        self._looked: Dict[str, float] = {}  # message id -> when its cancel was looked for
        self._isolated = False  # the last task ran in a forked child

    @property
    def requests(self) -> int:
        """DynamoDB requests made (for tests and benchmarks)."""
        return self.outbox.requests

    # -- the worker's side (main thread) -----------------------------------------

    @_never_raises(default="first")
    def screen(self, messages: List[Any], deletes: Any) -> List[Any]:
        """The received ``messages`` that are to run: those cancelled before they ran are
        deleted unrun (through ``deletes``) and left out. One request (up to 100 messages)."""
        if not messages or self.outbox.paused:
            return messages
        ids = [message_id_of(message) or "" for message in messages]
        found = self._look(ids, "looking for cancelled messages (BatchGetItem)")
        if found is None:
            return messages
        now = time.monotonic()
        if len(self._looked) > 1000:  # those handed back or lost never come to their turn
            self._looked.clear()
        keep = []
        for message, message_id in zip(messages, ids):
            mark = requests.cancel_mark(found.get(message_id))
            if mark is None:
                self._looked[message_id] = now
                keep.append(message)
            else:
                self._delete_unrun(message, mark, deletes)
        return keep

    @_never_raises(default=True)
    def still_wanted(self, message: Any, deletes: Any) -> bool:
        """Whether a message taken from the prefetch is to run: False (deleted unrun) if
        it was cancelled while it waited. A ``GetItem`` if the poll's look is old."""
        message_id = message_id_of(message) or ""
        looked = self._looked.pop(message_id, None)
        if looked is None or time.monotonic() - looked < LOOK_AGAIN_AFTER_S or self.outbox.paused:
            return True
        found = self._look([message_id], "looking for a cancel (BatchGetItem)")
        mark = None if found is None else requests.cancel_mark(found.get(message_id))
        if mark is not None:
            self._delete_unrun(message, mark, deletes)
        return mark is None

    def _look(self, ids: List[str], doing: str) -> Optional[Dict[str, Any]]:
        """The cancel marks of ``ids``' items; None (logged, counted) if the table failed
        or was slow to answer (then it is left alone a while)."""
        started = time.monotonic()
        try:
            self.outbox.requests += 1
            found = requests.get_batch(self.client, self.name, ids, _CANCEL_FIELDS)
        except Exception as error:
            self.outbox.pause_after(doing, error)
            return None
        took = time.monotonic() - started
        if took > requests.SLOW_ANSWER_S:
            self.outbox.pause_after(doing, requests.SlowAnswer(took))
        else:
            self.outbox.failures.worked()
        return found

    def _delete_unrun(self, message: Any, mark: Tuple[float, str], deletes: Any) -> None:
        task = wire.task_label_of(message.body)
        cancelled = delete_unrun(message, task, mark[1], deletes, self.notify)
        record = self._record(message, task)
        # The mark stays on the item: if the delete is lost, the message is deleted again.
        record.fields.update(zip(_CANCEL_FIELDS, mark))
        self._end(record, CANCELLED, error=cancelled)

    def between_tasks(self) -> None:
        """Before the next task: if it may fork, let a write still on finish first (a fork
        waits for helper threads, and that wait would come out of the task's time); if
        not, start the writes that are due (a flood of short tasks leaves the chores no
        other time)."""
        if self._isolated:
            self.outbox.wait_idle(IDLE_WAIT_S)
        else:
            self.run_due()

    @_never_raises()
    def begin(
        self, message: Any, task: str, kwargs: Any, context: Any, stop: Any, isolated: bool
    ) -> None:
        """A task starts: its running item is written once it has run :data:`START_AFTER_S`."""
        record = self._record(message, task, kwargs)
        record.context, record.stop = context, stop
        self._isolated = isolated
        if isolated:
            record.box = box_for_children()
            record.box.clear_progress()  # none of the last task's, even if no child starts
        record.fields["started_at"] = time.time()
        with self.outbox.lock:
            self._running = record

    @_never_raises()
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
        with self.outbox.lock:  # no heartbeat write of it is queued after this
            record, self._running = self._running, None
        if record is None or record.message_id != message_id_of(message):
            record = self._record(message, task)
        self._ended_id = record.message_id
        if outcome is Outcome.CANCELLED and not isinstance(error, TaskCancelled):
            by = getattr(record.stop, "cancelled_by", "") or "someone"
            error = TaskCancelled(f"by {by}", task, record.message_id)
        self._end(record, STATE_OF.get(outcome, FAILED), error, result, duration_s)

    @_never_raises()
    def settled(self, message: Any, outcome: Outcome, settlement: Any) -> None:
        """After each message: its final state unless :meth:`ended` wrote it (refused, not
        started); the error of a refusal from ``settlement.last_refusal``."""
        refusal, settlement.last_refusal = settlement.last_refusal, None
        if self._ended_id == message_id_of(message):
            self._ended_id = None
            return
        error = refusal[1] if refusal is not None and refusal[0] == id(message) else None
        self.ended(message, wire.task_label_of(message.body), outcome, error)
        self._ended_id = None

    def flush(self) -> None:
        """Start sending the queued writes now (before a poll)."""
        self.outbox.flush()

    @_never_raises()
    def close(self) -> None:
        """On the worker's way out: the last states (a few seconds at most)."""
        self.outbox.close()

    # -- the chores' side (any thread) ----------------------------------------------

    def due_at(self) -> Optional[float]:
        """When a write is due (``time.monotonic()``); None while one is in flight."""
        if self.outbox.in_flight:
            return None
        times = [self.outbox.due_at(self._flush_after_s)]
        record = self._running
        if record is not None:
            times.append(record.next_write)
        due = [at for at in times if at is not None]
        return min(due) if due else None

    def run_due(self) -> None:
        """Start the writes that are due, in a helper thread; returns at once."""
        now = time.monotonic()
        with self.outbox.lock:
            if self.outbox.in_flight:
                return
            record = self._running
            if record is not None and now >= record.next_write:
                # On the heartbeats' own schedule: one write per heartbeat period, sent now.
                periods = (now - record.begun) // self.heartbeat_s + 1
                record.next_write = record.begun + periods * self.heartbeat_s
                if not self.outbox.paused:
                    self._queue_write(record)
                    self.outbox.flush()
                    return
            due = self.outbox.due_at(self._flush_after_s)
            if due is not None and due <= now:
                self.outbox.flush()

    @property
    def _flush_after_s(self) -> float:
        return ISOLATED_FLUSH_AFTER_S if self._isolated else FLUSH_AFTER_S

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
            remove = tuple(name for name in CLEARED_ON_START if fields.get(name) is None)
        self.outbox.update(record, fields, remove, False)

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
            **record.progress_fields(),
        }
        if record.context is not None:
            fields["continued_as"] = getattr(record.context, "continued_as", None)
        item = {**record.fields, **fields}
        if record.start_sent or state not in WHOLE_ITEM_STATES:
            # An update keeps a cancel asked meanwhile; all fields (the start may have failed).
            stale = tuple(name for name in CLEARED_ON_START if item.get(name) is None)
            self.outbox.update(record, item, () if record.start_sent else stale, True)
        else:
            self.outbox.put(item)
