"""SQS facts the worker plans around: its limits, the 12-hour visibility budget, its errors.

SQS keeps a message invisible at most 12 hours (:data:`MAX_VISIBILITY_S`)
counted from its first receive (``ApproximateFirstReceiveTimestamp``), and
refuses a visibility change that reaches past that. A task therefore needs
its hard timeout plus :data:`STOP_MARGIN_S` (to stop it and settle its
message) inside what is left; at start-up the worker also allows
:data:`START_SLACK_S` between a message's first receive and its task's start.

This module imports nothing of the package: it sits at the bottom.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Optional

MAX_VISIBILITY_S = 12 * 60 * 60
MAX_POLL_WAIT_S = 20
# Seconds kept past a hard timeout to stop the task (SIGTERM, kill grace,
# SIGKILL) and set its message's retry delay before SQS's limit.
STOP_MARGIN_S = 30
# Seconds a first-received message may wait before its task starts.
START_SLACK_S = 30
# The longest hard timeout that fits a message its worker starts promptly.
LONGEST_HARD_TIMEOUT_S = MAX_VISIBILITY_S - STOP_MARGIN_S - START_SLACK_S


# -- the 12-hour budget ------------------------------------------------------------


def budget_left_s(message: Any, since: Optional[float] = None) -> Optional[float]:
    """Seconds of visibility SQS still grants ``message`` (may be negative).

    Counted from its ``ApproximateFirstReceiveTimestamp`` (milliseconds since
    the epoch); without that attribute from ``since`` (a ``time.time()``
    value), and None when neither is known.
    """
    attributes = getattr(message, "attributes", None) or {}
    stamp: Any = attributes.get("ApproximateFirstReceiveTimestamp")
    try:
        first_receive = int(stamp) / 1000.0
    except (TypeError, ValueError):
        if since is None:
            return None
        first_receive = since
    return MAX_VISIBILITY_S - (time.time() - first_receive)


def capped_visibility(seconds: float, left: Optional[float]) -> int:
    """``seconds`` as a whole visibility timeout that SQS accepts with ``left`` seconds left."""
    wanted = int(min(seconds, MAX_VISIBILITY_S))
    if left is None:
        return max(wanted, 0)
    return max(min(wanted, int(left)), 0)


def needed_s(hard_timeout: float) -> float:
    """Seconds of visibility a task with this hard timeout needs from its start."""
    return hard_timeout + STOP_MARGIN_S


def fits(hard_timeout: float, left: float) -> bool:
    """Whether a task with this hard timeout can run in ``left`` seconds of budget."""
    return needed_s(hard_timeout) <= left


def hard_timeout_problem(hard_timeout: float, setting: str, where: str) -> Optional[str]:
    """Why ``hard_timeout`` can never fit; None if it can.

    ``setting`` names it in the text, ``where`` says where it is set.
    """
    if hard_timeout <= LONGEST_HARD_TIMEOUT_S:
        return None
    return (
        f"{setting} of {hard_timeout} s can never fit in SQS's 12-hour visibility limit "
        f"({MAX_VISIBILITY_S} s from a message's first receive): a task needs its hard timeout "
        f"plus {STOP_MARGIN_S} s to stop it and settle its message, and may start up to "
        f"{START_SLACK_S} s after the receive, so the longest hard timeout is "
        f"{LONGEST_HARD_TIMEOUT_S} s. Lower it ({where}) to at most {LONGEST_HARD_TIMEOUT_S} s, "
        "or split the task"
    )


def hard_timeouts_problem(
    default_s: float, per_task_s: Mapping[str, Optional[float]]
) -> Optional[str]:
    """The first problem of a worker's default hard timeout and its tasks' own ones, if any."""
    problem = hard_timeout_problem(
        default_s, "the worker's hard_timeout", "--hard-timeout, or Worker(hard_timeout=...)"
    )
    for name, seconds in per_task_s.items():
        if problem is None and seconds is not None:
            problem = hard_timeout_problem(
                seconds, f"task {name!r}'s hard_timeout", "where the task is registered"
            )
    return problem


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
QUEUE_MISSING_CODES = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
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
