"""The worker's side of a task child reused for consecutive isolated tasks.

A fresh fork per task costs a few milliseconds (fork, the child's first page
faults, its exit and reap): most of an isolated no-op task's cost. With
``Worker(max_tasks_per_child=N)`` (N > 1) a worker forks one child (after the
app is imported, from the single-threaded worker) and sends it the facts of
each task (task name, kwargs, body, message id, attributes, receive count)
through a pipe; the child (:mod:`sqstaskmaster.run.reuse_child`) rebuilds the
task's handler itself with the builder the worker gave its
:class:`ChildPool`, around a stand-in message that never talks to SQS (the
worker alone changes visibility and deletes), runs the handler's body and
reports back as a fresh child does.

Each task is a :class:`~sqstaskmaster.run.fork.ForkedChild` on the reused
process, so heartbeats, the hard deadline (SIGTERM to the child's process
group, ``kill_grace_s``, SIGKILL) and the worker's stop work exactly as for a
fresh child. A child is used again only after a task that ended cleanly: it
returned or raised an ``Exception``, reported, and left no process behind
(no child process of the child, which is a subreaper on Linux, so orphans
count; else no other process in its group). A hard timeout, a stop, a death,
``sys.exit()`` or a ``KeyboardInterrupt`` in a task retires it, and so do N
tasks; the next task gets a fresh child. Handlers whose class overrides
``__enter__`` (state the body may need is made there) keep a fresh fork per
task: the caller says so (``plain_entry``).
"""

from __future__ import annotations

import logging
import os
import selectors
import time
from typing import Any, Callable, Dict, Optional, cast

from ..sqs.facts import receive_count_of
from . import reaper as task_reaper
from .child_process import ChildProcess, fork_child
from .fork import ForkedChild
from .pipes import HEADER, TaskFacts
from .reuse_child import HandlerBuilder, serve_tasks
from .strategies import Execution, Forked, StopSource, TaskHandler

logger = logging.getLogger(__name__)

# An idle child that has not read a task within this many seconds is replaced.
_SEND_TIMEOUT_S = 5.0
# A retired child that does not leave within this many seconds gets SIGKILL.
_RETIRE_WAIT_S = 1.0


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


class ChildPool:
    """A worker's reused task child: forks it when needed, sends it tasks, retires it.

    ``build`` rebuilds a task's handler in the child (inherited by fork).
    """

    def __init__(self, build: HandlerBuilder) -> None:
        self.build = build
        self.owner_pid = os.getpid()
        self.child: Optional[ChildProcess] = None
        self.max_tasks = 1
        self.forks = 0

    def execution_for(
        self,
        execution: Execution,
        handler: Any,
        message: Any,
        task: str,
        kwargs: Dict[str, Any],
        max_tasks: int,
        plain_entry: bool,
    ) -> Execution:
        """The strategy ``handler`` (task ``task``, ``message``) runs with: reused child if it can.

        ``execution`` (the worker's choice) is kept unless ``max_tasks`` (the worker's
        ``max_tasks_per_child``) is over 1, the strategy is a plain
        :class:`Forked`, the handler's class keeps MessageHandler's
        ``__enter__`` (``plain_entry``), and the platform has ``os.waitid``
        (Linux; elsewhere each task keeps a fresh fork).
        """
        if (
            max_tasks <= 1
            or type(execution) is not Forked
            or not plain_entry
            or not hasattr(os, "waitid")
        ):
            return execution
        forked = cast(Forked, execution)
        self.max_tasks = max_tasks
        facts = TaskFacts(
            task,
            kwargs,
            message.body,
            handler.message_id,
            dict(getattr(message, "attributes", None) or {}),
            dict(getattr(message, "message_attributes", None) or {}),
            receive_count_of(message),
            handler.sqs_timeout,
            handler.heartbeat_s,
            handler.hard_timeout,
        )
        reused = Reused(self, facts, forked.kill_grace_s, forked.stop)
        reused.chores = forked.chores  # a worker's batched deletes and heartbeats of waiting ones
        return reused

    def start(self, facts: TaskFacts, label: str) -> ForkedChild:
        """Send ``facts`` to the child (forked now if there is none); the task, supervised."""
        if self.owner_pid != os.getpid():  # inherited by fork: that child is not ours
            self.owner_pid, self.child = os.getpid(), None
        request = facts.encode()
        child = self.child
        if child is not None and (child.reaped or child.exited()):
            if not child.reaped:
                logger.warning(
                    "%s: reused child process %s had ended; forking anew", label, child.pid
                )
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
        return ForkedChild(child, label, keep=self._kept)

    def _fork(self, label: str) -> ChildProcess:
        build = self.build
        child = fork_child(
            lambda requests, reports: serve_tasks(build, requests, reports), requests=True
        )
        self.forks += 1
        logger.info(
            "%s: forked reused child process %s (process group %s)", label, child.pid, child.pid
        )
        return child

    def _kept(self, child: ChildProcess, label: str) -> None:
        """A task ended cleanly in ``child``: it stays, or retires after its last task."""
        if child.tasks >= self.max_tasks:
            self.retire(child, label)

    def retire(self, child: ChildProcess, label: str) -> None:
        """End an idle ``child`` cleanly: EOF on its requests, then reap (SIGKILL if slow)."""
        if self.child is child:
            self.child = None
        child.close_requests()
        child.wait(_RETIRE_WAIT_S)
        status = child.kill_and_reap(label)
        logger.info(
            "%s: reused child process %s retired after %d tasks (exit status %s)",
            label,
            child.pid,
            child.tasks,
            status,
        )

    def discard(self, child: ChildProcess, label: str) -> None:
        """SIGKILL ``child``'s process group and reap it."""
        if self.child is child:
            self.child = None
        child.kill_and_reap(label)

    def close(self) -> None:
        """The worker's exit: retire the child, if any, and stop the task reaper."""
        child = self.child
        if child is not None and not child.reaped and self.owner_pid == os.getpid():
            self.retire(child, "worker exit")
        task_reaper.stop_reaper()


def _send(child: ChildProcess, request: bytes) -> None:
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
