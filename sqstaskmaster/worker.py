"""Worker: consume one SQS queue with a registry of tasks, no loop of your own.

::

    from sqstaskmaster.worker import Worker

    worker = Worker({"MyTask": MyHandler})      # 0.0.11 handler classes, or functions

    @worker.task(hard_timeout=600)
    def resize(path, width):                    # called as resize(**kwargs)
        ...

    worker.run(queue_url)                       # or: sqstaskmaster worker app:worker --queue-url …

Each message's task runs in a MessageHandler (heartbeat, hard timeout), in
a forked child by default or under SIGALRM with ``isolate=False`` (see
:mod:`sqstaskmaster.execution`); :mod:`sqstaskmaster.disposition` says what
becomes of each message, :mod:`sqstaskmaster.shutdown` how a stop works.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Optional

from . import wire
from .disposition import Disposition, Outcome, classify
from .errors import (
    InvalidTaskMessageError,
    MalformedBodyError,
    UnknownTaskError,
    VisibilityBudgetError,
    WorkerShutdownError,
)
from .execution import for_worker
from .registry import Registry, TaskRegistry, build_handler
from .registry import TaskSpec as TaskSpec
from .retry import RetryPolicy as RetryPolicy
from .settings import DEFAULT_HARD_TIMEOUT_S as DEFAULT_HARD_TIMEOUT_S
from .settings import DEFAULT_POLL_WAIT_S as DEFAULT_POLL_WAIT_S
from .settings import DEFAULT_SHUTDOWN_GRACE_S as DEFAULT_SHUTDOWN_GRACE_S
from .settings import DEFAULT_SQS_TIMEOUT_S as DEFAULT_SQS_TIMEOUT_S
from .settings import WorkerSettings, setting_property
from .shutdown import StopController
from .shutdown import record_early_signals as record_early_signals
from .shutdown import take_early_signals as take_early_signals
from .sqs import MAX_POLL_WAIT_S as MAX_POLL_WAIT_S
from .sqs import MAX_VISIBILITY_S as MAX_VISIBILITY_S
from .sqs import failure_context, message_id_of, receive_count_of, sqs_resource

logger = logging.getLogger(__name__)

# Consecutive failed polls before the worker gives up (its supervisor restarts it).
MAX_POLL_FAILURES = 5

Notify = Callable[..., Any]


class Worker(TaskRegistry):
    """A task registry and the loop that runs it on one queue; see the module docstring.

    ``tasks`` maps task names to MessageHandler subclasses (built as 0.0.11
    users build them: ``cls(message, sqs_timeout=…, alarm_timeout=…,
    hard_timeout=…, **kwargs)``) or to functions (called as ``f(**kwargs)``).
    Timeouts are seconds: ``sqs_timeout`` is the visibility each heartbeat
    sets, ``alarm_timeout`` the heartbeat period (default a third of
    ``sqs_timeout``), ``hard_timeout`` the default per-task limit.
    ``poll_wait_s`` is one poll's long-poll wait (shutdown while idle waits at
    most this long). ``burst_tasks`` / ``burst_idle_s`` stop the worker after
    that many tasks, or after that many seconds without a message.
    ``notify(exception, context=...)`` receives errors not tied to a handler
    (undecodable messages, unknown tasks, refusals) and function tasks' errors.
    ``session`` is a boto3 Session (each worker process makes its own
    resource from it); ``endpoint_url`` overrides the SQS endpoint. Settings
    are checked at once (:class:`~sqstaskmaster.settings.WorkerSettings`).
    """

    queue_url: Any = setting_property("queue_url")
    sqs_timeout: Any = setting_property("sqs_timeout")
    alarm_timeout: Any = setting_property("alarm_timeout")
    hard_timeout: Any = setting_property("hard_timeout")
    isolate: Any = setting_property("isolate")
    shutdown_grace_s: Any = setting_property("shutdown_grace_s")
    poll_wait_s: Any = setting_property("poll_wait_s")
    retry: Any = setting_property("retry")
    burst_tasks: Any = setting_property("burst_tasks")
    burst_idle_s: Any = setting_property("burst_idle_s")
    processes: Any = setting_property("processes")
    endpoint_url: Any = setting_property("endpoint_url")

    def __init__(
        self,
        tasks: Optional[Registry] = None,
        *,
        notify: Optional[Notify] = None,
        session: Any = None,
        **settings: Any,
    ) -> None:
        self.settings = WorkerSettings().replace(**settings)
        self.notify_callable = notify
        self.session = session
        self.registry: Dict[str, TaskSpec] = {}
        self._classes: Dict[str, type] = {}
        for name, target in (tasks or {}).items():
            self.register(name, target)
        self._stop = StopController(self.shutdown_grace_s)
        self._task_manager: Any = None
        self._disposition = Disposition(self.notify)
        self.tasks_run = 0

    def replace(self, **settings: Any) -> Worker:
        """A copy of this worker (same registry) with ``settings`` changed; None keeps a value."""
        clone = copy.copy(self)
        clone.registry = dict(self.registry)
        clone._classes = {}
        extra = {
            name: settings.pop(name) for name in ("notify_callable", "session") if name in settings
        }
        clone.settings = self.settings.replace(**settings)
        for name, value in extra.items():
            if value is not None:
                setattr(clone, name, value)
        clone._stop = StopController(clone.shutdown_grace_s)
        clone._disposition = Disposition(clone.notify)
        return clone

    @property
    def heartbeat_s(self) -> int:
        """The heartbeat period (``alarm_timeout``) in seconds."""
        return self.settings.heartbeat_s

    def check(self) -> None:
        """Raise ValueError, naming the value, for settings SQS or the handler would refuse."""
        self.settings.check()

    def notify(self, exception: BaseException, context: Optional[Dict[str, Any]] = None) -> None:
        """Pass an error to the ``notify`` callable, if any; its own errors are logged."""
        if self.notify_callable is None:
            return
        try:
            self.notify_callable(exception, context=context)
        except Exception:
            logger.exception("notify raised while reporting %r", exception)

    def connect(self, queue_url: Optional[str] = None, sqs: Any = None) -> Any:
        """Make this process's TaskManager (call after forking, never before).

        ``sqs`` is an SQS service resource to use instead of one made from
        ``session`` (only for a single process: a resource must not cross a fork).
        """
        from .task_manager import TaskManager

        url = queue_url or self.queue_url
        if not url:
            raise ValueError("No queue URL: pass queue_url to Worker or run(), or --queue-url")
        self.queue_url = url
        if sqs is None:
            sqs = sqs_resource(self.session, self.endpoint_url)
        self._task_manager = TaskManager(url, notify=self.notify, sqs=sqs)
        return self._task_manager

    # -- running -------------------------------------------------------------

    def run(self, queue_url: Optional[str] = None) -> int:
        """Run until shutdown (or burst end); returns an exit code (0 when all went well).

        With ``processes`` above 1 (or ``"auto"``), runs that many worker
        processes under a supervisor (:mod:`sqstaskmaster.supervisor`).
        """
        if queue_url:
            self.queue_url = queue_url
        self.check()
        from .supervisor import resolve_processes, supervise

        count = resolve_processes(self.processes)
        if count > 1:
            return supervise(self.run_single, count, self.shutdown_grace_s)
        return self.run_single()

    def run_single(self) -> int:
        """Run this process's poll loop in the main thread; returns 0 after a clean stop."""
        self.check()
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "Worker.run must be called from the main thread: it handles SIGTERM/SIGINT "
                "for graceful shutdown. Start one process per worker instead of threads."
            )
        tm = self._task_manager or self.connect()
        self._stop.grace_s = self.shutdown_grace_s
        logger.info(
            "worker %d consuming %s: tasks %s, %s mode, sqs_timeout %s s, hard_timeout %s s",
            os.getpid(),
            self.queue_url,
            sorted(self.registry),
            "isolation" if self.isolate else "signal",
            self.sqs_timeout,
            self.hard_timeout,
        )
        with self._stop.handling_signals():
            self._loop(tm)
        logger.info("worker %d stopped after %d tasks", os.getpid(), self.tasks_run)
        return 0

    @property
    def stopping(self) -> bool:
        """True once a shutdown signal arrived (or :meth:`request_stop` was called)."""
        return self._stop.stopping

    def request_stop(self, cold: bool = False) -> None:
        """Begin a warm stop (or a cold one) as if SIGTERM arrived (twice)."""
        self._stop.request(cold)

    def _loop(self, tm: Any) -> None:
        idle_since = time.monotonic()
        poll_failures = 0
        while not self.stopping:
            if self.burst_tasks is not None and self.tasks_run >= self.burst_tasks:
                logger.info("burst mode: %d tasks run, stopping", self.tasks_run)
                return
            if self.burst_idle_s is not None and time.monotonic() - idle_since >= self.burst_idle_s:
                logger.info("burst mode: idle for %.1f s, stopping", self.burst_idle_s)
                return
            try:
                polled_at = time.monotonic()
                messages = tm.receive(self.poll_wait_s, self.sqs_timeout, message_attributes=True)
            except Exception as error:
                poll_failures += 1
                logger.exception(
                    "poll %d of %d failed on %s", poll_failures, MAX_POLL_FAILURES, self.queue_url
                )
                self.notify(error, context={"queue_url": self.queue_url})
                if poll_failures >= MAX_POLL_FAILURES:
                    raise
                self._sleep(min(2.0**poll_failures, 30.0))
                continue
            poll_failures = 0
            if not messages:
                logger.debug("Waiting for work from SQS!")
                continue
            for message in messages:
                if self.stopping:
                    self._hand_back(message, None, "received while shutting down")
                    continue
                # Received with VisibilityTimeout=sqs_timeout: invisible until
                # at least polled_at + sqs_timeout.
                self.process(message, visible_until=polled_at + self.sqs_timeout)
            idle_since = time.monotonic()

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.1, end - time.monotonic()))

    # -- one message ---------------------------------------------------------

    def process(self, message: Any, visible_until: Optional[float] = None) -> Outcome:
        """Run one received message's task; returns its outcome (see module docstring).

        ``visible_until`` (a ``time.monotonic()`` value) is when the message's
        current visibility timeout ends, if known; it spares the handler's
        entry a visibility change while the first heartbeat comes in time.
        """
        count = receive_count_of(message)
        message_id = message_id_of(message)
        try:
            task, kwargs = wire.decode_task(message.body, message_id)
        except MalformedBodyError as malformed:
            self._task_manager.report_malformed(message, malformed)
            self._retry_later(message, None, count, "undecodable")
            return Outcome.INVALID
        except InvalidTaskMessageError as invalid:
            self._refuse(message, invalid, None, count)
            return Outcome.INVALID
        if task not in self.registry:
            self._refuse(message, UnknownTaskError(message_id, task, self.registry), task, count)
            return Outcome.UNKNOWN
        spec = self.registry[task]
        hard_timeout = spec.hard_timeout or self.hard_timeout
        try:
            cls = self._handler_type(task)
            handler = build_handler(
                spec, cls, message, self.sqs_timeout, self.heartbeat_s, hard_timeout, kwargs
            )
        except Exception as error:
            logger.exception(
                "task %s message %s receive %d: cannot build its handler with kwargs %s",
                task,
                message_id,
                count,
                sorted(kwargs),
            )
            self.notify(error, context=failure_context(message))
            self._retry_later(message, task, count, "handler construction failed")
            return Outcome.FAILED
        left = handler.visibility_budget_left()
        if handler.hard_timeout > left:
            refusal = VisibilityBudgetError(message_id, task, handler.hard_timeout, left)
            self._refuse(message, refusal, task, count)
            return Outcome.REFUSED
        handler.visible_until = visible_until
        handler.throws = tuple(spec.throws) + tuple(handler.throws)
        handler.execution = for_worker(handler, self.isolate, self._stop)
        return self._run(handler, message, task, count)

    def _run(self, handler: Any, message: Any, task: str, count: int) -> Outcome:
        message_id = message_id_of(message)
        logger.info("task %s message %s receive %d: started", task, message_id, count)
        started = time.monotonic()
        self.tasks_run += 1
        interrupted: Optional[BaseException] = None
        try:
            with handler:
                handler.run()
        except WorkerShutdownError as stop:
            # Raised outside the body (in the handler's entry or exit path).
            interrupted = stop
        except Exception as entry_error:
            # The handler could not be entered (its first visibility change
            # failed past botocore's retries): the body never ran. One
            # transient SQS error must not end the worker: retry it later.
            logger.exception(
                "task %s message %s receive %d: could not start the task", task, message_id, count
            )
            self.notify(entry_error, context=failure_context(message))
            interrupted = entry_error
        except BaseException as fatal:
            # KeyboardInterrupt, SystemExit from the task: hand back, then stop.
            self._hand_back(message, task, f"{type(fatal).__name__} while running")
            raise
        error = handler.error if handler.finished else interrupted
        outcome = classify(error, handler.throws)
        duration_s = time.monotonic() - started
        self._disposition.settle(message, task, count, outcome, error, self.retry, duration_s)
        return outcome

    # -- disposition (see sqstaskmaster.disposition) ----------------------------

    def _refuse(self, message: Any, error: Exception, task: Optional[str], count: int) -> None:
        self._disposition.refuse(message, error, task, count, self.retry)

    def _retry_later(self, message: Any, task: Optional[str], count: int, why: str) -> None:
        self._disposition.retry_later(message, task, count, why, self.retry)

    def _hand_back(self, message: Any, task: Optional[str], why: str) -> None:
        self._disposition.hand_back(message, task, why)
