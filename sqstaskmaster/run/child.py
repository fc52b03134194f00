"""One forked child process that runs a task: fork, report over a pipe, kill, reap.

The child runs in its own process group (so a kill reaches every process the
task started), with Python's signal handlers reset to the defaults, and
reports exactly once, as one JSON document on a pipe::

    {"ok": true, "result": <the task's return value>}
    {"ok": true, "result": null, "dropped": "<why the return value could not be sent>"}
    {"ok": false, "type": "<exception type>", "module": "...", "qualname": "...",
     "message": "...", "traceback": "..."}

then leaves with ``os._exit`` (no atexit handlers, no flushing of objects it
inherited, such as boto3's connections, which belong to the parent).

The parent never reaps the child before it has swept the child's process
group: exit is detected without reaping (a pidfd, or ``waitid(WNOWAIT)``), so
the group id cannot be reused by an unrelated process while it is signalled.
This module knows nothing about SQS; :mod:`sqstaskmaster.isolation` builds the
heartbeat and the hard deadline on top of it.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import selectors
import signal
import sys
import time
import traceback
from typing import Any, Callable, List, NoReturn, Optional

from ..errors import ChildDiedError, TaskControl
from ..run import reaper as task_reaper
from ..run.child_error import (
    MAX_ERROR_TEXT,
    MAX_RESULT_BYTES,
    child_task_error,
    error_report,
    result_report,
)
from ..run.fork_state import reset_signals

logger = logging.getLogger(__name__)

# What the parent keeps of a report; anything beyond is a broken report.
_MAX_REPORT_BYTES = MAX_RESULT_BYTES + 4 * MAX_ERROR_TEXT
# Without a pidfd the parent polls for the child's exit this often (seconds).
_POLL_S = 0.005

EXIT_OK = 0
EXIT_TASK_RAISED = 1
# The child could not report at all (EX_SOFTWARE).
EXIT_REPORT_FAILED = 70

_PR_SET_PDEATHSIG = 1
_prctl: Optional[Callable[..., int]] = None
_prctl_looked_up = False


def fork_available() -> bool:
    """Whether this platform can fork (process isolation needs it)."""
    return hasattr(os, "fork")


def _lookup_prctl() -> Optional[Callable[..., int]]:
    """libc's prctl, looked up in the parent (once) so the child only calls it."""
    global _prctl, _prctl_looked_up
    if not _prctl_looked_up:
        _prctl_looked_up = True
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _prctl = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):
                logger.debug("prctl unavailable; children will not die with their parent")
    return _prctl


class ForkedChild:
    """Fork a child that calls ``target()`` and reports its result or exception.

    ``label`` names the task in log lines (for example "MyHandler message 1234").
    With ``drop_unsendable_result``, a return value that cannot be sent as JSON
    (or is over MAX_RESULT_BYTES) is dropped with a warning and the outcome is
    None; without it, that is a ChildTaskError. The parent must end with
    :meth:`reap` (directly, or through :meth:`terminate`), then read :meth:`outcome`.
    """

    def __init__(
        self,
        target: Callable[[], Any],
        *,
        label: str = "task",
        drop_unsendable_result: bool = False,
    ) -> None:
        self.label = label
        prctl = _lookup_prctl()
        parent_pid = os.getpid()
        # Unflushed output would otherwise be written twice, once by each process.
        _flush_std_streams()
        reader, writer = os.pipe()
        task_reaper.before_task_fork()
        try:
            pid = os.fork()
        except BaseException:
            os.close(reader)
            os.close(writer)
            raise
        finally:
            task_reaper.after_task_fork()
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            _child_main(reader, writer, target, parent_pid, prctl, drop_unsendable_result)
        os.close(writer)
        self.pid = pid
        self.started_at = time.monotonic()
        try:
            self._watch(reader)
        except BaseException:
            _kill_and_wait(pid)
            os.close(reader)
            raise
        logger.info("%s: started in child process %s (process group %s)", label, pid, pid)

    def _watch(self, reader: int) -> None:
        """The parent's bookkeeping right after fork."""
        pid = self.pid
        # Both sides set the group, so a kill right after fork cannot miss it.
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child already did it, or already exited
        self._reader: Optional[int] = reader
        os.set_blocking(reader, False)
        self._chunks: List[bytes] = []
        self._size = 0
        self._overflow = False
        self._exited = False
        self._reaped = False
        self._wait_status: Optional[int] = None
        self._pidfd = open_pidfd(pid)
        self._selector = selectors.DefaultSelector()
        self._selector.register(reader, selectors.EVENT_READ, "report")
        if self._pidfd is not None:
            self._selector.register(self._pidfd, selectors.EVENT_READ, "exit")

    # -- state ----------------------------------------------------------------

    @property
    def reaped(self) -> bool:
        """True once the child has been waited for and its process group swept."""
        return self._reaped

    def exited(self) -> bool:
        """Whether the child process has ended (it is not reaped by this call)."""
        if self._exited:
            return True
        waitid = getattr(os, "waitid", None)
        if waitid is not None:
            try:
                info = waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
                self._exited = True
            if info is not None:
                self._exited = True
        else:  # no waitid (macOS): reap now and remember the status
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid:
                self._exited = True
                self._wait_status = status
        return self._exited

    def alive(self) -> bool:
        """Whether the child process is still running."""
        return not self.exited()

    # -- waiting --------------------------------------------------------------

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` seconds for the child to end, reading its report.

        Returns whether it has ended.
        """
        end = time.monotonic() + max(timeout_s, 0.0)
        while True:
            if self.exited():
                return True
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            if self._pidfd is None:
                remaining = min(remaining, _POLL_S)
            for key, _events in self._selector.select(remaining):
                if key.data == "report":
                    self._read_report()

    def _read_report(self) -> None:
        """Read what the pipe holds now; stop watching it at end of file."""
        reader = self._reader
        if reader is None:
            return
        while True:
            try:
                chunk = os.read(reader, 65536)
            except BlockingIOError:
                return
            if not chunk:
                self._selector.unregister(reader)
                os.close(reader)
                self._reader = None
                return
            if self._size + len(chunk) > _MAX_REPORT_BYTES:
                self._overflow = True
            else:
                self._chunks.append(chunk)
                self._size += len(chunk)

    # -- stopping -------------------------------------------------------------

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's process group (the child and what it started)."""
        if self._reaped:
            return
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self, grace_s: float) -> None:
        """SIGTERM to the process group, up to ``grace_s`` seconds for the child, then reap.

        :meth:`reap` SIGKILLs whatever is left of the group.
        """
        if self._reaped:
            return
        if not self.exited():
            logger.warning(
                "%s: sending SIGTERM to process group %s (grace %.1f s)",
                self.label,
                self.pid,
                grace_s,
            )
            self.signal_group(signal.SIGTERM)
            if not self._await_exit(grace_s):
                logger.warning(
                    "%s: child process %s still running %.1f s after SIGTERM; SIGKILL",
                    self.label,
                    self.pid,
                    grace_s,
                )
            self._stopped()
        self.reap()

    def _await_exit(self, grace_s: float) -> bool:
        """Wait up to ``grace_s`` for the child process to end after SIGTERM; True if it did."""
        return self.wait(grace_s)

    def _stopped(self) -> None:
        """Called once a running task was stopped (SIGTERM sent), before the reap."""

    def reap(self) -> None:
        """SIGKILL what is left of the process group, wait for the child, close the pipe."""
        if self._reaped:
            return
        self.signal_group(signal.SIGKILL)
        if self._wait_status is None:
            try:
                _pid, status = os.waitpid(self.pid, 0)
                self._wait_status = status
            except ChildProcessError:
                logger.error("%s: child process %s was reaped elsewhere", self.label, self.pid)
        task_reaper.forget_group(self.pid)
        self._reaped = True
        self._exited = True
        self._read_report()
        if self._reader is not None:
            self._selector.unregister(self._reader)
            os.close(self._reader)
            self._reader = None
        if self._pidfd is not None:
            self._selector.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self._selector.close()
        logger.debug(
            "%s: child process %s reaped after %.3f s",
            self.label,
            self.pid,
            time.monotonic() - self.started_at,
        )

    # -- the result -----------------------------------------------------------

    def outcome(self) -> Any:
        """The task's return value; or raise ChildTaskError / ChildDiedError. After reap().

        A task's exception is raised as its own class (also a ChildTaskError)
        where :mod:`sqstaskmaster.run.child_error` can rebuild it.
        """
        if not self._reaped:
            raise RuntimeError(f"{self.label}: outcome() called before the child was reaped")
        report = self._decode_report()
        if report is not None:
            if report.get("ok") is True:
                if report.get("dropped"):
                    logger.warning(
                        "%s: the task's return value is dropped (the task still counts as "
                        "done): %s",
                        self.label,
                        report["dropped"],
                    )
                return report.get("result")
            control = TaskControl.from_report(report.get("control"))
            if control is not None:
                logger.info("%s: the task in child process %s: %s", self.label, self.pid, control)
                raise control
            error = child_task_error(
                report.get("module"),
                report.get("qualname"),
                str(report.get("message")),
                str(report.get("traceback")),
                str(report.get("type")),
                self.pid,
            )
            error.rejected = report.get("rejected") is True
            logger.error(
                "%s: task raised %s in child process %s:\n%s",
                self.label,
                error.type_name,
                self.pid,
                error.traceback,
            )
            raise error
        raise self._death_error()

    def _decode_report(self) -> Optional[dict]:
        if self._overflow:
            logger.error("%s: child process %s sent an oversized report", self.label, self.pid)
            return None
        if not self._chunks:
            return None
        try:
            report = json.loads(b"".join(self._chunks).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            logger.exception("%s: child process %s sent a broken report", self.label, self.pid)
            return None
        return report if isinstance(report, dict) else None

    def _death_error(self) -> ChildDiedError:
        status = self._wait_status if self._wait_status is not None else 0
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = f"signal {number}"
            error = ChildDiedError(self.pid, signal_name=name, signal_number=number)
        else:
            error = ChildDiedError(self.pid, exit_code=os.waitstatus_to_exitcode(status))
        logger.error("%s: %s", self.label, error)
        return error


def _kill_and_wait(pid: int) -> None:
    """Last resort when the parent's setup failed right after fork: no zombie, no orphan."""
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    task_reaper.forget_group(pid)


# -- the child's side ----------------------------------------------------------


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # a closed or broken stream must not stop the fork or the exit
            pass


def open_pidfd(pid: int) -> Optional[int]:
    """A file descriptor that becomes readable when child ``pid`` exits (Linux), or None."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return int(pidfd_open(pid))
    except OSError:
        return None


def enter_task_child(parent_pid: int, prctl: Optional[Callable[..., int]]) -> None:
    """A task child's first steps: its own process group, death with its parent,
    default signal handlers, and the garbage collector off what the parent had
    (so the child's collections never copy it)."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    task_reaper.list_task_group()
    _die_with_parent(parent_pid, prctl)
    reset_signals()
    gc.freeze()


def _die_with_parent(parent_pid: int, prctl: Optional[Callable[..., int]]) -> None:
    """Linux: SIGKILL this child if the parent dies (nobody would stop or reap it)."""
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(EXIT_REPORT_FAILED)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _child_main(
    reader: int,
    writer: int,
    target: Callable[[], Any],
    parent_pid: int,
    prctl: Optional[Callable[..., int]],
    drop_unsendable_result: bool,
) -> NoReturn:  # pragma: no cover - runs in the child
    code = EXIT_REPORT_FAILED
    try:
        os.close(reader)
        enter_task_child(parent_pid, prctl)
        try:
            result = target()
        except BaseException as error:
            report, outcome_code = error_report(error), EXIT_TASK_RAISED
        else:
            report = result_report(result, drop_unsendable_result)
            outcome_code = EXIT_OK
        _write_all(writer, report)
        os.close(writer)
        code = outcome_code
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        _flush_std_streams()
        os._exit(code)
