"""A worker's intake: one poll for up to ``prefetch`` messages, those waiting, batched deletes.

The worker takes messages one at a time from :meth:`Intake.take`. Before each
poll, and before it hands anything back, the finished tasks' deletes are
flushed; when it stops, the messages still waiting are handed back in one
request (:mod:`sqstaskmaster.worker.batching`). After a message of a FIFO group did
not succeed, the waiting messages of its group are handed back
(:meth:`Intake.after`), so that the group runs in order.

Every call goes through the queue interface
(:class:`sqstaskmaster.sqs.queue.Queue`): a poll takes at most what the queue
says one receive may take (``max_receive``), and a hand-back is the queue's
(one whose messages never lapse puts them back in line).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional, Tuple

from ..errors import Notify, PollFailedError
from ..ops import metrics
from ..sqs.clients import bind
from ..sqs.facts import group_of, message_id_of
from ..sqs.queue import Queue
from .batching import Chores, DeleteBatch, Waiting

logger = logging.getLogger(__name__)

# Outcomes after which a message is gone from its queue (deleted, or moved to the
# dead-letter queue by the worker): its FIFO group goes on without it.
_GONE = frozenset({"done", "rejected", "continued"})
# Seconds past a retried message's expected return during which its group is watched.
_RETRY_WATCH_S = 60.0


class Intake:
    """Polls ``task_manager``'s queue and keeps what one poll brought (see the module docstring).

    ``prefetch`` (1 to 10, checked by WorkerSettings) is the most messages one
    poll receives; those not yet running are kept invisible on the
    ``heartbeat_s`` schedule. ``client``, if given, is the SQS client that
    received messages use from then on (heartbeats, hand-backs, deletes);
    the queue (``task_manager.sqs_queue(client)``) is what they go through.
    """

    def __init__(
        self,
        task_manager: Any,
        *,
        prefetch: int,
        sqs_timeout: int,
        heartbeat_s: float,
        notify: Notify,
        client: Any = None,
    ) -> None:
        self.task_manager = task_manager
        # The short-bounded SQS client received messages are moved to (sqs.worker_clients).
        self.client = client
        self.queue: Optional[Queue] = (
            None if task_manager is None else task_manager.sqs_queue(client)
        )
        self.prefetch = prefetch
        self.sqs_timeout = sqs_timeout
        self.deletes = DeleteBatch(notify)
        self.waiting = Waiting(sqs_timeout, heartbeat_s, notify)
        self.deletes.queue = self.waiting.queue = self.queue
        self.chores = Chores(self.deletes, self.waiting, notify)
        self.notify = notify
        # The status table's writer (sqstaskmaster.worker.status), or None.
        self.status: Any = None
        self.failures = 0  # failed polls in a row
        # FIFO groups with a message to be retried -> until when (monotonic) that
        # may take: meanwhile a poll takes one message (see after()).
        self._retrying_groups: Dict[str, float] = {}

    def poll(self, wait_s: int, most: Optional[int] = None) -> int:
        """Flush the deletes, then receive up to ``prefetch`` (and ``most``); returns how many.

        SQS errors propagate (the worker counts failed polls).
        """
        self.chores.flush()
        if self.status is not None:  # ended tasks' states, sent while the poll waits
            self.status.flush()
        count = self.prefetch if most is None else max(1, min(self.prefetch, most))
        if self.queue is not None:  # how many one receive may take
            count = min(count, self.queue.max_receive)
        if self._retrying():
            count = 1  # a FIFO group's retry comes back alone (see after())
        polled_at = time.monotonic()
        messages = self.task_manager.receive(
            wait_s, self.sqs_timeout, message_attributes=True, max_messages=count
        )
        # Received with VisibilityTimeout=sqs_timeout: invisible until at least
        # polled_at + sqs_timeout.
        self.failures = 0
        bind(messages, self.client)
        if self.status is not None:  # those cancelled before they ran are deleted unrun
            messages = self.status.screen(list(messages), self.deletes)
        self.waiting.add(messages, polled_at)
        return len(messages)

    def poll_failed(self, error: Exception, queue_url: Optional[str], most: int) -> float:
        """Log and notify a failed poll; the seconds to pause, or PollFailedError at ``most``."""
        self.failures += 1
        metrics.poll_failed()
        logger.exception("poll %d of %d failed on %s", self.failures, most, queue_url)
        self.notify(error, context={"queue_url": queue_url})
        if self.failures >= most:
            raise PollFailedError(queue_url, self.failures, error) from error
        return min(2.0**self.failures, 30.0)

    def take(self, stop: Any = None) -> Optional[Tuple[Any, float]]:
        """The next message to run and until when it is invisible; None when none waits.

        Due chores (flush, heartbeat of the others) are done first; if ``stop``
        (a worker's stop controller) says ``stopping`` then, None: the message
        stays waiting, to be handed back.
        """
        self.chores.run_due(status=False)
        if self.status is not None:  # (a write still on would hold up a task's fork)
            self.status.between_tasks()
        while True:
            if stop is not None and stop.stopping:
                return None
            item = self.waiting.take()
            # One cancelled while it waited here is deleted unrun.
            if (
                item is None
                or self.status is None
                or self.status.still_wanted(item[0], self.deletes)
            ):
                return item

    def after(self, message: Any, outcome: str, visible_in_s: Optional[int]) -> List[Any]:
        """After ``message`` ended with ``outcome``: unless it is gone (done, or
        dead-lettered by the worker), the waiting messages of its FIFO group are
        handed back (one request); returns them.

        They become visible when it does (``visible_in_s``, its retry delay;
        None: at once), so that no server delivers them before it. Until it is
        gone (or ``sqs_timeout`` + 60 s past its retry delay), each poll takes
        one message.
        """
        group = group_of(message)
        if group is None:
            return []
        if outcome in _GONE:
            self._retrying_groups.pop(group, None)
            return []
        # Until the message is back and done, polls take one message each: its
        # followers are then not received with each retry of it (each receive
        # counts towards the redrive policy's maxReceiveCount, and they would
        # reach it with the failing message without ever running).
        self._retrying_groups[group] = (
            time.monotonic() + (visible_in_s or 0) + self.sqs_timeout + _RETRY_WATCH_S
        )
        if not len(self.waiting):
            return []
        why = f"message {message_id_of(message)} of its FIFO group {group} ended {outcome}"
        return self.waiting.hand_back_all(why, group=group, visible_in_s=visible_in_s or 0)

    def _retrying(self) -> bool:
        """Whether a FIFO group of ours has a message to be retried (expired ones forgotten:
        its message went to another worker, or to the dead-letter queue)."""
        now = time.monotonic()
        for group, until in list(self._retrying_groups.items()):
            if until <= now:
                del self._retrying_groups[group]
        return bool(self._retrying_groups)

    def close(self, why: str) -> List[Any]:
        """On the way out: deletes flushed, waiting messages handed back (returned).

        Never raises: what fails is logged (and notified by the batch calls).
        """
        try:
            self.chores.flush()
            return self.waiting.hand_back_all(why)
        except Exception:
            logger.exception("closing the worker's intake failed")
            return []
        finally:
            if self.status is not None:  # the last tasks' states (bounded: a few seconds)
                self.status.close()
