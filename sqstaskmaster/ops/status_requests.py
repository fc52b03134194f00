"""A worker's requests to its task status table, and what it does when they fail.

The worker's DynamoDB client is bounded (:func:`writer_client_config`): a
request that hangs ends within a few seconds, and a throttled one is tried
once more. A failure is never raised to a task: :class:`FailureLog` logs it
once per kind of failure (``timeout``, ``slow``, ``unreachable``,
``throttled``, ``no_table``, ``denied``, ``refused``, ``error``), counts every one in
``sqstaskmaster_status_table_failures_total{kind}``, and says so when the
table answers again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import metrics
from .status_items import KEY, key, to_item

logger = logging.getLogger(__name__)

#: Seconds to connect to DynamoDB, and to wait for its answer, per try.
CONNECT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 2.0
#: Tries per request (a throttled or timed-out request is tried once more).
TRIES = 2
#: The most items one BatchWriteItem / BatchGetItem takes.
MAX_BATCH_WRITE = 25
MAX_BATCH_GET = 100
#: An answer slower than this (s) counts as a failure of kind ``slow``.
SLOW_ANSWER_S = 1.0
#: Kinds of failure after which the table is left alone a while (down, unreachable, slow).
PAUSING_KINDS = frozenset({"timeout", "unreachable", "no_table", "denied", "slow"})


class SlowAnswer(Exception):
    """A request the table answered, but slower than :data:`SLOW_ANSWER_S`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"answered in {seconds:.1f} s (over {SLOW_ANSWER_S:g} s)")


def writer_client_config() -> Any:
    """The botocore Config of a worker's status table client (bounded, see the module doc)."""
    from botocore.config import Config

    return Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"total_max_attempts": TRIES, "mode": "standard"},
    )


def writer_client(session: Any = None) -> Any:
    """A worker's DynamoDB client (bounded): from ``session``, else boto3's default session;
    its endpoint from boto3's configuration (``AWS_ENDPOINT_URL_DYNAMODB``, ...)."""
    import boto3

    session = session or boto3.session.Session()
    return session.client("dynamodb", config=writer_client_config())


def bounded_client(client: Any, session: Any = None) -> Any:
    """``client`` if its timeouts are a worker's (or shorter), else a client like it (its
    region and endpoint; ``session``'s credentials, else boto3's default ones) that has them."""
    config = getattr(getattr(client, "meta", None), "config", None)
    connect = getattr(config, "connect_timeout", None) or 60
    read = getattr(config, "read_timeout", None) or 60
    if connect <= CONNECT_TIMEOUT_S and read <= READ_TIMEOUT_S:
        return client
    import boto3

    session = session or boto3.session.Session()
    logger.info(
        "the status table's client waits up to %s s for an answer: the worker writes through "
        "a client like it with its own short timeouts",
        read,
    )
    return session.client(
        "dynamodb",
        region_name=client.meta.region_name,
        endpoint_url=client.meta.endpoint_url,
        config=writer_client_config(),
    )


def failure_kind(error: BaseException) -> str:
    """What kind of failure ``error`` is (the metric's ``kind`` label)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    if isinstance(error, SlowAnswer):
        return "slow"
    if isinstance(error, (ReadTimeoutError, ConnectTimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(error, (EndpointConnectionError, ConnectionError, OSError)):
        return "unreachable"
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if "Throttl" in code or code in ("ProvisionedThroughputExceededException",):
            return "throttled"
        if code == "ResourceNotFoundException":
            return "no_table"
        if code in ("AccessDeniedException", "UnrecognizedClientException"):
            return "denied"
        return "refused"
    return "error"


class FailureLog:
    """A worker's record of its status table's failures: logged once per kind, all counted."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.counts: Dict[str, int] = {}
        self._failing = 0  # failures since the last request that worked
        self._lock = threading.Lock()

    def failed(self, doing: str, error: BaseException) -> str:
        """Record a failed request (``doing`` names it); returns its kind."""
        kind = failure_kind(error)
        metrics.status_table_failed(kind)
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            first = self.counts[kind] == 1
            self._failing += 1
        if first:
            logger.warning(
                "status table %s: %s failed (%s: %s); tasks are not affected. Failures of this "
                "kind (%s) are counted in sqstaskmaster_status_table_failures_total, and not "
                "logged again",
                self.table,
                doing,
                type(error).__name__,
                error,
                kind,
            )
        else:
            logger.debug(
                "status table %s: %s failed again (%s): %r", self.table, doing, kind, error
            )
        return kind

    def worked(self) -> None:
        """A request worked: after failures, say the table answers again."""
        with self._lock:
            failing, self._failing = self._failing, 0
        if failing:
            logger.info(
                "status table %s answers again (after %d failed request(s))", self.table, failing
            )


def update(
    client: Any,
    table: str,
    message_id: str,
    fields: Mapping[str, Any],
    remove: Sequence[str] = (),
    return_item: bool = False,
) -> Optional[Dict[str, Any]]:
    """``UpdateItem``: SET ``fields`` (None values and the key skipped), REMOVE ``remove``; the item
    after it (DynamoDB's attribute-value form) if ``return_item``."""
    names: Dict[str, str] = {}
    values: Dict[str, Any] = {}
    sets: List[str] = []
    settable = {name: value for name, value in fields.items() if name != KEY}
    for index, (name, value) in enumerate(to_item(settable).items()):
        names[f"#a{index}"] = name
        values[f":v{index}"] = value
        sets.append(f"#a{index} = :v{index}")
    removes: List[str] = []
    for index, name in enumerate(remove):
        names[f"#r{index}"] = name
        removes.append(f"#r{index}")
    expression = "SET " + ", ".join(sets)
    if removes:
        expression += " REMOVE " + ", ".join(removes)
    answer = client.update_item(
        TableName=table,
        Key=key(message_id),
        UpdateExpression=expression,
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
        ReturnValues="ALL_NEW" if return_item else "NONE",
    )
    return answer.get("Attributes") if return_item else None


def put_batch(client: Any, table: str, items: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """``BatchWriteItem`` of up to 25 whole items (plain fields); returns those DynamoDB
    left unprocessed (to be tried again)."""
    requests = [{"PutRequest": {"Item": to_item(item)}} for item in items]
    answer = client.batch_write_item(RequestItems={table: requests})
    left = (answer.get("UnprocessedItems") or {}).get(table) or []
    unprocessed = {entry["PutRequest"]["Item"][KEY]["S"] for entry in left if "PutRequest" in entry}
    return [dict(item) for item in items if item[KEY] in unprocessed]


def get_batch(
    client: Any, table: str, message_ids: Iterable[str], attributes: Sequence[str]
) -> Dict[str, Dict[str, Any]]:
    """``BatchGetItem`` (strongly consistent) of the items of ``message_ids`` that exist,
    ``attributes`` of each, by message id (DynamoDB's attribute-value form)."""
    wanted = list(dict.fromkeys(message_ids))
    found: Dict[str, Dict[str, Any]] = {}
    names = {f"#p{index}": name for index, name in enumerate((KEY, *attributes))}
    for start in range(0, len(wanted), MAX_BATCH_GET):
        request: Dict[str, Any] = {
            table: {
                "Keys": [key(message_id) for message_id in wanted[start : start + MAX_BATCH_GET]],
                "ConsistentRead": True,
                "ProjectionExpression": ", ".join(names),
                "ExpressionAttributeNames": names,
            }
        }
        for _ in range(3):  # unprocessed keys (throttling) are asked again, twice at most
            answer = client.batch_get_item(RequestItems=request)
            for item in (answer.get("Responses") or {}).get(table) or []:
                found[item[KEY]["S"]] = item
            request = answer.get("UnprocessedKeys") or {}
            if not request:
                break
    return found


def cancel_mark(item: Optional[Mapping[str, Any]]) -> Optional[Tuple[float, str]]:
    """(when, by whom) if the item (attribute-value form) carries a cancel request, else None."""
    if not item or "cancel_requested_at" not in item:
        return None
    when = float(item["cancel_requested_at"].get("N", "0"))
    by = item.get("cancel_requested_by", {}).get("S", "someone")
    return when, by
