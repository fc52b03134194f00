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
thread). :func:`run_in_child` offers the same for plain functions (:func:`wait_for_child`).
``isolate = True`` and this base class are spellings of the
:class:`~sqstaskmaster.run.strategies.Forked` strategy, where the mechanics live.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Dict, Mapping, Optional

from .errors import HARD_TIMEOUT_TEXT, HardTimeoutError, IsolationUnavailableError
from .message_handler import MessageHandler
from .run.child_error import MAX_RESULT_BYTES
from .run.fork import fork_available, fork_task
from .run.strategies import Forked
from .run.waiting import DEFAULT_KILL_GRACE_S, wait_for_child

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_KILL_GRACE_S",
    "MAX_RESULT_BYTES",
    "Forked",
    "IsolatedMessageHandler",
    "run_in_child",
    "wait_for_child",
]


class IsolatedMessageHandler(MessageHandler):
    """A MessageHandler whose ``run()`` runs in a forked child process.

    ``running()`` defaults to "the child process is alive"; override it to
    add your own check (it runs in the parent, in a helper thread, and does not
    see changes the child makes to ``self``). Subclasses still implement
    ``run()`` and ``notify()``.
    """

    isolate = True

    def running(self) -> bool:
        entry = self._strategy_entry
        child = entry.child if entry is not None else None
        # No child yet (or this is the child itself, which never saw the
        # assignment): nothing to contradict "running".
        return child is None or child.alive()


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
    rest is as in :func:`wait_for_child`. Raises :class:`HardTimeoutError`,
    :class:`~sqstaskmaster.errors.ChildTaskError` (the function raised; an
    instance of its exception's class too where that class is importable, see
    :mod:`sqstaskmaster.run.child_error`) or
    :class:`~sqstaskmaster.errors.ChildDiedError` (the child died without
    reporting). The return value must encode to at most ``MAX_RESULT_BYTES``
    of JSON, else ChildTaskError.
    """
    if hard_timeout_s <= 0:
        raise ValueError(f"Hard timeout must be positive, got {hard_timeout_s!r} seconds")
    if heartbeat_s is not None and heartbeat_s <= 0:  # checked before the fork, not after
        raise ValueError(f"Heartbeat interval must be positive, got {heartbeat_s!r} seconds")
    name = label or str(getattr(func, "__qualname__", None) or repr(func))
    if not fork_available():
        raise IsolationUnavailableError(name, sys.platform)
    started = time.monotonic()
    arguments: Dict[str, Any] = dict(kwargs or {})

    def hard_timeout() -> None:
        raise HardTimeoutError(HARD_TIMEOUT_TEXT, hard_timeout_s, time.monotonic() - started)

    child = fork_task(lambda: func(**arguments), label=name)
    return wait_for_child(
        child,
        deadline=started + hard_timeout_s,
        kill_grace_s=kill_grace_s,
        heartbeat_s=heartbeat_s,
        on_heartbeat=on_heartbeat,
        on_deadline=hard_timeout,
    )
