"""WorkerSettings: a worker's settings, each declared once, checked in one place.

Each setting is one field of :class:`WorkerSettings`; its :class:`Flag`
(in the field's metadata) says how the ``sqstaskmaster worker`` command takes
it, and the command's options and help are generated from those fields. Built
by ``Worker(...)`` from its keywords and by the CLI from its options (through
:meth:`WorkerSettings.replace`); an invalid value raises ValueError naming it,
at construction. :class:`Configured` shows each setting as an attribute of
an object holding ``settings`` (the Worker).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

from ..sqs.facts import MAX_POLL_WAIT_S, MAX_VISIBILITY_S, single_hard_timeout_problem
from .retry import RetryPolicy

DEFAULT_SQS_TIMEOUT_S = 30
DEFAULT_HARD_TIMEOUT_S = 4 * 60 * 60
DEFAULT_POLL_WAIT_S = 2
DEFAULT_SHUTDOWN_GRACE_S = 25.0
# One message per poll: the others of a prefetch wait behind a task that may
# run for hours, while another worker could run them (README, Performance).
DEFAULT_PREFETCH = 1

if TYPE_CHECKING:
    # Type checkers see the settings as writable, so that Configured (below)
    # can show them as the writable attributes they are on a Worker.
    from dataclasses import dataclass as settings_dataclass
else:
    settings_dataclass = dataclasses.dataclass(frozen=True)

#: The key of a setting's :class:`Flag` in its field's metadata.
FLAG = "flag"


@dataclasses.dataclass(frozen=True)
class Flag:
    """How the ``sqstaskmaster worker`` command takes one setting.

    ``help`` may hold ``{default}`` (any format spec): the setting's default.
    The option's type is the field's (``int``, ``float``, else a string);
    ``choices`` limits it. A bool setting is two flags, ``name`` for True and
    ``off`` (with ``off_help``) for False. ``parts``: the flags of a setting
    that is itself a dataclass (RetryPolicy), one per field of it.
    """

    name: str = ""
    help: Optional[str] = None
    short: Optional[str] = None
    choices: Optional[Tuple[str, ...]] = None
    off: Optional[str] = None
    off_help: Optional[str] = None
    parts: Optional[Dict[str, Flag]] = None


def setting(default: Any = None, flag: Optional[Flag] = None, factory: Any = None) -> Any:
    """A WorkerSettings field: its default (or ``factory``) and its command-line :class:`Flag`."""
    metadata = {FLAG: flag} if flag is not None else {}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@settings_dataclass
class WorkerSettings:
    """A worker's settings; timeouts are seconds.

    ``alarm_timeout`` is the heartbeat period (default a third of
    ``sqs_timeout``, the visibility each heartbeat sets). ``isolate``: run
    each task in a forked child (else "signal mode"). ``poll_wait_s``: a
    shutdown while idle waits at most this long. ``ecs_protection`` "auto"
    is on when ``ECS_AGENT_URI`` is set (:mod:`sqstaskmaster.ops.ecs`);
    ``spot_notice`` "auto" when the EC2 metadata service answers
    (:mod:`sqstaskmaster.ops.spot`).
    ``metrics_port`` needs ``sqstaskmaster[metrics]``
    (:mod:`sqstaskmaster.ops.metrics`). ``status_table``: a DynamoDB table's
    name (or a :class:`~sqstaskmaster.StatusTable`) the worker writes each task's
    state to (:mod:`sqstaskmaster.worker.status`). The messages a ``prefetch`` holds
    while waiting their turn are kept invisible by batched heartbeats
    (:mod:`sqstaskmaster.worker.intake`). ``max_tasks_per_child``: see
    :mod:`sqstaskmaster.run.reuse_parent`.
    """

    queue_url: Optional[str] = setting(
        None, Flag("--queue-url", "the queue to consume (default: the Worker's)")
    )
    sqs_timeout: int = setting(
        DEFAULT_SQS_TIMEOUT_S, Flag("--sqs-timeout", "visibility per heartbeat, s ({default})")
    )
    alarm_timeout: Optional[int] = setting(
        None, Flag("--alarm-timeout", "heartbeat period, s (sqs/3)")
    )
    hard_timeout: int = setting(
        DEFAULT_HARD_TIMEOUT_S, Flag("--hard-timeout", "default hard timeout, s ({default})")
    )
    isolate: bool = setting(
        True,
        Flag(
            "--isolate",
            "run each task in a forked child (the default)",
            off="--signal-mode",
            off_help="run tasks in the worker process under SIGALRM, not in a forked child",
        ),
    )
    shutdown_grace_s: float = setting(
        DEFAULT_SHUTDOWN_GRACE_S,
        Flag("--shutdown-grace", "seconds a task may go on after SIGTERM (default {default:g})"),
    )
    poll_wait_s: int = setting(
        DEFAULT_POLL_WAIT_S, Flag("--poll-wait", "long-poll slice, 0-20 s (default {default})")
    )
    retry: RetryPolicy = setting(
        factory=RetryPolicy,
        flag=Flag(
            parts={
                "first_s": Flag("--retry-first", "first retry delay, s (default {default:g})"),
                "factor": Flag("--retry-factor", "retry delay factor (default {default:g})"),
                "max_s": Flag("--retry-max", "longest retry delay, s (default {default:g})"),
                "jitter": Flag(
                    "--retry-jitter", "(default {default})", choices=("equal", "full", "none")
                ),
            }
        ),
    )
    burst_tasks: Optional[int] = setting(None, Flag("--burst-tasks", "stop after this many tasks"))
    burst_idle_s: Optional[float] = setting(
        None, Flag("--burst-idle", "stop after this many idle seconds")
    )
    processes: Union[int, str] = setting(
        1, Flag("--processes", "worker processes, a number or 'auto' (default {default})", "-p")
    )
    endpoint_url: Optional[str] = setting(
        None, Flag("--endpoint-url", "SQS endpoint (default: boto3's, e.g. AWS_ENDPOINT_URL)")
    )
    ecs_protection: Union[str, bool] = setting(
        "auto",
        Flag(
            "--ecs-protection",
            "ECS task scale-in protection while a task runs (default {default}: on under ECS)",
            choices=("auto", "on", "off"),
        ),
    )
    spot_notice: str = setting(
        "auto",
        Flag(
            "--spot-notice",
            "warm stop on an EC2 Spot interruption notice, polled every 5 s "
            "(default {default}: on when the EC2 metadata service answers)",
            choices=("auto", "on", "off"),
        ),
    )
    metrics_port: Optional[int] = setting(
        None,
        Flag("--metrics-port", "serve Prometheus metrics on this port (needs [metrics])"),
    )
    metrics_host: str = setting(
        "127.0.0.1", Flag("--metrics-host", "address of the metrics endpoint ({default})")
    )
    prefetch: int = setting(
        DEFAULT_PREFETCH,
        Flag("--prefetch", "messages one poll receives, 1-10 (default {default}; README)"),
    )
    max_tasks_per_child: int = setting(
        1,
        Flag(
            "--max-tasks-per-child",
            "isolated tasks one forked child runs in a row (default {default}: a fresh fork each)",
        ),
    )
    continue_after_s: Optional[float] = setting(
        None,
        Flag(
            "--continue-after",
            "a resumable task is asked to stop and go on in a new message after this many "
            "seconds of a receive (default: what the receive's 12 hours allow)",
        ),
    )
    status_table: Any = setting(
        None,
        Flag(
            "--status-table",
            "write each task's state, progress and result to this DynamoDB table, and "
            "honour cancels from it (README: Watching and cancelling tasks)",
        ),
    )
    status_kwargs: bool = setting(
        False,
        Flag(
            "--status-kwargs",
            "store an excerpt of each task's kwargs in the status table (they may hold secrets)",
            off="--no-status-kwargs",
            off_help="store no kwargs in the status table (the default)",
        ),
    )

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
        if self.spot_notice not in ("auto", "on", "off"):
            raise ValueError(f"spot_notice must be 'auto', 'on' or 'off', got {self.spot_notice!r}")
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

        if self.continue_after_s is not None and not 1 <= self.continue_after_s <= MAX_VISIBILITY_S:
            raise ValueError(
                f"continue_after_s must be from 1 to {MAX_VISIBILITY_S} s (a resumable task's "
                f"run on one receive), got {self.continue_after_s!r}"
            )
        table = self.status_table
        if table is not None and not (
            (isinstance(table, str) and table) or hasattr(table, "client")
        ):
            raise ValueError(
                f"status_table must be a DynamoDB table's name or a StatusTable, got {table!r}"
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


if TYPE_CHECKING:
    # For type checkers, each setting is an attribute of its type.
    _SettingAttributes = WorkerSettings
else:
    _SettingAttributes = object


class Configured(_SettingAttributes):
    """A mixin: each WorkerSettings field as a property of an object with ``settings``."""

    settings: WorkerSettings

    @property
    def heartbeat_s(self) -> int:
        """The heartbeat period (``alarm_timeout``) in seconds."""
        return self.settings.heartbeat_s


for _name in (item.name for item in dataclasses.fields(WorkerSettings)):
    setattr(Configured, _name, setting_property(_name))
