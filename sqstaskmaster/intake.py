"""A worker's intake: one poll for up to ``prefetch`` messages, those waiting, batched deletes.

The worker takes messages one at a time from :meth:`Intake.take`. Before each
poll, and before it hands anything back, the finished tasks' deletes are
flushed; when it stops, the messages still waiting are handed back in one
request (:mod:`sqstaskmaster.batching`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, List, Optional, Tuple

from . import metrics
from .batching import Chores, DeleteBatch, Waiting
from .errors import PollFailedError

logger = logging.getLogger(__name__)

Notify = Callable[..., Any]


class Intake:
    """Polls ``task_manager``'s queue and keeps what one poll brought (see the module docstring).

    ``prefetch`` (1 to 10, checked by WorkerSettings) is the most messages one
    poll receives; those not yet running are kept invisible on the
    ``heartbeat_s`` schedule.
    """

    def __init__(
        self,
        task_manager: Any,
        *,
        prefetch: int,
        sqs_timeout: int,
        heartbeat_s: float,
        notify: Notify,
    ) -> None:
        self.task_manager = task_manager
        self.prefetch = prefetch
        self.sqs_timeout = sqs_timeout
        self.deletes = DeleteBatch(notify)
        self.waiting = Waiting(sqs_timeout, heartbeat_s, notify)
        self.chores = Chores(self.deletes, self.waiting, notify)
        self.notify = notify
        self.failures = 0  # failed polls in a row

    def poll(self, wait_s: int, most: Optional[int] = None) -> int:
        """Flush the deletes, then receive up to ``prefetch`` (and ``most``); returns how many.

        SQS errors propagate (the worker counts failed polls).
        """
        self.chores.flush()
        count = self.prefetch if most is None else max(1, min(self.prefetch, most))
        polled_at = time.monotonic()
        messages = self.task_manager.receive(
            wait_s, self.sqs_timeout, message_attributes=True, max_messages=count
        )
        # Received with VisibilityTimeout=sqs_timeout: invisible until at least
        # polled_at + sqs_timeout.
        self.failures = 0
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
        self.chores.run_due()
        if stop is not None and stop.stopping:
            return None
        return self.waiting.take()

    def delete_later(
        self, task: Optional[str], notify: Optional[Notify] = None
    ) -> Callable[[Any], None]:
        """A handler's ``deleter``: queue a finished ``task``'s message for a batched delete.

        A delete that fails is reported to ``notify`` (the handler's), as a direct one was.
        """

        def delete(message: Any) -> None:
            self.deletes.add(message, task, notify)

        return delete

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
