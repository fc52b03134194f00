"""How a task runs: an execution strategy, chosen per handler instead of a flag.

- :class:`InProcess`: ``run()`` runs in this process; one SIGALRM interval
  timer (:class:`~sqstaskmaster.run.timer.SignalTimer`) sends the heartbeats and
  raises at the hard deadline (0.0.11's "signal mode").
- :class:`Forked`: ``run()`` runs in a forked child process (its own process
  group); this process heartbeats and enforces the deadline from a timed wait
  loop (:func:`~sqstaskmaster.run.waiting.wait_for_child`), then SIGTERM,
  ``kill_grace_s``, SIGKILL.

Both time their events (heartbeat, deadline, stop, chores) with one
:class:`~sqstaskmaster.run.schedule.Schedule`. A strategy knows the handler
only through :class:`TaskHandler`, so it imports no handler module, and keeps
what it needs while a handler is entered in an :class:`Entry` of its own
(the handler holds it, as ``handler._strategy_entry``). Forked runs whatever ``run``
the handler resolves to when it is called (on the instance, or its class at
that moment), in the child: nothing is wrapped when a class is made. Given a
worker's stop controller (:class:`~sqstaskmaster.run.waiting.StopSource`),
each strategy also delivers the worker's stop to its task: InProcess through
its timer (never in a handler's enter or exit path), Forked from its wait
loop. A worker's chores (:class:`~sqstaskmaster.run.background.ChoreSource`)
are done the same ways while a task runs, in helper threads (or inline, when
none can be started).
"""

from __future__ import annotations

import copy
import functools
import logging
import sys
import time
from types import CodeType, FrameType
from typing import Any, Callable, FrozenSet, Optional, Protocol, Tuple, Type

from ..errors import IsolationUnavailableError
from .background import ChoreRunner, ChoreSource, wait_before_fork
from .checkpoint_box import box_for_children
from .child_error import REJECTED_MARK
from .context import context_of
from .fork import ForkedChild, fork_available, fork_task
from .timer import SignalTimer
from .waiting import StopSource, wait_for_child

logger = logging.getLogger(__name__)


class TaskHandler(Protocol):
    """What a strategy needs of a handler (MessageHandler provides it)."""

    kill_grace_s: float
    throws: Tuple[type, ...]

    @property
    def heartbeat_s(self) -> float: ...  # noqa: E704

    @property
    def deadline(self) -> float: ...  # noqa: E704

    @property
    def label(self) -> str: ...  # noqa: E704

    def heartbeat(self) -> None: ...  # noqa: E704

    def on_deadline(self) -> None: ...  # noqa: E704

    def on_alarm(self, signum: int, frame: Optional[FrameType]) -> None: ...  # noqa: E704


class Entry:
    """A strategy's state while one handler is entered: ``leave`` first, ``restore`` last."""

    #: The signal-mode timer (InProcess), else None.
    timer: Optional[SignalTimer] = None
    #: The child of the current or last ``run()`` (Forked), else None.
    child: Optional[ForkedChild] = None

    def leave(self) -> None:
        """Stop heartbeats and deadline; first step of the handler's exit path."""

    def restore(self) -> None:
        """Last step of the exit path: put back what entering replaced."""

    def rearm(self) -> None:
        """Count the next heartbeat a full period from now (one was just made by hand)."""
        if self.timer is not None:
            self.timer.rearm()


class Execution:
    """Base of the strategies: ``enter`` gives an :class:`Entry`, which ``leave``s.

    ``protected`` code objects are the enter and exit paths of the handler's
    class: a stop or an alarm never lands while one of them is on the stack.
    """

    isolated = False

    def __init__(self, stop: Optional[StopSource] = None) -> None:
        self.stop = stop
        self.chores: Optional[ChoreSource] = None

    def with_stop(
        self, stop: Optional[StopSource], chores: Optional[ChoreSource] = None
    ) -> Execution:
        """A copy of this strategy that delivers ``stop`` to the task and does ``chores``."""
        clone = copy.copy(self)
        clone.stop = stop
        clone.chores = chores
        return clone

    def enter(self, handler: TaskHandler, protected: FrozenSet[CodeType]) -> Entry:
        """Prepare ``handler`` before its body runs."""
        return Entry()


class InProcess(Execution):
    """``run()`` in this process, under one SIGALRM interval timer (main thread only)."""

    def enter(self, handler: TaskHandler, protected: FrozenSet[CodeType]) -> Entry:
        return _TimedEntry(self, handler, protected)


class _TimedEntry(Entry):
    """InProcess's state: the timer, the chores' runner, the stop it listens to."""

    def __init__(
        self, strategy: InProcess, handler: TaskHandler, protected: FrozenSet[CodeType]
    ) -> None:
        stop = self.stop = strategy.stop
        # Every firing goes through the handler's on_alarm (MessageHandler's
        # _handle_alarm), and the deadline is asked again at each one.
        timer = SignalTimer(
            handler.heartbeat_s,
            lambda: handler.deadline,
            on_alarm=handler.on_alarm,
            owner=type(handler).__name__,
            protected=protected,
            stop_at=None if stop is None else stop.interrupt_at,
            on_stop=None if stop is None else _raiser(stop),
            on_notice=None if stop is None else stop.announce,
        )
        self.runner: Optional[ChoreRunner] = None
        if strategy.chores is not None:
            # Done in a helper thread: never inside the signal handler, where
            # they could delay the deadline or meet a lock the body holds (but
            # for a fallback when no thread can be started). A run's end fires
            # the timer only if the chores are due before its next event.
            self.runner = ChoreRunner(strategy.chores, handler.label, on_done=timer.chores_ended)
            timer.set_chores(self.runner.due_at, self.runner.start)
        timer.start()
        self.timer = timer
        if stop is not None:
            # A stop requested while the task runs re-arms the timer (from the
            # signal handler: a setitimer call, nothing more).
            stop.listener = timer.refresh

    def leave(self) -> None:
        if self.stop is not None:
            self.stop.listener = None
        if self.timer is not None:
            self.timer.disarm()
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.finish()

    def restore(self) -> None:
        timer, self.timer = self.timer, None
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

    def enter(self, handler: TaskHandler, protected: FrozenSet[CodeType]) -> Entry:
        if not fork_available():
            raise IsolationUnavailableError(type(handler).__name__, sys.platform)
        return _ForkedEntry(self, handler)

    def run(self, entry: _ForkedEntry, body: Callable[[], Any]) -> Any:
        """``body()`` in a child, supervised here; returns its JSON result."""
        handler = entry.handler
        if time.monotonic() >= handler.deadline:
            handler.on_deadline()
        wait_before_fork(handler.label)  # no helper thread left where the child forks
        box = box_for_children()  # the child's checkpoints land here, at once
        box.clear()
        child = entry.child = self.start_child(handler, entry.in_child(body))
        try:
            # A heartbeat that fell due between two run() calls is sent at once.
            return wait_for_child(
                child,
                deadline=handler.deadline,
                kill_grace_s=self.grace_for(handler),
                heartbeat_s=handler.heartbeat_s,
                next_heartbeat=entry.next_heartbeat,
                on_heartbeat=handler.heartbeat,
                on_deadline=handler.on_deadline,
                stop=self.stop,
                chores=self.chores,
                stop_flag=box,
            )
        finally:
            context = context_of(handler)
            if context is not None:
                context.absorb(box)

    def start_child(self, handler: TaskHandler, body: Callable[[], Any]) -> ForkedChild:
        """A started child running ``body()`` for ``handler`` (a fresh fork, here)."""
        # A task's return value never decides its outcome: one JSON cannot carry
        # is dropped with a warning, and the task still counts as done.
        return fork_task(body, label=handler.label, drop_unsendable_result=True)


class _ForkedEntry(Entry):
    """Forked's state: the handler's ``run`` while entered, the heartbeat schedule, the child.

    While entered, the instance's ``run`` attribute sends each call to the
    strategy; the body is what ``run`` resolves to at that call (an instance's
    own ``run`` set before entry, else the class's, a patch included).
    """

    def __init__(self, strategy: Forked, handler: TaskHandler) -> None:
        self.strategy = strategy
        self.handler = handler
        self.next_heartbeat = time.monotonic() + handler.heartbeat_s
        attributes = vars(handler)
        self._own_run = attributes.get("run")
        attributes["run"] = self.run

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The handler's ``run()`` while entered: its body, in a child."""
        body = self._own_run
        if body is None:
            cls = type(self.handler)
            found = next(k.__dict__["run"] for k in cls.__mro__ if "run" in k.__dict__)
            # A mock set on the class has no __get__: called without self, as
            # a plain class attribute would be.
            body = found.__get__(self.handler, cls) if hasattr(found, "__get__") else found
        if args or kwargs:
            body = functools.partial(body, *args, **kwargs)
        return self.strategy.run(self, body)

    def in_child(self, body: Callable[[], Any]) -> Callable[[], Any]:
        """``body`` as the child runs it: the instance plain (a nested ``run()`` runs there)."""
        throws: Tuple[Type[BaseException], ...] = tuple(self.handler.throws)

        def run_in_child() -> Any:
            self._put_back_run()
            try:
                return body()
            except throws as error:
                # Reported with its own type, marked as a permanent failure, so
                # the parent rejects it even where its class cannot be imported.
                error.__dict__[REJECTED_MARK] = True
                raise

        return run_in_child

    def _put_back_run(self) -> None:
        attributes = vars(self.handler)
        if attributes.get("run") == self.run:
            if self._own_run is None:
                del attributes["run"]
            else:
                attributes["run"] = self._own_run

    def leave(self) -> None:
        """Stop a child that is somehow still running."""
        self._put_back_run()
        child = self.child
        if child is not None and not child.reaped:
            child.terminate(self.strategy.grace_for(self.handler))


def protected_codes(*owners: type) -> FrozenSet[CodeType]:
    """Code objects of the owners' ``__enter__`` and ``__exit__``: no alarm raises there."""
    codes = set()
    for owner in owners:
        for name in ("__enter__", "__exit__"):
            code = getattr(getattr(owner, name, None), "__code__", None)
            if code is not None:
                codes.add(code)
    return frozenset(codes)
