"""Errors of a task's run, and the exceptions a task raises to steer its message.

A task stopped (hard timeout, stuck, worker shutdown), a task that raised or
died in its isolated child, a handler that cannot run here; Retry and Reject
say what becomes of the message.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from .root import SQSTaskMasterError, error_type

#: 0.0.11's text of the hard-timeout error.
HARD_TIMEOUT_TEXT = "Hit Hard Timeout for message handler"


@error_type(
    "MessageHandler {handler_name} was entered in thread {thread_name!r}, but handlers must "
    "run in the main thread: their heartbeat and hard timeout use SIGALRM, which Python only "
    "delivers to the main thread. Enter the handler from the main thread of a process (for "
    "example one worker process per task stream), or use process isolation, which does not "
    "need signals."
)
class HandlerThreadError(SQSTaskMasterError, RuntimeError):
    """A signal-mode MessageHandler was entered outside the main thread."""

    handler_name: str
    thread_name: str


@error_type(
    "{handler_name} asks for process isolation, which needs os.fork, but this platform "
    "({platform}) has no fork. Run the worker on Linux, or set isolate = False on the handler "
    "class to use the signal mode."
)
class IsolationUnavailableError(SQSTaskMasterError, RuntimeError):
    """Process isolation was asked for on a platform without os.fork."""

    handler_name: str
    platform: str


@error_type("{message}")
class HardTimeoutError(SQSTaskMasterError, TimeoutError):
    """A task ran past its hard timeout and was stopped."""

    message: str
    hard_timeout: float
    elapsed: Optional[float] = None


@error_type("{message}")
class TaskStuckError(SQSTaskMasterError, RuntimeError):
    """The handler's running() reported that the task stopped making progress."""

    message: str
    message_id: Optional[str]
    elapsed: float


@error_type(
    "{type_name}: {message} (raised by the task in its isolated child process {pid}; the "
    "child's traceback is in this error's traceback attribute and in the log)"
)
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


@error_type()
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


@error_type(
    "Task stopped by worker shutdown ({reason}); its message is handed back to the queue with "
    "visibility 0. Raise --shutdown-grace if tasks should get longer."
)
class WorkerShutdownError(SQSTaskMasterError):
    """The worker stopped a running task at shutdown (grace expired or second signal)."""

    reason: str


@error_type(
    "task {task} message {message_id}: cancelled ({reason}); its message is deleted, "
    "not retried and not dead-lettered"
)
class TaskCancelled(WorkerShutdownError):
    """Someone cancelled the task through the status table (``sqstaskmaster cancel``).

    A running task is asked to stop (``context.stop_requested``) at its worker's
    next status write, and stopped after the shutdown grace; a message not yet
    received is deleted unrun. Passed to ``notify``; the outcome is ``cancelled``.
    """

    task: Optional[str]
    message_id: Optional[str]


@error_type(
    "task {task} message {message_id}: checkpoint refused: {reason}. The last checkpoint "
    "is kept and the task goes on; a state this big belongs in a store of its own (S3, a "
    "database), with a checkpoint that points to it"
)
class CheckpointRefusedError(SQSTaskMasterError, ValueError):
    """``context.checkpoint(state)`` was given a state JSON cannot carry, or one too large."""

    task: Optional[str]
    message_id: Optional[str]
    reason: str


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


@error_type()
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


@error_type()
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
