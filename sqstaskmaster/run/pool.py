"""A task child reused for consecutive isolated tasks (``max_tasks_per_child``).

A fresh fork per task costs a few milliseconds (fork, the child's first page
faults, its exit and reap): most of an isolated no-op task's cost. With
``Worker(max_tasks_per_child=N)`` (N > 1) a worker forks one child (after the
app is imported, from the single-threaded worker) and sends it the facts of
each task (task name, kwargs, body, message id, attributes, receive count)
through a pipe; the child rebuilds the task's handler itself from the
registry it inherited, around a stand-in message that never talks to SQS
(the worker alone changes visibility and deletes), runs the handler's body
and reports back as a fresh child does (:mod:`sqstaskmaster.run.child_error`).

Per task the worker drives a :class:`ReusedTask`, which has what
:func:`~sqstaskmaster.run.strategies.wait_for_child` uses of a ForkedChild, so
heartbeats, the hard deadline (SIGTERM to the child's process group,
``kill_grace_s``, SIGKILL) and the worker's stop work exactly as for a fresh
child. A child is used again only after a task that ended cleanly: it
returned or raised an ``Exception``, reported, and left no process behind
(no child process of the child, which is a subreaper on Linux, so orphans
count; else no other process in its group). A hard timeout, a stop, a death,
``sys.exit()`` or a ``KeyboardInterrupt`` in a task retires it, and so do N tasks; the next task
gets a fresh child. Handlers whose class overrides ``__enter__`` (state the
body may need is made there) keep a fresh fork per task.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from typing import Any, Callable, Dict, Optional, cast

from ..message_handler import MessageHandler
from ..run import reaper as task_reaper
from ..run.child import (
    _MAX_REPORT_BYTES,
    ForkedChild,
    _flush_std_streams,
    _lookup_prctl,
    open_pidfd,
)
from ..run.child_main import HEADER, KEEP, TaskFacts, child_main
from ..run.strategies import Execution, Forked, StopSource, TaskHandler
from ..sqs.facts import receive_count_of

logger = logging.getLogger(__name__)

# An idle child that has not read a task within this many seconds is replaced.
_SEND_TIMEOUT_S = 5.0
# A retired child that does not leave within this many seconds gets SIGKILL.
_RETIRE_WAIT_S = 1.0
# The attribute a worker keeps its ChildPool in.
_POOL_ATTRIBUTE = "_task_process_pool"


def reuse_child(
    worker: Any, handler: Any, task: str, kwargs: Dict[str, Any], execution: Execution
) -> Execution:
    """The strategy ``worker`` runs ``handler`` (task ``task``) with: reused child if it can.

    ``execution`` (the worker's choice) is kept unless the worker's ``max_tasks_per_child``
    is over 1, the strategy is a plain :class:`Forked`, the handler's class
    keeps MessageHandler's ``__enter__``, and the platform has ``os.waitid``
    (Linux; elsewhere each task keeps a fresh fork).
    """
    if (
        worker.max_tasks_per_child <= 1
        or type(execution) is not Forked
        or type(handler).__enter__ is not MessageHandler.__enter__
        or not hasattr(os, "waitid")
    ):
        return execution
    forked = cast(Forked, execution)
    pool = worker.__dict__.get(_POOL_ATTRIBUTE)
    # A copy of a worker (Worker.replace), or one inherited by fork, gets its own.
    if pool is None or pool.owner_pid != os.getpid() or pool.worker is not worker:
        pool = ChildPool(worker)
        setattr(worker, _POOL_ATTRIBUTE, pool)
    message = handler._message
    facts = TaskFacts(
        task,
        kwargs,
        message.body,
        handler.message_id,
        dict(getattr(message, "attributes", None) or {}),
        dict(getattr(message, "message_attributes", None) or {}),
        receive_count_of(message),
        handler.sqs_timeout,
        handler.alarm_timeout,
        handler.hard_timeout,
    )
    reused = Reused(pool, facts, forked.kill_grace_s, forked.stop)
    reused.chores = forked.chores  # a worker's batched deletes and heartbeats of waiting ones
    return reused


def close_children(worker: Any) -> None:
    """Retire ``worker``'s reused child, if it has one, and stop the task reaper (its exit)."""
    pool = worker.__dict__.get(_POOL_ATTRIBUTE)
    if pool is not None and pool.owner_pid == os.getpid() and pool.worker is worker:
        pool.close()
    task_reaper.stop()


class Reused(Forked):
    """Forked, but each ``run()`` goes to the worker's reused child (see the module docstring)."""

    def __init__(
        self,
        pool: ChildPool,
        facts: TaskFacts,
        kill_grace_s: Optional[float] = None,
        stop: Optional[StopSource] = None,
    ) -> None:
        super().__init__(kill_grace_s, stop)
        self.pool = pool
        self.facts = facts

    def start_child(self, handler: TaskHandler, body: Callable[[], Any]) -> ForkedChild:
        return self.pool.start(self.facts, handler.label)


class _Child:
    """One reused child process, as its parent sees it."""

    def __init__(self, pid: int, requests: int, reports: int) -> None:
        self.pid = pid
        self.requests: Optional[int] = requests
        self.reports = reports
        self.tasks = 0
        self.pidfd = open_pidfd(pid)

    def exited(self) -> bool:
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def close_requests(self) -> None:
        """The child reads end of file: it leaves."""
        if self.requests is not None:
            os.close(self.requests)
            self.requests = None

    def close_pipes(self) -> None:
        self.close_requests()
        os.close(self.reports)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class ChildPool:
    """A worker's reused child: forks it when needed, retires it, sends it tasks."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.owner_pid = os.getpid()
        self.child: Optional[_Child] = None
        self.forks = 0

    @property
    def max_tasks(self) -> int:
        return int(self.worker.max_tasks_per_child)

    def start(self, facts: TaskFacts, label: str) -> ReusedTask:
        """Send ``facts`` to the child (forked now if there is none); the task, supervised."""
        request = facts.encode()
        child = self.child
        if child is not None and child.exited():
            logger.warning("%s: reused child process %s had ended; forking anew", label, child.pid)
            self.discard(child, label)
            child = None
        if child is None:
            child = self.child = self._fork(label)
        try:
            _send(child, request)
        except OSError as error:  # the child died while idle (BrokenPipeError)
            logger.warning(
                "%s: reused child process %s cannot take the task (%r); forking anew",
                label,
                child.pid,
                error,
            )
            self.discard(child, label)
            child = self.child = self._fork(label)
            _send(child, request)
        child.tasks += 1
        logger.info(
            "%s: started in reused child process %s (task %d of at most %d)",
            label,
            child.pid,
            child.tasks,
            self.max_tasks,
        )
        return ReusedTask(self, child, label)

    def _fork(self, label: str) -> _Child:
        prctl = _lookup_prctl()
        parent_pid = os.getpid()
        _flush_std_streams()
        request_reader, request_writer = os.pipe()
        report_reader, report_writer = os.pipe()
        task_reaper.before_task_fork()
        try:
            pid = os.fork()
        except BaseException:
            for fd in (request_reader, request_writer, report_reader, report_writer):
                os.close(fd)
            raise
        finally:
            task_reaper.after_task_fork()
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            os.close(request_writer)
            os.close(report_reader)
            child_main(self.worker, request_reader, report_writer, parent_pid, prctl)
        os.close(request_reader)
        os.close(report_writer)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child already did it, or already exited
        os.set_blocking(report_reader, False)
        os.set_blocking(request_writer, False)
        self.forks += 1
        logger.info("%s: forked reused child process %s (process group %s)", label, pid, pid)
        return _Child(pid, request_writer, report_reader)

    def retire(self, child: _Child, label: str) -> None:
        """End an idle ``child`` cleanly: EOF on its requests, then reap (SIGKILL if slow)."""
        if self.child is child:
            self.child = None
        child.close_requests()
        end = time.monotonic() + _RETIRE_WAIT_S
        while not child.exited() and time.monotonic() < end:
            _wait_fd(child.pidfd, end - time.monotonic())
        status = _kill_group_and_reap(child.pid, label)
        child.close_pipes()
        logger.info(
            "%s: reused child process %s retired after %d tasks (exit status %s)",
            label,
            child.pid,
            child.tasks,
            status,
        )

    def discard(self, child: _Child, label: str) -> Optional[int]:
        """SIGKILL ``child``'s process group and reap it; returns its wait status."""
        if self.child is child:
            self.child = None
        status = _kill_group_and_reap(child.pid, label)
        child.close_pipes()
        return status

    def close(self) -> None:
        """Retire the child, if any (a worker's exit)."""
        if self.child is not None:
            self.retire(self.child, "worker exit")


def _send(child: _Child, request: bytes) -> None:
    """Write one request; an idle child reads at once, so a slow one is a broken one."""
    if child.requests is None:
        raise BrokenPipeError(f"reused child process {child.pid} is retired")
    view = memoryview(HEADER.pack(len(request)) + request)
    end = time.monotonic() + _SEND_TIMEOUT_S
    with selectors.DefaultSelector() as selector:
        selector.register(child.requests, selectors.EVENT_WRITE)
        while view:
            if not selector.select(max(end - time.monotonic(), 0.0)):
                raise TimeoutError(
                    f"reused child process {child.pid} took no task for {_SEND_TIMEOUT_S} s"
                )
            view = view[os.write(child.requests, view) :]


def _wait_fd(fd: Optional[int], timeout_s: float) -> None:
    if fd is None:
        time.sleep(min(max(timeout_s, 0.0), 0.005))
        return
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        selector.select(max(timeout_s, 0.0))


def _kill_group_and_reap(pid: int, label: str) -> Optional[int]:
    """SIGKILL what is left of process group ``pid`` and wait for ``pid``; its wait status."""
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
            break
        except ProcessLookupError:
            continue
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        logger.error("%s: child process %s was reaped elsewhere", label, pid)
        return None
    finally:
        task_reaper.forget_group(pid)


class ReusedTask(ForkedChild):
    """One task in a reused child, with the interface wait_for_child uses on a ForkedChild.

    ``exited()`` and ``wait()`` tell whether the *task* has ended (its report
    arrived, or the child died). ``reap()`` keeps the child for the next task
    when the task ended cleanly, else kills its process group and reaps it.
    ``outcome()`` is ForkedChild's, read from the report.
    """

    def __init__(self, pool: ChildPool, child: _Child, label: str) -> None:  # noqa: D107
        # ForkedChild's state, set here: no fork per task.
        self.label = label
        self.pid = child.pid
        self.started_at = time.monotonic()
        self._pool = pool
        self._child = child
        self._buffer = b""
        self._frame: Optional[bytes] = None
        self._chunks: list = []
        self._size = 0
        self._overflow = False
        self._exited = False
        self._reaped = False
        self._wait_status: Optional[int] = None
        self._selector = selectors.DefaultSelector()
        self._selector.register(child.reports, selectors.EVENT_READ, "report")
        if child.pidfd is not None:
            self._selector.register(child.pidfd, selectors.EVENT_READ, "exit")

    def exited(self) -> bool:
        if self._exited:
            return True
        self._read_report()
        if self._frame is None and self._child.exited():
            self._read_report()  # what it wrote before it died
            self._exited = True
        return self._exited

    def wait(self, timeout_s: float) -> bool:
        end = time.monotonic() + max(timeout_s, 0.0)
        while True:
            if self.exited():
                return True
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            if self._child.pidfd is None:
                remaining = min(remaining, 0.005)
            self._selector.select(remaining)

    def _read_report(self) -> None:
        if self._frame is not None or self._reaped or self._overflow:
            return
        while True:
            try:
                chunk = os.read(self._child.reports, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return  # the child closed its end: it is leaving; exited() sees to it
            self._buffer += chunk
            if len(self._buffer) > _MAX_REPORT_BYTES + HEADER.size + 1:
                logger.error("%s: child process %s sent an oversized report", self.label, self.pid)
                self._overflow = self._exited = True  # not a clean end: the child is retired
                self._buffer = b""
                return
            if len(self._buffer) >= HEADER.size:
                (size,) = HEADER.unpack_from(self._buffer)
                if len(self._buffer) >= HEADER.size + size:
                    self._frame = self._buffer[HEADER.size : HEADER.size + size]
                    self._buffer = b""
                    self._exited = True
                    return

    @property
    def clean(self) -> bool:
        """Whether the task reported and the child asked to stay."""
        return self._frame is not None and self._frame[:1] == KEEP

    def signal_group(self, signum: int) -> None:
        if self._reaped:
            return
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def _await_exit(self, grace_s: float) -> bool:
        # The child process itself, not the task's report, must end.
        end = time.monotonic() + max(grace_s, 0.0)
        while not self._child.exited() and time.monotonic() < end:
            _wait_fd(self._child.pidfd, end - time.monotonic())
        return self._child.exited()

    def _stopped(self) -> None:
        self._frame = None  # a report raced with the stop: the task did not end cleanly

    def reap(self) -> None:
        """Keep the child after a clean task (retire it after its last); else kill and reap it."""
        if self._reaped:
            return
        self._read_report()
        self._selector.close()
        child = self._child
        if self._frame is not None:
            self._chunks = [self._frame[1:]]
            self._size = len(self._frame) - 1
        if self.clean and not child.exited():
            self._reaped = True
            if child.tasks >= self._pool.max_tasks:
                self._pool.retire(child, self.label)
            return
        self._wait_status = self._pool.discard(child, self.label)
        self._reaped = True
        logger.debug(
            "%s: child process %s reaped after %.3f s",
            self.label,
            self.pid,
            time.monotonic() - self.started_at,
        )
