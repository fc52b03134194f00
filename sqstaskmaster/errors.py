"""Error types added by this package; they share one root, SQSTaskMasterError.

0.0.11's contract keeps its built-in exception types (ValueError, TypeError,
KeyError, TimeoutError, RuntimeError) where SPEC.md names them; the types here
subclass the matching built-in where one applies, so ``except RuntimeError``
written for 0.0.11 still catches them.
"""

from __future__ import annotations

from typing import Any, Optional


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


class HardTimeoutError(SQSTaskMasterError, TimeoutError):
    """A task ran past its hard timeout and was stopped."""

    def __init__(self, message: str, hard_timeout: float, elapsed: Optional[float] = None) -> None:
        self.hard_timeout = hard_timeout
        self.elapsed = elapsed
        super().__init__(message)


class TaskStuckError(SQSTaskMasterError, RuntimeError):
    """The handler's running() reported that the task stopped making progress."""

    def __init__(self, message: str, message_id: Optional[str], elapsed: float) -> None:
        self.message_id = message_id
        self.elapsed = elapsed
        super().__init__(message)


class MessageTooLargeError(SQSTaskMasterError, ValueError):
    """A message would exceed the queue's MaximumMessageSize; nothing was sent."""

    def __init__(self, task: Any, size: int, limit: int) -> None:
        self.task = task
        self.size = size
        self.limit = limit
        super().__init__(
            f"Task {task!r}: message is {size} bytes (body plus attributes, UTF-8), over the "
            f"queue's MaximumMessageSize of {limit} bytes; nothing was sent. Pass a reference "
            "(for example an S3 key) instead of the data itself."
        )


class EncodeError(SQSTaskMasterError, ValueError):
    """A task's kwargs cannot be encoded as JSON, even through str()."""

    def __init__(self, task: Any, error: BaseException) -> None:
        self.task = task
        self.error = error
        super().__init__(
            f"Task {task!r}: kwargs cannot be encoded as JSON ({type(error).__name__}: {error}); "
            "nothing was sent. Pass plain JSON values (no circular structures)."
        )
