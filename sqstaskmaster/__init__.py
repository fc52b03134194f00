"""sqstaskmaster: run uncooperative, CPU-heavy, hours-long tasks on workers fed by SQS.

Importing the package is cheap: the names below are imported on first use,
so ``import sqstaskmaster`` works without boto3 (for example at build time).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

_LAZY = {
    # The 0.0.11 compatibility layer
    "TaskManager": "task_manager",
    "MessageHandler": "message_handler",
    "LocalQueue": "local",
    "LocalMessage": "local",
    "Provisioner": "queue_scale",
    "ServiceState": "queue_scale",
    # Timing
    "SignalTimer": "run.timer",
    # How a task runs: execution strategies, process isolation
    "InProcess": "run.strategies",
    "Forked": "run.strategies",
    "IsolatedMessageHandler": "isolation",
    "run_in_child": "isolation",
    # Submitting many tasks
    "TaskMessage": "sqs.preparing",
    # Running tasks
    "Worker": "worker.loop",
    "WorkerSettings": "worker.settings",
    "RetryPolicy": "worker.retry",
    "Outcome": "ops.metrics",
    "TaskContext": "run.context",
    # Watching and cancelling tasks: the status table
    "StatusTable": "ops.status_table",
    "TaskStatus": "ops.status_table",
    # Steering a task's message from the task
    "Retry": "errors",
    "Reject": "errors",
    # Errors
    "SQSTaskMasterError": "errors",
    "HandlerThreadError": "errors",
    "HardTimeoutError": "errors",
    "ChildTaskError": "errors",
    "ChildDiedError": "errors",
    "IsolationUnavailableError": "errors",
    "TaskStuckError": "errors",
    "TaskCancelled": "errors",
    "MessageTooLargeError": "errors",
    "EncodeError": "errors",
    "DecodeError": "errors",
    "InvalidTaskNameError": "errors",
    "FailedEntry": "errors",
    "BatchSendError": "errors",
    "InvalidTaskMessageError": "errors",
    "UnknownTaskError": "errors",
    "VisibilityBudgetError": "errors",
    "WorkerShutdownError": "errors",
    "BodyError": "errors",
    "MalformedBodyError": "errors",
    "AppImportError": "errors",
    "TaskProtectionError": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'sqstaskmaster' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover
    from .errors import (
        AppImportError,
        BatchSendError,
        BodyError,
        ChildDiedError,
        ChildTaskError,
        DecodeError,
        EncodeError,
        FailedEntry,
        HandlerThreadError,
        HardTimeoutError,
        InvalidTaskMessageError,
        InvalidTaskNameError,
        IsolationUnavailableError,
        MalformedBodyError,
        MessageTooLargeError,
        Reject,
        Retry,
        SQSTaskMasterError,
        TaskProtectionError,
        TaskStuckError,
        UnknownTaskError,
        VisibilityBudgetError,
        WorkerShutdownError,
    )
    from .isolation import IsolatedMessageHandler, run_in_child
    from .local import LocalMessage, LocalQueue
    from .message_handler import MessageHandler
    from .ops.metrics import Outcome
    from .ops.status_table import StatusTable, TaskStatus
    from .queue_scale import Provisioner, ServiceState
    from .run.strategies import Forked, InProcess
    from .run.timer import SignalTimer
    from .sqs.preparing import TaskMessage
    from .task_manager import TaskManager
    from .worker.loop import Worker
    from .worker.retry import RetryPolicy
    from .worker.settings import WorkerSettings
