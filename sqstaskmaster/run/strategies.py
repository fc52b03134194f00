"""How a task runs: an execution strategy, chosen per handler instead of a flag.

- :class:`InProcess`: ``run()`` runs in this process; one SIGALRM interval
  timer (:class:`~sqstaskmaster.run.timer.SignalTimer`) sends the heartbeats and
  raises at the hard deadline (0.0.11's "signal mode").
- :class:`Forked`: ``run()`` runs in a forked child process (its own process
  group); this process heartbeats and enforces the deadline from a timed wait
  loop (:func:`supervise`), then SIGTERM, ``kill_grace_s``, SIGKILL.

A strategy knows the handler only through :class:`TaskHandler` (deadline,
heartbeat period, heartbeat, on_deadline, label), so it imports no handler
module. Given a worker's stop controller (:class:`StopSource`), each strategy
also delivers the worker's stop to its task: InProcess through the same
timer (never in a handler's enter or exit path), Forked from its wait loop.
No thread is involved, so nothing but the main thread exists at fork time.
A worker's chores (:class:`ChoreSource`: batched deletes, heartbeats of
prefetched messages) are done the same ways while a task runs, in helper
threads (or inline, when none can be started: :mod:`sqstaskmaster.run.background`).
"""

from __future__ import annotations

import copy
import functools
import logging
import sys
import time
from types import CodeType, FrameType
from typing import Any, Callable, FrozenSet, Optional, Protocol, Tuple, Type

from ..errors import HardTimeoutError, IsolationUnavailableError, WorkerShutdownError
from ..run.background import (
    HEARTBEAT_JOIN_S,
    HEARTBEAT_POLL_S,
    BackgroundCall,
    ChoreRunner,
    ChoreSource,
    InlineFallback,
    wait_before_fork,
)
from ..run.child_error import REJECTED_MARK
from ..run.fork import ForkedChild, fork_available, fork_task
from ..run.timer import SignalTimer

logger = logging.getLogger(__name__)

#: Default seconds between SIGTERM and SIGKILL when a task is stopped.
DEFAULT_KILL_GRACE_S = 1.0
#: While a worker's stop controller is attached, the wait loop looks at it this often (s).
STOP_POLL_S = 0.05
_HEARTBEAT_JOIN_S = HEARTBEAT_JOIN_S  # importable here (and from isolation) as before


class TaskHandler(Protocol):
    """What a strategy needs of a handler (MessageHandler provides it)."""

    alarm_timeout: int  # the heartbeat period, seconds
    kill_grace_s: float
    throws: Tuple[type, ...]
    # Per-entry state the strategies keep on the handler.
    _timer: Optional[SignalTimer]
    _isolation: Any
    _runner: Optional[Callable[[Callable[[], Any]], Any]]

    @property
    def deadline(self) -> float: ...  # noqa: E704

    @property
    def label(self) -> str: ...  # noqa: E704

    def heartbeat(self) -> None: ...  # noqa: E704

    def on_deadline(self) -> None: ...  # noqa: E704

    def on_alarm(self, signum: int, frame: Optional[FrameType]) -> None: ...  # noqa: E704


class StopSource(Protocol):
    """A worker's stop controller, as the strategies see it."""

    listener: Optional[Callable[[], None]]

    @property
    def stopping(self) -> bool: ...  # noqa: E704

    def must_interrupt(self) -> bool: ...  # noqa: E704

    def interrupt_at(self) -> Optional[float]: ...  # noqa: E704

    def error(self) -> WorkerShutdownError: ...  # noqa: E704

    def announce(self) -> None: ...  # noqa: E704


class Execution:
    """Base of the strategies: ``enter``, then ``run`` (any number of times), then ``leave``.

    ``protected`` code objects are the enter and exit paths of the handler's
    class: a stop or an alarm never lands while one of them is on the stack.
    """

    isolated = False

    def __init__(self, stop: Optional[StopSource] = None) -> None:
        self.stop = stop
        self.chores: Optional[ChoreSource] = None
        self._chore_runner: Optional[ChoreRunner] = None

    def with_stop(
        self, stop: Optional[StopSource], chores: Optional[ChoreSource] = None
    ) -> Execution:
        """A copy of this strategy that delivers ``stop`` to the task and does ``chores``."""
        clone = copy.copy(self)
        clone.stop = stop
        clone.chores = chores
        return clone

    def enter(self, handler: TaskHandler, protected: FrozenSet[CodeType]) -> None:
        """Prepare ``handler`` before its body runs."""

    def leave(self, handler: TaskHandler) -> None:
        """Stop heartbeats and deadline; first step of the handler's exit path."""

    def restore(self, handler: TaskHandler) -> None:
        """Last step of the exit path: put back what :meth:`enter` replaced."""


class InProcess(Execution):
    """``run()`` in this process, under one SIGALRM interval timer (main thread only)."""

    def enter(self, handler: TaskHandler, protected: FrozenSet[CodeType]) -> None:
        stop = self.stop
        # Every firing goes through the handler's on_alarm (MessageHandler's
        # _handle_alarm), and the deadline is asked again at each one.
        timer = SignalTimer(
            handler.alarm_timeout,
            lambda: handler.deadline,
            on_alarm=handler.on_alarm,
            owner=type(handler).__name__,
            protected=protected,
            stop_at=None if stop is None else stop.interrupt_at,
            on_stop=None if stop is None else _raiser(stop),
            on_notice=None if stop is None else stop.announce,
        )
        if self.chores is not None:
            # Done in a helper thread: never inside the signal handler, where
            # they could delay the deadline or meet a lock the body holds (but
            # for a fallback when no thread can be started). A run's end fires
            # the timer only if the chores are due before its next event.
            runner = ChoreRunner(self.chores, handler.label, on_done=timer.chores_ended)
            self._chore_runner = runner
            timer.set_chores(runner.due_at, runner.start)
        handler._timer = timer
        timer.start()
        if stop is not None:
            # A stop requested while the task runs re-arms the timer (from the
            # signal handler: a setitimer call, nothing more).
            stop.listener = timer.refresh

    def leave(self, handler: TaskHandler) -> None:
        if self.stop is not None:
            self.stop.listener = None
        timer = handler._timer
        if timer is not None:
            timer.disarm()
        runner, self._chore_runner = self._chore_runner, None
        if runner is not None:
            runner.finish()

    def restore(self, handler: TaskHandler) -> None:
        timer, handler._timer = handler._timer, None
        if timer is not None:
            timer.restore()


def for_worker(
    handler: Any,
    isolate: bool,
    stop: Optional[StopSource],
    chores: Optional[ChoreSource] = None,
) -> Execution:
    """The strategy a worker runs ``handler`` with: its own, Forked if ``isolate``.

    ``handler`` is a MessageHandler (its ``execution_strategy()`` is its own
    choice); the strategy delivers ``stop`` and does ``chores`` while it runs.
    """
    strategy: Execution = handler.execution_strategy()
    if isolate and not strategy.isolated:
        strategy = Forked(handler.kill_grace_s)
    return strategy.with_stop(stop, chores)


def _raiser(stop: StopSource) -> Callable[[], None]:
    def deliver_stop() -> None:
        raise stop.error()

    return deliver_stop


class _IsolationState:
    """What an entered isolated handler needs: the heartbeat schedule and the live child."""

    def __init__(self, next_heartbeat: float) -> None:
        self.next_heartbeat = next_heartbeat
        self.child: Optional[ForkedChild] = None


class Forked(Execution):
    """``run()`` in a forked child; heartbeat, deadline and stop from this process's wait loop.

    ``kill_grace_s`` (None: the handler's ``kill_grace_s``) is the seconds
    between SIGTERM and SIGKILL when the child is stopped.
    """

    isolated = True

    def __init__(
        self, kill_grace_s: Optional[float] = None, stop: Optional[StopSource] = None
    ) -> None:
        super().__init__(stop)
        if kill_grace_s is not None and kill_grace_s < 0:
            raise ValueError(f"kill_grace_s must be >= 0 seconds, got {kill_grace_s!r}")
        self.kill_grace_s = kill_grace_s

    def grace_for(self, handler: TaskHandler) -> float:
        """Seconds between SIGTERM and SIGKILL for ``handler``'s child."""
        return handler.kill_grace_s if self.kill_grace_s is None else self.kill_grace_s

    def enter(self, handler: TaskHandler, protected: FrozenSet[CodeType]) -> None:
        if not fork_available():
            raise IsolationUnavailableError(type(handler).__name__, sys.platform)
        handler._isolation = _IsolationState(time.monotonic() + handler.alarm_timeout)
        handler._runner = functools.partial(self.run, handler)

    def leave(self, handler: TaskHandler) -> None:
        """Stop a child that is somehow still running."""
        handler._runner = None
        state = handler._isolation
        handler._isolation = None
        if state is not None and state.child is not None and not state.child.reaped:
            state.child.terminate(self.grace_for(handler))

    def run(self, handler: TaskHandler, body: Callable[[], Any]) -> Any:
        """``body()`` (the class's run) in a child, supervised here; returns its JSON result."""
        state = handler._isolation
        if state is None:  # entered by a subclass that skipped MessageHandler.__enter__
            raise RuntimeError(f"{handler.label}: isolated run() called outside its with block")
        if time.monotonic() >= handler.deadline:
            handler.on_deadline()
        wait_before_fork(handler.label)  # no helper thread left where the child forks
        child = self.start_child(handler, body)
        state.child = child
        # A heartbeat that fell due between two run() calls is sent at once.
        return supervise(
            child,
            deadline=handler.deadline,
            kill_grace_s=self.grace_for(handler),
            heartbeat_s=handler.alarm_timeout,
            next_heartbeat=state.next_heartbeat,
            on_heartbeat=handler.heartbeat,
            on_deadline=handler.on_deadline,
            stop=self.stop,
            chores=self.chores,
        )

    def start_child(self, handler: TaskHandler, body: Callable[[], Any]) -> ForkedChild:
        """A started child running ``body()`` for ``handler`` (a fresh fork, here)."""
        throws: Tuple[Type[BaseException], ...] = tuple(handler.throws)

        def in_child() -> Any:
            handler._runner = None  # this is the child: a nested run() runs here
            try:
                return body()
            except throws as error:
                # Reported with its own type, marked as a permanent failure, so
                # the parent rejects it even where its class cannot be imported.
                error.__dict__[REJECTED_MARK] = True
                raise

        # A task's return value never decides its outcome: one JSON cannot carry
        # is dropped with a warning, and the task still counts as done.
        return fork_task(in_child, label=handler.label, drop_unsendable_result=True)


def supervise(
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
    """
    if heartbeat_s is not None and heartbeat_s <= 0:
        raise ValueError(f"Heartbeat interval must be positive, got {heartbeat_s!r} seconds")
    if next_heartbeat is None and heartbeat_s is not None:
        next_heartbeat = time.monotonic() + heartbeat_s
    beat: Optional[BackgroundCall] = None
    beat_owed = False  # a heartbeat fell due while the previous one still ran
    fallback = InlineFallback(child.label)  # no thread to be had: the work is done inline
    runner = None if chores is None else ChoreRunner(chores, child.label, fallback=fallback)
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
            chore_at = None if runner is None else runner.due_at()
            if runner is not None and chore_at is not None and now >= chore_at:
                runner.start()
                chore_at = runner.due_at()
            if now >= deadline and not child.exited():
                logger.error(
                    "%s: hard deadline reached after %.3f s; stopping child process %s",
                    child.label,
                    now - child.started_at,
                    child.pid,
                )
                child.terminate(kill_grace_s)
                if on_deadline is not None:
                    on_deadline()
                raise HardTimeoutError(
                    "Hit Hard Timeout for message handler", deadline - child.started_at
                )
            if heartbeat_s is not None and next_heartbeat is not None and now >= next_heartbeat:
                while next_heartbeat <= now:
                    next_heartbeat += heartbeat_s
                if on_heartbeat is None:
                    pass
                elif beat is None:
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
            if stop is not None and stop.must_interrupt() and not child.exited():
                logger.warning(
                    "%s: worker stopping; stopping child process %s", child.label, child.pid
                )
                raise stop.error()
            wake = deadline if next_heartbeat is None else min(deadline, next_heartbeat)
            if stop is not None:
                # Poll for a new stop; wake at the very moment a known one falls due.
                at = stop.interrupt_at()
                wake = min(wake, now + STOP_POLL_S, wake if at is None else max(at, now))
            if beat is not None or (runner is not None and runner.busy):
                wake = min(wake, now + HEARTBEAT_POLL_S)
            if chore_at is not None:
                wake = min(wake, max(chore_at, now))
            if child.wait(wake - now):
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
