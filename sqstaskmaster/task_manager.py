"""TaskManager: the producer and consumer ends of one SQS queue (0.0.11's API).

The wire format is 0.0.11's, byte for byte, so a mixed fleet of 0.0.11 and
this package can share a queue in both directions::

    body = {"task": "<name>", "kwargs": {...}}   # json.dumps, default separators,
                                                 # unknown types through str()
    MessageAttributes = {"service_name": {"StringValue": <sender>, "DataType": "String"}}

Encoding and decoding live in :mod:`sqstaskmaster.sqs.wire`.
"""

from __future__ import annotations

import logging
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
)

import boto3

from .errors import MalformedBodyError, Notify
from .local import LocalQueue
from .sqs.facts import MAX_POLL_WAIT_S, MAX_VISIBILITY_S, failure_context
from .sqs.queue import BotoQueue, Queue, Receive
from .sqs.wire import decode as decode_body
from .sqs.wire import encode_body, service_name_attribute

__all__ = ["TaskManager", "encode_body", "service_name_attribute"]

if TYPE_CHECKING:  # pragma: no cover
    from .sqs.preparing import QueueLimits, TaskItem

logger = logging.getLogger(__name__)

MAX_WAIT_TIME_S = MAX_POLL_WAIT_S
MAX_VISIBILITY_TIMEOUT_S = MAX_VISIBILITY_S


def _log_submitted(task: Any, response: Any) -> None:
    message_id = response.get("MessageId") if isinstance(response, dict) else None
    logger.debug("submitted task %s as message %s", task, message_id)


class TaskManager:
    """Submit tasks to an SQS queue and iterate over the tasks it delivers.

    ``sqs_url`` is the queue URL. ``notify(exception, context=...)`` is called
    for messages that cannot be decoded. ``queue_constructor`` is None (boto3)
    or :class:`~sqstaskmaster.local.LocalQueue`. ``sender_name`` goes into each
    message's ``service_name`` attribute.

    New in 0.1: ``session`` (a ``boto3.session.Session``) or ``sqs`` (an SQS
    service resource) selects the endpoint, region and credentials without
    touching the environment; with neither, ``boto3.resource("sqs")`` is used
    as in 0.0.11.
    """

    def __init__(
        self,
        sqs_url: str,
        notify: Optional[Notify] = None,
        queue_constructor: Optional[type] = None,
        sender_name: Optional[str] = None,
        *,
        session: Any = None,
        sqs: Any = None,
    ) -> None:
        self.url = sqs_url
        self.sender_name = sender_name
        self._notify = notify
        if queue_constructor is None:
            if sqs is None:
                if session is None:
                    # The module-level name: tests patch sqstaskmaster.task_manager.boto3.
                    sqs = boto3.resource("sqs")
                else:
                    sqs = session.resource("sqs")
            elif session is not None:
                raise TypeError(
                    f"TaskManager got both session={session!r} and sqs={sqs!r}: pass one of "
                    "them (an SQS resource already carries its session)"
                )
            self.sqs = sqs
            self.queue = sqs.Queue(sqs_url)
        elif isinstance(queue_constructor, type) and issubclass(queue_constructor, LocalQueue):
            self.queue = queue_constructor(sqs_url)
        else:
            raise TypeError(
                f"TaskManager invalid queue_constructor type {queue_constructor!r}: "
                "pass None for SQS through boto3, or LocalQueue for in-memory tests"
            )

    @property
    def sender(self) -> str:
        """The ``service_name`` attribute value sent with each message."""
        if self.sender_name is None:
            return "Unknown sender to: " + self.url
        return self.sender_name

    def attributes(self) -> Dict[str, Any]:
        """Reload the queue and return its attributes."""
        self.queue.load()
        return self.queue.attributes

    def purge(self) -> None:
        """Delete every message in the queue."""
        self.queue.purge()

    def notify(self, exception: BaseException, context: Optional[Dict[str, Any]] = None) -> None:
        """Pass an error to the notify callable given at construction, if any."""
        if self._notify is not None:
            self._notify(exception, context=context)

    def submit(self, task: Any, **kwargs: Any) -> Any:
        """Send one task; every keyword becomes one of the task's kwargs."""
        body = encode_body(task, kwargs)
        response = self.queue.send_message(
            MessageBody=body, MessageAttributes=service_name_attribute(self.sender)
        )
        _log_submitted(task, response)
        return response

    def task_generator(
        self, wait_time: int = 20, sqs_timeout: int = 20
    ) -> Iterator[Tuple[Any, Any, Any]]:
        """Yield ``(task, kwargs, message)`` forever, one message per poll.

        ``wait_time`` is the long-poll wait (0 to 20 seconds); ``sqs_timeout``
        the visibility timeout each received message starts with (0 to 43200
        seconds). A message that cannot be decoded (whatever the decoder
        raises) or lacks ``task`` or ``kwargs`` is notified, logged and
        skipped, and left for SQS to redeliver (and a redrive policy to
        dead-letter). Errors from SQS itself propagate.
        """
        if not 0 <= wait_time <= MAX_WAIT_TIME_S:
            raise ValueError(f"Invalid polling wait time {wait_time}; must be between 0 and 20")
        if not 0 <= sqs_timeout <= MAX_VISIBILITY_TIMEOUT_S:
            raise ValueError(
                f"Invalid sqs timeout {sqs_timeout} seconds; must be between 0 and 12 hours"
            )
        return self._generate(wait_time, sqs_timeout)

    def sqs_queue(self, client: Any = None) -> Queue:
        """This queue behind the package's queue interface (:class:`sqstaskmaster.sqs.queue.Queue`).

        A LocalQueue is one itself; an SQS queue is reached through its boto3
        resource, and through ``client`` (None: the resource's) for every call
        but a receive.
        """
        if isinstance(self.queue, LocalQueue):
            return self.queue
        return BotoQueue.of_resource(self.queue, client)

    def receive(
        self,
        wait_time: int,
        sqs_timeout: int,
        *,
        message_attributes: bool = False,
        max_messages: int = 1,
    ) -> list:
        """One poll for at most one message, exactly as 0.0.11 makes it.

        New in 0.1: ``message_attributes=True`` also asks for the messages'
        MessageAttributes (a worker copies them when it dead-letters a message),
        and ``max_messages`` (1 to 10) asks for more than one (a worker's prefetch).
        Each message carries the clock read just before the call
        (:func:`sqstaskmaster.sqs.facts.mark_received`): SQS's 12 hours count from it.
        ``AttributeNames=["All"]`` includes a FIFO message's ``MessageGroupId``.
        """
        every = ("All",) if message_attributes else ()
        # 0.0.11's call on whatever queue object this is (a test's stand-in too).
        request = Receive(max_messages, wait_time, sqs_timeout, ("All",), every)
        return request.through(self.queue.receive_messages)

    def decode(self, message: Any) -> Optional[Tuple[Any, Any]]:
        """``(task, kwargs)`` of a message, or None after notifying and logging."""
        try:
            return decode_body(
                message.body,
                getattr(message, "message_id", None),
                lambda malformed: self.report_malformed(message, malformed),
            )
        except MalformedBodyError:
            return None  # reported while the decoder's error was being handled

    def report_malformed(self, message: Any, malformed: MalformedBodyError) -> None:
        """notify and log a malformed body as 0.0.11 does (with the decoder's own error).

        0.0.11 reported the decoder's ValueError; anything else the decoder
        raised (RecursionError, say) is reported as a DecodeError. Called while
        the decoder's error is being handled, as 0.0.11's ``logger.exception``
        lines are, with exactly their arguments.
        """
        cause, body = malformed.cause, message.body
        if malformed.decodes:
            self.notify(cause, context=failure_context(message))
            logger.exception(
                "failed to get required field %s from content %s with %s",
                cause,
                body,
                message.attributes,
            )
            return
        self.notify(malformed.reported(), context=failure_context(message))
        logger.exception("failed to decode message %s with %s", body, message.attributes)

    def _generate(self, wait_time: int, sqs_timeout: int) -> Iterator[Tuple[Any, Any, Any]]:
        while True:
            messages = self.receive(wait_time, sqs_timeout)
            if not messages:
                logger.info("Waiting for work from SQS!")
                continue
            for message in messages:
                decoded = self.decode(message)
                if decoded is None:
                    continue
                task, kwargs = decoded
                logger.debug(
                    "received task %s in message %s", task, getattr(message, "message_id", None)
                )
                yield task, kwargs, message

    # New in 0.1: the producer side; the mechanics live in sqstaskmaster.sqs.sending.

    def queue_limits(self, refresh: bool = False) -> QueueLimits:
        """The queue's MaximumMessageSize and FIFO settings, read once and then cached.

        ``submit_with`` and ``submit_batch`` check messages against them before
        sending. A LocalQueue has no such attributes: 1,048,576 bytes, not FIFO.
        ``refresh=True`` reads them again (after the queue's attributes changed).
        """
        from .sqs.preparing import LIMIT_ATTRIBUTES, QueueLimits

        limits: Optional[QueueLimits] = getattr(self, "_queue_limits", None)
        if limits is None or refresh:
            attributes = self.sqs_queue().queue_attributes(LIMIT_ATTRIBUTES)
            limits = QueueLimits.from_attributes(attributes)
            self._queue_limits = limits
        return limits

    def submit_with(
        self,
        task: Any,
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        delay_seconds: Optional[int] = None,
        message_group_id: Optional[str] = None,
        deduplication_id: Optional[str] = None,
        message_attributes: Optional[Mapping[str, Mapping[str, Any]]] = None,
    ) -> Any:
        """Send one task with per-message options; returns the queue's send_message response.

        The body and ``service_name`` attribute are exactly ``submit(task,
        **kwargs)``'s. ``delay_seconds`` (0 to 900) holds the message back
        (standard queues only); ``message_group_id`` and ``deduplication_id``
        are FIFO's; ``message_attributes`` are extra SQS message attributes
        beside ``service_name`` (which they may not replace). Before sending,
        raises :class:`~sqstaskmaster.errors.InvalidTaskNameError` for a task
        name that is not a non-empty str,
        :class:`~sqstaskmaster.errors.EncodeError` for kwargs a worker could
        not decode (circular, NaN or infinity, nested deeper than
        ``wire.MAX_KWARGS_DEPTH``),
        :class:`~sqstaskmaster.errors.MessageTooLargeError` for a message over
        the queue's MaximumMessageSize, and ``ValueError`` for invalid options.
        """
        from .sqs.preparing import TaskMessage, prepare

        message = TaskMessage(
            task, kwargs, delay_seconds, message_group_id, deduplication_id, message_attributes
        )
        prepared = prepare(message, sender=self.sender, limits=self.queue_limits())
        response = self.queue.send_message(**prepared.params)
        _log_submitted(task, response)
        return response

    def submit_batch(
        self,
        tasks: Iterable[TaskItem],
        *,
        delay_seconds: Optional[int] = None,
        message_group_id: Optional[str] = None,
        message_attributes: Optional[Mapping[str, Mapping[str, Any]]] = None,
        max_attempts: int = 3,
        max_in_flight: int = 1,
    ) -> List[str]:
        """Send many tasks with SendMessageBatch; returns their message ids in input order.

        ``tasks`` holds ``(task, kwargs)`` pairs and/or
        :class:`~sqstaskmaster.sqs.preparing.TaskMessage` objects (for per-message
        options); ``delay_seconds``, ``message_group_id`` and
        ``message_attributes`` are defaults for the messages that do not set
        their own. Every message is encoded and checked (as in
        :meth:`submit_with`) before any is sent. Requests carry at most 10
        messages and at most MaximumMessageSize bytes. Messages SQS fails are
        retried, ``max_attempts`` sends in all; whatever is still not sent is
        raised as one :class:`~sqstaskmaster.errors.BatchSendError` listing
        every such message, with the ids of those that were sent.

        By default requests go out one after the other. With ``max_in_flight``
        above 1, up to that many are sent at once from a thread pool, which
        pays off against real SQS (each request waits a network round trip);
        messages of a standard queue may then be enqueued out of input order
        (SQS does not keep it anyway). FIFO queues and LocalQueue always send
        one request at a time.
        """
        from .sqs.preparing import as_task_message, prepare
        from .sqs.sending import check_max_in_flight, send_batch

        check_max_in_flight(max_in_flight)

        messages = [
            as_task_message(
                item,
                index,
                delay_seconds=delay_seconds,
                message_group_id=message_group_id,
                message_attributes=message_attributes,
            )
            for index, item in enumerate(tasks)
        ]
        if not messages:
            return []
        limits = self.queue_limits()
        sender = self.sender
        prepared = [
            prepare(message, sender=sender, limits=limits, index=index)
            for index, message in enumerate(messages)
        ]
        return send_batch(
            self.sqs_queue(),
            prepared,
            max_bytes=limits.max_message_size,
            max_attempts=max_attempts,
            max_in_flight=1 if limits.fifo else max_in_flight,  # group order
        )
