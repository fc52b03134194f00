"""When each timed event beside a running task falls due: computed here, once, for both strategies.

Four events: the next heartbeat (every ``heartbeat_s`` seconds), the hard
deadline, a worker's stop, and a worker's chores (batched deletes, heartbeats
of prefetched messages). The signal-mode timer
(:class:`~sqstaskmaster.run.timer.SignalTimer`) arms its interval timer for
:meth:`Schedule.next_at`; the forked task's wait loop
(:func:`~sqstaskmaster.run.waiting.wait_for_child`) waits until then. Both
ask the same questions (``deadline_due``, ``heartbeat_due``, ``stop_due``,
``chores_due``) when they wake. All times are ``time.monotonic()`` values.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

When = Callable[[], Optional[float]]


class Schedule:
    """The next heartbeat, the deadline, a stop and the chores of one running task.

    ``deadline`` is a value or a callable asked again each time (a deadline
    that moves is followed). ``stop_at()`` and ``chore_at()`` say when a stop
    or the chores fall due (None: not now). Without ``heartbeat_s`` there are
    no heartbeats. While ``chores_paused`` (a run of them is on) the chores are
    left out.
    """

    def __init__(
        self,
        heartbeat_s: Optional[float],
        deadline: Union[float, Callable[[], float]],
        stop_at: Optional[When] = None,
        chore_at: Optional[When] = None,
    ) -> None:
        if heartbeat_s is not None and heartbeat_s <= 0:
            raise ValueError(f"Heartbeat interval must be positive, got {heartbeat_s!r} seconds")
        self.heartbeat_s = None if heartbeat_s is None else float(heartbeat_s)
        self._deadline: Union[float, Callable[[], float]] = (
            deadline if callable(deadline) else float(deadline)
        )
        self.next_heartbeat: Optional[float] = None
        self.stop_at = stop_at
        self.chore_at = chore_at
        self.chores_paused = False

    @property
    def deadline(self) -> float:
        """The hard deadline as it stands now."""
        source = self._deadline
        return float(source()) if callable(source) else source

    @deadline.setter
    def deadline(self, value: float) -> None:
        self._deadline = float(value)

    def begin(self, now: float, next_heartbeat: Optional[float] = None) -> None:
        """Count the heartbeats from ``now`` (or from a ``next_heartbeat`` already due)."""
        if self.heartbeat_s is None:
            self.next_heartbeat = None
        elif next_heartbeat is not None:
            self.next_heartbeat = next_heartbeat
        else:
            self.next_heartbeat = now + self.heartbeat_s

    def stop_time(self) -> Optional[float]:
        return None if self.stop_at is None else self.stop_at()

    def chore_time(self) -> Optional[float]:
        if self.chore_at is None or self.chores_paused:
            return None
        return self.chore_at()

    def deadline_due(self, now: float) -> bool:
        return now >= self.deadline

    def heartbeat_due(self, now: float) -> bool:
        """Whether a heartbeat is due; if so, the next is counted on (one period, no drift)."""
        beat, period = self.next_heartbeat, self.heartbeat_s
        if beat is None or period is None or now < beat:
            return False
        while beat <= now:
            beat += period
        self.next_heartbeat = beat
        return True

    def stop_due(self, now: float) -> bool:
        at = self.stop_time()
        return at is not None and now >= at

    def chores_due(self, now: float) -> bool:
        at = self.chore_time()
        return at is not None and now >= at

    def next_at(self, stop: bool = True, chores: bool = True) -> float:
        """When the nearest event falls due (past, when one is already due)."""
        events = [self.deadline, self.next_heartbeat]
        if stop:
            events.append(self.stop_time())
        if chores:
            events.append(self.chore_time())
        return min(event for event in events if event is not None)
