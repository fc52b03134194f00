"""Errors of a message: one that cannot be sent, decoded, run or settled.

A submission refused before sending (size, JSON, task name) or partly sent;
a received body that is not a task; a batch entry SQS did not carry out; a
task whose hard timeout no longer fits SQS's 12-hour visibility budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from .root import SQSTaskMasterError, error_type


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


# Properties the message templates below name: where in a batch submission the
# entry stands ("" for a single one), and the task as a log line may show it.
_IN_BATCH = property(
    lambda error: "" if error.index is None else f" (entry {error.index} of the batch)"
)
_TASK_SHOWN = property(lambda error: _short_repr(error.task))


@error_type(
    "Task {task!r}{_where}: message is {size} bytes (body plus attributes, UTF-8), over the "
    "queue's MaximumMessageSize of {limit} bytes; nothing was sent. Pass a reference (for "
    "example an S3 key) instead of the data itself."
)
class MessageTooLargeError(SQSTaskMasterError, ValueError):
    """A message would exceed the queue's MaximumMessageSize; nothing was sent."""

    task: Any
    size: int
    limit: int
    index: Optional[int] = None
    _where = _IN_BATCH


@error_type(
    "Task {task!r}{_where}: kwargs cannot be encoded as JSON a worker can decode "
    "({error.__class__.__name__}: {error}); nothing was sent. Pass plain JSON values (no "
    "circular structures, no NaN or infinity, no deep nesting)."
)
class EncodeError(SQSTaskMasterError, ValueError):
    """A task's kwargs cannot be encoded as JSON that a worker can decode."""

    task: Any
    error: BaseException
    index: Optional[int] = None
    _where = _IN_BATCH


@error_type(
    "Task name {task!r}{_where} is a {task.__class__.__name__}; a task name must be a "
    "non-empty str (the name a worker registered the task under); nothing was sent."
)
class InvalidTaskNameError(SQSTaskMasterError, TypeError, ValueError):
    """A task name to submit is not a non-empty str, so no worker could run it."""

    task: Any
    index: Optional[int] = None
    _where = _IN_BATCH


@dataclass(frozen=True)
class FailedEntry:
    """One message of a batch submission that was not sent, and SQS's reason."""

    index: int
    task: Any
    code: str
    message: str
    sender_fault: bool


@error_type()
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


@error_type()
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


@error_type(
    "Message body cannot be decoded as JSON ({error.__class__.__name__}: {error}); it starts "
    "{_body}. The message is not run and is left to the queue's redrive policy: fix the "
    "producer."
)
class DecodeError(BodyError):
    """A message body cannot be decoded as JSON, whatever the decoder raised."""

    body: Any
    error: BaseException
    _body = property(lambda error: body_excerpt(error.body))


@error_type()
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


@error_type(
    "Message {message_id}: task must be a string and kwargs a JSON object, got task {_task} "
    "({task.__class__.__name__}) and kwargs of type {kwargs.__class__.__name__}; the message "
    "was not run and is left to the queue's redrive policy. Fix the producer."
)
class InvalidTaskMessageError(BodyError):
    """A message decoded as JSON but its task is not a string or its kwargs not an object."""

    message_id: Optional[str]
    task: Any
    kwargs: Any
    _task = _TASK_SHOWN


@error_type(
    "Message {message_id}: unknown task {_task}; this worker knows {known}. The message was "
    "not run and is left to the queue's redrive policy: register the task in the worker's app, "
    "or fix the producer."
)
class UnknownTaskError(SQSTaskMasterError, LookupError):
    """A message names a task that the worker's registry does not have."""

    message_id: Optional[str]
    task: str
    known: Any
    _task = _TASK_SHOWN

    def __post_init__(self) -> None:
        self.known = sorted(self.known)
        super().__post_init__()


@error_type()
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
