"""Error types added by this package; they share one root, SQSTaskMasterError.

0.0.11's contract keeps its built-in exception types (ValueError, TypeError,
KeyError, TimeoutError, RuntimeError) where it names them; the types here
subclass the matching built-in where one applies, so ``except RuntimeError``
written for 0.0.11 still catches them.

Every name is imported from here (``sqstaskmaster.errors``), the bottom of
the package's layers. The modules below group them by what failed: ``task``
(a task's run; Retry and Reject), ``messages`` (a message sent, received or
settled), ``operation`` (running a worker: its queue, app, ECS protection,
EC2 metadata; and the task status table); ``root`` holds what they share,
and ``Notify``.
"""

from .messages import (
    BatchEntryError,
    BatchSendError,
    BodyError,
    DecodeError,
    EncodeError,
    FailedEntry,
    InvalidTaskMessageError,
    InvalidTaskNameError,
    MalformedBodyError,
    MessageTooLargeError,
    UnknownTaskError,
    VisibilityBudgetError,
)
from .operation import (
    AppImportError,
    MetadataServiceError,
    PollFailedError,
    StatusTableExistsError,
    StatusTableMissingError,
    StatusWaitTimeoutError,
    TaskProtectionError,
)
from .root import Notify, SQSTaskMasterError
from .task import (
    HARD_TIMEOUT_TEXT,
    CheckpointRefusedError,
    ChildDiedError,
    ChildTaskError,
    HandlerThreadError,
    HardTimeoutError,
    IsolationUnavailableError,
    Reject,
    Retry,
    TaskCancelled,
    TaskControl,
    TaskStuckError,
    WorkerShutdownError,
)

__all__ = [
    "HARD_TIMEOUT_TEXT",
    "AppImportError",
    "BatchEntryError",
    "BatchSendError",
    "BodyError",
    "CheckpointRefusedError",
    "ChildDiedError",
    "ChildTaskError",
    "DecodeError",
    "EncodeError",
    "FailedEntry",
    "HandlerThreadError",
    "HardTimeoutError",
    "InvalidTaskMessageError",
    "InvalidTaskNameError",
    "IsolationUnavailableError",
    "MalformedBodyError",
    "MessageTooLargeError",
    "MetadataServiceError",
    "Notify",
    "PollFailedError",
    "Reject",
    "Retry",
    "SQSTaskMasterError",
    "StatusTableExistsError",
    "StatusTableMissingError",
    "StatusWaitTimeoutError",
    "TaskCancelled",
    "TaskControl",
    "TaskProtectionError",
    "TaskStuckError",
    "UnknownTaskError",
    "VisibilityBudgetError",
    "WorkerShutdownError",
]

# Each type shows (and pickles by) its public path, as when it was defined here.
for _name in __all__:
    if isinstance(globals()[_name], type):
        globals()[_name].__module__ = __name__
del _name
