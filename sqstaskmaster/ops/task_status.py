"""One task message's status as read from the status table: :class:`TaskStatus`.

Built from a status item (:mod:`sqstaskmaster.ops.status_items` lists the
attributes); :class:`~sqstaskmaster.ops.status_table.StatusTable` returns
them. Times are epoch seconds, as stored; :meth:`TaskStatus.to_json` adds
ISO-8601 UTC strings for people.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
from typing import Any, Dict, List, Mapping, Optional

from .status_items import ATTRIBUTES, ENDED, RUNNING, TIME_ATTRIBUTES, from_item

logger = logging.getLogger(__name__)

#: A running task whose last heartbeat write is older than this is shown as stale
#: (seconds). Workers write at every heartbeat, far more often.
STALE_HEARTBEAT_S = 120.0


@dataclasses.dataclass
class TaskStatus:
    """The status item of one task message, one field per attribute (None when absent).

    ``chain`` lists the message ids from the task's first message read to this
    one when :meth:`StatusTable.get <sqstaskmaster.ops.status_table.StatusTable.get>`
    followed continuations (else just this message's id); ``extra`` holds
    attributes this version does not know. An item that only carries a cancel
    request (no worker has received its message yet) has no ``state``.
    """

    message_id: str
    task: Optional[str] = None
    queue: Optional[str] = None
    state: Optional[str] = None
    first_message_id: Optional[str] = None
    continuation: Optional[int] = None
    continued_as: Optional[str] = None
    host: Optional[str] = None
    pid: Optional[int] = None
    ecs_task_arn: Optional[str] = None
    receive_count: Optional[int] = None
    started_at: Optional[float] = None
    heartbeat_at: Optional[float] = None
    ended_at: Optional[float] = None
    updated_at: Optional[float] = None
    duration_s: Optional[float] = None
    progress: Optional[float] = None
    progress_note: Optional[str] = None
    result: Optional[str] = None
    result_dropped: Optional[str] = None
    error_type: Optional[str] = None
    error: Optional[str] = None
    kwargs: Optional[str] = None
    cancel_requested_at: Optional[float] = None
    cancel_requested_by: Optional[str] = None
    expires_at: Optional[float] = None
    chain: List[str] = dataclasses.field(default_factory=list)
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.chain:
            self.chain = [self.message_id]

    @classmethod
    def from_item(cls, item: Mapping[str, Mapping[str, Any]]) -> TaskStatus:
        """A status from an item in DynamoDB's attribute-value form (as GetItem returns it)."""
        fields = from_item(item)
        known = {name: fields.pop(name) for name in ATTRIBUTES if name in fields}
        if not isinstance(known.get("message_id"), str):
            raise ValueError(f"a status item without a message_id: {sorted(item)}")
        return cls(**known, extra=fields)

    @property
    def ended(self) -> bool:
        """Whether the state is one of :data:`~sqstaskmaster.ops.status_items.ENDED`."""
        return self.state in ENDED

    @property
    def running(self) -> bool:
        """Whether a worker runs this message's task now (as of its last write)."""
        return self.state == RUNNING

    @property
    def value(self) -> Any:
        """The task's return value (``result`` parsed from JSON); None when not stored."""
        if self.result is None:
            return None
        try:
            return json.loads(self.result)
        except ValueError as error:
            logger.warning(
                "status of message %s: its result is not JSON (%s); value is None",
                self.message_id,
                error,
            )
            return None

    @property
    def cancel_requested(self) -> bool:
        """Whether someone asked to cancel this message's task."""
        return self.cancel_requested_at is not None

    @property
    def elapsed_s(self) -> Optional[float]:
        """Seconds from ``started_at`` to ``ended_at`` (while it runs: to now); None before
        it started. A message handed back or continued counts to its last write."""
        return self.elapsed_s_at(time.time())

    @property
    def heartbeat_age_s(self) -> Optional[float]:
        """Seconds since the worker's last heartbeat write (before the first one: since its
        last write) while it runs; None when it does not run (ended, handed back,
        continued, not received yet)."""
        return self.heartbeat_age_s_at(time.time())

    def elapsed_s_at(self, now: Optional[float] = None) -> Optional[float]:
        """:attr:`elapsed_s` as of ``now`` (epoch seconds; None: now)."""
        if self.started_at is None:
            return None
        if self.running:
            end = time.time() if now is None else now
        elif self.ended_at is not None:
            end = self.ended_at
        else:
            end = self.updated_at if self.updated_at is not None else self.started_at
        return max(end - self.started_at, 0.0)

    def heartbeat_age_s_at(self, now: Optional[float] = None) -> Optional[float]:
        """:attr:`heartbeat_age_s` as of ``now`` (epoch seconds; None: now)."""
        last = self.heartbeat_at if self.heartbeat_at is not None else self.updated_at
        if not self.running or last is None:
            return None
        return max((time.time() if now is None else now) - last, 0.0)

    def stale(self, threshold_s: float = STALE_HEARTBEAT_S, now: Optional[float] = None) -> bool:
        """Whether it runs with a heartbeat older than ``threshold_s`` seconds: its worker
        may be gone (killed, lost), the message then comes back after its visibility timeout."""
        age = self.heartbeat_age_s_at(now)
        return age is not None and age > threshold_s

    def to_json(self, now: Optional[float] = None) -> Dict[str, Any]:
        """A JSON-ready dict: every attribute (None when absent), each time also as
        ``NAME_iso`` (ISO-8601, UTC), ``chain``, ``value`` and the derived figures."""
        now = time.time() if now is None else now
        out: Dict[str, Any] = {}
        for name in ATTRIBUTES:
            out[name] = getattr(self, name)
            if name in TIME_ATTRIBUTES:
                out[f"{name}_iso"] = iso_utc(out[name])
        out["chain"] = list(self.chain)
        out["value"] = self.value
        out["elapsed_s"] = _rounded(self.elapsed_s_at(now))
        out["heartbeat_age_s"] = _rounded(self.heartbeat_age_s_at(now))
        out["cancel_requested"] = self.cancel_requested
        if self.extra:
            out["extra"] = dict(self.extra)
        return out


def iso_utc(epoch_s: Optional[float]) -> Optional[str]:
    """``epoch_s`` as ISO-8601 in UTC (``2026-03-01T12:00:00Z``, milliseconds if any)."""
    if epoch_s is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch_s, tz=datetime.timezone.utc)
    spec = "milliseconds" if moment.microsecond else "seconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _rounded(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds, 3)
