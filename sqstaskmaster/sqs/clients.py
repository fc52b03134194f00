"""A worker's SQS clients, bounded so that no request outlives a heartbeat period.

botocore's defaults (60 s to connect, 60 s per read, several tries) let a
heartbeat stuck on a dead connection hang past the visibility timeout, and
later heartbeats wait behind it. A worker process makes its clients here:
one that long-polls (its read timeout also covers the poll's wait), and one
with the short bound for everything else, to which :func:`bind` moves each
received message (its heartbeats, hand-back and delete).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

from .facts import sqs_resource

logger = logging.getLogger(__name__)

#: Tries of one SQS request a worker makes, unless boto3 is configured with its own
#: (``AWS_MAX_ATTEMPTS``, or ``max_attempts`` in the profile); the first counts.
REQUEST_TRIES = 3
#: The longest pause botocore makes before a retry (seconds; its backoff doubles from 1 s).
MAX_RETRY_PAUSE_S = 20.0
#: The bounds of one try's connect and read timeouts (seconds).
CONNECT_TIMEOUT_S = (1.0, 5.0)
READ_TIMEOUT_S = (2.0, 20.0)


def retry_pauses_s(tries: int) -> float:
    """The longest botocore can pause between ``tries`` tries of one request, in all
    (1 s, then 2 s, 4 s, ... before each retry, each at most :data:`MAX_RETRY_PAUSE_S`)."""
    return sum(min(2.0**index, MAX_RETRY_PAUSE_S) for index in range(max(tries - 1, 0)))


def request_timeouts(heartbeat_s: float, tries: int = REQUEST_TRIES) -> Tuple[float, float]:
    """``(connect, read)`` timeouts of one try, so that ``tries`` tries of a request
    end within one heartbeat period of ``heartbeat_s`` seconds.

    So a heartbeat stuck on a dead connection fails (and is logged) in time
    for the next one to be made before the visibility runs out. Each is kept
    within its bounds: for short periods (under 12 s with three tries) the
    lower bounds win over the fit.
    """
    per_try = max(heartbeat_s - retry_pauses_s(tries), 0.0) / max(tries, 1)
    low, high = CONNECT_TIMEOUT_S
    connect = min(max(per_try / 3, low), high)
    low, high = READ_TIMEOUT_S
    return connect, min(max(per_try - connect, low), high)


def client_config(heartbeat_s: float, poll_wait_s: float = 0, tries: int = REQUEST_TRIES) -> Any:
    """The botocore ``Config`` of a worker's SQS clients (see :func:`request_timeouts`).

    ``poll_wait_s`` is added to the read timeout of the client that long-polls,
    whose answer may come that much later. The retry mode stays boto3's.
    """
    from botocore.config import Config

    connect, read = request_timeouts(heartbeat_s, tries)
    return Config(
        connect_timeout=connect,
        read_timeout=read + poll_wait_s,
        retries={"total_max_attempts": tries},
    )


def configured_tries(session: Any) -> Optional[int]:
    """The tries of one request boto3 is configured with (``AWS_MAX_ATTEMPTS``,
    ``max_attempts``), or None when it is not."""
    core = getattr(session, "_session", None)
    try:
        value = None if core is None else core.get_config_variable("max_attempts")
        return None if value is None else max(int(value), 1)
    except (TypeError, ValueError) as error:
        logger.warning("boto3's max_attempts is not a number (%r); using %d", error, REQUEST_TRIES)
        return None


def worker_clients(
    session: Any, endpoint_url: Optional[str], heartbeat_s: float, poll_wait_s: float
) -> Tuple[Any, Any]:
    """A worker's ``(resource, client)``: the resource polls, the client does the rest.

    Both are bounded (:func:`client_config`, with boto3's configured tries if
    any); the resource's read timeout also covers the long poll, and
    :func:`bind` moves received messages to the client, so that their
    heartbeats, hand-backs and deletes get the short bound.
    """
    if session is None:
        import boto3

        session = boto3.session.Session()
    tries = configured_tries(session) or REQUEST_TRIES
    polling = client_config(heartbeat_s, poll_wait_s, tries)
    resource = sqs_resource(session, endpoint_url, polling)
    client = session.client(
        "sqs", endpoint_url=endpoint_url, config=client_config(heartbeat_s, tries=tries)
    )
    return resource, client


def bind(messages: Any, client: Any) -> None:
    """Make ``client`` the one every boto3 ``Message`` of ``messages`` calls SQS with."""
    for message in messages:
        meta: Any = getattr(message, "meta", None)
        if client is not None and getattr(meta, "client", None) is not None:
            meta.client = client
