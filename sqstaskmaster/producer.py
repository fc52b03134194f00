"""The producer side: per-message options, size checks, and batch submission.

:class:`~sqstaskmaster.task_manager.TaskManager` exposes this module as
``submit_with`` (one message with options) and ``submit_batch`` (many
messages through ``SendMessageBatch``). Every message keeps 0.0.11's wire
format: the body of ``encode_body(task, kwargs)`` and the ``service_name``
attribute, with the caller's extra attributes beside it.

Before anything is sent, every message is encoded and measured the way SQS
measures it (body plus each attribute's name, data type and value, in UTF-8
bytes) against the queue's ``MaximumMessageSize``; one bad message stops the
whole submission with nothing sent. A batch is then cut, in input order, into
requests of at most 10 entries and at most ``MaximumMessageSize`` bytes in
total. Entries SQS reports as failed are retried a bounded number of times;
whatever still fails is raised in one :class:`~sqstaskmaster.errors.BatchSendError`
that lists every unsent entry, so no message is ever dropped silently.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from botocore.exceptions import BotoCoreError, ClientError

from .errors import BatchSendError, EncodeError, FailedEntry, MessageTooLargeError
from .task_manager import encode_body, service_name_attribute

logger = logging.getLogger(__name__)

#: SQS's ceiling for MaximumMessageSize (since 2025), and LocalQueue's limit.
DEFAULT_MAX_MESSAGE_SIZE = 1_048_576
#: SendMessageBatch takes at most this many entries per request.
MAX_BATCH_ENTRIES = 10
#: SQS allows at most this many message attributes per message.
MAX_MESSAGE_ATTRIBUTES = 10
#: DelaySeconds must lie in 0..900 (15 minutes).
MAX_DELAY_S = 900
#: Attempts per entry (the first send included) before a failure is final.
DEFAULT_MAX_ATTEMPTS = 3
#: Pause before the first retry of failed entries; doubled for each later retry.
RETRY_BACKOFF_S = 0.1

SERVICE_NAME = "service_name"
_RESERVED_PREFIXES = ("aws.", "amazon.")


@dataclass(frozen=True)
class TaskMessage:
    """One task to submit, with per-message options (None: the batch default, or none).

    ``delay_seconds`` (0 to 900) holds the message back; not allowed per message
    on FIFO queues. ``message_group_id`` and ``deduplication_id`` are FIFO's
    group and deduplication ids. ``message_attributes`` are extra SQS message
    attributes (``{"name": {"DataType": "String", "StringValue": "..."}}``)
    sent beside ``service_name``, which they may not replace.
    """

    task: Any
    kwargs: Optional[Mapping[str, Any]] = None
    delay_seconds: Optional[int] = None
    message_group_id: Optional[str] = None
    deduplication_id: Optional[str] = None
    message_attributes: Optional[Mapping[str, Mapping[str, Any]]] = None


TaskItem = Union[TaskMessage, Sequence[Any]]


@dataclass(frozen=True)
class QueueLimits:
    """What the producer needs to know about a queue, read once from its attributes."""

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    fifo: bool = False
    content_based_deduplication: bool = False

    @classmethod
    def from_attributes(cls, attributes: Mapping[str, Any]) -> QueueLimits:
        """Limits from a GetQueueAttributes result (SQS returns every value as a string)."""
        size = attributes.get("MaximumMessageSize")
        return cls(
            max_message_size=int(size) if size is not None else DEFAULT_MAX_MESSAGE_SIZE,
            fifo=str(attributes.get("FifoQueue", "false")).lower() == "true",
            content_based_deduplication=(
                str(attributes.get("ContentBasedDeduplication", "false")).lower() == "true"
            ),
        )


@dataclass(frozen=True)
class PreparedMessage:
    """A validated message: its position in the input, its task, its size and its request."""

    index: int
    task: Any
    size: int
    params: Dict[str, Any]


def _utf8_len(value: Any) -> int:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    return len(str(value).encode("utf-8"))


def attributes_size(attributes: Mapping[str, Mapping[str, Any]]) -> int:
    """Bytes SQS counts for message attributes: each name, data type and value, in UTF-8."""
    size = 0
    for name, attribute in attributes.items():
        size += _utf8_len(name) + _utf8_len(attribute.get("DataType", ""))
        for key in ("StringValue", "BinaryValue"):
            if attribute.get(key) is not None:
                size += _utf8_len(attribute[key])
        for key in ("StringListValues", "BinaryListValues"):
            size += sum(_utf8_len(value) for value in attribute.get(key) or ())
    return size


def message_size(body: str, attributes: Mapping[str, Mapping[str, Any]]) -> int:
    """Bytes SQS counts against MaximumMessageSize: the UTF-8 body plus the attributes."""
    return _utf8_len(body) + attributes_size(attributes)


def _check_attributes(
    task: Any, index: Optional[int], extra: Mapping[str, Mapping[str, Any]]
) -> None:
    where = _where(task, index)
    for name, attribute in extra.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: message attribute name {name!r} must be a non-empty str")
        if name == SERVICE_NAME:
            raise ValueError(
                f"{where}: message attribute {SERVICE_NAME!r} is reserved for the sender "
                "name every message carries; set it with TaskManager(sender_name=...) or "
                "give your attribute another name"
            )
        if name.lower().startswith(_RESERVED_PREFIXES):
            raise ValueError(
                f"{where}: message attribute name {name!r} starts with a prefix SQS reserves "
                "('AWS.' or 'Amazon.'); rename it"
            )
        if (
            not isinstance(attribute, Mapping)
            or not isinstance(attribute.get("DataType"), str)
            or (attribute.get("StringValue") is None and attribute.get("BinaryValue") is None)
        ):
            raise ValueError(
                f"{where}: message attribute {name!r} is {attribute!r}; it must be a dict "
                "with a DataType ('String', 'Number' or 'Binary', optionally with a "
                "'.custom' suffix) and a StringValue or BinaryValue"
            )
    if len(extra) + 1 > MAX_MESSAGE_ATTRIBUTES:
        raise ValueError(
            f"{where}: {len(extra)} extra message attributes plus {SERVICE_NAME!r} exceed "
            f"SQS's limit of {MAX_MESSAGE_ATTRIBUTES} attributes per message; send at most "
            f"{MAX_MESSAGE_ATTRIBUTES - 1} extra attributes"
        )


def _where(task: Any, index: Optional[int]) -> str:
    return f"Task {task!r}" if index is None else f"Task {task!r} (entry {index} of the batch)"


def prepare(
    message: TaskMessage,
    *,
    sender: str,
    limits: QueueLimits,
    index: Optional[int] = None,
) -> PreparedMessage:
    """Encode, measure and validate one message; raise before anything is sent.

    The request parameters are those of ``send_message`` (and, with an
    ``Id``, of a ``send_message_batch`` entry). ``index`` is the message's
    position in a batch, for error texts.
    """
    task = message.task
    where = _where(task, index)
    kwargs = message.kwargs if message.kwargs is not None else {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"{where}: kwargs must be a dict, not {type(kwargs).__name__}: {kwargs!r}")
    try:
        body = encode_body(task, dict(kwargs))
    except (ValueError, TypeError, RecursionError) as error:
        raise EncodeError(task, error, index=index) from error

    attributes: Dict[str, Any] = service_name_attribute(sender)
    if message.message_attributes:
        _check_attributes(task, index, message.message_attributes)
        attributes.update({name: dict(value) for name, value in message.message_attributes.items()})

    size = message_size(body, attributes)
    if size > limits.max_message_size:
        raise MessageTooLargeError(task, size, limits.max_message_size, index=index)

    params: Dict[str, Any] = {"MessageBody": body, "MessageAttributes": attributes}
    delay = message.delay_seconds
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_S:
            raise ValueError(
                f"{where}: delay_seconds is {delay!r}; it must be an int from 0 to {MAX_DELAY_S}"
            )
        if limits.fifo:
            raise ValueError(
                f"{where}: a FIFO queue takes no per-message delay_seconds (got {delay!r}); "
                "set the queue's DelaySeconds attribute instead"
            )
        params["DelaySeconds"] = delay
    if message.message_group_id is not None:
        params["MessageGroupId"] = message.message_group_id
    elif limits.fifo:
        raise ValueError(
            f"{where}: a FIFO queue needs a message_group_id for every message; messages "
            "of one group are delivered in order"
        )
    if message.deduplication_id is not None:
        params["MessageDeduplicationId"] = message.deduplication_id
    elif limits.fifo and not limits.content_based_deduplication:
        raise ValueError(
            f"{where}: this FIFO queue has no ContentBasedDeduplication, so every message "
            "needs a deduplication_id (SQS drops a message whose id it saw in the last "
            "5 minutes)"
        )
    return PreparedMessage(index=index or 0, task=task, size=size, params=params)


def as_task_message(
    item: TaskItem,
    index: int,
    *,
    delay_seconds: Optional[int] = None,
    message_group_id: Optional[str] = None,
    message_attributes: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> TaskMessage:
    """A batch item as a TaskMessage, with the batch defaults filling its unset options."""
    if isinstance(item, TaskMessage):
        message = item
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        message = TaskMessage(item[0], item[1])
    else:
        raise TypeError(
            f"Batch entry {index} is {item!r}; each entry must be a (task, kwargs) pair "
            "or a TaskMessage"
        )
    return TaskMessage(
        task=message.task,
        kwargs=message.kwargs,
        delay_seconds=message.delay_seconds if message.delay_seconds is not None else delay_seconds,
        message_group_id=(
            message.message_group_id if message.message_group_id is not None else message_group_id
        ),
        deduplication_id=message.deduplication_id,
        message_attributes=(
            message.message_attributes
            if message.message_attributes is not None
            else message_attributes
        ),
    )


def plan_batches(
    sizes: Sequence[int], max_bytes: int, max_entries: int = MAX_BATCH_ENTRIES
) -> List[range]:
    """Cut messages, in order, into runs of at most ``max_entries`` and ``max_bytes`` in total.

    Every size must already be at most ``max_bytes``.
    """
    batches: List[range] = []
    start = 0
    total = 0
    for index, size in enumerate(sizes):
        if index > start and (index - start >= max_entries or total + size > max_bytes):
            batches.append(range(start, index))
            start, total = index, 0
        total += size
    if start < len(sizes):
        batches.append(range(start, len(sizes)))
    return batches


def send_batch(
    queue: Any,
    prepared: Sequence[PreparedMessage],
    *,
    max_bytes: int,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff_s: float = RETRY_BACKOFF_S,
) -> List[str]:
    """Send prepared messages with ``queue.send_messages``; their message ids, in input order.

    ``prepared[i].index`` must be ``i`` (as :func:`prepare` makes them in a batch).

    Entries SQS fails are retried (those with ``SenderFault`` are final at
    once) up to ``max_attempts`` sends in all, before the next request goes
    out. A request SQS (or the network) rejects as a whole stops the
    submission. Either way, :class:`BatchSendError` lists every entry not
    sent, and carries the ids of those that were.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts is {max_attempts!r}; it must be at least 1")
    ids: List[Optional[str]] = [None] * len(prepared)
    failed: List[FailedEntry] = []
    batches = plan_batches([message.size for message in prepared], max_bytes)
    for number, batch in enumerate(batches):
        pending = [prepared[position] for position in batch]
        attempt = 1
        while pending:
            entries = [dict(message.params, Id=str(message.index)) for message in pending]
            try:
                response = queue.send_messages(Entries=entries)
            except (ClientError, BotoCoreError) as error:
                failed.extend(_request_failed(pending, error))
                failed.extend(_not_attempted(prepared, batches[number + 1 :]))
                raise BatchSendError(failed, ids) from error
            by_id = {message.index: message for message in pending}
            for success in response.get("Successful", []):
                message = by_id.pop(int(success["Id"]))
                ids[message.index] = success["MessageId"]
            retry: List[PreparedMessage] = []
            for failure in response.get("Failed", []):
                message = by_id.pop(int(failure["Id"]))
                entry = FailedEntry(
                    index=message.index,
                    task=message.task,
                    code=failure.get("Code", ""),
                    message=failure.get("Message", ""),
                    sender_fault=bool(failure.get("SenderFault")),
                )
                if entry.sender_fault or attempt >= max_attempts:
                    failed.append(entry)
                else:
                    retry.append(message)
            for message in by_id.values():  # neither successful nor failed: never trust it
                failed.append(
                    FailedEntry(
                        message.index,
                        message.task,
                        "MissingFromResponse",
                        "SQS reported neither success nor failure for this entry",
                        False,
                    )
                )
            if retry:
                pause_s = backoff_s * 2 ** (attempt - 1)
                logger.warning(
                    "SQS failed %d of %d entries of a batch (attempt %d of %d); retrying "
                    "entries %s in %.2f s",
                    len(retry),
                    len(pending),
                    attempt,
                    max_attempts,
                    [message.index for message in retry],
                    pause_s,
                )
                time.sleep(pause_s)
            pending = sorted(retry, key=lambda message: message.index)
            attempt += 1
    if failed:
        raise BatchSendError(sorted(failed, key=lambda entry: entry.index), ids)
    logger.debug("submitted %d messages in %d requests", len(prepared), len(batches))
    return [message_id for message_id in ids if message_id is not None]  # all of them


def _request_failed(pending: Iterable[PreparedMessage], error: BaseException) -> List[FailedEntry]:
    response = getattr(error, "response", None)
    if isinstance(response, dict) and "Error" in response:
        code = str(response["Error"].get("Code", type(error).__name__))
        text = str(response["Error"].get("Message", error))
        sender_fault = response["Error"].get("Type") == "Sender"
    else:
        code = type(error).__name__
        text = f"{error} (the request failed in transit: SQS may or may not have enqueued it)"
        sender_fault = False
    return [FailedEntry(m.index, m.task, code, text, sender_fault) for m in pending]


def _not_attempted(
    prepared: Sequence[PreparedMessage], batches: Sequence[range]
) -> List[FailedEntry]:
    return [
        FailedEntry(
            prepared[position].index,
            prepared[position].task,
            "NotAttempted",
            "not sent: an earlier request of this submission failed",
            False,
        )
        for batch in batches
        for position in batch
    ]
