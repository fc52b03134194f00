"""Work done beside a running task: a heartbeat, or a run of a worker's chores.

Each runs in a short-lived helper thread (:class:`BackgroundCall`), so a slow
SQS call never delays the hard deadline; :class:`ChoreRunner` keeps one run of
the chores at a time. When no thread can be started (``RuntimeError: can't
start new thread``: a ``pids.max`` limit, often filled by the task's own
processes), the work is done inline instead, by the caller (the isolated
task's wait loop, or the signal-mode timer's SIGALRM handler): the task goes
on, its heartbeats and chores still happen, and one warning per task says so
(:class:`InlineFallback`). Done inline, a slow request can delay the deadline
by as long as it takes (SQS clients' timeouts bound it). An error of the work
is kept for the caller as in a thread; a hard timeout or a worker's stop
raised into it while it runs inline goes on to the task.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Callable, List, Optional, Protocol

from ..errors import HardTimeoutError, WorkerShutdownError

logger = logging.getLogger(__name__)

# While a heartbeat (or an isolated task's chores) runs, the wait loop looks at it this often (s).
HEARTBEAT_POLL_S = 0.02
# On the way out, how long to wait for a heartbeat or chores still in flight (seconds).
HEARTBEAT_JOIN_S = 2.0
# Raised into inline work by the signal-mode timer: they belong to the task, not to the work.
_PASS_THROUGH = (HardTimeoutError, WorkerShutdownError)


class ChoreSource(Protocol):
    """A worker's chores (sqstaskmaster.worker.batching.Chores), as the strategies see them."""

    def due_at(self) -> Optional[float]: ...  # noqa: E704

    def run_due(self) -> None: ...  # noqa: E704


class InlineFallback:
    """One task's note of the helper threads it could not start: one warning per task."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.count = 0

    def note(self, what: str, error: RuntimeError) -> None:
        self.count += 1
        if self.count == 1:
            logger.warning(
                "%s: cannot start a helper thread for the %s (%s); doing it inline, "
                "as for the rest of this task whenever a thread cannot be started",
                self.label,
                what,
                error,
            )


# Helper threads started here that may still run (a fork must wait for them).
_live: List[threading.Thread] = []
# Those of them a fork may routinely meet (a status table write): waited for quietly.
_routine: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_live_lock = threading.Lock()
#: The longest a task fork waits for helper threads still on (seconds); their
#: SQS requests are bounded (sqs.clients), so this is reached only by a hang elsewhere.
FORK_WAIT_S = 120.0


def wait_before_fork(label: str, limit_s: float = FORK_WAIT_S) -> None:
    """Wait for every helper thread still on, so that a task child is forked from
    one thread (a heartbeat or chores run given up on at a task's end may still be
    in a request, or start a status write meanwhile; a fork then could copy a
    lock it holds)."""
    end = time.monotonic() + limit_s
    logged = False
    threads = _alive()
    while threads:
        if not logged:
            logged = True
            routine = all(thread in _routine for thread in threads)
            (logger.debug if routine else logger.warning)(
                "%s: waiting for %d helper thread(s) still on (%s) before forking the task",
                label,
                len(threads),
                ", ".join(thread.name for thread in threads),
            )
        for thread in threads:
            thread.join(max(end - time.monotonic(), 0.0))
        if time.monotonic() >= end:
            break
        threads = _alive()  # one of them may have started another
    still = [thread.name for thread in _alive()]
    if still:
        logger.error(
            "%s: helper thread(s) %s still on after %.0f s; forking anyway",
            label,
            ", ".join(still),
            limit_s,
        )


def _alive() -> List[threading.Thread]:
    with _live_lock:
        _live[:] = [thread for thread in _live if thread.is_alive()]
        return list(_live)


class BackgroundCall:
    """``work()`` in a helper thread, or inline when no thread can be started.

    ``error`` is what ``work`` raised. ``on_done()`` (if given) runs once the
    work is over, in the helper thread (or inline), after ``finished`` turned
    True; ``done`` turns True once the thread has ended too. A ``routine`` call
    (a status table write) is one a task's fork may often wait for: quietly.
    """

    def __init__(
        self,
        work: Callable[[], None],
        label: str,
        fallback: InlineFallback,
        what: str = "heartbeat",
        on_done: Optional[Callable[[], None]] = None,
        routine: bool = False,
    ) -> None:
        self.error: Optional[BaseException] = None
        self.label = f"{what} {label}"
        self._finished = False
        self._on_done = on_done
        self._thread: Optional[threading.Thread] = threading.Thread(
            target=self._run, args=(work,), name=self.label, daemon=True
        )
        try:
            self._thread.start()
        except RuntimeError as error:  # "can't start new thread"
            self._thread = None
            fallback.note(what, error)
            self._inline(work)
        else:
            with _live_lock:
                _live[:] = [thread for thread in _live if thread.is_alive()]
                _live.append(self._thread)
                if routine:
                    _routine.add(self._thread)

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as error:  # handed to the caller, which raises or logs it
            self.error = error
        finally:
            self._end()

    def _inline(self, work: Callable[[], None]) -> None:
        try:
            work()
        except _PASS_THROUGH:
            self._finished = True
            raise
        except Exception as error:  # handed to the caller, as from a thread
            self.error = error
        self._end()

    def _end(self) -> None:
        self._finished = True
        if self._on_done is not None:
            try:
                self._on_done()
            except Exception:
                logger.exception("%s: the call made once it ended failed", self.label)

    @property
    def finished(self) -> bool:
        """The work is over (its thread may still be on its way out)."""
        return self._finished

    @property
    def done(self) -> bool:
        """The work is over and its thread has ended."""
        thread = self._thread
        return self._finished and (thread is None or not thread.is_alive())

    def join(self, timeout_s: Optional[float] = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)


class ChoreRunner:
    """Runs a worker's due chores beside a task, one run at a time.

    ``due_at()`` is when to call ``start()`` next: None while a run is on
    (``busy``), so nothing polls for its end; ``on_done()`` is called when a
    run ends, from its helper thread (the signal-mode timer arms for the
    chores' next time then). ``finish()`` waits for a run still on when the
    task ends, so none is left where the next task forks.
    """

    def __init__(
        self,
        chores: ChoreSource,
        label: str,
        on_done: Optional[Callable[[], None]] = None,
        fallback: Optional[InlineFallback] = None,
    ) -> None:
        self.chores = chores
        self.label = label
        self.on_done = on_done
        self.fallback = fallback if fallback is not None else InlineFallback(label)
        self._call: Optional[BackgroundCall] = None
        self._last: Optional[BackgroundCall] = None  # joined by finish()
        # due_at() is asked from the helper thread too (by on_done): one _end per run.
        self._lock = threading.RLock()

    @property
    def busy(self) -> bool:
        call = self._call
        return call is not None and not call.finished

    def due_at(self) -> Optional[float]:
        call = self._call
        if call is not None and not call.finished:
            return None
        self._end(call)
        return self.chores.due_at()

    def start(self) -> None:
        """Start a run of the chores unless one is on (safe in a signal handler)."""
        call = self._call
        if call is None or call.finished:
            self._end(call)
            self._call = self._last = BackgroundCall(
                self.chores.run_due, self.label, self.fallback, "chores", self.on_done
            )

    def finish(self) -> None:
        call = self._last
        if call is not None and not call.done:
            call.join(HEARTBEAT_JOIN_S)
            if not call.done:
                logger.warning(
                    "%s: the worker's chores (batched deletes, waiting messages' heartbeats) "
                    "still run after %.0f s; going on",
                    self.label,
                    HEARTBEAT_JOIN_S,
                )
                return
        self._end(self._call)

    def _end(self, call: Optional[BackgroundCall]) -> None:
        with self._lock:
            if call is None or call is not self._call:
                return
            self._call = None
        if call.error is not None:
            logger.error("%s: the worker's chores failed: %r", self.label, call.error)
