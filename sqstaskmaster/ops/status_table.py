"""The task status table's reading side: see tasks, cancel them, wait for their results.

Workers write one item per task message (:mod:`sqstaskmaster.ops.status_items`
has the attributes); :class:`StatusTable` reads them with a low-level
DynamoDB client, creates the table, and asks for cancels::

    table = StatusTable("tasks")
    status = table.wait(message_id, timeout=3600)
    print(status.state, status.value, status.error)

Every call is one of GetItem (consistent), Query on the state index, or
UpdateItem (cancel); nothing scans the table. Items expire
:data:`~sqstaskmaster.ops.status_items.DEFAULT_TTL_DAYS` days after their last
write (each write sets ``expires_at``; DynamoDB's TTL deletes them).
"""

from __future__ import annotations

import getpass
import logging
import re
import socket
import time
from typing import Any, Dict, List, Optional

from ..errors import StatusTableExistsError, StatusTableMissingError, StatusWaitTimeoutError
from ..sqs.facts import error_code, make_session
from .status_items import (
    CONTINUED,
    DEFAULT_TTL_DAYS,
    STATE_INDEX,
    STATES,
    TTL_ATTRIBUTE,
    table_definition,
    to_attribute,
)
from .status_items import key as item_key
from .task_status import STALE_HEARTBEAT_S, TaskStatus

__all__ = ["STALE_HEARTBEAT_S", "StatusTable", "TaskStatus"]

logger = logging.getLogger(__name__)

#: The longest :meth:`StatusTable.create` waits for a new table to become ACTIVE (seconds).
CREATE_WAIT_S = 300.0
#: The most continuation messages followed from one message (a guard against a loop).
MAX_CHAIN = 10_000
_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_MISSING = "ResourceNotFoundException"
_IN_USE = "ResourceInUseException"


class StatusTable:
    """A task status table in DynamoDB, read (and cancelled through) with a low-level client.

    ``client`` is a boto3 DynamoDB client; without one it is made from
    ``session`` (else a new boto3 session in ``region_name``, or boto3's
    region) with ``endpoint_url`` (else boto3's: ``AWS_ENDPOINT_URL_DYNAMODB``,
    ``AWS_ENDPOINT_URL``, the profile's). Making it calls nothing.
    """

    def __init__(
        self,
        name: str,
        *,
        client: Any = None,
        session: Any = None,
        endpoint_url: Optional[str] = None,
        region_name: Optional[str] = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"not a DynamoDB table name: {name!r} (3 to 255 letters, digits, '_', '-', '.')"
            )
        self.name = name
        #: The session the client was made from (None when a client was given).
        self.session = session if client is None else None
        if client is None:
            session = session if session is not None else make_session(region_name)
            client = session.client("dynamodb", endpoint_url=endpoint_url, region_name=region_name)
        self.client = client

    @property
    def region(self) -> Optional[str]:
        """The client's region."""
        return getattr(getattr(self.client, "meta", None), "region_name", None)

    def __repr__(self) -> str:
        return f"StatusTable({self.name!r}, region={self.region!r})"

    # -- creating ----------------------------------------------------------------------

    def create(self, timeout_s: float = CREATE_WAIT_S) -> None:
        """Create the table (on-demand billing, the state index), wait until it is ACTIVE
        (at most ``timeout_s`` seconds), then turn on DynamoDB's TTL on ``expires_at``.

        Items expire DEFAULT_TTL_DAYS (14) days after their last write: the
        worker sets ``expires_at`` at each write. Raises
        :class:`~sqstaskmaster.errors.StatusTableExistsError` when a table of
        that name exists; botocore's ``WaiterError`` when it is not ACTIVE in time.
        """
        try:
            self.client.create_table(**table_definition(self.name))
        except Exception as error:
            if error_code(error) == _IN_USE:
                raise StatusTableExistsError(self.name, self.region) from error
            raise
        delay_s = 2.0
        self.client.get_waiter("table_exists").wait(
            TableName=self.name,
            WaiterConfig={"Delay": delay_s, "MaxAttempts": max(int(timeout_s / delay_s), 1)},
        )
        self._call(
            "update_time_to_live",
            TableName=self.name,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )
        logger.info("status table %s created in region %s", self.name, self.region)

    # -- reading -----------------------------------------------------------------------

    def get(self, message_id: str, follow: bool = True) -> Optional[TaskStatus]:
        """The status of ``message_id``'s item; None when the table has none.

        With ``follow``, a ``continued`` item leads to its ``continued_as``
        message, and so on: the status returned is the latest message's, its
        ``chain`` the ids from ``message_id`` to it. A continuation no worker
        has received yet has no item: the ``continued`` one is returned then.
        """
        status = self._read(message_id)
        if status is None or not follow:
            return status
        chain = [message_id]
        while status.state == CONTINUED and status.continued_as and len(chain) < MAX_CHAIN:
            following = self._read(status.continued_as)
            if following is None or following.message_id in chain:
                break
            status = following
            chain.append(status.message_id)
        status.chain = chain
        return status

    def list(
        self, state: Optional[str] = None, task: Optional[str] = None, limit: int = 100
    ) -> List[TaskStatus]:
        """At most ``limit`` items, newest (``updated_at``) first: those in ``state`` (one of
        :data:`~sqstaskmaster.ops.status_items.STATES`; None: any), of ``task`` if given.

        One Query of the state index per state (its pages until ``limit``
        match); never a Scan. Items that only carry a cancel request (no
        worker has written them) are in no state and not listed.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {', '.join(STATES)}")
        states = STATES if state is None else (state,)
        found: List[TaskStatus] = []
        for one in states:
            found.extend(self._query_state(one, task, limit))
        found.sort(key=lambda status: status.updated_at or 0, reverse=True)
        return found[:limit]

    def _query_state(self, state: str, task: Optional[str], limit: int) -> List[TaskStatus]:
        request: Dict[str, Any] = {
            "TableName": self.name,
            "IndexName": STATE_INDEX,
            "KeyConditionExpression": "#state = :state",
            "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": {":state": to_attribute(state)},
            "ScanIndexForward": False,
        }
        if task is None:
            request["Limit"] = limit  # else Limit counts items before the filter drops some
        else:  # pages of a bounded size (the filter applies after the read)
            request["Limit"] = max(4 * limit, 200)
            request["FilterExpression"] = "#task = :task"
            request["ExpressionAttributeNames"]["#task"] = "task"
            request["ExpressionAttributeValues"][":task"] = to_attribute(task)
        found: List[TaskStatus] = []
        while len(found) < limit:
            page = self._call("query", **request)
            found.extend(self._statuses(page.get("Items", ())))
            if "LastEvaluatedKey" not in page:
                break
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return found[:limit]

    # -- cancelling and waiting --------------------------------------------------------

    def cancel(self, message_id: str, by: Optional[str] = None) -> TaskStatus:
        """Ask for ``message_id``'s task to be cancelled; returns the status of the item marked
        last (the latest message of a continued task), with the ids marked as its ``chain``.

        Sets ``cancel_requested_at`` (now) and ``cancel_requested_by`` (``by``,
        default ``user@host``). A message no worker has received yet gets an
        item with just that (and ``expires_at``): the worker that receives it
        deletes it unrun. A ``continued`` item's continuation is marked too. A
        task that already ended is marked all the same, which changes nothing.
        """
        by = by if by is not None else who()
        chain: List[str] = []
        target: Optional[str] = message_id
        status: Optional[TaskStatus] = None
        while target is not None and target not in chain and len(chain) < MAX_CHAIN:
            status = self._mark(target, by)
            chain.append(target)
            target = status.continued_as if status.state == CONTINUED else None
        assert status is not None
        status.chain = chain
        return status

    def _mark(self, message_id: str, by: str) -> TaskStatus:
        now = time.time()
        response = self._call(
            "update_item",
            TableName=self.name,
            Key=item_key(message_id),
            UpdateExpression="SET cancel_requested_at = :now, cancel_requested_by = :by, "
            "#ttl = if_not_exists(#ttl, :expires)",
            ExpressionAttributeNames={"#ttl": TTL_ATTRIBUTE},
            ExpressionAttributeValues={
                ":now": to_attribute(round(now, 3)),
                ":by": to_attribute(by),
                ":expires": to_attribute(int(now) + DEFAULT_TTL_DAYS * 86400),
            },
            ReturnValues="ALL_NEW",
        )
        status = TaskStatus.from_item(response["Attributes"])
        logger.info(
            "status table %s: cancel requested for message %s (state %s) by %s",
            self.name,
            message_id,
            status.state or "not received yet",
            by,
        )
        return status

    def wait(
        self, message_id: str, timeout: Optional[float] = None, poll_s: float = 1.0
    ) -> TaskStatus:
        """Poll :meth:`get` (following continuations) every ``poll_s`` seconds until the task
        has ended (a state in :data:`~sqstaskmaster.ops.status_items.ENDED`); returns it.

        Raises :class:`~sqstaskmaster.errors.StatusWaitTimeoutError` (a
        ``TimeoutError``) after ``timeout`` seconds (None: no limit), naming the
        last state seen. ``failed``, ``timed_out`` and ``refused`` end the wait,
        though SQS may still deliver the message again: a later receive turns
        it ``running`` (``receive_count`` says which receive it is).
        """
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.get(message_id, follow=True)
            if status is not None and status.ended:
                return status
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                last = "no item (no worker has received it)" if status is None else status.state
                raise StatusWaitTimeoutError(message_id, float(timeout or 0), str(last))
            time.sleep(poll_s if left is None else min(poll_s, left))

    # -- DynamoDB ----------------------------------------------------------------------

    def _read(self, message_id: str) -> Optional[TaskStatus]:
        response = self._call(
            "get_item", TableName=self.name, Key=item_key(message_id), ConsistentRead=True
        )
        item = response.get("Item")
        return None if item is None else TaskStatus.from_item(item)

    def _statuses(self, items: Any) -> List[TaskStatus]:
        return [TaskStatus.from_item(item) for item in items]

    def _call(self, operation: str, **request: Any) -> Any:
        """One DynamoDB call; a missing table raises StatusTableMissingError."""
        try:
            return getattr(self.client, operation)(**request)
        except Exception as error:
            if error_code(error) == _MISSING:
                raise StatusTableMissingError(self.name, self.region) from error
            raise


def who() -> str:
    """``user@host`` of this process (``?`` for a user the system cannot name)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError) as error:  # no login name and no passwd entry (a container)
        logger.debug("cancel: no user name for uid (%s); using '?'", error)
        user = "?"
    return f"{user}@{socket.gethostname()}"
