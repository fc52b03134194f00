"""Shutdown: stop signals before the loop starts, and the stop controller of a running worker.

A stop signal only sets a flag (logging and network calls happen in the
loop). The first is a warm stop: polling ends and the running task may go on
for the grace; the second is a cold stop: the task is stopped at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from types import FrameType
from typing import Callable, Iterator, Optional

from ..errors import WorkerShutdownError

logger = logging.getLogger(__name__)

_early_signals = 0


def _record_early_signal(signum: int, frame: Optional[FrameType]) -> None:
    global _early_signals
    _early_signals += 1


def record_early_signals() -> None:
    """Until a Worker or Supervisor takes over, SIGTERM/SIGINT are only counted.

    Importing the app and checking the queue take a moment; a stop that
    arrives then (ECS scaling in just after a start) must end the worker
    cleanly (exit 0), not kill it with the default action.
    """
    global _early_signals
    _early_signals = 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _record_early_signal)


def take_early_signals() -> int:
    """How many stop signals arrived before the loop's own handlers; resets the count."""
    global _early_signals
    count, _early_signals = _early_signals, 0
    return count


class StopController:
    """Warm and cold stop and the grace clock of one worker process.

    Written from signal handlers, so every change is a plain assignment. A
    ``listener`` (set by the running task's execution) is called after each
    request, in the signal handler: it may only re-arm a timer or set a flag.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.signals = 0
        self.requested_at: Optional[float] = None
        self.listener: Optional[Callable[[], None]] = None
        self.last_signal: Optional[int] = None
        self.announced = 0  # how many of the stops were logged (see announce)

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self.signals > 0

    @property
    def cold(self) -> bool:
        """True after a second stop (or a cold one): the task is stopped at once."""
        return self.signals > 1

    def request(self, cold: bool = False) -> None:
        """Begin a warm stop (or a cold one) as if SIGTERM arrived (twice)."""
        if self.requested_at is None:
            self.requested_at = time.monotonic()
        self.signals = max(self.signals + 1, 2 if cold else 1)
        listener = self.listener
        if listener is not None:
            listener()

    def interrupt_at(self) -> Optional[float]:
        """When (``time.monotonic()``) a running task must be stopped; None without a stop."""
        if self.requested_at is None:
            return None
        if self.cold:
            return self.requested_at
        return self.requested_at + self.grace_s

    def must_interrupt(self) -> bool:
        """Whether the running task must be stopped now."""
        at = self.interrupt_at()
        return at is not None and time.monotonic() >= at

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT request a stop while inside; counts early signals in; main thread.

        The previous handlers are put back on the way out.
        """
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            signal.signal(sig, self._on_signal)
        try:
            for _ in range(take_early_signals()):
                self.request()
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        # Only flags here; the running task's execution delivers the stop.
        self.last_signal = signum
        self.request()

    def announce(self) -> None:
        """Log each stop once: INFO for the warm stop, WARNING for the cold one.

        Called from the poll loop and the isolated task's wait loop, never
        from a signal handler; a stop is never an error and never notified.
        """
        while self.announced < self.signals:
            self.announced += 1
            cause = "a stop was requested"
            if self.last_signal is not None:
                cause = f"{signal.Signals(self.last_signal).name} received"
            if self.announced == 1 and not self.cold:
                logger.info(
                    "worker %d: %s: warm stop; no new task, a running task has %.1f s "
                    "to finish (or checkpoint and return) before it is stopped and its "
                    "message handed back (continued, if it saved a checkpoint)",
                    os.getpid(),
                    cause,
                    self.grace_s,
                )
            else:
                logger.warning(
                    "worker %d: %s: cold stop; a running task is stopped now and its "
                    "message handed back",
                    os.getpid(),
                    cause,
                )
                self.announced = self.signals

    def error(self) -> WorkerShutdownError:
        """The error that stops the running task."""
        return WorkerShutdownError("cold stop" if self.cold else "shutdown grace expired")
