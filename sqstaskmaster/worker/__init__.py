"""The worker: poll, run each message's task, settle the message; several per machine.

Owns the loop, its settings and task registry, the intake (polls, prefetch,
batched deletes), one attempt and its settlement, retries, shutdown and the
supervisor. Imports everything below it (:mod:`sqstaskmaster.run`,
:mod:`sqstaskmaster.ops`, :mod:`sqstaskmaster.sqs`, the 0.0.11 modules),
never the command line.

``Worker`` is imported on first use: the command line imports the light
modules here (exit codes, shutdown) before its stop signals are set up, and
must not wait for boto3 and the whole worker first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Worker"]


def __getattr__(name: str) -> Any:
    if name == "Worker":
        from .loop import Worker

        return Worker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from .loop import Worker
