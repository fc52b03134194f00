"""The signal-mode timer: heartbeats and a hard deadline from one ITIMER_REAL.

0.0.11 armed ``signal.alarm(alarm_timeout)`` and only looked at the hard
timeout when that alarm rang, so a task overran its deadline by up to
``alarm_timeout`` seconds. Here one interval timer is always armed for the
*nearer* of the next heartbeat and the deadline, with ``setitimer``'s
microsecond resolution, so the deadline fires on time whatever the heartbeat
period is.

The timer is armed by :meth:`SignalTimer.start` and disarmed by
:meth:`SignalTimer.stop`, which also restores the SIGALRM handler and any
pending interval timer that were there before. A SIGALRM that arrives after
``stop`` began, or while a protected frame (the handler's ``__exit__``) is
running, is ignored: once the body has finished, nothing raises. One that
lands in ``__enter__`` is deferred by a millisecond, into the body.

A worker's stop goes through the same timer (``stop_at`` / ``on_stop``): it
is armed for the nearest of heartbeat, deadline and stop, so the stop of a
task in signal mode needs no thread either, and obeys the same protection.
So do a worker's chores (``chore_at`` / ``on_chore``: flushing batched
deletes, heartbeats of prefetched messages; :mod:`sqstaskmaster.worker.batching`).
While a run of them is in flight (in a helper thread) ``chore_at()`` says
None and the timer is armed for the next real event only; the run's end
calls :meth:`SignalTimer.chores_ended`, which fires at once only if the
chores are due again before that event. So the task sees a handful of
signals between two heartbeats, however long the chores take.

When each event falls due is computed by :class:`~sqstaskmaster.run.schedule.Schedule`,
as for the forked task's wait loop.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import CodeType, FrameType
from typing import Any, Callable, FrozenSet, Optional, Union

from .schedule import Schedule

logger = logging.getLogger(__name__)

# setitimer(…, 0) disarms the timer, so "fire now" is spelled as a tiny delay.
_SOONEST_S = 1e-6
# Once the deadline fired, fire again this often until the body has left:
# libraries that catch TimeoutError (urllib3 treats it as a socket timeout and
# retries) must not be able to swallow the hard timeout.
DEADLINE_REPEAT_S = 0.5
# An alarm that lands in a protected frame (the handler's __enter__ or
# __exit__) is looked at again after this delay.
PROTECTED_RETRY_S = 0.001
# Once a worker's stop was delivered, deliver it again this often until the
# body has left (task code may catch and swallow it).
STOP_REPEAT_S = 0.5


def _let_pending_handlers_run() -> None:
    """A Python-level call: CPython runs tripped signal handlers on entry."""


AlarmCallback = Callable[[int, Optional[FrameType]], None]


class SignalTimer:
    """Calls ``on_heartbeat`` every ``interval_s`` seconds and ``on_deadline`` at ``deadline``.

    ``deadline`` is a ``time.monotonic()`` value, or a callable returning one
    that is asked again at each firing (so a deadline that moves is followed).
    The callbacks run inside the SIGALRM handler, in the main thread,
    interrupting whatever Python code is running; ``on_deadline`` is expected
    to raise. With ``on_alarm`` instead, every firing that has a heartbeat or
    the deadline due calls ``on_alarm(signum, frame)``, which decides (that is
    how :class:`~sqstaskmaster.message_handler.MessageHandler` routes each
    firing through its ``_handle_alarm``). ``protected`` holds code objects
    during whose execution (anywhere on the stack) the timer defers itself, so
    an alarm cannot raise out of the handler's enter or exit path.
    ``stop_at()`` (a ``time.monotonic()`` value or None) is when a worker's
    stop falls due; ``on_stop()`` (expected to raise) is called then, and
    again every :data:`STOP_REPEAT_S` while heartbeats go on. ``on_notice()``
    runs at each firing (it logs a new stop once). ``on_chore()`` runs when
    ``chore_at()`` (a ``time.monotonic()`` value or None) falls due, after the
    heartbeat if both are; a firing that lands while it runs never starts another.
    """

    def __init__(
        self,
        interval_s: float,
        deadline: Union[float, Callable[[], float]],
        on_heartbeat: Optional[Callable[[], None]] = None,
        on_deadline: Optional[Callable[[], None]] = None,
        *,
        on_alarm: Optional[AlarmCallback] = None,
        owner: str = "MessageHandler",
        protected: FrozenSet[CodeType] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
        stop_at: Optional[Callable[[], Optional[float]]] = None,
        on_stop: Optional[Callable[[], None]] = None,
        on_notice: Optional[Callable[[], None]] = None,
        chore_at: Optional[Callable[[], Optional[float]]] = None,
        on_chore: Optional[Callable[[], None]] = None,
    ) -> None:
        if on_alarm is None and (on_heartbeat is None or on_deadline is None):
            raise TypeError(
                f"{owner}: SignalTimer needs on_alarm, or both on_heartbeat and on_deadline"
            )
        # When each event falls due: the same computation as the forked wait loop's.
        self.schedule = Schedule(
            interval_s, deadline, stop_at=stop_at if on_stop is not None else None
        )
        self._on_heartbeat = on_heartbeat
        self._on_deadline = on_deadline
        self._on_alarm = on_alarm
        # How many of our callbacks are running (a slow one can be re-entered).
        self._callback_depth = 0
        self._owner = owner
        self._protected = protected
        self._clock = clock
        self._on_stop = on_stop
        self._on_notice = on_notice
        self._on_chore: Optional[Callable[[], None]] = None
        if chore_at is not None and on_chore is not None:
            self.set_chores(chore_at, on_chore)
        # Held while the timer is disarmed, and by a helper thread re-arming it.
        self._arm_lock = threading.RLock()
        self._active = False
        self._restore_pending = False
        self._started_at = 0.0
        self._previous_handler: Any = None
        self._previous_timer = (0.0, 0.0)

    @property
    def deadline(self) -> float:
        """The hard deadline as a ``time.monotonic()`` value, as it stands now."""
        return self.schedule.deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self.schedule.deadline = value

    @property
    def active(self) -> bool:
        """True between start() and stop()."""
        return self._active

    def start(self) -> None:
        """Install the SIGALRM handler and arm the timer; main thread only."""
        # Imported here: errors imports nothing from us, but keep the timer's
        # import graph flat for the child processes that import it.
        from ..errors import HandlerThreadError

        if threading.current_thread() is not threading.main_thread():
            raise HandlerThreadError(self._owner, threading.current_thread().name)
        if self._active:
            raise RuntimeError(f"{self._owner}: timer already started")
        now = self._clock()
        self._started_at = now
        self.schedule.begin(now)
        self._previous_handler = signal.getsignal(signal.SIGALRM)
        self._previous_timer = signal.getitimer(signal.ITIMER_REAL)
        signal.signal(signal.SIGALRM, self._handle)
        self._active = True
        self._arm(now)

    def stop(self) -> None:
        """Disarm, then put back the previous handler and what was left of its timer."""
        self.disarm()
        self.restore()

    def disarm(self) -> None:
        """Stop firing; our (now silent) handler stays installed until :meth:`restore`.

        The handler's exit path disarms first and restores last, so a timer
        the caller had pending cannot fire in the middle of the delete.
        """
        if not self._active:
            return
        with self._arm_lock:  # no helper thread re-arms it past this point
            self._active = False
            self._restore_pending = True
            signal.setitimer(signal.ITIMER_REAL, 0)
        # An alarm delivered just before the disarm has tripped the C-level
        # flag; let it reach our (now inactive) handler rather than the
        # restored one.
        _let_pending_handlers_run()

    def restore(self) -> None:
        """Put back the previous SIGALRM handler and what is left of its timer."""
        if self._active:
            self.disarm()
        if not self._restore_pending:
            return
        self._restore_pending = False
        previous = self._previous_handler
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
        remaining, interval = self._previous_timer
        if remaining > 0:
            left = remaining - (self._clock() - self._started_at)
            signal.setitimer(signal.ITIMER_REAL, max(left, _SOONEST_S), interval)

    def rearm(self) -> None:
        """Count the next heartbeat ``interval_s`` from now, as a fresh alarm would.

        For a heartbeat made outside the timer (a direct ``_handle_alarm``
        call). Inside one of our own firings it does nothing: the timer
        re-armed itself before calling back, keeping its period without drift.
        """
        if not self._active or self._callback_depth:
            return
        now = self._clock()
        self.schedule.begin(now)
        self._arm(now)

    def refresh(self) -> None:
        """Fire at once, then re-arm for the nearest event (a stop was just requested).

        Safe in a signal handler: one setitimer call. The firing logs the new
        stop (``on_notice``) and arms for when it falls due.
        """
        if self._active:
            signal.setitimer(signal.ITIMER_REAL, _SOONEST_S)

    def set_chores(
        self, chore_at: Callable[[], Optional[float]], on_chore: Callable[[], None]
    ) -> None:
        """Call ``on_chore()`` whenever ``chore_at()`` (a ``time.monotonic()`` value) has come."""
        self.schedule.chore_at = chore_at
        self._on_chore = on_chore

    def chores_ended(self) -> None:
        """A run of the chores just ended (any thread): arm for their next time, if sooner.

        While a run is on, ``chore_at()`` says None and the timer is armed for
        the next real event only (heartbeat, deadline, stop): no firing polls
        for the run's end. This fires at once if the chores are due before the
        timer would fire; the firing then arms for the nearest event. It never
        arms later than the timer already is, so it cannot delay the deadline.
        """
        with self._arm_lock:
            if not self._active:
                return
            chore = self.schedule.chore_time()
            if chore is None:
                return
            remaining = signal.getitimer(signal.ITIMER_REAL)[0]
            if remaining <= 0 or self._clock() + remaining > chore:
                signal.setitimer(signal.ITIMER_REAL, _SOONEST_S)

    def _arm(self, now: float) -> None:
        chore = self.schedule.chore_time()
        delay = self.schedule.next_at(chores=False) - now
        if chore is not None:
            delay = min(delay, chore - now)
        signal.setitimer(signal.ITIMER_REAL, max(delay, _SOONEST_S))
        if chore is None:
            # A run of the chores that ended since they were asked has called
            # chores_ended before this setitimer, which may have undone its firing.
            chore = self.schedule.chore_time()
            if chore is not None and chore - now < delay:
                signal.setitimer(signal.ITIMER_REAL, max(chore - now, _SOONEST_S))

    def _in_protected_frame(self, frame: Optional[FrameType]) -> bool:
        while frame is not None:
            if frame.f_code in self._protected:
                return True
            frame = frame.f_back
        return False

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if not self._active:
            return
        if self._in_protected_frame(frame):
            # Entering or leaving: look again shortly. If this was the exit
            # path, stop() disarms first and the retry never comes.
            signal.setitimer(signal.ITIMER_REAL, PROTECTED_RETRY_S)
            return
        now = self._clock()
        if self._on_notice is not None:
            self._on_notice()
        schedule = self.schedule
        deadline_due = schedule.deadline_due(now)
        heartbeat_due = stop_due = chore_due = False
        if deadline_due:
            signal.setitimer(signal.ITIMER_REAL, DEADLINE_REPEAT_S)
        else:
            heartbeat_due = schedule.heartbeat_due(now)
            stop_due = schedule.stop_due(now)
            if stop_due:
                # Delivered again every STOP_REPEAT_S until the body lets go;
                # heartbeats go on meanwhile, since a task may catch the stop
                # and run on: its message must stay invisible until it ends.
                wake = min(now + STOP_REPEAT_S, schedule.next_at(stop=False, chores=False))
                signal.setitimer(signal.ITIMER_REAL, max(wake - now, _SOONEST_S))
            else:
                chore_due = schedule.chores_due(now)
                if chore_due:  # marked before re-arming: no firing meanwhile starts another
                    schedule.chores_paused = True
                # Re-arm before the heartbeat's network call, so a slow or failing
                # extension can neither stop later heartbeats nor delay the deadline.
                self._arm(now)
        if not (deadline_due or heartbeat_due or stop_due or chore_due):
            return  # woke a hair early (or only to log a new stop): re-armed for the rest
        self._callback_depth += 1
        try:
            if not (deadline_due or heartbeat_due):
                pass
            elif self._on_alarm is not None:
                self._on_alarm(signum, frame)
            elif deadline_due and self._on_deadline is not None:
                self._on_deadline()
            elif self._on_heartbeat is not None:
                self._on_heartbeat()
            if stop_due and self._on_stop is not None:
                self._on_stop()
            if chore_due and self._on_chore is not None:
                self._on_chore()
        finally:
            self._callback_depth -= 1
            if chore_due:
                schedule.chores_paused = False
        if chore_due and self._active:
            self._arm(self._clock())  # the chore is done: arm for the nearest event again
