"""A MessageHandler for tests that run tasks through TaskManager or LocalQueue."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from sqstaskmaster.message_handler import MessageHandler


class TaskHandler(MessageHandler):
    """Runs ``TASKS[task](**kwargs)``; keeps the result and what it notified.

    A test module subclasses it with its own ``TASKS``.
    """

    TASKS: Dict[str, Callable[..., Any]] = {}

    def __init__(self, message: Any, task: str, kwargs: Dict[str, Any], **timeouts: int) -> None:
        super().__init__(message, **timeouts)
        self.task = task
        self.kwargs = kwargs
        self.result: Any = None
        self.notified: List[Tuple[BaseException, Any]] = []

    def run(self) -> None:
        self.result = self.TASKS[self.task](**self.kwargs)

    def running(self) -> bool:
        return True

    def notify(self, exception: BaseException, context: Optional[Dict[str, Any]] = None) -> None:
        self.notified.append((exception, context))
