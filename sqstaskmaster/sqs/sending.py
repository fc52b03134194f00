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
total, sent up to ``max_in_flight`` at once (one at a time on FIFO queues, to
keep group order). Entries SQS reports as failed are retried a bounded number of times;
whatever still fails is raised in one :class:`~sqstaskmaster.errors.BatchSendError`
that lists every unsent entry, so no message is ever dropped silently.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Union,
)

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import BatchSendError, FailedEntry, MessageTooLargeError
from ..sqs.facts import (  # noqa: F401 - attributes_size, message_size: re-exported
    MAX_BATCH_ENTRIES,
    MAX_DELAY_S,
    MAX_MESSAGE_ATTRIBUTES,
    MAX_MESSAGE_BYTES,
    attributes_size,
    message_size,
)
from ..sqs.wire import SERVICE_NAME, check_task_name, encode_task, service_name_attribute

logger = logging.getLogger(__name__)

#: SQS's ceiling for MaximumMessageSize (since 2025), and LocalQueue's limit.
DEFAULT_MAX_MESSAGE_SIZE = MAX_MESSAGE_BYTES
#: Attempts per entry (the first send included) before a failure is final.
DEFAULT_MAX_ATTEMPTS = 3
#: Pause before the first retry of failed entries; doubled for each later retry.
RETRY_BACKOFF_S = 0.1
#: SendMessageBatch requests a standard queue's batch keeps in flight at once.
#: Each costs a network round trip (tens of ms against SQS), so a few at once
#: multiply a script's throughput; FIFO queues always send one at a time.
DEFAULT_MAX_IN_FLIGHT = 4

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
    max_in_flight: int = 1,
) -> List[str]:
    """Send prepared messages through SendMessageBatch; their message ids, in input order.

    ``prepared[i].index`` must be ``i`` (as :func:`prepare` makes them in a batch).

    With ``max_in_flight`` 1, requests go out one after the other through
    ``queue.send_messages``, in input order. With more, up to that many
    requests are in flight at once, from a thread pool, through the queue's
    (thread-safe) boto3 client; a queue without one (LocalQueue) is sent
    sequentially. FIFO callers must pass 1: concurrent requests lose group
    order.

    Entries SQS fails are retried (those with ``SenderFault`` are final at
    once) up to ``max_attempts`` sends in all, within the request's own slot.
    A request SQS (or the network) rejects as a whole stops the submission:
    requests in flight finish and are accounted for, later ones are not
    started. Either way, :class:`BatchSendError` lists every entry not sent
    (``NotAttempted`` for requests never started), and carries the ids of
    those that were.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts is {max_attempts!r}; it must be at least 1")
    check_max_in_flight(max_in_flight)
    ids: List[Optional[str]] = [None] * len(prepared)
    failed: List[FailedEntry] = []
    batches = plan_batches([message.size for message in prepared], max_bytes)
    client: Any = getattr(getattr(queue, "meta", None), "client", None)
    workers = max(1, min(max_in_flight, len(batches))) if client is not None else 1

    def send(entries: List[Dict[str, Any]]) -> Dict[str, Any]:
        if workers == 1:
            response: Dict[str, Any] = queue.send_messages(Entries=entries)
        else:  # boto3 clients are thread-safe; resources (queue) are not
            response = client.send_message_batch(QueueUrl=queue.url, Entries=entries)
        return response

    def request(batch: range) -> _Outcome:
        return _send_request(
            send, [prepared[position] for position in batch], max_attempts, backoff_s
        )

    started = 0  # batches[:started] were sent (or are in flight)
    error: Optional[BaseException] = None
    if workers == 1:
        for batch in batches:
            started += 1
            outcome = request(batch)
            _merge(outcome, ids, failed)
            if outcome.error is not None:
                error = outcome.error
                break
    else:
        _warn_if_pool_too_small(client, workers)
        with ThreadPoolExecutor(workers, thread_name_prefix="sqstaskmaster-send") as pool:
            in_flight: Set[Future[_Outcome]] = set()
            while True:
                while error is None and started < len(batches) and len(in_flight) < workers:
                    in_flight.add(pool.submit(request, batches[started]))
                    started += 1
                if not in_flight:
                    break
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    outcome = future.result()
                    _merge(outcome, ids, failed)
                    if error is None and outcome.error is not None:
                        error = outcome.error
    failed.extend(_not_attempted(prepared, batches[started:]))
    if failed:
        failed.sort(key=lambda entry: entry.index)
        if error is not None:
            raise BatchSendError(failed, ids) from error
        raise BatchSendError(failed, ids)
    logger.debug(
        "submitted %d messages in %d requests, at most %d at once",
        len(prepared),
        len(batches),
        workers,
    )
    return [message_id for message_id in ids if message_id is not None]  # all of them


def check_max_in_flight(max_in_flight: Any) -> None:
    """Raise ValueError unless ``max_in_flight`` is an int of at least 1."""
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError(
            f"max_in_flight is {max_in_flight!r}; it must be an int of at least 1 (the number "
            f"of SendMessageBatch requests sent at once; {DEFAULT_MAX_IN_FLIGHT} by default, "
            "1 to send one request after the other)"
        )


@dataclass
class _Outcome:
    """What one request (with its retries) did: ids sent, entries failed, its own error."""

    ids: Dict[int, str] = field(default_factory=dict)
    failed: List[FailedEntry] = field(default_factory=list)
    error: Optional[BaseException] = None


def _merge(outcome: _Outcome, ids: List[Optional[str]], failed: List[FailedEntry]) -> None:
    for index, message_id in outcome.ids.items():
        ids[index] = message_id
    failed.extend(outcome.failed)


def _send_request(
    send: Callable[[List[Dict[str, Any]]], Dict[str, Any]],
    pending: List[PreparedMessage],
    max_attempts: int,
    backoff_s: float,
) -> _Outcome:
    """Send one request's entries, retrying those SQS fails; SQS and network errors are returned."""
    outcome = _Outcome()
    attempt = 1
    while pending:
        entries = [dict(message.params, Id=str(message.index)) for message in pending]
        try:
            response = send(entries)
        except (ClientError, BotoCoreError) as error:
            outcome.failed.extend(_request_failed(pending, error))
            outcome.error = error
            return outcome
        by_id = {message.index: message for message in pending}
        for success in response.get("Successful", []):
            message = by_id.pop(int(success["Id"]))
            outcome.ids[message.index] = success["MessageId"]
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
                outcome.failed.append(entry)
            else:
                retry.append(message)
        for message in by_id.values():  # neither successful nor failed: never trust it
            outcome.failed.append(
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
    return outcome


def _warn_if_pool_too_small(client: Any, workers: int) -> None:
    pool_size = getattr(getattr(client.meta, "config", None), "max_pool_connections", None)
    if isinstance(pool_size, int) and workers > pool_size:
        logger.warning(
            "max_in_flight is %d but the SQS client keeps at most %d connections "
            "(botocore's max_pool_connections): the extra requests open and drop "
            "connections; give the client Config(max_pool_connections=%d) or lower "
            "max_in_flight",
            workers,
            pool_size,
            workers,
        )


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
