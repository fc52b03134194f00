"""SQS facts and small helpers, in one place: limits, message fields, the 12-hour budget, sessions.

Everything here is about SQS itself, not about this package's task format
(:mod:`sqstaskmaster.sqs.wire`) or how tasks run; it imports no sibling module.

The 12-hour budget: SQS keeps a message invisible at most 12 hours
(:data:`MAX_VISIBILITY_S`) counted from the receive that returned its
current receipt handle (a message received again gets a fresh 12 hours),
and refuses a visibility change that reaches past that. The local clock is
read just before each ReceiveMessage call and kept with every message it
returns (:func:`mark_received`), so the budget is counted conservatively
from the receive; ``ApproximateFirstReceiveTimestamp`` is only a fact for
logs. A task needs its hard timeout plus :data:`STOP_MARGIN_S` (to stop it
and settle its message) inside what is left; at start-up the worker also
allows :data:`START_SLACK_S` between that clock reading and the task's start.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Dict, Mapping, Optional, overload

logger = logging.getLogger(__name__)

#: SQS never keeps a message invisible longer than 12 hours after the receive that
#: delivered it, and refuses a VisibilityTimeout above it (seconds).
MAX_VISIBILITY_S = 12 * 60 * 60
#: The longest long-poll wait SQS accepts (seconds).
MAX_POLL_WAIT_S = 20
#: The most messages one ReceiveMessage or SendMessageBatch handles.
MAX_BATCH_ENTRIES = 10
#: The longest DelaySeconds SQS accepts (seconds).
MAX_DELAY_S = 15 * 60
#: SQS's largest MaximumMessageSize (bytes, body plus attributes).
MAX_MESSAGE_BYTES = 1024 * 1024
#: At most this many message attributes per message.
MAX_MESSAGE_ATTRIBUTES = 10
#: Seconds kept past a hard timeout to stop the task (SIGTERM, kill grace,
#: SIGKILL) and set its message's retry delay before SQS's limit.
STOP_MARGIN_S = 30
#: Seconds between the clock reading before a ReceiveMessage call and the start of
#: a task it delivered: the long poll (up to MAX_POLL_WAIT_S), decoding, forking.
START_SLACK_S = 30
#: The attribute of a received message object that holds the ``time.time()`` read
#: just before the ReceiveMessage call that returned it (see :func:`mark_received`).
RECEIVED_AT_ATTRIBUTE = "sqstaskmaster_received_at"
#: The longest hard timeout that fits a message its worker starts promptly.
LONGEST_HARD_TIMEOUT_S = MAX_VISIBILITY_S - STOP_MARGIN_S - START_SLACK_S


def message_id_of(message: Any) -> Optional[str]:
    """The SQS message id, or None for messages without one (an in-memory queue's)."""
    return getattr(message, "message_id", None)


def failure_context(message: Any) -> Dict[str, Any]:
    """The notify context 0.0.11 passes for a message: its body and attributes."""
    return {"body": message.body, **(message.attributes or {})}


def receive_count_of(message: Any) -> int:
    """The message's ``ApproximateReceiveCount`` (1 when the attribute is missing)."""
    attributes = getattr(message, "attributes", None) or {}
    try:
        return int(attributes.get("ApproximateReceiveCount", 1))
    except (TypeError, ValueError):
        return 1


# -- the 12-hour budget ------------------------------------------------------------


def first_receive_of(message: Any) -> Optional[float]:
    """When SQS first delivered ``message`` (``time.time()`` seconds), if it says.

    A fact for logs only: the 12-hour budget counts from each receive.
    """
    attributes = getattr(message, "attributes", None)
    if not isinstance(attributes, Mapping):  # a message without them, or a test's Mock
        return None
    stamp: Any = attributes.get("ApproximateFirstReceiveTimestamp")
    try:
        return int(stamp) / 1000.0
    except (TypeError, ValueError):
        return None


def mark_received(messages: Any, at: float) -> None:
    """Keep ``at`` (``time.time()`` read just before the receive) with each received message.

    ``messages`` is the list a ``receive_messages`` call returned (anything else is left alone).
    """
    if not isinstance(messages, (list, tuple)):
        return
    for message in messages:
        try:
            setattr(message, RECEIVED_AT_ATTRIBUTE, at)
        except AttributeError:  # an object that takes no attributes: counted from later on
            logger.debug("message %s cannot carry its receive time", message_id_of(message))


def received_at_of(message: Any) -> Optional[float]:
    """The clock reading :func:`mark_received` kept with ``message``, or None."""
    value = getattr(message, RECEIVED_AT_ATTRIBUTE, None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None  # not received through a TaskManager (or a Mock's made-up attribute)


@overload
def budget_left_s(message: Any, since: None = None) -> Optional[float]: ...


@overload
def budget_left_s(message: Any, since: float) -> float: ...


def budget_left_s(message: Any, since: Optional[float] = None) -> Optional[float]:
    """Seconds of visibility SQS still grants ``message`` (may be negative): the one
    12-hour budget function.

    Counted from the receive that delivered this copy (:func:`mark_received`);
    for a message received otherwise from ``since`` (a ``time.time()`` value),
    and None when neither is known.
    """
    received_at = received_at_of(message)
    if received_at is None:
        received_at = since
    return None if received_at is None else MAX_VISIBILITY_S - (time.time() - received_at)


def capped_visibility(seconds: float, left: Optional[float]) -> int:
    """``seconds`` as a whole visibility timeout that SQS accepts with ``left`` seconds left."""
    wanted = int(min(seconds, MAX_VISIBILITY_S))
    if left is None:
        return max(wanted, 0)
    return max(min(wanted, int(left)), 0)


def visibility_for(message: Any, seconds: float) -> int:
    """``seconds`` as a visibility timeout SQS accepts for ``message``, given its budget."""
    return capped_visibility(seconds, budget_left_s(message))


def needed_s(hard_timeout: float) -> float:
    """Seconds of visibility a task with this hard timeout needs from its start."""
    return hard_timeout + STOP_MARGIN_S


def fits_a_fresh_receive(hard_timeout: float) -> bool:
    """Whether a task with this hard timeout fits a message its worker received just now."""
    return hard_timeout <= LONGEST_HARD_TIMEOUT_S


def fits(hard_timeout: float, left: float) -> bool:
    """Whether a task with this hard timeout can run in ``left`` seconds of budget."""
    return needed_s(hard_timeout) <= left


def single_hard_timeout_problem(hard_timeout: float, setting: str, where: str) -> Optional[str]:
    """Why one ``hard_timeout`` can never fit; None if it can.

    ``setting`` names it in the text, ``where`` says where it is set.
    """
    if hard_timeout <= LONGEST_HARD_TIMEOUT_S:
        return None
    return (
        f"{setting} of {hard_timeout} s can never fit in SQS's 12-hour visibility limit "
        f"({MAX_VISIBILITY_S} s from the receive that delivered the message): a task needs its "
        "hard timeout "
        f"plus {STOP_MARGIN_S} s to stop it and settle its message, and may start up to "
        f"{START_SLACK_S} s after the receive, so the longest hard timeout is "
        f"{LONGEST_HARD_TIMEOUT_S} s. Lower it ({where}) to at most {LONGEST_HARD_TIMEOUT_S} s, "
        "or split the task"
    )


def worker_hard_timeouts_problem(
    default_s: float, per_task_s: Mapping[str, Optional[float]]
) -> Optional[str]:
    """The first problem of a worker's default hard timeout and its tasks' own ones, if any
    (each checked by :func:`single_hard_timeout_problem`)."""
    problem = single_hard_timeout_problem(
        default_s, "the worker's hard_timeout", "--hard-timeout, or Worker(hard_timeout=...)"
    )
    for name, seconds in per_task_s.items():
        if problem is None and seconds is not None:
            problem = single_hard_timeout_problem(
                seconds, f"task {name!r}'s hard_timeout", "where the task is registered"
            )
    return problem


def group_of(message: Any) -> Optional[str]:
    """The FIFO message group id of ``message`` (its ``MessageGroupId``), or None."""
    attributes = getattr(message, "attributes", None)
    if not isinstance(attributes, Mapping):
        return None
    group = attributes.get("MessageGroupId")
    return group if isinstance(group, str) and group else None


# -- sizes -------------------------------------------------------------------------


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


def sqs_resource(
    session: Any = None, endpoint_url: Optional[str] = None, config: Any = None
) -> Any:
    """An SQS service resource from ``session`` (None: a new default boto3 session).

    ``config`` is a botocore ``Config`` (see :func:`client_config`), or None for boto3's.
    """
    if session is None:
        import boto3

        session = boto3.session.Session()
    return session.resource("sqs", endpoint_url=endpoint_url, config=config)


def queue_url_of_arn(client: Any, arn: str) -> str:
    """The URL of the queue with ARN ``arn`` (arn:aws:sqs:REGION:ACCOUNT:NAME)."""
    parts = arn.split(":")
    if len(parts) < 6 or not parts[-1]:
        raise ValueError(f"Not an SQS queue ARN: {arn!r}; expected arn:aws:sqs:REGION:ACCOUNT:NAME")
    return client.get_queue_url(QueueName=parts[-1], QueueOwnerAWSAccountId=parts[-2])["QueueUrl"]


_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d"
_REGION_IN_HOST = re.compile(rf"(?:sqs\.|^)({_REGION})\.")
_REGION_IN_PATH = re.compile(rf"^/queue/({_REGION})/[^/]+/[^/]+")


def region_from_url(url: str) -> Optional[str]:
    """The AWS region named in an SQS queue URL, if any.

    Read from the host (``https://sqs.REGION.amazonaws.com/ACCOUNT/NAME``) or
    from the path form ``http://HOST:PORT/queue/REGION/ACCOUNT/NAME`` that
    LocalStack and ElasticMQ write.
    """
    host, _, path = re.sub(r"^[a-z]+://", "", url).partition("/")
    match = _REGION_IN_HOST.search(host) or _REGION_IN_PATH.match("/" + path)
    return match.group(1) if match else None


def make_session(region: Optional[str], url: Optional[str] = None) -> Any:
    """A boto3 session; the region is ``region``, boto3's configured one, or the URL's."""
    import boto3

    session = boto3.session.Session(region_name=region)
    if session.region_name is None and url:
        guessed = region_from_url(url)
        if guessed:
            session = boto3.session.Session(region_name=guessed)
    return session


# -- errors ----------------------------------------------------------------------

# SQS error codes that mean the request itself is wrong: sending it again changes nothing.
CALLER_FAULT_CODES = frozenset(
    {
        "InvalidParameterValue",
        "InvalidParameterCombination",
        "MissingParameter",
        "InvalidAttributeName",
        "InvalidAttributeValue",
        "InvalidMessageContents",
        "MessageTooLong",
        "InvalidBatchEntryId",
        "BatchEntryIdsNotDistinct",
        "BatchRequestTooLong",
        "TooManyEntriesInBatchRequest",
        "EmptyBatchRequest",
        "UnsupportedOperation",
        "ValidationError",
    }
)
PURGE_IN_PROGRESS_CODES = frozenset(
    {"PurgeQueueInProgress", "AWS.SimpleQueueService.PurgeQueueInProgress"}
)


def error_code(error: BaseException) -> Optional[str]:
    """The SQS error code of a botocore ``ClientError`` (None for other errors)."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None
    code = (response.get("Error") or {}).get("Code")
    return str(code) if code else None


def missing_configuration(error: BaseException) -> Optional[str]:
    """``"region"`` or ``"credentials"`` when ``error`` is botocore's NoRegionError or
    NoCredentialsError (boto3 found none configured); else None."""
    from botocore.exceptions import NoCredentialsError, NoRegionError

    if isinstance(error, NoRegionError):
        return "region"
    if isinstance(error, NoCredentialsError):
        return "credentials"
    return None


def caller_fault_advice(error: BaseException) -> Optional[str]:
    """What to change when ``error`` is the caller's fault (a bad request, no region or
    credentials); None when it is not, so that trying again later may work."""
    from botocore.exceptions import NoCredentialsError, NoRegionError

    if isinstance(error, NoRegionError):
        return (
            "No AWS region is configured: pass --region REGION (or region_name to boto3), set "
            "AWS_DEFAULT_REGION, or use a queue URL that names its region "
            "(https://sqs.REGION.amazonaws.com/ACCOUNT/NAME or .../queue/REGION/ACCOUNT/NAME)."
        )
    if isinstance(error, NoCredentialsError):
        return (
            "No AWS credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE, or give the machine a role."
        )
    code = error_code(error)
    if code not in CALLER_FAULT_CODES:
        return None
    text = str(error)
    if code == "MessageTooLong" or "shorter than" in text or "too long" in text.lower():
        return (
            "The message is larger than the queue's MaximumMessageSize: send a reference "
            "(for example an S3 key) instead of the data itself."
        )
    if "MessageGroupId" in text:
        return (
            "The queue is a FIFO queue, which needs a message group id: send with "
            "submit_with(..., message_group_id=...) instead."
        )
    return (
        f"SQS refused the request as invalid ({code}): fix the value or parameter its text "
        "names; sending the same request again fails the same way."
    )
