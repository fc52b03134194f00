"""SQS facts and small helpers, in one place: limits, message fields, sessions, statistics.

Everything here is about SQS itself, not about this package's task format
(:mod:`sqstaskmaster.wire`) or how tasks run; it imports no sibling module.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Dict, Mapping, Optional

#: SQS never keeps a message invisible longer than 12 hours after its first receive,
#: and refuses a VisibilityTimeout above it (seconds).
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


def message_id_of(message: Any) -> Optional[str]:
    """The SQS message id, or None for messages without one (LocalMessage)."""
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


def visibility_budget_left(message: Any, fallback_start: float) -> float:
    """Seconds of visibility SQS still grants ``message`` (12 hours from its first receive).

    ``ApproximateFirstReceiveTimestamp`` (milliseconds) dates the first
    receive; without it ``fallback_start`` (a ``time.time()`` value) is used.
    """
    attributes = getattr(message, "attributes", None) or {}
    stamp: Any = attributes.get("ApproximateFirstReceiveTimestamp")
    try:
        first_receive = int(stamp) / 1000.0
    except (TypeError, ValueError):
        first_receive = fallback_start
    return MAX_VISIBILITY_S - (time.time() - first_receive)


def capped_visibility(seconds: float, budget_left: float) -> int:
    """A VisibilityTimeout SQS accepts: whole seconds, 0 to 12 hours, within the budget."""
    return int(max(0.0, min(float(seconds), budget_left, float(MAX_VISIBILITY_S))))


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


def sqs_resource(session: Any = None, endpoint_url: Optional[str] = None) -> Any:
    """An SQS service resource from ``session`` (None: a new default boto3 session)."""
    if session is None:
        import boto3

        session = boto3.session.Session()
    return session.resource("sqs", endpoint_url=endpoint_url)


def queue_url_of_arn(client: Any, arn: str) -> str:
    """The URL of the queue with ARN ``arn`` (arn:aws:sqs:REGION:ACCOUNT:NAME)."""
    parts = arn.split(":")
    if len(parts) < 6 or not parts[-1]:
        raise ValueError(f"Not an SQS queue ARN: {arn!r}; expected arn:aws:sqs:REGION:ACCOUNT:NAME")
    return client.get_queue_url(QueueName=parts[-1], QueueOwnerAWSAccountId=parts[-2])["QueueUrl"]


_REGION_IN_URL = re.compile(r"(?:sqs\.|^)([a-z]{2}(?:-[a-z]+)+-\d)\.")


def region_from_url(url: str) -> Optional[str]:
    """The AWS region named in an SQS queue URL's host, if any."""
    host = re.sub(r"^[a-z]+://", "", url).split("/", 1)[0]
    match = _REGION_IN_URL.search(host)
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


def queue_stats(sqs: Any, url: str) -> Dict[str, Any]:
    """Depths of a queue (and of its dead-letter queue when a redrive policy names one)."""
    client = sqs.meta.client
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    stats: Dict[str, Any] = {
        "url": url,
        "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        "delayed": int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
    }
    policy = attributes.get("RedrivePolicy")
    if policy:
        redrive = json.loads(policy)
        dlq_url = queue_url_of_arn(client, redrive["deadLetterTargetArn"])
        dlq = client.get_queue_attributes(
            QueueUrl=dlq_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )["Attributes"]
        stats["max_receive_count"] = int(redrive.get("maxReceiveCount", 0))
        stats["dead_letter_url"] = dlq_url
        stats["dead_letter"] = int(dlq.get("ApproximateNumberOfMessages", 0)) + int(
            dlq.get("ApproximateNumberOfMessagesNotVisible", 0)
        )
    return stats
