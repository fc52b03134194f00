"""A message made ready to send: per-message options, validation and size.

:func:`prepare` encodes a :class:`TaskMessage` in 0.0.11's wire format (the
body of ``encode_body(task, kwargs)`` and the ``service_name`` attribute,
with the caller's extra attributes beside it), measures it the way SQS
measures it (body plus each attribute's name, data type and value, in UTF-8
bytes) against the queue's ``MaximumMessageSize`` (:class:`QueueLimits`),
and checks its options, raising before anything is sent. Sending is
:mod:`sqstaskmaster.sqs.sending`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from ..errors import MessageTooLargeError
from .facts import MAX_DELAY_S, MAX_MESSAGE_ATTRIBUTES, MAX_MESSAGE_BYTES, message_size
from .wire import SERVICE_NAME, check_task_name, encode_task, service_name_attribute

#: SQS's ceiling for MaximumMessageSize (since 2025), and LocalQueue's limit.
DEFAULT_MAX_MESSAGE_SIZE = MAX_MESSAGE_BYTES
#: The queue attributes :class:`QueueLimits` is read from.
LIMIT_ATTRIBUTES = ("MaximumMessageSize", "FifoQueue", "ContentBasedDeduplication")

_RESERVED_PREFIXES = ("aws.", "amazon.")


@dataclass(frozen=True)
class TaskMessage:
    """One task to submit, with per-message options (None: the batch default, or none).

    ``delay_seconds`` (0 to 900) holds the message back; not allowed per message
    on FIFO queues. ``message_group_id`` and ``deduplication_id`` are FIFO's
    group and deduplication ids. ``message_attributes`` are extra SQS message
    attributes (``{"name": {"DataType": "String", "StringValue": "..."}}``)
    sent beside ``service_name``, which they may not replace. A ``task`` that
    is not a non-empty str raises :class:`~sqstaskmaster.errors.InvalidTaskNameError`.
    """

    task: Any
    kwargs: Optional[Mapping[str, Any]] = None
    delay_seconds: Optional[int] = None
    message_group_id: Optional[str] = None
    deduplication_id: Optional[str] = None
    message_attributes: Optional[Mapping[str, Mapping[str, Any]]] = None

    def __post_init__(self) -> None:
        check_task_name(self.task)


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
    body = encode_task(task, dict(kwargs), index=index)

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
        check_task_name(item[0], index)
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
