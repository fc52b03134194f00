"""A task child process: the one fork, and the parent's handle on the process.

Both kinds of task child, a fresh one per task (:mod:`sqstaskmaster.run.fork`)
and a reused one (:mod:`sqstaskmaster.run.reuse_parent`), are forked by
:func:`fork_child` and held by the parent as a :class:`ChildProcess`: its
report pipe (read as :mod:`sqstaskmaster.run.pipes` frames), its exit seen
without reaping it (a pidfd, or ``waitid(WNOWAIT)``), signals to its process
group, and the reap, which first SIGKILLs what is left of the group, so the
group id cannot be reused by an unrelated process while it is signalled.

The child runs in its own process group (so a kill reaches every process the
task started), dies with its parent (Linux), has Python's signal handlers
reset to the defaults, and leaves with ``os._exit`` (no atexit handlers, no
flushing of objects it inherited, such as boto3's connections, which belong
to the parent).
"""

from __future__ import annotations

import gc
import logging
import os
import selectors
import signal
import sys
import time
import traceback
from typing import Callable, Optional

from . import checkpoint_box
from . import reaper as task_reaper
from .fork_state import reset_signals
from .pipes import FrameReader

logger = logging.getLogger(__name__)

# Without a pidfd the parent polls for the child's exit this often (seconds).
POLL_S = 0.005

EXIT_OK = 0
EXIT_TASK_RAISED = 1
# The child could not report at all (EX_SOFTWARE).
EXIT_REPORT_FAILED = 70

_PR_SET_PDEATHSIG = 1
_prctl: Optional[Callable[..., int]] = None
_prctl_looked_up = False

#: A child's own code: ``(request fd or None, report fd) -> exit code``.
ChildSide = Callable[[Optional[int], int], int]


def fork_available() -> bool:
    """Whether this platform can fork (process isolation needs it)."""
    return hasattr(os, "fork")


def lookup_prctl() -> Optional[Callable[..., int]]:
    """libc's prctl (Linux), looked up in the parent (once) so a child only calls it."""
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


def flush_std_streams() -> None:
    """Flush stdout and stderr (unflushed output would be written by both processes)."""
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


def fork_child(child_side: ChildSide, *, requests: bool = False) -> ChildProcess:
    """Fork a task child that runs ``child_side``; the parent's handle on it.

    With ``requests`` the child also gets the read end of a request pipe.
    """
    prctl = lookup_prctl()
    parent_pid = os.getpid()
    flush_std_streams()
    report_reader, report_writer = os.pipe()
    request_reader, request_writer = os.pipe() if requests else (None, None)
    fds = [report_reader, report_writer, request_reader, request_writer]
    checkpoint_box.box_for_children()  # shared with the child: its checkpoints land there
    task_reaper.before_task_fork()
    try:
        pid = os.fork()
    except BaseException:
        for fd in fds:
            if fd is not None:
                os.close(fd)
        raise
    finally:
        task_reaper.after_task_fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        code = EXIT_REPORT_FAILED
        try:
            for fd in (report_reader, request_writer):
                if fd is not None:
                    os.close(fd)
            _enter_task_child(parent_pid, prctl)
            code = child_side(request_reader, report_writer)
        except BaseException:
            try:
                traceback.print_exc()
            except BaseException:
                pass
        finally:
            flush_std_streams()
            os._exit(code)
    for fd in (report_writer, request_reader):
        if fd is not None:
            os.close(fd)
    try:
        return ChildProcess(pid, report_reader, request_writer)
    except BaseException:
        _kill_and_wait(pid)
        for fd in (report_reader, request_writer):
            if fd is not None:
                os.close(fd)
        raise


class ChildProcess:
    """The parent's handle on one task child process (see the module docstring).

    ``reports`` parses what the child reports; ``requests`` is the write end of
    a reused child's request pipe (None for a fresh child, or once closed).
    """

    def __init__(self, pid: int, reports: int, requests: Optional[int] = None) -> None:
        self.pid = pid
        # Both sides set the group, so a kill right after fork cannot miss it.
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child already did it, or already exited
        os.set_blocking(reports, False)
        if requests is not None:
            os.set_blocking(requests, False)
        self.requests = requests
        self.reports = FrameReader()
        self.tasks = 0  # tasks sent to this process
        self.wait_status: Optional[int] = None
        self.reaped = False
        self._report_fd: Optional[int] = reports
        self._exited = False
        self._pidfd = open_pidfd(pid)
        self._selector = selectors.DefaultSelector()
        self._selector.register(reports, selectors.EVENT_READ, "report")
        if self._pidfd is not None:
            self._selector.register(self._pidfd, selectors.EVENT_READ, "exit")

    def exited(self) -> bool:
        """Whether the process has ended (it is not reaped by this call, where waitid exists)."""
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
                self.wait_status = status
        return self._exited

    def wait(self, timeout_s: float, until: Optional[Callable[[], bool]] = None) -> bool:
        """Wait up to ``timeout_s`` seconds for ``until()`` (default: :meth:`exited`).

        Reads the child's reports as they come. Returns ``until()``'s last answer.
        """
        ended = self.exited if until is None else until
        end = time.monotonic() + max(timeout_s, 0.0)
        while True:
            if ended():
                return True
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            if self._pidfd is None:
                remaining = min(remaining, POLL_S)
            for key, _events in self._selector.select(remaining):
                if key.data == "report":
                    self.read_reports()

    def read_reports(self) -> None:
        """Feed what the report pipe holds now to :attr:`reports`; close it at end of file."""
        fd = self._report_fd
        while fd is not None:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                self._close_reports()
                return
            self.reports.feed(chunk)

    def _close_reports(self) -> None:
        fd, self._report_fd = self._report_fd, None
        if fd is not None:
            self._selector.unregister(fd)
            os.close(fd)

    def close_requests(self) -> None:
        """Close the request pipe: a reused child reads end of file and leaves."""
        fd, self.requests = self.requests, None
        if fd is not None:
            os.close(fd)

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's process group (the child and what it started)."""
        if self.reaped:
            return
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill_and_reap(self, label: str) -> Optional[int]:
        """SIGKILL what is left of the process group, reap the child, close its pipes.

        Returns its wait status (None if it was reaped elsewhere).
        """
        if self.reaped:
            return self.wait_status
        self.signal_group(signal.SIGKILL)
        if self.wait_status is None:
            try:
                self.wait_status = os.waitpid(self.pid, 0)[1]
            except ChildProcessError:
                logger.error("%s: child process %s was reaped elsewhere", label, self.pid)
        task_reaper.forget_group(self.pid)
        self.reaped = self._exited = True
        self.read_reports()
        self._close_reports()
        self.close_requests()
        if self._pidfd is not None:
            self._selector.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self._selector.close()
        return self.wait_status


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


def _enter_task_child(parent_pid: int, prctl: Optional[Callable[..., int]]) -> None:
    """A task child's first steps: its own process group, death with its parent,
    default signal handlers, and the garbage collector off what the parent had
    (so the child's collections never copy it)."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    task_reaper.list_task_group()
    checkpoint_box.entered_task_child()
    if prctl is not None:  # Linux: SIGKILL this child if the parent dies
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(EXIT_REPORT_FAILED)
    reset_signals()
    gc.freeze()
