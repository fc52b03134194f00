"""WorkerSettings: a worker's settings, one frozen object checked in one place.

Built by ``Worker(...)`` from its keywords and by the CLI from its options
(through :meth:`WorkerSettings.replace`); an invalid value raises ValueError
naming it, at construction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..sqs.facts import MAX_POLL_WAIT_S, MAX_VISIBILITY_S, single_hard_timeout_problem
from ..worker.retry import RetryPolicy

DEFAULT_SQS_TIMEOUT_S = 30
DEFAULT_HARD_TIMEOUT_S = 4 * 60 * 60
DEFAULT_POLL_WAIT_S = 2
DEFAULT_SHUTDOWN_GRACE_S = 25.0
# One message per poll: the others of a prefetch wait behind a task that may
# run for hours, while another worker could run them (README, Performance).
DEFAULT_PREFETCH = 1


@dataclass(frozen=True)
class WorkerSettings:
    """A worker's settings; timeouts are seconds.

    ``sqs_timeout`` is the visibility each heartbeat sets, ``alarm_timeout``
    the heartbeat period (default a third of ``sqs_timeout``),
    ``hard_timeout`` the default per-task limit. ``isolate``: run each task in
    a forked child (else "signal mode"). ``shutdown_grace_s``: how long a warm
    stop lets a running task go on. ``poll_wait_s`` is one poll's long-poll
    wait (shutdown while idle waits at most this long). ``burst_tasks`` /
    ``burst_idle_s`` stop the worker after that many tasks, or after that many
    seconds without a message. ``processes``: worker processes (or
    ``"auto"``). ``endpoint_url`` overrides the SQS endpoint.
    ``ecs_protection`` (``"auto"``, ``"on"``, ``"off"``): ECS task scale-in
    protection while a task runs (:mod:`sqstaskmaster.ops.ecs`); auto is on when
    ``ECS_AGENT_URI`` is set. ``metrics_port`` serves Prometheus metrics on
    ``metrics_host`` (needs ``sqstaskmaster[metrics]``; :mod:`sqstaskmaster.ops.metrics`).
    ``prefetch`` (1 to 10): messages one poll receives; those waiting their
    turn are kept invisible by batched heartbeats (:mod:`sqstaskmaster.worker.intake`).
    ``max_tasks_per_child``: isolated tasks one forked child runs in a row
    (:mod:`sqstaskmaster.run.reuse_parent`); 1 forks afresh for each task.
    """

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
    #: ECS task scale-in protection while a task runs: "auto", "on" or "off".
    ecs_protection: Union[str, bool] = "auto"
    #: Serve Prometheus metrics on this port (0: any free one); None: no metrics.
    metrics_port: Optional[int] = None
    metrics_host: str = "127.0.0.1"
    prefetch: int = DEFAULT_PREFETCH
    #: Isolated tasks one forked child runs in a row (1: a fresh fork per task).
    max_tasks_per_child: int = 1

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
        problem = single_hard_timeout_problem(
            self.hard_timeout,
            "the worker's hard_timeout",
            "--hard-timeout, or Worker(hard_timeout=...)",
        )
        if problem is not None:
            raise ValueError(problem)
        if not 0 <= self.poll_wait_s <= MAX_POLL_WAIT_S:
            raise ValueError(f"poll_wait_s {self.poll_wait_s!r}: must be between 0 and 20")
        if self.shutdown_grace_s < 0:
            raise ValueError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s!r}")
        if not isinstance(self.retry, RetryPolicy):
            raise ValueError(f"retry must be a RetryPolicy, got {self.retry!r}")
        if self.ecs_protection not in ("auto", "on", "off", True, False):
            raise ValueError(
                f"ecs_protection must be 'auto', 'on' or 'off', got {self.ecs_protection!r}"
            )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be 0-65535, got {self.metrics_port!r}")
        prefetch = self.prefetch
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 1 <= prefetch <= 10:
            raise ValueError(
                f"prefetch {prefetch!r}: must be a whole number of messages from 1 to 10 "
                "(SQS receives at most 10 per poll)"
            )
        tasks_per_child = self.max_tasks_per_child
        if isinstance(tasks_per_child, bool) or not isinstance(tasks_per_child, int):
            raise ValueError(f"max_tasks_per_child must be an int >= 1, got {tasks_per_child!r}")
        if tasks_per_child < 1:
            raise ValueError(
                f"max_tasks_per_child must be >= 1 (1: a fresh fork per task), "
                f"got {tasks_per_child!r}"
            )

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


class Configured:
    """A mixin: each WorkerSettings field as a property of an object with ``settings``."""

    settings: WorkerSettings
    # Each setting, for type checkers (the properties are made below the class).
    queue_url: Optional[str]
    sqs_timeout: int
    alarm_timeout: Optional[int]
    hard_timeout: int
    isolate: bool
    shutdown_grace_s: float
    poll_wait_s: int
    retry: RetryPolicy
    burst_tasks: Optional[int]
    burst_idle_s: Optional[float]
    processes: Union[int, str]
    endpoint_url: Optional[str]
    ecs_protection: Union[str, bool]
    metrics_port: Optional[int]
    metrics_host: str
    prefetch: int
    max_tasks_per_child: int

    @property
    def heartbeat_s(self) -> int:
        """The heartbeat period (``alarm_timeout``) in seconds."""
        return self.settings.heartbeat_s


for _name in (item.name for item in dataclasses.fields(WorkerSettings)):
    setattr(Configured, _name, setting_property(_name))
