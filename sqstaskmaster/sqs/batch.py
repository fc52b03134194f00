"""One batch action on many messages (DeleteMessageBatch, ChangeMessageVisibilityBatch).

:class:`BatchCall` groups its entries by client and queue, sends up to 10 per
request, tries again what SQS failed on its side, and reports (log and
notify, naming task and message id) what still failed; :mod:`sqstaskmaster.worker.batching`
uses it for deletes and for waiting messages' heartbeats and hand-backs.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from botocore import xform_name

from ..errors import BatchEntryError, HardTimeoutError, TaskStuckError, WorkerShutdownError
from ..sqs.facts import MAX_BATCH_ENTRIES, error_code, failure_context, message_id_of

# Its lines keep the logger they had before it moved out of sqstaskmaster.worker.batching.
logger = logging.getLogger("sqstaskmaster.worker.batching")

Notify = Callable[..., Any]

#: Tries of a batch entry SQS failed on its side (or a request that failed) before reporting.
BATCH_TRIES = 3
# Pause between two tries (s), times the try's number.
_RETRY_PAUSE_S = 0.02
# Entry codes that no retry can fix: the receipt handle is stale or the message is gone.
_FINAL_CODES = frozenset(
    {"ReceiptHandleIsInvalid", "MessageNotInflight", "InvalidParameterValue", "InvalidIdFormat"}
)
# Raised by a hard deadline or a worker's stop into a signal-mode chore: never swallowed.
PASS_THROUGH = (HardTimeoutError, WorkerShutdownError, TaskStuckError)

Entry = Tuple[Any, Optional[str]]  # (message, task name)


def _ids(entries: Any) -> str:
    """The entries' tasks and message ids, for a log line."""
    return ", ".join(f"task {task} message {message_id_of(message)}" for message, task in entries)


def batchable(message: Any) -> bool:
    """A boto3 Message (a client and a queue behind it); a LocalMessage is not."""
    meta = getattr(message, "meta", None)
    return (
        meta is not None
        and getattr(meta, "client", None) is not None
        and getattr(message, "queue_url", None) is not None
        and getattr(message, "receipt_handle", None) is not None
    )


class BatchCall:
    """One batch action (delete, or a visibility change) on a list of messages, with retries."""

    def __init__(self, action: str, notify: Notify, what_then: str) -> None:
        self.action = action  # the API's name, e.g. DeleteMessageBatch
        # After a call: id(message) -> a code no retry can fix, for those that got one.
        self.final_codes: Dict[int, str] = {}
        self._notifiers: Dict[int, Notify] = {}
        self._method = xform_name(action)
        self.notify = notify
        self.what_then = what_then

    def __call__(
        self,
        entries: Sequence[Entry],
        notifiers: Optional[Dict[int, Notify]] = None,
        **extra: Any,
    ) -> List[Entry]:
        """Carry it out for ``entries``; returns those that succeeded (failures are reported).

        ``notifiers`` maps ``id(message)`` to the notify a failure of it goes to
        (its handler's); others go to this call's.
        """
        self.final_codes = {}
        self._notifiers = notifiers or {}
        done: List[Entry] = []
        groups: Dict[Tuple[int, str], List[Entry]] = {}
        for entry in entries:
            message = entry[0]
            key = (id(message.meta.client), message.queue_url)
            groups.setdefault(key, []).append(entry)
        for group in groups.values():
            for start in range(0, len(group), MAX_BATCH_ENTRIES):
                done.extend(self._chunk(group[start : start + MAX_BATCH_ENTRIES], extra))
        return done

    def _chunk(self, chunk: List[Entry], extra: Dict[str, Any]) -> List[Entry]:
        message = chunk[0][0]
        client, url = message.meta.client, message.queue_url
        done: List[Entry] = []
        pending = list(chunk)
        failures: Dict[int, Tuple[str, str, Optional[BaseException]]] = {}
        for attempt in range(1, BATCH_TRIES + 1):
            requests = [
                {"Id": str(index), "ReceiptHandle": entry[0].receipt_handle, **extra}
                for index, entry in enumerate(pending)
            ]
            failures = {}
            try:
                response = getattr(client, self._method)(QueueUrl=url, Entries=requests)
            except PASS_THROUGH:
                raise
            except Exception as error:
                code = error_code(error) or type(error).__name__
                failures = {index: (code, str(error), error) for index in range(len(pending))}
            else:
                for failed in response.get("Failed", []):
                    index = int(failed["Id"])
                    failures[index] = (failed.get("Code", "?"), failed.get("Message", ""), None)
            done.extend(entry for index, entry in enumerate(pending) if index not in failures)
            again = [index for index, why in failures.items() if why[0] not in _FINAL_CODES]
            if not again or attempt == BATCH_TRIES:
                break
            finals = {index: why for index, why in failures.items() if why[0] in _FINAL_CODES}
            self._report([(pending[index], why) for index, why in finals.items()], attempt)
            code, text, _ = failures[again[0]]
            logger.warning(
                "%s of %d messages (%s) failed on try %d of %d (%s %s); trying again",
                *(self.action, len(again), _ids(pending[index] for index in again)),
                *(attempt, BATCH_TRIES, code, text),
            )
            pending = [pending[index] for index in again]
            time.sleep(_RETRY_PAUSE_S * attempt)
        self._report([(pending[index], why) for index, why in failures.items()], attempt)
        return done

    def _report(self, failed: List[Tuple[Entry, Tuple[str, str, Any]]], tries: int) -> None:
        for (message, task), (code, text, cause) in failed:
            if code in _FINAL_CODES:
                self.final_codes[id(message)] = code
            message_id = message_id_of(message)
            logger.error(
                "task %s message %s: %s failed after %d %s (%s %s); %s",
                task,
                message_id,
                self.action,
                tries,
                "try" if tries == 1 else "tries",
                code,
                text,
                self.what_then,
            )
            error = BatchEntryError(self.action, message_id, task, code, text)
            error.__cause__ = cause
            try:
                self._notifiers.get(id(message), self.notify)(
                    error, context=failure_context(message)
                )
            except Exception:
                logger.exception("notify raised while reporting %r", error)
