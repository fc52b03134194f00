"""The task registry: what a worker can run, by task name.

A task is a MessageHandler subclass (built as 0.0.11 users build them) or a
function, called as ``f(**kwargs)`` inside a generated handler.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ..errors import Notify
from ..message_handler import MessageHandler
from ..run.context import TaskContext
from ..sqs.continuation import Carried

logger = logging.getLogger(__name__)


def wants_context(function: Callable[..., Any]) -> bool:
    """Whether ``function`` declares a keyword-only parameter named ``context``."""
    try:
        parameter = inspect.signature(function).parameters.get("context")
    except (TypeError, ValueError):  # no signature to be read (some builtins)
        return False
    return parameter is not None and parameter.kind is inspect.Parameter.KEYWORD_ONLY


def function_handler_class(name: str, function: Callable[..., Any], notify: Notify) -> type:
    """A MessageHandler subclass that calls ``function(**kwargs)``.

    A function with a keyword-only ``context`` parameter also gets the task's
    :class:`~sqstaskmaster.run.context.TaskContext`.
    """
    with_context = wants_context(function)

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

        def run(self) -> Any:
            # The return value goes to the status table (when there is one); in
            # isolation one JSON cannot carry is dropped, not a failure.
            if not with_context:
                return function(**self.kwargs)
            if "context" in self.kwargs:
                raise TypeError(
                    f"task {name!r} declares a keyword-only context parameter, but its "
                    "message also has a kwarg named 'context'; rename one of them"
                )
            return function(**self.kwargs, context=self.context)

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
    """One registry entry: a handler class or function, and its own hard timeout (seconds).

    ``throws`` lists exception types that mark a permanent failure of this
    task, as :class:`~sqstaskmaster.errors.Reject` does. A ``resumable`` task's
    hard timeout may pass 12 hours: it bounds its run across continuation messages.
    """

    name: str
    target: Any
    hard_timeout: Optional[int] = None
    throws: Tuple[type, ...] = ()
    resumable: bool = False

    @property
    def is_handler(self) -> bool:
        return isinstance(self.target, type) and issubclass(self.target, MessageHandler)


Registry = Mapping[str, Any]


def make_spec(
    name: Any,
    target: Any,
    hard_timeout: Optional[int] = None,
    throws: Any = (),
    resumable: Optional[bool] = None,
) -> TaskSpec:
    """A checked registry entry; raises TypeError or ValueError naming the bad value."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"Task names must be non-empty strings, got {name!r}")
    if not callable(target):
        raise TypeError(
            f"Task {name!r}: expected a MessageHandler subclass or a function, got {target!r}"
        )
    if hard_timeout is not None and hard_timeout <= 0:
        raise ValueError(f"Task {name!r}: hard_timeout must be > 0, got {hard_timeout!r}")
    kinds = tuple(throws) if isinstance(throws, (tuple, list)) else (throws,)
    for kind in kinds:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise TypeError(f"Task {name!r}: throws must hold exception types, got {kind!r}")
    is_class = isinstance(target, type)
    if resumable is None:  # a handler class may say it itself
        resumable = getattr(target, "resumable", False) is True and is_class
    if resumable and not is_class and not wants_context(target):
        raise TypeError(
            f"Task {name!r} is resumable but {target!r} takes no keyword-only context "
            "parameter: it could never checkpoint. Declare it: def task(..., *, context)"
        )
    return TaskSpec(name, target, hard_timeout, kinds, bool(resumable))


class TaskRegistry:
    """The registry half of a Worker: ``register``, the ``task`` decorator, handler classes."""

    registry: Dict[str, TaskSpec]
    _classes: Dict[str, type]
    isolate: bool
    notify_callable: Optional[Notify] = None

    def notify(self, exception: BaseException, context: Optional[Dict[str, Any]] = None) -> None:
        """Pass an error to the ``notify`` callable, if any; its own errors are logged."""
        if self.notify_callable is None:
            return
        try:
            self.notify_callable(exception, context=context)
        except Exception:
            logger.exception("notify raised while reporting %r", exception)

    def register(
        self,
        name: str,
        target: Any,
        *,
        hard_timeout: Optional[int] = None,
        throws: Any = (),
        resumable: Optional[bool] = None,
    ) -> None:
        """Add task ``name``: a MessageHandler subclass or a function; ``hard_timeout`` seconds.

        ``throws``: exception types that mark a permanent failure (as ``Reject``).
        ``resumable``: the task checkpoints and goes on in continuation messages,
        so its hard timeout may pass 12 hours (None: a handler class's own ``resumable``).
        """
        self.registry[name] = make_spec(name, target, hard_timeout, throws, resumable)
        self._classes.pop(name, None)

    def task(
        self,
        function: Any = None,
        *,
        name: Optional[str] = None,
        hard_timeout: Any = None,
        throws: Any = (),
        resumable: Optional[bool] = None,
    ) -> Any:
        """Decorator registering a function (or handler class) under its name or ``name``."""

        def decorate(target: Any) -> Any:
            self.register(
                name or target.__name__,
                target,
                hard_timeout=hard_timeout,
                throws=throws,
                resumable=resumable,
            )
            return target

        return decorate(function) if function is not None else decorate

    def _handler_type(self, name: str) -> type:
        """The MessageHandler subclass that runs task ``name`` (functions get one made)."""
        cls = self._classes.get(name)
        if cls is None:
            spec = self.registry[name]
            cls = (
                spec.target
                if spec.is_handler
                else function_handler_class(name, spec.target, self.notify)
            )
            self._classes[name] = cls
        return cls

    def build(
        self,
        task: str,
        message: Any,
        kwargs: Dict[str, Any],
        sqs_timeout: int,
        heartbeat_s: int,
        hard_timeout: int,
        carried: Optional[Carried] = None,
    ) -> Any:
        """Task ``task``'s handler around ``message``, its ``throws`` joined by the task's own,
        its ``context`` read from the message (``carried``: what the caller read of it).

        Raises KeyError for an unknown task, and what the handler's constructor raises.
        """
        spec = self.registry[task]
        cls = self._handler_type(task)
        handler = build_handler(spec, cls, message, sqs_timeout, heartbeat_s, hard_timeout, kwargs)
        handler.throws = tuple(spec.throws) + tuple(handler.throws)
        owner = next((k for k in type(handler).__mro__ if "context" in vars(k)), None)
        own = vars(handler).get("context")
        if own is None and owner is MessageHandler:
            handler.context = TaskContext.of_message(message, task, handler.notify_safely, carried)
        elif not isinstance(own, TaskContext):
            logger.warning(
                "task %s: its handler sets an attribute named context of its own; it keeps it, "
                "and gets no TaskContext (no checkpoints, no continuation messages)",
                task,
            )
        return handler

    def handler_class(self, name: str) -> type:
        """Task ``name``'s handler class as run here (``isolate=True`` set in isolation mode)."""
        base = self._handler_type(name)
        if self.isolate and not getattr(base, "isolate", False):
            return type(base.__name__, (base,), {"isolate": True, "__module__": base.__module__})
        return base


def build_handler(
    spec: TaskSpec,
    cls: type,
    message: Any,
    sqs_timeout: int,
    heartbeat_s: int,
    hard_timeout: int,
    kwargs: Dict[str, Any],
) -> Any:
    """The handler that runs one message of task ``spec``; raises what its constructor raises."""
    if spec.is_handler:
        # As 0.0.11 users build their handlers.
        return cls(
            message,
            sqs_timeout=sqs_timeout,
            alarm_timeout=heartbeat_s,
            hard_timeout=hard_timeout,
            **kwargs,
        )
    return cls(message, sqs_timeout, heartbeat_s, hard_timeout, kwargs)
