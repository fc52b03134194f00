"""Error types added by this package; they share one root, SQSTaskMasterError.

0.0.11's contract keeps its built-in exception types (ValueError, TypeError,
KeyError, TimeoutError, RuntimeError) where it names them; the types here
subclass the matching built-in where one applies, so ``except RuntimeError``
written for 0.0.11 still catches them. ``Notify`` is the type of the
``notify(exception, context=...)`` callable every layer passes errors to.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

#: A ``notify(exception, context=...)`` callable, as 0.0.11's classes take one.
Notify = Callable[..., Any]

#: 0.0.11's text of the hard-timeout error.
HARD_TIMEOUT_TEXT = "Hit Hard Timeout for message handler"


class SQSTaskMasterError(Exception):
    """Root of every error type this package defines.

    The types below with fields are dataclasses (``eq=False, repr=False``:
    an exception's identity, hash and repr): the fields are the constructor's
    arguments and the error's attributes, :meth:`_text` makes the message from
    them (``args`` is ``(message,)``, as for any exception made with one), and
    the error pickles by its fields.
    """

    def __post_init__(self) -> None:
        super().__init__(self._text())

    def _text(self) -> str:
        """The message, from the fields."""
        raise NotImplementedError

    def __reduce__(self) -> Any:
        if not dataclasses.is_dataclass(self):
            return super().__reduce__()
        fields = tuple(getattr(self, item.name) for item in dataclasses.fields(self))
        return (type(self), fields, self.__dict__)


def _entry(index: Optional[int]) -> str:
    """Where in a batch submission an entry stands ("" for a single submission)."""
    return "" if index is None else f" (entry {index} of the batch)"


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


# -- the task's run -----------------------------------------------------------------


@dataclass(eq=False, repr=False)
class HandlerThreadError(SQSTaskMasterError, RuntimeError):
    """A signal-mode MessageHandler was entered outside the main thread."""

    handler_name: str
    thread_name: str

    def _text(self) -> str:
        return (
            f"MessageHandler {self.handler_name} was entered in thread {self.thread_name!r}, "
            "but handlers must run in the main thread: their heartbeat and hard timeout use "
            "SIGALRM, which Python only delivers to the main thread. Enter the handler "
            "from the main thread of a process (for example one worker process per "
            "task stream), or use process isolation, which does not need signals."
        )


@dataclass(eq=False, repr=False)
class IsolationUnavailableError(SQSTaskMasterError, RuntimeError):
    """Process isolation was asked for on a platform without os.fork."""

    handler_name: str
    platform: str

    def _text(self) -> str:
        return (
            f"{self.handler_name} asks for process isolation, which needs os.fork, but this "
            f"platform ({self.platform}) has no fork. Run the worker on Linux, or set "
            "isolate = False on the handler class to use the signal mode."
        )


@dataclass(eq=False, repr=False)
class HardTimeoutError(SQSTaskMasterError, TimeoutError):
    """A task ran past its hard timeout and was stopped."""

    message: str
    hard_timeout: float
    elapsed: Optional[float] = None

    def _text(self) -> str:
        return self.message


@dataclass(eq=False, repr=False)
class TaskStuckError(SQSTaskMasterError, RuntimeError):
    """The handler's running() reported that the task stopped making progress."""

    message: str
    message_id: Optional[str]
    elapsed: float

    def _text(self) -> str:
        return self.message


@dataclass(eq=False, repr=False)
class ChildTaskError(SQSTaskMasterError):
    """A task run in an isolated child process raised; carries the child's exception as text.

    Where the task's exception class is importable in the parent, the error
    raised is also an instance of that class (see sqstaskmaster.run.child_error).
    """

    #: True when the task's ``throws`` listed the child's exception: a permanent failure.
    rejected = False

    type_name: str
    message: str
    traceback: str
    pid: Optional[int] = None

    def _text(self) -> str:
        return (
            f"{self.type_name}: {self.message} (raised by the task in its isolated child "
            f"process {self.pid}; the child's traceback is in this error's traceback "
            "attribute and in the log)"
        )


@dataclass(eq=False, repr=False)
class ChildDiedError(SQSTaskMasterError):
    """An isolated task's child process died (signal or exit) without reporting a result."""

    pid: int
    signal_name: Optional[str] = None
    signal_number: Optional[int] = None
    exit_code: Optional[int] = None

    def _text(self) -> str:
        if self.signal_name is not None:
            how = (
                f"was killed by signal {self.signal_name} ({self.signal_number}) before "
                "reporting a result: a crash in native code (SIGSEGV, SIGABRT, SIGBUS) or the "
                "out-of-memory killer (SIGKILL). Check the kernel log and the memory limit."
            )
        else:
            how = (
                f"exited with code {self.exit_code} before reporting a result: the task ended "
                "its process itself (os._exit, os.exec*). Let run() return or raise instead."
            )
        return f"The isolated task's child process {self.pid} {how}"


# -- submitting ---------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class MessageTooLargeError(SQSTaskMasterError, ValueError):
    """A message would exceed the queue's MaximumMessageSize; nothing was sent."""

    task: Any
    size: int
    limit: int
    index: Optional[int] = None

    def _text(self) -> str:
        return (
            f"Task {self.task!r}{_entry(self.index)}: message is {self.size} bytes (body plus "
            f"attributes, UTF-8), over the queue's MaximumMessageSize of {self.limit} bytes; "
            "nothing was sent. Pass a reference (for example an S3 key) instead of the data "
            "itself."
        )


@dataclass(eq=False, repr=False)
class EncodeError(SQSTaskMasterError, ValueError):
    """A task's kwargs cannot be encoded as JSON that a worker can decode."""

    task: Any
    error: BaseException
    index: Optional[int] = None

    def _text(self) -> str:
        return (
            f"Task {self.task!r}{_entry(self.index)}: kwargs cannot be encoded as JSON a worker "
            f"can decode ({type(self.error).__name__}: {self.error}); nothing was sent. Pass "
            "plain JSON values (no circular structures, no NaN or infinity, no deep nesting)."
        )


@dataclass(eq=False, repr=False)
class InvalidTaskNameError(SQSTaskMasterError, TypeError, ValueError):
    """A task name to submit is not a non-empty str, so no worker could run it."""

    task: Any
    index: Optional[int] = None

    def _text(self) -> str:
        return (
            f"Task name {self.task!r}{_entry(self.index)} is a {type(self.task).__name__}; a "
            "task name must be a non-empty str (the name a worker registered the task under); "
            "nothing was sent."
        )


@dataclass(frozen=True)
class FailedEntry:
    """One message of a batch submission that was not sent, and SQS's reason."""

    index: int
    task: Any
    code: str
    message: str
    sender_fault: bool


@dataclass(eq=False, repr=False)
class BatchSendError(SQSTaskMasterError):
    """Some messages of a batch submission were not sent; lists them and the ids of those sent."""

    failed: List[FailedEntry]
    message_ids: List[Optional[str]]

    def __post_init__(self) -> None:
        self.failed = list(self.failed)
        self.message_ids = list(self.message_ids)
        super().__post_init__()

    def _text(self) -> str:
        sent = sum(1 for message_id in self.message_ids if message_id is not None)
        listed = "; ".join(
            f"entry {entry.index} task {entry.task!r}: {entry.code} {entry.message}".rstrip()
            for entry in self.failed[:10]
        )
        more = f"; and {len(self.failed) - 10} more" if len(self.failed) > 10 else ""
        return (
            f"{len(self.failed)} of {len(self.message_ids)} messages were not sent ({sent} "
            f"were): {listed}{more}. The error's failed attribute lists every unsent entry by "
            "its index in the input, and message_ids the ids of those sent (None if unsent): "
            "fix the cause and submit the failed entries again."
        )


# -- receiving and settling -----------------------------------------------------------


@dataclass(eq=False, repr=False)
class BatchEntryError(SQSTaskMasterError):
    """One message of a worker's batch call (delete, visibility change) SQS did not carry out."""

    action: str
    message_id: Optional[str]
    task: Optional[str]
    code: str
    text: str

    def _text(self) -> str:
        what = f"{self.action} of message {self.message_id} (task {self.task})"
        return f"{what} failed: {self.code} {self.text}".rstrip()


class BodyError(SQSTaskMasterError, ValueError):
    """A message body is not a task this package can run (see :mod:`sqstaskmaster.sqs.wire`)."""


@dataclass(eq=False, repr=False)
class DecodeError(BodyError):
    """A message body cannot be decoded as JSON, whatever the decoder raised."""

    body: Any
    error: BaseException

    def _text(self) -> str:
        return (
            f"Message body cannot be decoded as JSON ({type(self.error).__name__}: "
            f"{self.error}); it starts {body_excerpt(self.body)}. The message is not run and "
            "is left to the queue's redrive policy: fix the producer."
        )


@dataclass(eq=False, repr=False)
class MalformedBodyError(BodyError):
    """A body that is not JSON, not an object, or lacks ``task`` or ``kwargs``."""

    message_id: Optional[str]
    body: Any
    cause: BaseException
    decodes: bool

    def _text(self) -> str:
        what = "lacks the task or kwargs field" if self.decodes else "is not JSON"
        return (
            f"Message {self.message_id}: body {body_excerpt(self.body, 80)} {what} "
            f"({type(self.cause).__name__}: {self.cause}); expected "
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


@dataclass(eq=False, repr=False)
class InvalidTaskMessageError(BodyError):
    """A message decoded as JSON but its task is not a string or its kwargs not an object."""

    message_id: Optional[str]
    task: Any
    kwargs: Any

    def _text(self) -> str:
        return (
            f"Message {self.message_id}: task must be a string and kwargs a JSON object, got "
            f"task {_short_repr(self.task)} ({type(self.task).__name__}) and kwargs of type "
            f"{type(self.kwargs).__name__}; "
            "the message was not run and is left to the queue's redrive policy. Fix the producer."
        )


@dataclass(eq=False, repr=False)
class UnknownTaskError(SQSTaskMasterError, LookupError):
    """A message names a task that the worker's registry does not have."""

    message_id: Optional[str]
    task: str
    known: Any

    def __post_init__(self) -> None:
        self.known = sorted(self.known)
        super().__post_init__()

    def _text(self) -> str:
        return (
            f"Message {self.message_id}: unknown task {_short_repr(self.task)}; this worker "
            f"knows {self.known}. "
            "The message was not run and is left to the queue's redrive policy: register the "
            "task in the worker's app, or fix the producer."
        )


@dataclass(eq=False, repr=False)
class VisibilityBudgetError(SQSTaskMasterError, TimeoutError):
    """A task's hard timeout does not fit in what is left of SQS's 12-hour visibility budget."""

    message_id: Optional[str]
    task: str
    hard_timeout: float
    left: float
    stop_margin_s: float = 0.0

    def _text(self) -> str:
        needed = self.hard_timeout + self.stop_margin_s
        return (
            f"Task {self.task!r} in message {self.message_id} was refused before it started: "
            f"it needs {needed:g} s of visibility (its hard timeout of {self.hard_timeout:g} s "
            f"plus {self.stop_margin_s:g} s to stop it and settle the message), but only "
            f"{max(int(self.left), 0)} s are left of SQS's 12-hour visibility budget, counted "
            "from the receive that delivered the message; past it another worker could "
            "receive it while the task runs. Lower the task's hard timeout, or split the task; "
            "the message is left to the retry delay and the redrive policy."
        )


# -- the worker process -------------------------------------------------------------


@dataclass(eq=False, repr=False)
class PollFailedError(SQSTaskMasterError):
    """The worker gave up after its polls of the queue failed too many times in a row."""

    queue_url: Optional[str]
    failures: int
    error: BaseException

    def _text(self) -> str:
        return (
            f"Gave up on queue {self.queue_url} after {self.failures} failed polls in a row, "
            f"the last with {type(self.error).__name__}: {self.error}. Check that the queue "
            "exists, the endpoint and region are right and the network reaches SQS; a "
            "supervisor restarts the worker."
        )


@dataclass(eq=False, repr=False)
class WorkerShutdownError(SQSTaskMasterError):
    """The worker stopped a running task at shutdown (grace expired or second signal)."""

    reason: str

    def _text(self) -> str:
        return (
            f"Task stopped by worker shutdown ({self.reason}); its message is handed back to "
            "the queue with visibility 0. Raise --shutdown-grace if tasks should get longer."
        )


@dataclass(eq=False, repr=False)
class AppImportError(SQSTaskMasterError, ImportError):
    """The worker's APP (module:attribute) cannot be imported or is not a worker or a dict."""

    spec: str
    reason: str

    def _text(self) -> str:
        return (
            f"Cannot load worker app {self.spec!r}: {self.reason}. APP is 'module:attribute', "
            "naming a Worker or a dict of task name -> MessageHandler subclass or function, "
            "importable from the current directory."
        )


@dataclass(eq=False, repr=False)
class TaskProtectionError(SQSTaskMasterError):
    """The ECS agent did not apply a scale-in protection change (refused, failed or timed out)."""

    action: str
    kind: str
    detail: str

    def _text(self) -> str:
        return (
            f"ECS task scale-in protection {self.action} failed ({self.kind}): {self.detail}. "
            "Tasks go on running, but ECS may stop this container while one runs. Check that "
            "ECS_AGENT_URI is the agent's and that the task role allows "
            "ecs:UpdateTaskProtection."
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


@dataclass(eq=False, repr=False)
class Retry(TaskControl):
    """Run the task again after ``delay_s`` seconds; not reported to ``notify`` as an error.

    The delay is capped by SQS (12 hours from the receive that delivered the message).
    """

    delay_s: float = 0.0
    reason: str = ""

    def __post_init__(self) -> None:
        delay_s = self.delay_s
        if not isinstance(delay_s, (int, float)) or delay_s != delay_s or delay_s < 0:
            raise ValueError(f"Retry delay_s must be a number of seconds >= 0, got {delay_s!r}")
        self.delay_s = float(delay_s)
        super().__post_init__()

    def _text(self) -> str:
        reason = f": {self.reason}" if self.reason else ""
        return f"The task asked to run again in {self.delay_s:g} s{reason}"

    def report(self) -> Dict[str, Any]:
        return {"kind": "retry", "delay_s": self.delay_s, "reason": self.reason}


@dataclass(eq=False, repr=False)
class Reject(TaskControl):
    """A permanent failure: the message goes to the queue's dead-letter queue at once.

    Without a redrive policy it takes the normal retry path (with a warning).
    """

    reason: str = ""

    def _text(self) -> str:
        reason = f": {self.reason}" if self.reason else ""
        return f"The task rejected its message as a permanent failure{reason}"

    def report(self) -> Dict[str, Any]:
        return {"kind": "reject", "reason": self.reason}
