"""Worker: consume one SQS queue with a registry of tasks, no loop of your own.

::

    from sqstaskmaster.worker.loop import Worker

    worker = Worker({"MyTask": MyHandler})      # 0.0.11 handler classes, or functions

    @worker.task(hard_timeout=600)
    def resize(path, width):                    # called as resize(**kwargs)
        ...

    worker.run(queue_url)                       # or: sqstaskmaster worker app:worker --queue-url …

Each task runs in a MessageHandler (heartbeat, hard timeout), forked by default
or under SIGALRM with ``isolate=False`` (:mod:`sqstaskmaster.run.strategies`);
:mod:`.attempt` runs it, :mod:`.settlement` settles its message.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from typing import Any, Dict, Optional

from ..errors import (
    InvalidTaskMessageError,
    MalformedBodyError,
    Notify,
    PollFailedError,
    UnknownTaskError,
)
from ..message_handler import MessageHandler
from ..ops import metrics
from ..ops.logformat import add_to_context, task_context
from ..run.context import TaskStop, context_of
from ..run.reuse_parent import ChildPool
from ..run.strategies import for_worker
from ..sqs import facts as sqs
from ..sqs import wire
from ..sqs.clients import worker_clients
from ..sqs.continuation import Carried
from ..sqs.facts import message_id_of, receive_count_of
from .attempt import run_attempt
from .budget import admit, run_hard_timeout, used_up, whole_seconds
from .exitcodes import RET_CONNECT
from .intake import Intake
from .registry import Registry, TaskRegistry
from .registry import TaskSpec as TaskSpec
from .settings import Configured, WorkerSettings
from .settlement import Outcome, Settlement
from .shutdown import StopController
from .status import writer_for
from .supervisor import Slot

logger = logging.getLogger(__name__)

# Consecutive failed polls before the worker gives up (its supervisor restarts it).
MAX_POLL_FAILURES = 5


class Worker(TaskRegistry, Configured):
    """A task registry and the loop that runs it on one queue; see the module docstring.

    ``tasks`` maps task names to MessageHandler subclasses (built as 0.0.11
    users build them: ``cls(message, sqs_timeout=…, alarm_timeout=…,
    hard_timeout=…, **kwargs)``) or to functions (called as ``f(**kwargs)``).
    ``notify(exception, context=...)`` receives errors not tied to a handler
    (undecodable messages, unknown tasks, refusals) and function tasks' errors.
    ``session`` is a boto3 Session (each worker process makes its own
    resource from it). The other keywords are settings, checked at once and
    readable as attributes (:class:`~sqstaskmaster.worker.settings.WorkerSettings`).
    """

    max_poll_failures = MAX_POLL_FAILURES  # then run_single raises PollFailedError

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
        self._client: Any = None  # the short-bounded SQS client of connect()
        self._settlement = Settlement(self.notify)
        self._protection: Any = None  # ECS scale-in protection hooks (sqstaskmaster.ops.ecs)
        self._intake: Optional[Intake] = None  # while run_single runs
        self._status: Any = None  # its status table writer (sqstaskmaster.worker.status)
        # Its reused task child (max_tasks_per_child > 1) rebuilds handlers with self.build.
        self.child_pool = ChildPool(self.build)
        self.tasks_run = 0
        # Set when burst mode ended the loop (a supervisor then does not restart it).
        self.burst_ended = False

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
        clone._settlement = Settlement(clone.notify)
        clone.child_pool = ChildPool(clone.build)
        return clone

    def check(self) -> None:
        """Raise ValueError, naming the value, for settings SQS or the handler would refuse."""
        self.settings.check()
        tasks = {n: s.hard_timeout for n, s in self.registry.items() if not s.resumable}
        problem = sqs.worker_hard_timeouts_problem(self.hard_timeout, tasks)
        if problem is not None:
            raise ValueError(problem)
        from ..ops.ecs import agent_uri_for

        agent_uri_for(self.ecs_protection)

    def connect(self, queue_url: Optional[str] = None, sqs: Any = None) -> Any:
        """Make this process's TaskManager (after forking: ``sqs``, a resource, must not cross)."""
        from ..task_manager import TaskManager

        url = queue_url or self.queue_url
        if not url:
            raise ValueError("No queue URL: pass queue_url to Worker or run(), or --queue-url")
        self.queue_url = url
        self._client = None  # a resource given here is used as it is, for every call
        if sqs is None:
            # Bounded requests: a heartbeat on a dead connection fails within one period.
            sqs, self._client = worker_clients(
                self.session, self.endpoint_url, self.heartbeat_s, self.poll_wait_s
            )
        self._task_manager = TaskManager(url, notify=self.notify, sqs=sqs)
        return self._task_manager

    def run(self, queue_url: Optional[str] = None) -> int:
        """Run until shutdown (or burst end); returns an exit code (0 when all went well).

        Supervised with ``processes`` > 1, metrics and isolation, or Spot interruption
        notices (the supervisor polls for them: no thread where tasks fork).
        """
        if queue_url:
            self.queue_url = queue_url
        self.check()
        from ..ops.spot import spot_notice_for
        from .supervisor import resolve_processes, supervise_processes

        count = resolve_processes(self.processes)
        spot = spot_notice_for(self.spot_notice)  # "auto" probes here, before any fork
        port = self.metrics_port
        if count > 1 or (port is not None and self.isolate) or spot is not None:
            from ..ops.ecs import agent_uri_for, make_state

            uri = agent_uri_for(self.ecs_protection)
            return supervise_processes(
                self.run_slot,
                count,
                self.shutdown_grace_s,
                protection=make_state(uri, self.notify, self.heartbeat_s),
                metrics_address=None if port is None else (port, self.metrics_host),
                spot_notice=spot,
            )
        return self.run_single()

    def run_slot(self, slot: Slot) -> int:
        """One supervised worker process (see :mod:`.supervisor`); its exit code."""
        self._protection = slot.protection
        try:
            code = self.run_single()
        except PollFailedError as error:
            logger.error("worker %d: %s", os.getpid(), error)
            return RET_CONNECT
        if self.burst_ended:
            slot.report_burst_ended()
        return code

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
        if self._protection is None:
            from ..ops.ecs import inline_protection

            self._protection = inline_protection(self.ecs_protection, self.notify, self.heartbeat_s)
        mode = "isolation" if self.isolate else "signal"
        logger.info(
            "worker %d consuming %s: tasks %s, %s mode, sqs_timeout %s s, hard_timeout %s s",
            *(os.getpid(), self.queue_url, sorted(self.registry), mode),
            *(self.sqs_timeout, self.hard_timeout),
        )
        serving = metrics.serve_unless_supervised(self.metrics_port, self.metrics_host)
        intake = self._intake = Intake(
            tm,
            prefetch=self.prefetch,
            sqs_timeout=self.sqs_timeout,
            heartbeat_s=self.heartbeat_s,
            notify=self.notify,
            client=self._client,
        )
        # A failed ECS protection enable is tried again among the chores, while the task runs.
        intake.chores.protection = self._protection
        intake.status = intake.chores.status = self._status = writer_for(self)
        self._settlement.before_hand_back = intake.chores.flush
        self._settlement.queue = intake.queue  # its visibility changes and deletes
        try:
            with self._stop.handling_signals():
                self._loop(intake)
        finally:
            self._stop.announce()
            for message in intake.close("the worker is stopping"):
                with task_context(message_id=message_id_of(message)):
                    self._settlement.record(None, Outcome.HANDED_BACK)
            self._intake = None
            self.child_pool.close()  # and the task reaper
            self._idle()
            if serving:
                metrics.stop_serving()
        logger.info("worker %d stopped after %d tasks", os.getpid(), self.tasks_run)
        return 0

    @property
    def stopping(self) -> bool:
        """True once a shutdown signal arrived (or :meth:`request_stop` was called)."""
        return self._stop.stopping

    def request_stop(self, cold: bool = False) -> None:
        """Begin a warm stop (or a cold one) as if SIGTERM arrived (twice)."""
        self._stop.request(cold)

    def _loop(self, intake: Intake) -> None:
        idle_since = time.monotonic()
        while not self.stopping and not self._burst_done(idle_since):
            try:
                left = None if self.burst_tasks is None else self.burst_tasks - self.tasks_run
                received = intake.poll(self.poll_wait_s, left)
            except Exception as error:
                self._idle()  # PollFailedError after max_poll_failures in a row
                self._sleep(intake.poll_failed(error, self.queue_url, self.max_poll_failures))
                continue
            if not received:
                logger.debug("Waiting for work from SQS!")
                self._idle()
                continue
            while not self.stopping and not self._burst_done():
                item = intake.take(self._stop)
                if item is None:
                    break
                self.process(*item)
            idle_since = time.monotonic()

    def _burst_done(self, idle_since: Optional[float] = None) -> bool:
        idle_s = self.burst_idle_s
        idle_for = None if idle_since is None else time.monotonic() - idle_since
        if idle_s is not None and idle_for is not None and idle_for >= idle_s:
            logger.info("burst mode: idle for %.1f s, stopping", idle_s)
        elif self.burst_tasks is None or self.tasks_run < self.burst_tasks:
            return False
        elif not self.burst_ended:
            logger.info("burst mode: %d tasks run, stopping", self.tasks_run)
        self.burst_ended = True
        return True

    def _idle(self) -> None:
        # ECS scale-in protection is released once a poll finds no work.
        if self._protection is not None:
            self._protection.idle()

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
        with task_context(message_id=message_id_of(message), receive_count=count):
            outcome = self._process(message, visible_until, count)
            if self._status is not None:  # its final state, unless run_attempt wrote it
                self._status.settled(message, outcome, self._settlement)
        if self._intake is not None:  # a FIFO group runs in order: 1, 1, 2, 3
            given = self._settlement.visibility_given(message)
            for waiting in self._intake.after(message, str(outcome), given):
                with task_context(message_id=message_id_of(waiting)):
                    self._settlement.record(None, Outcome.HANDED_BACK)
        return outcome

    def _process(self, message: Any, visible_until: Optional[float], count: int) -> Outcome:
        message_id = message_id_of(message)
        try:
            task, kwargs = wire.decode_task(message.body, message_id)
        except MalformedBodyError as malformed:
            self._settlement.malformed(message, malformed, count, self.retry)
            return Outcome.INVALID
        except InvalidTaskMessageError as invalid:
            self._settlement.refuse(message, invalid, None, count, self.retry, Outcome.INVALID)
            return Outcome.INVALID
        label = wire.task_label(task)
        add_to_context(task=label)
        if task not in self.registry:
            unknown = UnknownTaskError(message_id, task, self.registry)
            self._settlement.refuse(message, unknown, label, count, self.retry, Outcome.UNKNOWN)
            return Outcome.UNKNOWN
        spec = self.registry[task]
        total_s = spec.hard_timeout or self.hard_timeout
        carried = Carried.of(message)
        if carried.problem is not None:
            unreadable = ValueError(f"task {task} message {message_id}: {carried.problem}")
            logger.error("%s; the task runs from its start", unreadable)
            self.notify(unreadable, context=sqs.failure_context(message))
        run_s = run_hard_timeout(total_s, spec.resumable, carried)
        if run_s <= 0:  # a resumable task that has run its whole hard timeout
            return used_up(message, task, count, total_s, carried, self._settlement, self.retry)
        try:
            handler = self.build(
                task,
                message,
                kwargs,
                self.sqs_timeout,
                self.heartbeat_s,
                whole_seconds(run_s),
                carried,
            )
        except Exception as error:
            self._settlement.unbuilt(message, task, count, sorted(kwargs), error, self.retry)
            return Outcome.FAILED
        admission = admit(
            handler,
            message,
            task,
            count,
            resumable=spec.resumable,
            continue_after_s=self.continue_after_s,
            grace_s=self.shutdown_grace_s,
            settlement=self._settlement,
            policy=self.retry,
        )
        if admission.outcome is not None:
            return admission.outcome
        handler.visible_until = visible_until
        intake = self._intake  # its chores are done while the task runs
        stop = TaskStop(self._stop, admission.continue_at, self.shutdown_grace_s, handler.label)
        context = context_of(handler)
        if context is not None:
            context.stop = stop
        chores = None if intake is None else intake.chores
        strategy = for_worker(handler, self.isolate, stop, chores)
        if self._status is not None:
            self._status.begin(message, task, kwargs, context, stop, strategy.isolated)
        handler.execution = self.child_pool.execution_for(
            strategy,
            handler,
            message,
            task,
            kwargs,
            self.max_tasks_per_child,
            plain_entry=type(handler).__enter__ is MessageHandler.__enter__,
        )
        self.tasks_run += 1
        return run_attempt(
            handler,
            message,
            task,
            count,
            settlement=self._settlement,
            retry=self.retry,
            protection=self._protection,
            shutdown_grace_s=self.shutdown_grace_s,
            deletes=None if intake is None else intake.deletes,
            status=self._status,
        )
