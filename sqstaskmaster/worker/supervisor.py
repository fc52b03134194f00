"""Supervisor: N worker processes on one machine, restarted when they die.

The parent does no SQS work. Each worker process is forked, moves to its own
process group (so a terminal's Ctrl-C reaches only the parent, which passes
it on once) and makes its own boto3 resource. The parent:

- restarts a worker process that ends while the parent is not shutting down,
  whatever its exit code (0 included: a task may end its process), after a
  short pause that grows if it keeps dying; the one exception is a worker
  whose burst ended (burst mode), which it reports through a shared flag;
- passes each SIGTERM/SIGINT it gets on to every worker as SIGTERM (the first
  is a warm stop, the second a cold stop);
- with ``spot_notice``, polls for an EC2 Spot interruption notice from its
  wait loop (:mod:`sqstaskmaster.ops.spot`) and passes one on as a warm
  stop; the first SIGTERM/SIGINT after it (ECS draining the instance, the OS
  shutting down) joins that warm stop, and only a second is the cold stop;
- exits 0 once every worker stopped cleanly; if some worker still runs
  ``shutdown_grace_s`` + :data:`STOP_MARGIN_S` after the first signal (or
  notice), it is killed and the parent exits with ``RET_KILLED``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.connection import wait
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ..ops import metrics
from ..ops.ecs import ProtectionState, SharedProtection, SlotProtection
from ..ops.spot import SpotNotice
from .exitcodes import RET_ERROR, RET_KILLED, RET_OK
from .sharing import freeze_for_fork, thaw
from .shutdown import record_early_signals, take_early_signals

logger = logging.getLogger(__name__)

# Extra seconds, past the shutdown grace, that a worker gets to kill its task
# and hand back its message before the parent kills it.
STOP_MARGIN_S = 5.0
RESTART_PAUSE_S = 0.5
MAX_RESTART_PAUSE_S = 30.0
# A worker that lived this long before dying restarts without delay growth.
STABLE_AFTER_S = 30.0
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def resolve_processes(processes: Union[int, str]) -> int:
    """The number of worker processes: an int >= 1, or ``"auto"`` for the CPU count."""
    if isinstance(processes, str):
        if processes.strip().lower() == "auto":
            return max(1, os.cpu_count() or 1)
        try:
            processes = int(processes)
        except ValueError:
            raise ValueError(f"processes must be a whole number or 'auto', got {processes!r}")
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes!r}")
    return processes


class Slot:
    """What one worker process gets from its supervisor: its number, its share of
    the ECS scale-in protection (None when off), and a way to report that its
    burst ended (then it is not restarted; an exit code alone cannot say it, since
    a task may end its process with any code)."""

    def __init__(self, index: int, burst_flag: Any, protection: Optional[SlotProtection]) -> None:
        self.index = index
        self.protection = protection
        self._burst_flag = burst_flag

    def report_burst_ended(self) -> None:
        """This process stops for good: its burst (``--burst-*``) ended."""
        self._burst_flag.value = 1


def _child_main(run_one: Callable[[Slot], int], slot: Slot) -> None:
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    # Drop the parent's handlers; a stop passed on before the worker installs
    # its own is counted and honoured by it. Until now the stop signals were
    # blocked (see Supervisor._start): one sent in between waited, pending.
    record_early_signals()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    metrics.in_forked_worker()
    sys.exit(run_one(slot))


class Supervisor:
    """Runs ``count`` processes of ``run_one(slot)``; :meth:`run` returns the exit code.

    ``run_one`` (a worker's poll loop) runs in each forked process and returns
    its exit code; ``shutdown_grace_s`` is the grace each one gives its task.
    ``protection`` is the container's ECS scale-in protection, owned here:
    protected while any process runs a task. ``metrics`` is the ``(port,
    host)`` of the one Prometheus endpoint for every process, or None.
    ``spot_notice`` polls for a Spot interruption notice, or None: a notice
    is a warm stop of every worker, which the next SIGTERM joins.
    """

    def __init__(
        self,
        run_one: Callable[[Slot], int],
        count: int,
        shutdown_grace_s: float = 25.0,
        *,
        protection: Optional[ProtectionState] = None,
        metrics_address: Optional[Tuple[int, str]] = None,
        spot_notice: Optional[SpotNotice] = None,
    ) -> None:
        self.run_one = run_one
        self.shutdown_grace_s = shutdown_grace_s
        self.metrics_address = metrics_address
        self.spot_notice = spot_notice
        self.count = count
        self._context = multiprocessing.get_context("fork")
        self._children: Dict[int, Any] = {}
        self._burst_flags: Dict[int, Any] = {}
        self._started_at: Dict[int, float] = {}
        self._pauses: Dict[int, float] = {}
        self._signals = 0  # stops to pass on: see _count_stop
        self._forwarded = 0
        self._received = 0  # SIGTERMs and SIGINTs
        self._first_signal = signal.SIGTERM
        self._noticed = False
        self._joined_logged = False
        self._stop_at: Optional[float] = None
        self.restarts = 0
        # ECS scale-in protection: this one container is one ECS task, so the
        # supervisor owns its state, protected while any worker process is busy.
        self.protection = SharedProtection(protection, count) if protection else None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._received += 1
        if self._received == 1:
            self._first_signal = signal.Signals(signum)
        self._count_stop()

    def _count_stop(self) -> None:
        """Count the stops to pass on: one per signal, and a Spot notice is a first one.

        A notice does not add to the signals: the SIGTERM that follows it
        joins its warm stop (its tasks keep the grace to checkpoint), and only
        a second signal is cold. The kill deadline counts from the first stop.
        """
        self._signals = max(self._received, 1 if self._noticed else 0)
        if self._signals and self._stop_at is None:
            self._stop_at = time.monotonic()

    def _poll_spot_notice(self, now: float) -> None:
        """Poll for a Spot interruption notice when due; on one, start a warm stop."""
        if self.spot_notice is None or self._signals:
            return
        notice = self.spot_notice.poll(now)
        if notice is None:
            return
        logger.warning(
            "spot interruption notice: %s at %s; warm stop of every worker process",
            notice.action,
            notice.time,
        )
        self._noticed = True
        self._count_stop()
        self._forward()

    def _start(self, slot: int) -> None:
        burst_ended = self._context.RawValue("b", 0)
        share = None if self.protection is None else self.protection.for_slot(slot)
        process = self._context.Process(
            target=_child_main,
            args=(self.run_one, Slot(slot, burst_ended, share)),
            name=f"sqstaskmaster-worker-{slot}",
        )
        self._burst_flags[slot] = burst_ended
        # Blocked across the fork: the new worker would otherwise run the
        # parent's handler, on its own copy, until it installs its own, and a
        # stop passed on to it in that moment would be lost.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        try:
            if process.pid:
                os.setpgid(process.pid, process.pid)
        except OSError:
            pass  # the child did it first, or already exited
        self._children[slot] = process
        self._started_at[slot] = time.monotonic()
        logger.info("supervisor: worker %d started as pid %s", slot, process.pid)

    def _forward(self) -> None:
        if self._noticed and self._received and not self._joined_logged:
            self._joined_logged = True
            logger.info(
                "supervisor: %s after the spot interruption notice: the warm stop goes on",
                self._first_signal.name,
            )
        while self._forwarded < self._signals:
            self._forwarded += 1
            kind = "warm" if self._forwarded == 1 else "cold"
            logger.info("supervisor: signal %d, passing a %s stop on", self._forwarded, kind)
            for process in self._children.values():
                if process.is_alive() and process.pid:
                    try:
                        os.kill(process.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass

    def run(self) -> int:
        """Start the workers and supervise them until all have stopped."""
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            signal.signal(sig, self._on_signal)
        code = RET_OK
        froze = False
        try:
            early = take_early_signals()
            if early:
                logger.info("supervisor: stopped before starting any worker")
                return RET_OK
            if self.metrics_address is not None:
                metrics.serve_multiprocess(*self.metrics_address)
            # The app is imported: its objects are shared from here on (see sharing).
            froze = freeze_for_fork()
            for slot in range(self.count):
                self._start(slot)
            code = self._supervise()
        finally:
            if self.metrics_address is not None:
                metrics.stop_serving()
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            if self.protection is not None:
                self.protection.close()
            thaw(froze)
        logger.info("supervisor: all workers stopped (%d restarts), exit %d", self.restarts, code)
        return code

    def _supervise(self) -> int:
        code = RET_OK
        pending: Dict[int, float] = {}  # slot -> when to restart it
        while self._children or (pending and self._signals == 0):
            self._forward()
            sentinels: List[Any] = [p.sentinel for p in self._children.values()]
            if self.protection is not None:
                sentinels.append(self.protection)
            if sentinels:
                wait(sentinels, timeout=0.1)
            else:
                time.sleep(0.1)
            now = time.monotonic()
            self._poll_spot_notice(now)
            for slot, process in list(self._children.items()):
                if process.is_alive():
                    continue
                process.join()
                del self._children[slot]
                if self.protection is not None:
                    self.protection.clear(slot)
                if process.pid:
                    metrics.process_died(process.pid)
                exitcode = process.exitcode
                if self._signals:
                    logger.info("supervisor: worker %d exited with %s", slot, exitcode)
                    if exitcode != 0 and code == RET_OK:
                        code = RET_KILLED if exitcode == -signal.SIGKILL else RET_ERROR
                    continue
                if exitcode == 0 and self._burst_flags[slot].value:
                    logger.info("supervisor: worker %d ended its burst; not restarted", slot)
                    continue
                lived = now - self._started_at[slot]
                pause = self._pauses.get(slot, RESTART_PAUSE_S)
                pause = RESTART_PAUSE_S if lived > STABLE_AFTER_S else pause
                self._pauses[slot] = min(pause * 2, MAX_RESTART_PAUSE_S)
                logger.error(
                    "supervisor: worker %d (pid %s) died with %s after %.1f s while not "
                    "stopping; restarting in %.1f s",
                    slot,
                    process.pid,
                    _describe_exit(exitcode),
                    lived,
                    pause,
                )
                pending[slot] = now + pause
            if self.protection is not None:
                self.protection.serve(before_ack=self._forward)
            if self._signals:
                pending.clear()
            for slot, when in list(pending.items()):
                if now >= when:
                    del pending[slot]
                    self.restarts += 1
                    metrics.worker_restarted()
                    self._start(slot)
            if self._stop_at is not None and self._children:
                limit = self.shutdown_grace_s + STOP_MARGIN_S
                if now - self._stop_at > limit:
                    for process in self._children.values():
                        logger.error(
                            "supervisor: worker pid %s still running %.1f s after the stop; "
                            "killing it",
                            process.pid,
                            limit,
                        )
                        if process.pid:
                            try:
                                os.killpg(process.pid, signal.SIGKILL)
                            except (ProcessLookupError, PermissionError):
                                process.kill()
                    code = RET_KILLED
        return code


def _describe_exit(exitcode: Optional[int]) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def supervise_processes(
    run_one: Callable[[Slot], int],
    count: int,
    shutdown_grace_s: float = 25.0,
    **options: Any,
) -> int:
    """Run ``count`` processes of ``run_one(slot)``; returns the exit code (see Supervisor)."""
    return Supervisor(run_one, count, shutdown_grace_s, **options).run()
