"""LocalQueue: an in-memory stand-in for an SQS queue, for tests in one process.

It checks the interface between a producer and a consumer (the message
content, TaskManager's serialization, MessageHandler's execution), not SQS
behaviour: there are no visibility timeouts, retries or dead-letter queues.
For those, use :mod:`sqstaskmaster.testing`, which runs a real
SQS-compatible server on 127.0.0.1.

A LocalQueue also implements the package's queue interface
(:class:`sqstaskmaster.sqs.queue.Queue`), so that a worker and a producer use
it as they use an SQS queue: one receive takes one message (none waits
behind a running task), nothing lapses, and a message handed back is put
back at the end of the queue.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from queue import Empty, SimpleQueue
from typing import Any, ClassVar, Dict, List, Optional, Sequence

from .sqs.facts import MAX_MESSAGE_BYTES
from .sqs.queue import BatchEntry, BatchResponse, Receive, settle_each

logger = logging.getLogger(__name__)


class LocalMessage:
    """A received message: read-only ``body``, ``attributes``, ``message_attributes``."""

    def __init__(
        self,
        body: str,
        attributes: Dict[str, Any],
        message_attributes: Dict[str, Any],
    ) -> None:
        self._body = body
        self._attributes = attributes
        self._message_attributes = message_attributes

    @property
    def body(self) -> str:
        return self._body

    @property
    def attributes(self) -> Dict[str, Any]:
        return self._attributes

    @property
    def message_attributes(self) -> Dict[str, Any]:
        return self._message_attributes

    def change_visibility(self, *args: Any, **kwargs: Any) -> None:
        """Does nothing but log: a local queue has no visibility timeout."""
        logger.info("noop called with %s, %s", args, kwargs)

    def delete(self) -> None:
        """Does nothing: a received local message is already gone from the queue."""
        logger.info("noop delete")

    def __repr__(self) -> str:
        return f"LocalMessage(body={self._body!r})"


class LocalQueue:
    """An in-memory FIFO queue; every LocalQueue of one URL shares one queue."""

    local_queues: ClassVar[Dict[str, SimpleQueue[LocalMessage]]] = {}

    # The queue interface's facts (sqstaskmaster.sqs.queue.Queue).
    max_receive: ClassVar[int] = 1
    redelivers: ClassVar[bool] = False
    parallel_sends: ClassVar[bool] = False
    connections: ClassVar[Optional[int]] = None

    def __init__(self, url: str) -> None:
        self.url = url
        LocalQueue.local_queues.setdefault(url, SimpleQueue())

    @property
    def queue(self) -> SimpleQueue[LocalMessage]:
        """The ``queue.SimpleQueue`` shared by every LocalQueue of this URL (read-only).

        Looked up at each use, so after ``local_queues.clear()`` old and new
        LocalQueues of one URL share the new queue.
        """
        shared = LocalQueue.local_queues.get(self.url)
        if shared is None:
            shared = LocalQueue.local_queues.setdefault(self.url, SimpleQueue())
        return shared

    def load(self) -> None:
        """Does nothing: the attributes are always current."""
        logger.info("Noop load!")

    @property
    def attributes(self) -> Dict[str, Any]:
        return {
            "QueueArn": "LocalQueue replacing: " + self.url,
            "ApproximateNumberOfMessages": self.queue.qsize(),
            "ApproximateNumberOfMessagesNotVisible": 0,
            "ApproximateNumberOfMessagesDelayed": 0,
            "FifoQueue": True,
            "ContentBasedDeduplication": False,
        }

    def purge(self) -> None:
        """Empty the queue without blocking."""
        while True:
            try:
                self.queue.get_nowait()
            except Empty:
                return

    def send_message(
        self,
        MessageBody: str,
        MessageAttributes: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> Dict[str, Any]:
        """Enqueue a message; other SQS keywords are accepted and ignored."""
        # Through the module-level name, so tests can patch LocalMessage.
        self.queue.put_nowait(LocalMessage(MessageBody, {}, MessageAttributes or {}))
        digest = hashlib.md5(MessageBody.encode("utf-8")).hexdigest()  # noqa: S324 (as SQS does)
        return {"MD5OfMessageBody": digest}

    def send_messages(self, Entries: List[Dict[str, Any]], **kwargs: Any) -> Dict[str, Any]:
        """Enqueue a batch in order, like an SQS queue resource's ``send_messages``.

        Options other than the body and attributes are ignored; the message
        ids are made up (a LocalMessage does not carry one).
        """
        successful = []
        for entry in Entries:
            response = self.send_message(
                MessageBody=entry["MessageBody"], MessageAttributes=entry.get("MessageAttributes")
            )
            successful.append({"Id": entry["Id"], "MessageId": str(uuid.uuid4()), **response})
        return {"Successful": successful, "Failed": []}

    def receive_messages(
        self, WaitTimeSeconds: float = 20, MaxNumberOfMessages: int = 1, **kwargs: Any
    ) -> List[LocalMessage]:
        """Up to ``MaxNumberOfMessages`` in FIFO order, waiting ``WaitTimeSeconds`` at most."""
        deadline = time.monotonic() + WaitTimeSeconds
        received: List[LocalMessage] = []
        shared = self.queue
        while len(received) < MaxNumberOfMessages:
            try:
                if received:
                    received.append(shared.get_nowait())
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        received.append(shared.get_nowait())
                    else:
                        received.append(shared.get(timeout=left))
            except Empty:
                break
        return received

    # -- the queue interface (sqstaskmaster.sqs.queue.Queue) -----------------------

    def receive(self, request: Receive) -> List[LocalMessage]:
        """:meth:`receive_messages` as ``request`` asks, each message marked with the clock."""
        return request.through(self.receive_messages)

    def change_visibility(self, message: Any, seconds: int) -> None:
        """At 0 s, hand ``message`` back: put it back at the end of the queue.

        A local message never lapses and is never delivered again by itself
        (as 0.0.11's ``LocalMessage.change_visibility``, any other visibility
        changes nothing): only a hand-back puts it back.
        """
        if seconds != 0:
            logger.debug("%r: visibility %s s changes nothing in a local queue", message, seconds)
            return
        self.queue.put_nowait(message)
        logger.info("%r put back at the end of local queue %s", message, self.url)

    def change_visibility_batch(self, entries: Sequence[BatchEntry], seconds: int) -> BatchResponse:
        """Hand every entry's message back, in order (see :meth:`change_visibility`)."""
        return settle_each(entries, lambda message: self.change_visibility(message, seconds))

    def delete_batch(self, entries: Sequence[BatchEntry]) -> BatchResponse:
        """Each message's own ``delete()``: a received local message is already gone."""
        return settle_each(entries, lambda message: message.delete())

    def send_batch(self, entries: List[Dict[str, Any]]) -> BatchResponse:
        """:meth:`send_messages`."""
        return self.send_messages(Entries=entries)

    def queue_attributes(self, names: Sequence[str]) -> Dict[str, Any]:
        """Those of ``names`` it has, as SQS answers them for a standard queue.

        Unlike :attr:`attributes` (0.0.11's), this says no FIFO queue: a
        LocalQueue checks no FIFO rules, so a producer needs no group ids.
        """
        known = {
            "QueueArn": "LocalQueue replacing: " + self.url,
            "ApproximateNumberOfMessages": str(self.queue.qsize()),
            "ApproximateNumberOfMessagesNotVisible": "0",
            "ApproximateNumberOfMessagesDelayed": "0",
            "MaximumMessageSize": str(MAX_MESSAGE_BYTES),
        }
        every = "All" in names
        return {name: value for name, value in known.items() if every or name in names}

    def dead_letter_queue(self) -> None:
        """None: a LocalQueue has no redrive policy."""
        return None
