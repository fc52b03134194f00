"""The worker: poll, run each message's task, settle the message; several per machine.

Owns the loop, its settings and task registry, the intake (polls, prefetch,
batched deletes), one attempt and its settlement, retries, shutdown and the
supervisor. Imports everything below it (:mod:`sqstaskmaster.run`,
:mod:`sqstaskmaster.ops`, :mod:`sqstaskmaster.sqs`, the 0.0.11 modules),
never the command line.
"""

from .loop import Worker

__all__ = ["Worker"]
