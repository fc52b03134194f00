"""The SQS seam: the one interface through which the package talks to a queue.

:class:`Queue` names every call a worker, a producer and the command line
make on a queue: receive, a visibility change of one message, batched
visibility changes, batched deletes, batched sends, and the queue's
attributes; and the few facts about a queue that change how it is used
(:attr:`Queue.max_receive`, :attr:`Queue.redelivers`,
:attr:`Queue.parallel_sends`, :attr:`Queue.connections`). Code above this
layer asks these, never what kind of queue it holds.

Two implementations: :class:`BotoQueue` over boto3 (a Queue resource, whose
receive makes boto3 ``Message`` objects, and a client for everything else),
and 0.0.11's in-memory queue in :mod:`sqstaskmaster.local`. A received
message still settles itself too (0.0.11's ``message.delete()`` and
``message.change_visibility()``, which a MessageHandler calls); the batched
calls here take ``(entry id, message)`` pairs and answer as SQS does, with
``Successful`` and ``Failed`` lists. :class:`SelfSettling` serves a message
that no queue was given for, through those methods of its own.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Type

from botocore.exceptions import BotoCoreError, ClientError

from .facts import MAX_BATCH_ENTRIES, mark_received, queue_url_of_arn

#: The errors an SQS call raises for SQS's answer or the network (not for a bug).
SQS_ERRORS: Tuple[Type[BaseException], ...] = (BotoCoreError, ClientError)

#: One entry of a batched call on received messages: its entry id and the message.
BatchEntry = Tuple[str, Any]
#: A batched call's answer, as SQS gives it: ``{"Successful": [...], "Failed": [...]}``.
BatchResponse = Mapping[str, Any]


class Queue(Protocol):
    """What the package does with a queue (see the module docstring)."""

    url: str

    @property
    def max_receive(self) -> int:
        """The most messages one receive may take (1 where none should wait behind a task)."""
        ...

    @property
    def redelivers(self) -> bool:
        """Whether a received message becomes visible again by itself when its visibility
        timeout ends (so a waiting one needs heartbeats, and may lapse)."""
        ...

    @property
    def parallel_sends(self) -> bool:
        """Whether batched sends may go out from several threads at once."""
        ...

    @property
    def connections(self) -> Optional[int]:
        """The most connections the queue's client keeps (None: no such limit known)."""
        ...

    def receive(self, request: Receive) -> List[Any]:
        """What ``request`` asks for, each message marked with the clock read before the call."""
        ...

    def change_visibility(self, message: Any, seconds: int) -> None:
        """One message's visibility timeout, from now."""
        ...

    def change_visibility_batch(self, entries: Sequence[BatchEntry], seconds: int) -> BatchResponse:
        """Every entry's visibility timeout (at most 10 entries; 0 hands them back)."""
        ...

    def delete_batch(self, entries: Sequence[BatchEntry]) -> BatchResponse:
        """Delete every entry's message (at most 10 entries)."""
        ...

    def send_batch(self, entries: List[Dict[str, Any]]) -> BatchResponse:
        """SendMessageBatch: entries with ``Id``, ``MessageBody`` and their options."""
        ...

    def queue_attributes(self, names: Sequence[str]) -> Dict[str, Any]:
        """The queue's attributes named (as SQS answers: every value a string)."""
        ...

    def dead_letter_queue(self) -> Optional[Queue]:
        """The queue its redrive policy names, or None (no policy; no queue behind it)."""
        ...


@dataclass(frozen=True)
class Receive:
    """One receive: at most ``max_messages``, waiting up to ``wait_s``, each invisible for
    ``visibility_s``, with the attributes and message attributes named."""

    max_messages: int
    wait_s: int
    visibility_s: int
    attribute_names: Sequence[str] = ("All",)
    message_attribute_names: Sequence[str] = ()

    def parameters(self) -> Dict[str, Any]:
        """Its ReceiveMessage parameters (0.0.11's, plus the message attributes asked for)."""
        parameters: Dict[str, Any] = {
            "AttributeNames": list(self.attribute_names),
            "MaxNumberOfMessages": self.max_messages,
            "WaitTimeSeconds": self.wait_s,
            "VisibilityTimeout": self.visibility_s,
        }
        if self.message_attribute_names:
            parameters["MessageAttributeNames"] = list(self.message_attribute_names)
        return parameters

    def through(self, receive_messages: Callable[..., Any]) -> List[Any]:
        """``receive_messages(**parameters)``, each message marked with the clock read
        just before the call: the 12-hour budget counts from it (see mark_received)."""
        received_at = time.time()
        messages: List[Any] = receive_messages(**self.parameters())
        mark_received(messages, received_at)
        return messages


def settle_each(entries: Sequence[BatchEntry], settle: Callable[[Any], Any]) -> BatchResponse:
    """``settle(message)`` for each entry, answered as SQS answers a batch that succeeded."""
    for _, message in entries:
        settle(message)
    return {"Successful": [{"Id": key} for key, _ in entries], "Failed": []}


class BotoQueue:
    """The queue at ``url`` over a boto3 SQS ``client``; ``receiver``, a boto3 Queue
    resource of it, receives (its ``Message`` objects settle themselves too).

    A worker gives its short-bounded client
    (:func:`sqstaskmaster.sqs.clients.worker_clients`), so that heartbeats,
    hand-backs and deletes fail within one heartbeat period. A queue found
    from a received message (:meth:`of_message`) has no receiver.
    """

    max_receive = MAX_BATCH_ENTRIES
    redelivers = True
    parallel_sends = True  # boto3 clients are thread-safe

    def __init__(self, client: Any, url: str, receiver: Any = None) -> None:
        self.client = client
        self.url = url
        self.receiver = receiver

    @classmethod
    def of_resource(cls, queue: Any, client: Any = None) -> BotoQueue:
        """The queue of a boto3 Queue resource; ``client`` (None: the resource's) for all
        but receives."""
        return cls(queue.meta.client if client is None else client, queue.url, queue)

    @classmethod
    def of_message(cls, message: Any) -> Optional[BotoQueue]:
        """The queue a received boto3 ``Message`` came from (its client and URL), else None."""
        client = getattr(getattr(message, "meta", None), "client", None)
        url = getattr(message, "queue_url", None)
        if client is None or url is None or getattr(message, "receipt_handle", None) is None:
            return None
        return cls(client, url)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BotoQueue) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> Tuple[int, str]:
        return id(self.client), self.url

    def __repr__(self) -> str:
        return f"BotoQueue({self.url!r})"

    @property
    def connections(self) -> Optional[int]:
        size = getattr(getattr(self.client.meta, "config", None), "max_pool_connections", None)
        return size if isinstance(size, int) else None

    def receive(self, request: Receive) -> List[Any]:
        if self.receiver is None:
            raise TypeError(f"{self!r} was found from a message: it has no receiver")
        return request.through(self.receiver.receive_messages)

    def change_visibility(self, message: Any, seconds: int) -> None:
        self.client.change_message_visibility(
            QueueUrl=self.url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=seconds
        )

    def change_visibility_batch(self, entries: Sequence[BatchEntry], seconds: int) -> BatchResponse:
        requests = [
            {"Id": key, "ReceiptHandle": message.receipt_handle, "VisibilityTimeout": seconds}
            for key, message in entries
        ]
        response: BatchResponse = self.client.change_message_visibility_batch(
            QueueUrl=self.url, Entries=requests
        )
        return response

    def delete_batch(self, entries: Sequence[BatchEntry]) -> BatchResponse:
        requests = [
            {"Id": key, "ReceiptHandle": message.receipt_handle} for key, message in entries
        ]
        response: BatchResponse = self.client.delete_message_batch(
            QueueUrl=self.url, Entries=requests
        )
        return response

    def send_batch(self, entries: List[Dict[str, Any]]) -> BatchResponse:
        response: BatchResponse = self.client.send_message_batch(QueueUrl=self.url, Entries=entries)
        return response

    def queue_attributes(self, names: Sequence[str]) -> Dict[str, Any]:
        answer = self.client.get_queue_attributes(QueueUrl=self.url, AttributeNames=list(names))
        attributes: Dict[str, Any] = answer.get("Attributes", {})
        return attributes

    def dead_letter_queue(self) -> Optional[BotoQueue]:
        return self.dead_letter_queue_of(self.queue_attributes(["RedrivePolicy"]))

    def dead_letter_queue_of(self, attributes: Mapping[str, Any]) -> Optional[BotoQueue]:
        """The dead-letter queue the redrive policy among ``attributes`` names, or None."""
        policy = redrive_policy(attributes)
        if policy is None:
            return None
        return BotoQueue(self.client, queue_url_of_arn(self.client, policy["deadLetterTargetArn"]))


class SelfSettling:
    """A queue for messages that settle themselves (``delete``, ``change_visibility``).

    What a message gets that no queue was given for and that has no SQS queue
    behind it: nothing lapses, and a hand-back is its own ``change_visibility``.
    """

    url = ""
    max_receive = 1
    redelivers = False
    parallel_sends = False
    connections = None

    def receive(self, request: Receive) -> List[Any]:
        return []

    def change_visibility(self, message: Any, seconds: int) -> None:
        message.change_visibility(VisibilityTimeout=seconds)

    def change_visibility_batch(self, entries: Sequence[BatchEntry], seconds: int) -> BatchResponse:
        return settle_each(entries, lambda message: self.change_visibility(message, seconds))

    def delete_batch(self, entries: Sequence[BatchEntry]) -> BatchResponse:
        return settle_each(entries, lambda message: message.delete())

    def send_batch(self, entries: List[Dict[str, Any]]) -> BatchResponse:
        raise TypeError("a message's own queue takes no sends")

    def queue_attributes(self, names: Sequence[str]) -> Dict[str, Any]:
        return {}

    def dead_letter_queue(self) -> None:
        return None


SELF_SETTLING = SelfSettling()


def redrive_policy(attributes: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The queue's redrive policy among its ``attributes`` (parsed), or None."""
    policy = attributes.get("RedrivePolicy")
    return json.loads(policy) if policy else None


def queue_stats(queue: BotoQueue) -> Dict[str, Any]:
    """Depths of a queue (and of its dead-letter queue when a redrive policy names one)."""
    attributes = queue.queue_attributes(["All"])
    stats: Dict[str, Any] = {
        "url": queue.url,
        "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        "delayed": int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
    }
    dead_letter = queue.dead_letter_queue_of(attributes)
    if dead_letter is not None:
        policy = redrive_policy(attributes) or {}
        depths = dead_letter.queue_attributes(
            ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )
        stats["max_receive_count"] = int(policy.get("maxReceiveCount", 0))
        stats["dead_letter_url"] = dead_letter.url
        stats["dead_letter"] = int(depths.get("ApproximateNumberOfMessages", 0)) + int(
            depths.get("ApproximateNumberOfMessagesNotVisible", 0)
        )
    return stats


def queue_of(message: Any) -> Queue:
    """The queue that settles ``message`` when none was given: its SQS queue, if it has one."""
    queue: Optional[Queue] = BotoQueue.of_message(message)
    return SELF_SETTLING if queue is None else queue
