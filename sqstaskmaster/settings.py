"""WorkerSettings: a worker's settings, one frozen object checked in one place.

Built by ``Worker(...)`` from its keywords and by the CLI from its options
(through :meth:`WorkerSettings.replace`); an invalid value raises ValueError
naming it, at construction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .retry import RetryPolicy
from .sqs import MAX_POLL_WAIT_S, MAX_VISIBILITY_S

DEFAULT_SQS_TIMEOUT_S = 30
DEFAULT_HARD_TIMEOUT_S = 4 * 60 * 60
DEFAULT_POLL_WAIT_S = 2
DEFAULT_SHUTDOWN_GRACE_S = 25.0


@dataclass(frozen=True)
class WorkerSettings:
    """Timeouts are seconds; see :class:`~sqstaskmaster.worker.Worker` for each one's meaning."""

    queue_url: Optional[str] = None
    sqs_timeout: int = DEFAULT_SQS_TIMEOUT_S
    alarm_timeout: Optional[int] = None
    hard_timeout: int = DEFAULT_HARD_TIMEOUT_S
    isolate: bool = True
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    poll_wait_s: int = DEFAULT_POLL_WAIT_S
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    burst_tasks: Optional[int] = None
    burst_idle_s: Optional[float] = None
    processes: Union[int, str] = 1
    endpoint_url: Optional[str] = None

    def __post_init__(self) -> None:
        self.check()

    @property
    def heartbeat_s(self) -> int:
        """The heartbeat period (``alarm_timeout``) in seconds."""
        if self.alarm_timeout is not None:
            return self.alarm_timeout
        return max(1, self.sqs_timeout // 3)

    def check(self) -> None:
        """Raise ValueError, naming the value, for settings SQS or the handler would refuse."""
        if not 1 <= self.sqs_timeout <= MAX_VISIBILITY_S:
            raise ValueError(
                f"sqs_timeout {self.sqs_timeout!r} s: must be between 1 and {MAX_VISIBILITY_S}"
            )
        if self.heartbeat_s + 1 >= self.sqs_timeout:
            raise ValueError(
                f"alarm_timeout {self.heartbeat_s} s must be at least 2 s under sqs_timeout "
                f"{self.sqs_timeout} s, so each heartbeat lands before the visibility runs out"
            )
        if self.hard_timeout <= 0:
            raise ValueError(f"hard_timeout must be > 0 seconds, got {self.hard_timeout!r}")
        if not 0 <= self.poll_wait_s <= MAX_POLL_WAIT_S:
            raise ValueError(f"poll_wait_s {self.poll_wait_s!r}: must be between 0 and 20")
        if self.shutdown_grace_s < 0:
            raise ValueError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s!r}")
        if not isinstance(self.retry, RetryPolicy):
            raise ValueError(f"retry must be a RetryPolicy, got {self.retry!r}")

    def replace(self, **changes: Any) -> WorkerSettings:
        """A checked copy with ``changes``; a None value keeps the current one."""
        names = {item.name for item in dataclasses.fields(self)}
        for name in changes:
            if name not in names:
                raise TypeError(f"Worker has no setting {name!r}; settings are {sorted(names)}")
        kept = {name: value for name, value in changes.items() if value is not None}
        return dataclasses.replace(self, **kept)


def setting_property(name: str) -> Any:
    """A property of an object with ``settings``: reads it, and writes a checked copy."""

    def get(owner: Any) -> Any:
        return getattr(owner.settings, name)

    def set_(owner: Any, value: Any) -> None:
        owner.settings = owner.settings.replace(**{name: value})

    return property(get, set_, doc=f"The ``{name}`` setting (see WorkerSettings).")
