"""Error types added by this package; they share one root, SQSTaskMasterError.

0.0.11's contract keeps its built-in exception types (ValueError, TypeError,
KeyError, TimeoutError, RuntimeError) where SPEC.md names them; the types here
subclass the matching built-in where one applies, so ``except RuntimeError``
written for 0.0.11 still catches them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

#: A ``notify(exception, context=...)`` callable, as 0.0.11's classes take one.
Notify = Callable[..., Any]


class SQSTaskMasterError(Exception):
    """Root of every error type this package defines."""


class HandlerThreadError(SQSTaskMasterError, RuntimeError):
    """A signal-mode MessageHandler was entered outside the main thread."""

    def __init__(self, handler_name: str, thread_name: str) -> None:
        self.handler_name = handler_name
        self.thread_name = thread_name
        super().__init__(
            f"MessageHandler {handler_name} was entered in thread {thread_name!r}, but "
            "handlers must run in the main thread: their heartbeat and hard timeout use "
            "SIGALRM, which Python only delivers to the main thread. Enter the handler "
            "from the main thread of a process (for example one worker process per "
            "task stream), or use process isolation, which does not need signals."
        )


#: 0.0.11's text of the hard-timeout error (SPEC.md).
HARD_TIMEOUT_TEXT = "Hit Hard Timeout for message handler"


class HardTimeoutError(SQSTaskMasterError, TimeoutError):
    """A task ran past its hard timeout and was stopped."""

    def __init__(self, message: str, hard_timeout: float, elapsed: Optional[float] = None) -> None:
        self.hard_timeout = hard_timeout
        self.elapsed = elapsed
        super().__init__(message)


class ChildTaskError(SQSTaskMasterError):
    """A task run in an isolated child process raised; carries the child's exception as text.

    Where the task's exception class is importable in the parent, the error
    raised is also an instance of that class (see sqstaskmaster.run.child_error).
    """

    #: True when the task's ``throws`` listed the child's exception: a permanent failure.
    rejected = False

    def __init__(
        self, type_name: str, message: str, traceback: str, pid: Optional[int] = None
    ) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.pid = pid
        super().__init__(
            f"{type_name}: {message} (raised by the task in its isolated child process {pid}; "
            "the child's traceback is in this error's traceback attribute and in the log)"
        )


class ChildDiedError(SQSTaskMasterError):
    """An isolated task's child process died (signal or exit) without reporting a result."""

    def __init__(
        self,
        pid: int,
        signal_name: Optional[str] = None,
        signal_number: Optional[int] = None,
        exit_code: Optional[int] = None,
    ) -> None:
        self.pid = pid
        self.signal_name = signal_name
        self.signal_number = signal_number
        self.exit_code = exit_code
        if signal_name is not None:
            how = (
                f"was killed by signal {signal_name} ({signal_number}) before reporting a "
                "result: a crash in native code (SIGSEGV, SIGABRT, SIGBUS) or the "
                "out-of-memory killer (SIGKILL). Check the kernel log and the memory limit."
            )
        else:
            how = (
                f"exited with code {exit_code} before reporting a result: the task ended "
                "its process itself (os._exit, os.exec*). Let run() return or raise instead."
            )
        super().__init__(f"The isolated task's child process {pid} {how}")


class IsolationUnavailableError(SQSTaskMasterError, RuntimeError):
    """Process isolation was asked for on a platform without os.fork."""

    def __init__(self, handler_name: str, platform: str) -> None:
        self.handler_name = handler_name
        self.platform = platform
        super().__init__(
            f"{handler_name} asks for process isolation, which needs os.fork, but this "
            f"platform ({platform}) has no fork. Run the worker on Linux, or set "
            "isolate = False on the handler class to use the signal mode."
        )


class TaskStuckError(SQSTaskMasterError, RuntimeError):
    """The handler's running() reported that the task stopped making progress."""

    def __init__(self, message: str, message_id: Optional[str], elapsed: float) -> None:
        self.message_id = message_id
        self.elapsed = elapsed
        super().__init__(message)


class MessageTooLargeError(SQSTaskMasterError, ValueError):
    """A message would exceed the queue's MaximumMessageSize; nothing was sent."""

    def __init__(self, task: Any, size: int, limit: int, index: Optional[int] = None) -> None:
        self.task = task
        self.size = size
        self.limit = limit
        self.index = index
        where = "" if index is None else f" (entry {index} of the batch)"
        super().__init__(
            f"Task {task!r}{where}: message is {size} bytes (body plus attributes, UTF-8), "
            f"over the queue's MaximumMessageSize of {limit} bytes; nothing was sent. Pass a "
            "reference (for example an S3 key) instead of the data itself."
        )


class EncodeError(SQSTaskMasterError, ValueError):
    """A task's kwargs cannot be encoded as JSON that a worker can decode."""

    def __init__(self, task: Any, error: BaseException, index: Optional[int] = None) -> None:
        self.task = task
        self.error = error
        self.index = index
        where = "" if index is None else f" (entry {index} of the batch)"
        super().__init__(
            f"Task {task!r}{where}: kwargs cannot be encoded as JSON a worker can decode "
            f"({type(error).__name__}: {error}); nothing was sent. Pass plain JSON values "
            "(no circular structures, no NaN or infinity, no deep nesting)."
        )


def _short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters: a task name may be anything a producer sent."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def body_excerpt(body: Any, limit: int = 200) -> str:
    """At most ``limit`` characters of a message body, and its size in bytes, for logs.

    Bodies may be large and may hold secrets: no log line carries one whole.
    """
    text = body if isinstance(body, str) else repr(body)
    size = len(text.encode("utf-8", "replace"))
    excerpt = repr(text[:limit]) + ("..." if len(text) > limit else "")
    return f"{excerpt} ({size} bytes)"


class InvalidTaskNameError(SQSTaskMasterError, TypeError, ValueError):
    """A task name to submit is not a non-empty str, so no worker could run it."""

    def __init__(self, task: Any, index: Optional[int] = None) -> None:
        self.task = task
        self.index = index
        where = "" if index is None else f" (entry {index} of the batch)"
        super().__init__(
            f"Task name {task!r}{where} is a {type(task).__name__}; a task name must be a "
            "non-empty str (the name a worker registered the task under); nothing was sent."
        )


@dataclass(frozen=True)
class FailedEntry:
    """One message of a batch submission that was not sent, and SQS's reason."""

    index: int
    task: Any
    code: str
    message: str
    sender_fault: bool


class BatchSendError(SQSTaskMasterError):
    """Some messages of a batch submission were not sent; lists them and the ids of those sent."""

    def __init__(self, failed: Sequence[FailedEntry], message_ids: Sequence[Optional[str]]) -> None:
        self.failed = list(failed)
        self.message_ids = list(message_ids)
        sent = sum(1 for message_id in self.message_ids if message_id is not None)
        listed = "; ".join(
            f"entry {entry.index} task {entry.task!r}: {entry.code} {entry.message}".rstrip()
            for entry in self.failed[:10]
        )
        more = f"; and {len(self.failed) - 10} more" if len(self.failed) > 10 else ""
        super().__init__(
            f"{len(self.failed)} of {len(self.message_ids)} messages were not sent ({sent} "
            f"were): {listed}{more}. The error's failed attribute lists every unsent entry by "
            "its index in the input, and message_ids the ids of those sent (None if unsent): "
            "fix the cause and submit the failed entries again."
        )


class BatchEntryError(SQSTaskMasterError):
    """One message of a worker's batch call (delete, visibility change) SQS did not carry out."""

    def __init__(
        self, action: str, message_id: Optional[str], task: Optional[str], code: str, text: str
    ) -> None:
        self.action = action
        self.message_id = message_id
        self.task = task
        self.code = code
        super().__init__(
            f"{action} of message {message_id} (task {task}) failed: {code} {text}".rstrip()
        )


class BodyError(SQSTaskMasterError, ValueError):
    """A message body is not a task this package can run (see :mod:`sqstaskmaster.sqs.wire`)."""


class DecodeError(BodyError):
    """A message body cannot be decoded as JSON, whatever the decoder raised."""

    def __init__(self, body: Any, error: BaseException) -> None:
        self.body = body
        self.error = error
        super().__init__(
            f"Message body cannot be decoded as JSON ({type(error).__name__}: {error}); "
            f"it starts {body_excerpt(body)}. The message is not run and is left to the "
            "queue's redrive policy: fix the producer."
        )


class MalformedBodyError(BodyError):
    """A body that is not JSON, not an object, or lacks ``task`` or ``kwargs``."""

    def __init__(
        self, message_id: Optional[str], body: Any, cause: BaseException, decodes: bool
    ) -> None:
        self.message_id = message_id
        self.body = body
        self.cause = cause
        self.decodes = decodes
        what = "lacks the task or kwargs field" if decodes else "is not JSON"
        super().__init__(
            f"Message {message_id}: body {body_excerpt(body, 80)} {what} "
            f"({type(cause).__name__}: {cause}); expected "
            '{"task": "<name>", "kwargs": {...}}. The message is left to the queue\'s '
            "redrive policy: fix the producer."
        )

    def reported(self) -> BaseException:
        """The error to notify, as 0.0.11 reported it: the decoder's ValueError (or
        the KeyError of a missing field); whatever else the decoder raised (a
        RecursionError, say) as a DecodeError."""
        cause = self.cause
        if self.decodes or isinstance(cause, ValueError):
            return cause
        return DecodeError(self.body, cause)


class InvalidTaskMessageError(BodyError):
    """A message decoded as JSON but its task is not a string or its kwargs not an object."""

    def __init__(self, message_id: Optional[str], task: Any, kwargs: Any) -> None:
        self.message_id = message_id
        self.task = task
        self.kwargs = kwargs
        super().__init__(
            f"Message {message_id}: task must be a string and kwargs a JSON object, got task "
            f"{_short_repr(task)} ({type(task).__name__}) and kwargs of type "
            f"{type(kwargs).__name__}; "
            "the message was not run and is left to the queue's redrive policy. Fix the producer."
        )


class UnknownTaskError(SQSTaskMasterError, LookupError):
    """A message names a task that the worker's registry does not have."""

    def __init__(self, message_id: Optional[str], task: str, known: Any) -> None:
        self.message_id = message_id
        self.task = task
        self.known = sorted(known)
        super().__init__(
            f"Message {message_id}: unknown task {_short_repr(task)}; this worker knows "
            f"{self.known}. "
            "The message was not run and is left to the queue's redrive policy: register the "
            "task in the worker's app, or fix the producer."
        )


class VisibilityBudgetError(SQSTaskMasterError, TimeoutError):
    """A task's hard timeout does not fit in what is left of SQS's 12-hour visibility budget."""

    def __init__(
        self,
        message_id: Optional[str],
        task: str,
        hard_timeout: float,
        left: float,
        stop_margin_s: float = 0.0,
    ):
        self.message_id = message_id
        self.task = task
        self.hard_timeout = hard_timeout
        self.left = left
        self.stop_margin_s = stop_margin_s
        needed = hard_timeout + stop_margin_s
        super().__init__(
            f"Task {task!r} in message {message_id} was refused before it started: it needs "
            f"{needed:g} s of visibility (its hard timeout of {hard_timeout:g} s plus "
            f"{stop_margin_s:g} s to stop it and settle the message), but only "
            f"{max(int(left), 0)} s are left of SQS's 12-hour visibility budget, counted from "
            "the receive that delivered the message; past it another worker could receive it "
            "while the task runs. Lower the task's hard timeout, or split the task; the "
            "message is left to the retry delay and the redrive policy."
        )


class PollFailedError(SQSTaskMasterError):
    """The worker gave up after its polls of the queue failed too many times in a row."""

    def __init__(self, queue_url: Optional[str], failures: int, error: BaseException) -> None:
        self.queue_url = queue_url
        self.failures = failures
        self.error = error
        super().__init__(
            f"Gave up on queue {queue_url} after {failures} failed polls in a row, the last "
            f"with {type(error).__name__}: {error}. Check that the queue exists, the endpoint "
            "and region are right and the network reaches SQS; a supervisor restarts the worker."
        )


class WorkerShutdownError(SQSTaskMasterError):
    """The worker stopped a running task at shutdown (grace expired or second signal)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"Task stopped by worker shutdown ({reason}); its message is handed back to the "
            "queue with visibility 0. Raise --shutdown-grace if tasks should get longer."
        )


class AppImportError(SQSTaskMasterError, ImportError):
    """The worker's APP (module:attribute) cannot be imported or is not a worker or a dict."""

    def __init__(self, spec: str, reason: str) -> None:
        self.spec = spec
        self.reason = reason
        super().__init__(
            f"Cannot load worker app {spec!r}: {reason}. APP is 'module:attribute', naming a "
            "Worker or a dict of task name -> MessageHandler subclass or function, importable "
            "from the current directory."
        )


class TaskProtectionError(SQSTaskMasterError):
    """The ECS agent did not apply a scale-in protection change (refused, failed or timed out)."""

    def __init__(self, action: str, kind: str, detail: str) -> None:
        self.action = action
        self.kind = kind
        self.detail = detail
        super().__init__(
            f"ECS task scale-in protection {action} failed ({kind}): {detail}. Tasks go on "
            "running, but ECS may stop this container while one runs. Check that ECS_AGENT_URI "
            "is the agent's and that the task role allows ecs:UpdateTaskProtection."
        )


# -- control flow: raised by tasks to steer their message, not errors ------------------


class TaskControl(SQSTaskMasterError):
    """Raised by a task to say what becomes of its message; see Retry and Reject."""

    def report(self) -> Dict[str, Any]:
        """This exception as JSON values (how an isolated child reports it)."""
        raise NotImplementedError

    @staticmethod
    def from_report(report: Any) -> Optional[TaskControl]:
        """The exception a child reported with :meth:`report`; None for anything else."""
        if not isinstance(report, dict):
            return None
        reason = str(report.get("reason", ""))
        if report.get("kind") == "reject":
            return Reject(reason)
        if report.get("kind") == "retry":
            try:
                return Retry(float(report.get("delay_s", 0)), reason)
            except (TypeError, ValueError):
                return None
        return None


class Retry(TaskControl):
    """Run the task again after ``delay_s`` seconds; not reported to ``notify`` as an error.

    The delay is capped by SQS (12 hours from the receive that delivered the message).
    """

    def __init__(self, delay_s: float = 0.0, reason: str = "") -> None:
        if not isinstance(delay_s, (int, float)) or delay_s != delay_s or delay_s < 0:
            raise ValueError(f"Retry delay_s must be a number of seconds >= 0, got {delay_s!r}")
        self.delay_s = float(delay_s)
        self.reason = reason
        super().__init__(
            f"The task asked to run again in {self.delay_s:g} s" + (f": {reason}" if reason else "")
        )

    def report(self) -> Dict[str, Any]:
        return {"kind": "retry", "delay_s": self.delay_s, "reason": self.reason}


class Reject(TaskControl):
    """A permanent failure: the message goes to the queue's dead-letter queue at once.

    Without a redrive policy it takes the normal retry path (with a warning).
    """

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        super().__init__(
            "The task rejected its message as a permanent failure"
            + (f": {reason}" if reason else "")
        )

    def report(self) -> Dict[str, Any]:
        return {"kind": "reject", "reason": self.reason}
