"""The forked task's wait loop: heartbeats, the hard deadline, a worker's stop and chores.

:func:`wait_for_child` waits for a :class:`~sqstaskmaster.run.fork.ForkedChild`
(or anything with its interface: the reused child's task) while it keeps the
promises of its handler from this process, which runs no task code: the
heartbeats (in helper threads, :mod:`sqstaskmaster.run.background`), the hard
deadline (SIGTERM to the child's process group, a grace, SIGKILL), and a
worker's stop. It times them with the same
:class:`~sqstaskmaster.run.schedule.Schedule` as the signal-mode timer.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional, Protocol

from ..errors import HARD_TIMEOUT_TEXT, HardTimeoutError, WorkerShutdownError
from .background import (
    HEARTBEAT_JOIN_S,
    HEARTBEAT_POLL_S,
    BackgroundCall,
    ChoreRunner,
    ChoreSource,
    InlineFallback,
)
from .checkpoint_box import CheckpointBox
from .fork import ForkedChild
from .schedule import Schedule

logger = logging.getLogger(__name__)

#: Default seconds between SIGTERM and SIGKILL when a task is stopped.
DEFAULT_KILL_GRACE_S = 1.0
#: While a worker's stop controller is attached, the wait loop looks at it this often (s).
STOP_POLL_S = 0.05


class StopSource(Protocol):
    """A worker's stop controller, as the strategies see it."""

    listener: Optional[Callable[[], None]]

    @property
    def stopping(self) -> bool: ...  # noqa: E704

    def interrupt_at(self) -> Optional[float]: ...  # noqa: E704

    def error(self) -> WorkerShutdownError: ...  # noqa: E704

    def announce(self) -> None: ...  # noqa: E704


def wait_for_child(
    child: ForkedChild,
    *,
    deadline: float,
    kill_grace_s: float = DEFAULT_KILL_GRACE_S,
    heartbeat_s: Optional[float] = None,
    next_heartbeat: Optional[float] = None,
    on_heartbeat: Optional[Callable[[], None]] = None,
    on_deadline: Optional[Callable[[], None]] = None,
    stop: Optional[StopSource] = None,
    chores: Optional[ChoreSource] = None,
    stop_flag: Optional[CheckpointBox] = None,
) -> Any:
    """Wait for ``child``, heartbeating and enforcing ``deadline``; return its result.

    ``deadline`` and ``next_heartbeat`` are ``time.monotonic()`` values.
    ``on_heartbeat()`` runs every ``heartbeat_s`` seconds in a helper thread
    (so a slow SQS call cannot delay the deadline); if it raises while the
    child is alive, the child is stopped and the error propagates. At the
    deadline the child's process group gets SIGTERM, ``kill_grace_s`` seconds,
    then SIGKILL; then ``on_deadline()`` runs and is expected to raise (a
    :class:`HardTimeoutError` is raised if it does not). Any exception that
    reaches this function (a worker's shutdown signal handler, for example)
    stops the child the same way before it propagates. The child is always
    reaped before this returns or raises.

    ``stop`` (a worker's stop controller) is looked at every
    :data:`STOP_POLL_S` seconds: once it says the task must be stopped, the
    child is stopped the same way and ``stop.error()`` is raised. So a worker
    needs no thread (and no signal) to stop an isolated task.

    ``chores.run_due()`` runs, in a helper thread like a heartbeat, whenever
    ``chores.due_at()`` has come. When no thread can be started, a heartbeat
    or the chores run inline (:mod:`sqstaskmaster.run.background`).

    ``stop_flag`` (the child's shared :class:`~.checkpoint_box.CheckpointBox`)
    is told, at each look at ``stop``, whether the task is asked to stop: the
    task reads it as ``context.stop_requested``.
    """
    fallback = InlineFallback(child.label)  # no thread to be had: the work is done inline
    runner = None if chores is None else ChoreRunner(chores, child.label, fallback=fallback)
    schedule = Schedule(
        heartbeat_s,
        deadline,
        stop_at=None if stop is None else stop.interrupt_at,
        chore_at=None if runner is None else runner.due_at,
    )
    schedule.begin(time.monotonic(), next_heartbeat)
    beat: Optional[BackgroundCall] = None
    beat_owed = False  # a heartbeat fell due while the previous one still ran
    try:
        while True:
            now = time.monotonic()
            if beat is not None and beat.done:
                _raise_unless_ended(child, beat.error)
                beat = None
                if beat_owed and on_heartbeat is not None:
                    # One fell due while it ran: made now, not a period later,
                    # so a slow or failed heartbeat leaves time for another try.
                    beat_owed = False
                    beat = BackgroundCall(on_heartbeat, child.label, fallback)
            if runner is not None and schedule.chores_due(now):
                runner.start()
            if schedule.deadline_due(now) and not child.exited():
                logger.error(
                    "%s: hard deadline reached after %.3f s; stopping child process %s",
                    child.label,
                    now - child.started_at,
                    child.pid,
                )
                child.terminate(kill_grace_s)
                if on_deadline is not None:
                    on_deadline()
                raise HardTimeoutError(HARD_TIMEOUT_TEXT, deadline - child.started_at)
            if schedule.heartbeat_due(now) and on_heartbeat is not None:
                if beat is None:
                    beat = BackgroundCall(on_heartbeat, child.label, fallback)
                else:
                    beat_owed = True
                    logger.warning(
                        "%s: the previous heartbeat is still running; the next is made as "
                        "soon as it ends",
                        child.label,
                    )
            if stop is not None:
                stop.announce()  # a new stop gets its log line here, not in a signal handler
                if stop_flag is not None:
                    stop_flag.set_stop(stop.stopping)
            if schedule.stop_due(now) and not child.exited():
                logger.warning(
                    "%s: worker stopping; stopping child process %s", child.label, child.pid
                )
                raise stop.error()  # type: ignore[union-attr]  # stop_due: there is a stop
            wake = schedule.next_at()
            if stop is not None:  # polled for a new stop
                wake = min(wake, now + STOP_POLL_S)
            if beat is not None or (runner is not None and runner.busy):
                wake = min(wake, now + HEARTBEAT_POLL_S)
            if child.wait(max(wake - now, 0.0)):
                break
        if beat is not None:
            beat.join()
            _raise_unless_ended(child, beat.error)
        child.reap()
    finally:
        if not child.reaped:
            child.terminate(kill_grace_s)
        if beat is not None and not beat.done:
            # A heartbeat still in flight would land after the caller hands
            # the message back or sets its backoff; let it finish first.
            beat.join(HEARTBEAT_JOIN_S)
        if runner is not None:
            runner.finish()
    return child.outcome()


def _raise_unless_ended(child: ForkedChild, error: Optional[BaseException]) -> None:
    """Raise a heartbeat's error, unless it only failed because the child has just ended."""
    if error is None:
        return
    if not child.exited():
        raise error
    logger.warning(
        "%s: heartbeat failed after the child process %s ended; using its report: %r",
        child.label,
        child.pid,
        error,
    )
