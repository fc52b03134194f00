"""The task reaper: when a worker process dies, the process group of its running task dies too.

A task child dies with its worker process (``PR_SET_PDEATHSIG``), but what
the task started (``subprocess.Popen(["sleep", "300"])``) would run on, past
the hard timeout and next to the redelivered copy of the message. So on
Linux each worker process forks one small reaper, once, just before its first
task child (from the same single-threaded state the task fork needs), in a
process group of its own (a ``killpg`` of the worker's group does not reach
it; SIGTERM and SIGINT are ignored there). The worker process holds the only
write end of a pipe to it:

- each task child, before any task code runs, writes ``+<its process group>``
  (a fork cannot outrun the write, so no group goes unlisted);
- the worker writes ``-<group>`` once it has killed and reaped that group.

When the worker process ends, however it ends (SIGKILL by the OOM killer,
an operator or the supervisor after the grace included), the kernel closes
the pipe; the reaper reads end of file, SIGKILLs every group still listed and
leaves. Per task that costs two writes of five bytes on a pipe.

Covered: every process of the task's process group (the task child and
everything it starts that stays in its group). Not covered: a descendant that
leaves the group (``setsid()``, ``setpgid()``, ``start_new_session=True``).
Elsewhere than Linux there is no reaper (as before: a task child's processes
outlive a killed worker there).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import struct
import sys
import time
from typing import Optional, Set

from .fork_state import reset_signals

logger = logging.getLogger(__name__)

_RECORD = struct.Struct(">ci")
_ADD = b"+"
_REMOVE = b"-"
# How long a reaper gets to leave after its pipe is closed before SIGKILL.
_STOP_WAIT_S = 1.0

ENABLED = sys.platform.startswith("linux") and hasattr(os, "register_at_fork")


class _Reaper:
    def __init__(self, pid: int, writer: int) -> None:
        self.pid = pid
        self.writer = writer
        self.owner_pid = os.getpid()


_reaper: Optional[_Reaper] = None
# Set in the worker process around the fork of a task child: that child keeps
# the write end (as _task_writer) to list its group, then closes it.
_forking_task = False
_forking_reaper = False
_task_writer: Optional[int] = None


def _after_fork_in_child() -> None:
    """No process but the worker keeps the worker's write end (else the reaper never
    reads end of file); a task child keeps it just long enough to list its group."""
    global _reaper, _task_writer
    reaper, _reaper = _reaper, None
    _task_writer = None
    if reaper is None:
        return
    if _forking_task:
        _task_writer = reaper.writer
        return
    try:
        os.close(reaper.writer)
    except OSError as error:
        logger.debug("process %s: task reaper pipe already closed (%r)", os.getpid(), error)


if ENABLED:
    os.register_at_fork(after_in_child=_after_fork_in_child)


def forking_reaper() -> bool:
    """Whether the fork under way is the reaper's (for tests that count forks)."""
    return _forking_reaper


def before_task_fork() -> None:
    """Called in the worker process just before it forks a task child."""
    global _forking_task
    if not ENABLED:
        return
    _ensure()
    _forking_task = True


def after_task_fork() -> None:
    """Called in the worker process right after the fork of a task child."""
    global _forking_task
    _forking_task = False


def list_task_group() -> None:
    """In a new task child, before any task code: list this process's group, drop the pipe."""
    global _task_writer
    writer, _task_writer = _task_writer, None
    if writer is None:
        return
    if os.getpgrp() != os.getpid():  # no group of its own: never list the worker's
        os.close(writer)
        return
    try:
        os.write(writer, _RECORD.pack(_ADD, os.getpgrp()))
    except OSError as error:
        logger.warning(
            "task child %s: the task reaper cannot list process group %s (%r); it is "
            "not killed if the worker process dies",
            os.getpid(),
            os.getpgrp(),
            error,
        )
    finally:
        os.close(writer)


def forget_group(pgid: int) -> None:
    """The worker killed and reaped process group ``pgid``: the reaper drops it."""
    reaper = _reaper
    if reaper is None or reaper.owner_pid != os.getpid():
        return
    try:
        os.write(reaper.writer, _RECORD.pack(_REMOVE, pgid))
    except OSError as error:
        logger.warning(
            "task reaper %s is gone (%r); the next task forks a new one", reaper.pid, error
        )
        _drop(reaper)


def stop_reaper() -> None:
    """End this process's reaper (a worker's exit); it kills any group still listed."""
    reaper = _reaper
    if reaper is None or reaper.owner_pid != os.getpid():
        return
    _drop(reaper)


def _drop(reaper: _Reaper) -> None:
    global _reaper
    if _reaper is reaper:
        _reaper = None
    try:
        os.close(reaper.writer)
    except OSError as error:
        logger.debug("task reaper %s: pipe already closed (%r)", reaper.pid, error)
    end = time.monotonic() + _STOP_WAIT_S
    while True:
        try:
            pid, _status = os.waitpid(reaper.pid, os.WNOHANG)
        except ChildProcessError:
            logger.error("task reaper %s was reaped elsewhere", reaper.pid)
            return
        if pid:
            return
        if time.monotonic() >= end:
            logger.error(
                "task reaper %s did not leave within %.1f s; SIGKILL", reaper.pid, _STOP_WAIT_S
            )
            os.kill(reaper.pid, signal.SIGKILL)
            os.waitpid(reaper.pid, 0)
            return
        time.sleep(0.002)


def _ensure() -> None:
    """This worker process's reaper: the one it has, or a new one."""
    global _reaper, _forking_reaper
    reaper = _reaper
    if reaper is not None and reaper.owner_pid == os.getpid():
        try:
            pid, status = os.waitpid(reaper.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = reaper.pid, 0
        if not pid:
            return
        logger.warning("task reaper %s ended (wait status %s); forking a new one", pid, status)
        _reaper = None
        os.close(reaper.writer)
    reader, writer = os.pipe()
    _forking_reaper = True
    try:
        pid = os.fork()
    except OSError as error:
        os.close(reader)
        os.close(writer)
        logger.error("cannot fork the task reaper (%r); a killed worker may leave processes", error)
        return
    finally:
        _forking_reaper = False
    if pid == 0:  # pragma: no cover - runs in the reaper, which never returns
        os.close(writer)
        _reaper_main(reader)
    os.close(reader)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # the reaper did it first
    _reaper = _Reaper(pid, writer)
    logger.debug("worker %s: task reaper forked as pid %s", os.getpid(), pid)


def _close_other_fds(keep: int) -> None:
    """The reaper keeps stdin/stdout/stderr and its pipe, nothing the worker had open."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor, closed already


def _reaper_main(reader: int) -> None:  # pragma: no cover - runs in the reaper
    code = 0
    try:
        os.setpgid(0, 0)
        reset_signals()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        gc.freeze()
        _close_other_fds(reader)
        worker_pid = os.getppid()
        groups = _read_groups(reader)
        for pgid in sorted(groups):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            logger.warning(
                "task reaper %s: worker process %s ended while its task's process group %s "
                "was running; SIGKILL to the group",
                os.getpid(),
                worker_pid,
                pgid,
            )
    except BaseException:
        code = 70
        logger.exception("task reaper %s failed", os.getpid())
    finally:
        os._exit(code)


def _read_groups(reader: int) -> Set[int]:
    """Follow the worker's records until end of file; the groups still listed then."""
    groups: Set[int] = set()
    buffer = b""
    while True:
        chunk = os.read(reader, 4096)
        if not chunk:
            return groups
        buffer += chunk
        usable = len(buffer) - len(buffer) % _RECORD.size
        for offset in range(0, usable, _RECORD.size):
            kind, pgid = _RECORD.unpack_from(buffer, offset)
            if kind == _ADD:
                groups.add(pgid)
            else:
                groups.discard(pgid)
        buffer = buffer[usable:]
