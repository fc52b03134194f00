"""Errors met running a worker: its queue, its app, its ECS task protection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .root import SQSTaskMasterError


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
