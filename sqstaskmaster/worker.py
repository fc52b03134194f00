"""Worker: consume one SQS queue with a registry of tasks, no loop of your own.

::

    from sqstaskmaster.worker import Worker

    worker = Worker({"MyTask": MyHandler})      # 0.0.11 handler classes, or functions

    @worker.task(hard_timeout=600)
    def resize(path, width):                    # called as resize(**kwargs)
        ...

    worker.run(queue_url)                       # or: sqstaskmaster worker app:worker --queue-url …

Each message is decoded through :class:`~sqstaskmaster.task_manager.TaskManager`,
its task looked up in the registry and run inside a
:class:`~sqstaskmaster.message_handler.MessageHandler` (heartbeat, hard
timeout), in a forked child process by default (``isolate=True``) or in this
process under SIGALRM (``isolate=False``, "signal mode").

What happens to a message:

- success: deleted (by the handler);
- failure, time-out, undecodable body, unknown task, a task refused by the
  12-hour budget: never deleted; its visibility is set to the retry backoff
  computed from ``ApproximateReceiveCount`` (:class:`RetryPolicy`), so the
  queue's redrive policy dead-letters it after ``maxReceiveCount`` receives;
- stopped by shutdown, or received while shutting down: handed back with
  visibility 0, at once.

Shutdown: SIGTERM or SIGINT only sets a flag. The first stops polling (polls
are short slices of ``poll_wait_s``, so no 20-second long poll is sat out)
and lets the running task go on for ``shutdown_grace_s``; then the task is
stopped and its message handed back. A second signal stops the task at once.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable, Dict, Mapping, Optional, Union

from . import wire
from .errors import (
    InvalidTaskMessageError,
    MalformedBodyError,
    UnknownTaskError,
    VisibilityBudgetError,
    WorkerShutdownError,
)
from .sqs import (
    MAX_POLL_WAIT_S,
    MAX_VISIBILITY_S,
    failure_context,
    message_id_of,
    receive_count_of,
)

logger = logging.getLogger(__name__)

DEFAULT_SQS_TIMEOUT_S = 30
DEFAULT_HARD_TIMEOUT_S = 4 * 60 * 60
DEFAULT_POLL_WAIT_S = 2
DEFAULT_SHUTDOWN_GRACE_S = 25.0

# How often the watchdog thread checks the shutdown clock, and how often it
# re-delivers the stop to a task whose code swallowed it.
_WATCH_PERIOD_S = 0.05
_REINTERRUPT_S = 0.5
# Consecutive failed polls before the worker gives up (its supervisor restarts it).
MAX_POLL_FAILURES = 5

Notify = Callable[..., Any]


# -- signals before the loop starts ---------------------------------------------

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


# -- retries ----------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, from a message's ``ApproximateReceiveCount``.

    The base delay after the n-th receive failed is
    ``min(max_s, first_s * factor ** (n - 1))`` seconds. ``jitter``:
    ``"equal"`` (default) draws uniformly from [base/2, base], ``"full"``
    from [0, base], ``"none"`` uses the base. The result is a whole number of
    seconds, at most SQS's 12-hour maximum. Defaults: 10 s, x2, 15 minutes.
    """

    first_s: float = 10.0
    factor: float = 2.0
    max_s: float = 15 * 60.0
    jitter: str = "equal"

    def __post_init__(self) -> None:
        if self.first_s < 0 or self.max_s < 0:
            raise ValueError(
                f"Retry delays must be >= 0 seconds, got first {self.first_s!r} "
                f"and max {self.max_s!r}"
            )
        if self.factor < 1:
            raise ValueError(f"Retry factor must be >= 1, got {self.factor!r}")
        if self.jitter not in ("equal", "full", "none"):
            raise ValueError(f"Retry jitter must be 'equal', 'full' or 'none', got {self.jitter!r}")

    def base_delay(self, receive_count: int) -> float:
        """The delay before jitter, in seconds, after receive number ``receive_count``."""
        exponent = max(receive_count, 1) - 1
        try:
            raw = self.first_s * self.factor**exponent
        except OverflowError:
            raw = float("inf")
        return min(raw, self.max_s, float(MAX_VISIBILITY_S))

    def delay(self, receive_count: int, rng: Optional[random.Random] = None) -> int:
        """The visibility timeout, whole seconds, to give a message that just failed."""
        base = self.base_delay(receive_count)
        uniform = (rng or random).uniform
        if self.jitter == "full":
            value = uniform(0.0, base)
        elif self.jitter == "equal":
            value = uniform(base / 2.0, base)
        else:
            value = base
        return int(min(round(value), MAX_VISIBILITY_S))


# -- the registry -----------------------------------------------------------


def _function_handler_class(name: str, function: Callable[..., Any], notify: Notify) -> type:
    """A MessageHandler subclass that calls ``function(**kwargs)``."""
    from .message_handler import MessageHandler

    class FunctionHandler(MessageHandler):
        def __init__(
            self,
            message: Any,
            sqs_timeout: int,
            alarm_timeout: int,
            hard_timeout: int,
            task_kwargs: Dict[str, Any],
        ) -> None:
            # The task's kwargs come as one dict: a task may well have a kwarg
            # named message or hard_timeout.
            super().__init__(message, sqs_timeout, alarm_timeout, hard_timeout)
            self.kwargs = task_kwargs

        def run(self) -> None:
            # The return value is dropped: a function task's result has nowhere
            # to go, and in isolation a non-JSON result would fail a task that
            # did its work.
            function(**self.kwargs)

        def running(self) -> bool:
            return True

        def notify(
            self, exception: BaseException, context: Optional[Dict[str, Any]] = None
        ) -> None:
            notify(exception, context=context)

    FunctionHandler.__name__ = FunctionHandler.__qualname__ = f"{name}_task"
    return FunctionHandler


@dataclass
class TaskSpec:
    """One registry entry: a handler class or function, and its own hard timeout (seconds)."""

    name: str
    target: Any
    hard_timeout: Optional[int] = None

    @property
    def is_handler(self) -> bool:
        from .message_handler import MessageHandler

        return isinstance(self.target, type) and issubclass(self.target, MessageHandler)


Registry = Mapping[str, Any]


class Worker:
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
    resource from it); ``endpoint_url`` overrides the SQS endpoint.
    """

    def __init__(
        self,
        tasks: Optional[Registry] = None,
        *,
        queue_url: Optional[str] = None,
        sqs_timeout: int = DEFAULT_SQS_TIMEOUT_S,
        alarm_timeout: Optional[int] = None,
        hard_timeout: int = DEFAULT_HARD_TIMEOUT_S,
        isolate: bool = True,
        shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S,
        poll_wait_s: int = DEFAULT_POLL_WAIT_S,
        retry: Optional[RetryPolicy] = None,
        burst_tasks: Optional[int] = None,
        burst_idle_s: Optional[float] = None,
        processes: Union[int, str] = 1,
        notify: Optional[Notify] = None,
        session: Any = None,
        endpoint_url: Optional[str] = None,
    ) -> None:
        self.queue_url = queue_url
        self.sqs_timeout = sqs_timeout
        self.alarm_timeout = alarm_timeout
        self.hard_timeout = hard_timeout
        self.isolate = isolate
        self.shutdown_grace_s = shutdown_grace_s
        self.poll_wait_s = poll_wait_s
        self.retry = retry or RetryPolicy()
        self.burst_tasks = burst_tasks
        self.burst_idle_s = burst_idle_s
        self.processes = processes
        self.notify_callable = notify
        self.session = session
        self.endpoint_url = endpoint_url
        self.registry: Dict[str, TaskSpec] = {}
        self._classes: Dict[str, type] = {}
        for name, target in (tasks or {}).items():
            self.register(name, target)
        # Shutdown state, written by signal handlers (plain assignments only).
        self._signals = 0
        self._stop_requested_at: Optional[float] = None
        self._in_task = False
        self._interrupt_pending = False
        self._stop_delivered = False
        self._task_isolated = False
        self._task_manager: Any = None
        self.tasks_run = 0

    # -- registry ------------------------------------------------------------

    def register(self, name: str, target: Any, *, hard_timeout: Optional[int] = None) -> None:
        """Add task ``name``: a MessageHandler subclass or a function; ``hard_timeout`` seconds."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"Task names must be non-empty strings, got {name!r}")
        if not callable(target):
            raise TypeError(
                f"Task {name!r}: expected a MessageHandler subclass or a function, got {target!r}"
            )
        if hard_timeout is not None and hard_timeout <= 0:
            raise ValueError(f"Task {name!r}: hard_timeout must be > 0, got {hard_timeout!r}")
        self.registry[name] = TaskSpec(name, target, hard_timeout)
        self._classes.pop(name, None)

    def task(self, function: Any = None, *, name: Optional[str] = None, hard_timeout: Any = None):
        """Decorator registering a function (or handler class) under its name or ``name``."""

        def decorate(target: Any) -> Any:
            self.register(name or target.__name__, target, hard_timeout=hard_timeout)
            return target

        if function is not None:
            return decorate(function)
        return decorate

    # -- configuration -------------------------------------------------------

    def replace(self, **settings: Any) -> Worker:
        """A copy of this worker (same registry) with ``settings`` changed; None keeps a value."""
        clone = copy.copy(self)
        clone.registry = dict(self.registry)
        clone._classes = {}
        for name, value in settings.items():
            if not hasattr(clone, name) or name.startswith("_"):
                raise TypeError(f"Worker has no setting {name!r}")
            if value is not None:
                setattr(clone, name, value)
        return clone

    @property
    def heartbeat_s(self) -> int:
        """The heartbeat period (``alarm_timeout``) in seconds."""
        if self.alarm_timeout is not None:
            return self.alarm_timeout
        return max(1, self.sqs_timeout // 3)

    def check(self) -> None:
        """Raise ValueError, naming the value, for settings SQS or the handler would refuse."""
        if not 1 <= self.sqs_timeout <= MAX_VISIBILITY_S:
            raise ValueError(
                f"sqs_timeout {self.sqs_timeout!r} s: must be between 1 and {MAX_VISIBILITY_S}"
            )
        if self.heartbeat_s + 1 >= self.sqs_timeout:
            raise ValueError(
                f"alarm_timeout {self.heartbeat_s} s must be at least 2 s under sqs_timeout "
                f"{self.sqs_timeout} s, so each heartbeat lands before the visibility runs out"
            )
        if self.hard_timeout <= 0:
            raise ValueError(f"hard_timeout must be > 0 seconds, got {self.hard_timeout!r}")
        if not 0 <= self.poll_wait_s <= MAX_POLL_WAIT_S:
            raise ValueError(f"poll_wait_s {self.poll_wait_s!r}: must be between 0 and 20")
        if self.shutdown_grace_s < 0:
            raise ValueError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s!r}")

    def notify(self, exception: BaseException, context: Optional[Dict[str, Any]] = None) -> None:
        """Pass an error to the ``notify`` callable, if any; its own errors are logged."""
        if self.notify_callable is None:
            return
        try:
            self.notify_callable(exception, context=context)
        except Exception:
            logger.exception("notify raised while reporting %r", exception)

    def handler_class(self, name: str) -> type:
        """The MessageHandler subclass that runs task ``name`` (isolated unless signal mode)."""
        cls = self._classes.get(name)
        if cls is not None:
            return cls
        spec = self.registry[name]
        base = (
            spec.target
            if spec.is_handler
            else _function_handler_class(name, spec.target, self.notify)
        )
        if self.isolate and not getattr(base, "isolate", False):
            cls = type(base.__name__, (base,), {"isolate": True, "__module__": base.__module__})
        else:
            cls = base
        self._classes[name] = cls
        return cls

    # -- connecting ------------------------------------------------------------

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
            if self.session is None:
                import boto3

                session = boto3.session.Session()
            else:
                session = self.session
            sqs = session.resource("sqs", endpoint_url=self.endpoint_url)
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
            return supervise(self, count)
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
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            signal.signal(sig, self._on_signal)
        for _ in range(take_early_signals()):
            self.request_stop()
        watchdog = threading.Thread(target=self._watch, name="sqstaskmaster-watchdog", daemon=True)
        self._watch_stop = threading.Event()
        watchdog.start()
        logger.info(
            "worker %d consuming %s: tasks %s, %s mode, sqs_timeout %s s, hard_timeout %s s",
            os.getpid(),
            self.queue_url,
            sorted(self.registry),
            "isolation" if self.isolate else "signal",
            self.sqs_timeout,
            self.hard_timeout,
        )
        try:
            self._loop(tm)
        finally:
            self._watch_stop.set()
            watchdog.join()
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        logger.info("worker %d stopped after %d tasks", os.getpid(), self.tasks_run)
        return 0

    @property
    def stopping(self) -> bool:
        """True once a shutdown signal arrived (or :meth:`request_stop` was called)."""
        return self._signals > 0

    def request_stop(self, cold: bool = False) -> None:
        """Begin a warm stop (or a cold one) as if SIGTERM arrived (twice)."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        self._signals = max(self._signals + 1, 2 if cold else 1)

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        # Only flags here: logging and network calls happen in the loop.
        if self._interrupt_pending and signum == signal.SIGINT:
            self._interrupt_pending = False
        else:
            self.request_stop()
        if self._should_deliver_stop() and not _in_handler_transition(frame):
            self._stop_delivered = True
            raise WorkerShutdownError(
                "cold stop" if self._signals > 1 else "shutdown grace expired"
            )

    def _should_deliver_stop(self) -> bool:
        # An isolated task is stopped once (the parent's wait loop is ours and does
        # not swallow it; a second stop would cut its kill-and-reap short). A task
        # in signal mode is stopped again until it lets go.
        if not self._in_task or not self._must_interrupt():
            return False
        return not (self._stop_delivered and self._task_isolated)

    def _must_interrupt(self) -> bool:
        if self._stop_requested_at is None:
            return False
        if self._signals > 1:
            return True
        return time.monotonic() - self._stop_requested_at >= self.shutdown_grace_s

    def _watch(self) -> None:
        """Deliver the stop to the main thread when the grace expires (a real signal wakes it).

        Runs in a thread and takes no lock that a forked child could inherit held.
        """
        main_id = threading.main_thread().ident
        next_kick = 0.0
        while not self._watch_stop.wait(_WATCH_PERIOD_S):
            now = time.monotonic()
            if self._should_deliver_stop() and now >= next_kick and main_id:
                self._interrupt_pending = True
                signal.pthread_kill(main_id, signal.SIGINT)
                next_kick = now + _REINTERRUPT_S

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
                messages = tm.receive(self.poll_wait_s, self.sqs_timeout)
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

    def process(self, message: Any, visible_until: Optional[float] = None) -> str:
        """Run one received message's task; returns its outcome (see module docstring).

        ``visible_until`` (a ``time.monotonic()`` value) is when the message's
        current visibility timeout ends, if known; it spares the handler's
        entry a visibility change while the first heartbeat comes in time.
        """
        tm = self._task_manager
        count = receive_count_of(message)
        message_id = message_id_of(message)
        try:
            task, kwargs = wire.decode_task(message.body, message_id)
        except MalformedBodyError as malformed:
            tm.report_malformed(message, malformed)
            self._retry_later(message, None, count, "undecodable")
            return "invalid"
        except InvalidTaskMessageError as invalid:
            self._refuse(message, invalid, None, count)
            return "invalid"
        if task not in self.registry:
            self._refuse(message, UnknownTaskError(message_id, task, self.registry), task, count)
            return "unknown"
        spec = self.registry[task]
        hard_timeout = spec.hard_timeout or self.hard_timeout
        try:
            cls = self.handler_class(task)
            if spec.is_handler:
                # As 0.0.11 users build their handlers.
                handler = cls(
                    message,
                    sqs_timeout=self.sqs_timeout,
                    alarm_timeout=self.heartbeat_s,
                    hard_timeout=hard_timeout,
                    **kwargs,
                )
            else:
                handler = cls(message, self.sqs_timeout, self.heartbeat_s, hard_timeout, kwargs)
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
            return "failed"
        left = handler.visibility_budget_left()
        if handler.hard_timeout > left:
            refusal = VisibilityBudgetError(message_id, task, handler.hard_timeout, left)
            self._refuse(message, refusal, task, count)
            return "refused"
        handler.visible_until = visible_until
        return self._run(handler, message, task, count)

    def _run(self, handler: Any, message: Any, task: str, count: int) -> str:
        message_id = message_id_of(message)
        logger.info("task %s message %s receive %d: started", task, message_id, count)
        started = time.monotonic()
        self.tasks_run += 1
        interrupted: Optional[BaseException] = None
        self._stop_delivered = False
        self._task_isolated = bool(getattr(handler, "isolate", False))
        try:
            self._in_task = True
            try:
                with handler:
                    handler.run()
            finally:
                self._in_task = False
        except WorkerShutdownError as stop:
            # Raised outside the body (in the handler's entry or exit path).
            interrupted = stop
        except Exception as entry_error:
            # The handler could not be entered (its first visibility change
            # failed past botocore's retries): the body never ran. One
            # transient SQS error must not end the worker: retry it later.
            logger.exception(
                "task %s message %s receive %d: could not start the task",
                task,
                message_id,
                count,
            )
            self.notify(entry_error, context=failure_context(message))
            interrupted = entry_error
        except BaseException as fatal:
            # KeyboardInterrupt, SystemExit from the task: hand back, then stop.
            self._hand_back(message, task, f"{type(fatal).__name__} while running")
            raise
        duration = time.monotonic() - started
        error = handler.error if handler.finished else interrupted
        if error is None:
            outcome = "done"
        elif isinstance(error, WorkerShutdownError):
            outcome = "interrupted by shutdown"
        elif isinstance(error, TimeoutError):
            outcome = "timed out"
        else:
            outcome = "failed"
        logger.info(
            "task %s message %s receive %d: %s in %.3f s%s",
            task,
            message_id,
            count,
            outcome,
            duration,
            "" if error is None else f" ({type(error).__name__}: {error})",
        )
        if isinstance(error, WorkerShutdownError):
            self._hand_back(message, task, "stopped by shutdown")
        elif error is not None:
            self._retry_later(message, task, count, outcome)
        return outcome

    def _refuse(self, message: Any, error: Exception, task: Optional[str], count: int) -> None:
        """Never run: notify, log, and leave the message to the backoff and redrive policy."""
        self.notify(error, context=failure_context(message))
        logger.error(
            "task %s message %s receive %d: refused: %s", task, message_id_of(message), count, error
        )
        self._retry_later(message, task, count, type(error).__name__)

    def _retry_later(self, message: Any, task: Optional[str], count: int, why: str) -> None:
        delay = self.retry.delay(count)
        self._set_visibility(message, delay)
        logger.warning(
            "task %s message %s receive %d: %s; visible again in %d s (retry backoff)",
            task,
            message_id_of(message),
            count,
            why,
            delay,
        )

    def _hand_back(self, message: Any, task: Optional[str], why: str) -> None:
        self._set_visibility(message, 0)
        logger.warning(
            "task %s message %s receive %d: %s; handed back (visibility 0)",
            task,
            message_id_of(message),
            receive_count_of(message),
            why,
        )

    def _set_visibility(self, message: Any, seconds: int) -> None:
        try:
            message.change_visibility(VisibilityTimeout=int(seconds))
        except Exception as error:
            logger.exception(
                "failed to set visibility of message %s to %s s", message_id_of(message), seconds
            )
            self.notify(error, context=failure_context(message))


def _in_handler_transition(frame: Optional[FrameType]) -> bool:
    """Whether a handler is being entered or left (or its timer set up or put back).

    A stop must not land there: it could leave a timer armed or skip the
    delete of a finished task. The watchdog delivers it again shortly.
    """
    from .message_handler import MessageHandler
    from .timer import SignalTimer

    while frame is not None:
        name = frame.f_code.co_name
        if name in ("__enter__", "__exit__", "enter_isolated", "exit_isolated"):
            owner = frame.f_locals.get("self", frame.f_locals.get("handler"))
            if isinstance(owner, MessageHandler):
                return True
        elif name in ("start", "stop", "disarm", "restore") and isinstance(
            frame.f_locals.get("self"), SignalTimer
        ):
            return True
        frame = frame.f_back
    return False
