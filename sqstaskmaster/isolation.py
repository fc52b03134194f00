"""Process isolation: heartbeat and hard timeout that hold while a task is stuck in C code.

A Python signal handler cannot interrupt native code that holds the GIL
(xgboost, OR-Tools, numpy), and no thread of that process runs meanwhile. So
an isolated handler's ``run()`` runs in a forked child process, while the
parent, which runs no task code, keeps both promises from a timed wait loop:

- every ``alarm_timeout`` seconds, while ``running()`` is true, it extends the
  message's visibility (the heartbeat), so no other worker receives it;
- at the hard deadline it sends SIGTERM to the child's process group, waits
  ``kill_grace_s`` seconds, sends SIGKILL, reaps, and raises
  :class:`~sqstaskmaster.errors.HardTimeoutError`.

Opt in with the base class or one class attribute; user code is unchanged::

    class Train(IsolatedMessageHandler): ...          # or: class Train(MessageHandler):
                                                      #         isolate = True
    with Train(message, sqs_timeout=30, alarm_timeout=25, hard_timeout=3600) as handler:
        handler.run()

The parent uses no signals (so isolated handlers also work outside the main
thread). :func:`run_in_child` offers the same supervision for plain functions.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import types
from typing import Any, Callable, Dict, Mapping, Optional

from .child_process import MAX_RESULT_BYTES, ForkedChild, fork_available
from .errors import HardTimeoutError, IsolationUnavailableError
from .message_handler import MessageHandler

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_KILL_GRACE_S",
    "MAX_RESULT_BYTES",
    "IsolatedMessageHandler",
    "run_in_child",
    "supervise",
]

#: Default seconds between SIGTERM and SIGKILL when a task is stopped.
DEFAULT_KILL_GRACE_S = 1.0


class IsolatedMessageHandler(MessageHandler):
    """A MessageHandler whose ``run()`` runs in a forked child process.

    ``running()`` defaults to "the child process is alive"; override it to
    add your own check (it runs in the parent, in a helper thread, and does not
    see changes the child makes to ``self``). Subclasses still implement
    ``run()`` and ``notify()``.
    """

    isolate = True

    def running(self) -> bool:
        state = self._isolation
        child = state.child if state is not None else None
        # No child yet (or this is the child itself, which never saw the
        # assignment): nothing to contradict "running".
        return child is None or child.alive()


class _IsolationState:
    """What an entered isolated handler needs: the heartbeat schedule and the live child."""

    def __init__(self, next_heartbeat: float) -> None:
        self.next_heartbeat = next_heartbeat
        self.child: Optional[ForkedChild] = None


def supervise(
    child: ForkedChild,
    *,
    deadline: float,
    kill_grace_s: float = DEFAULT_KILL_GRACE_S,
    heartbeat_s: Optional[float] = None,
    next_heartbeat: Optional[float] = None,
    on_heartbeat: Optional[Callable[[], None]] = None,
    on_deadline: Optional[Callable[[], None]] = None,
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
    """
    if heartbeat_s is not None and heartbeat_s <= 0:
        raise ValueError(f"Heartbeat interval must be positive, got {heartbeat_s!r} seconds")
    if next_heartbeat is None and heartbeat_s is not None:
        next_heartbeat = time.monotonic() + heartbeat_s
    beat: Optional[_HeartbeatCall] = None
    try:
        while True:
            now = time.monotonic()
            if beat is not None and beat.done:
                _raise_unless_ended(child, beat.error)
                beat = None
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
                    beat = _HeartbeatCall(on_heartbeat, child.label)
                else:
                    logger.warning(
                        "%s: the previous heartbeat is still running; skipping this one",
                        child.label,
                    )
            wake = deadline if next_heartbeat is None else min(deadline, next_heartbeat)
            if beat is not None:
                wake = min(wake, now + _HEARTBEAT_POLL_S)
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
            beat.join(_HEARTBEAT_JOIN_S)
    return child.outcome()


# While a heartbeat runs, the wait loop looks at it this often (seconds).
_HEARTBEAT_POLL_S = 0.02
# On the way out, how long to wait for a heartbeat still in flight (seconds).
_HEARTBEAT_JOIN_S = 2.0


class _HeartbeatCall:
    """One heartbeat in a helper thread: a slow SQS call must not delay the hard deadline."""

    def __init__(self, on_heartbeat: Callable[[], None], label: str) -> None:
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(
            target=self._run, args=(on_heartbeat,), name=f"heartbeat {label}", daemon=True
        )
        self._thread.start()

    def _run(self, on_heartbeat: Callable[[], None]) -> None:
        try:
            on_heartbeat()
        except BaseException as error:  # handed to the wait loop, which raises or logs it
            self.error = error

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout_s: Optional[float] = None) -> None:
        self._thread.join(timeout_s)


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


def run_in_child(
    func: Callable[..., Any],
    kwargs: Optional[Mapping[str, Any]] = None,
    *,
    hard_timeout_s: float,
    kill_grace_s: float = DEFAULT_KILL_GRACE_S,
    heartbeat_s: Optional[float] = None,
    on_heartbeat: Optional[Callable[[], None]] = None,
    label: Optional[str] = None,
) -> Any:
    """Run ``func(**kwargs)`` in a forked child; return its (JSON) result.

    The hard timeout counts ``hard_timeout_s`` seconds from this call; the
    rest is as in :func:`supervise`. Raises :class:`HardTimeoutError`,
    :class:`~sqstaskmaster.errors.ChildTaskError` (the function raised; an
    instance of its exception's class too where that class is importable, see
    :mod:`sqstaskmaster.child_error`) or
    :class:`~sqstaskmaster.errors.ChildDiedError` (the child died without
    reporting). The return value must encode to at most ``MAX_RESULT_BYTES``
    of JSON, else ChildTaskError.
    """
    if hard_timeout_s <= 0:
        raise ValueError(f"Hard timeout must be positive, got {hard_timeout_s!r} seconds")
    name = label or str(getattr(func, "__qualname__", None) or repr(func))
    if not fork_available():
        raise IsolationUnavailableError(name, sys.platform)
    started = time.monotonic()
    arguments: Dict[str, Any] = dict(kwargs or {})

    def hard_timeout() -> None:
        raise HardTimeoutError(
            "Hit Hard Timeout for message handler", hard_timeout_s, time.monotonic() - started
        )

    child = ForkedChild(lambda: func(**arguments), label=name)
    return supervise(
        child,
        deadline=started + hard_timeout_s,
        kill_grace_s=kill_grace_s,
        heartbeat_s=heartbeat_s,
        on_heartbeat=on_heartbeat,
        on_deadline=hard_timeout,
    )


# -- the MessageHandler hook (called by MessageHandler.__enter__ / __exit__) ----------


def enter_isolated(handler: MessageHandler) -> None:
    """Prepare an isolated handler on entry: no SIGALRM; ``handler.run`` forks."""
    if not fork_available():
        raise IsolationUnavailableError(type(handler).__name__, sys.platform)
    handler.set_entry_visibility()
    handler._isolation = _IsolationState(time.monotonic() + handler.alarm_timeout)
    # An instance attribute shadows the class's run() until __exit__.
    handler.__dict__["run"] = types.MethodType(_run_isolated, handler)


def exit_isolated(handler: MessageHandler) -> None:
    """Undo :func:`enter_isolated`; stop a child that is somehow still running."""
    handler.__dict__.pop("run", None)
    state = handler._isolation
    handler._isolation = None
    if state is not None and state.child is not None and not state.child.reaped:
        state.child.terminate(handler.kill_grace_s)


def _label(handler: MessageHandler) -> str:
    return f"{type(handler).__name__} message {handler.message_id}"


def _run_isolated(handler: MessageHandler) -> Any:
    """``handler.run()`` while entered: the class's run() in a child, supervised here."""
    state = handler._isolation
    if state is None:  # entered by a subclass that skipped our __enter__
        raise RuntimeError(f"{_label(handler)}: isolated run() called outside its with block")
    if time.monotonic() >= handler.deadline:
        handler._hard_timeout()
    run = type(handler).run
    # A task's return value never decides its outcome: one JSON cannot carry
    # is dropped with a warning, and the task still counts as done.
    child = ForkedChild(lambda: run(handler), label=_label(handler), drop_unsendable_result=True)
    state.child = child
    # A heartbeat that fell due between two run() calls is sent at once.
    return supervise(
        child,
        deadline=handler.deadline,
        kill_grace_s=handler.kill_grace_s,
        heartbeat_s=handler.alarm_timeout,
        next_heartbeat=state.next_heartbeat,
        on_heartbeat=handler._heartbeat,
        on_deadline=handler._hard_timeout,
    )
