"""Batched SQS calls, and the one per-entry retry they share.

:func:`retry_entries` sends the entries of one batched request, reads which
SQS failed, and sends those again, under :class:`RetryRules` (how many tries,
the pause, which failures are final, what a failed request means). Both
batch users go through it:

- the producer's ``SendMessageBatch`` (:mod:`sqstaskmaster.sqs.sending`):
  SenderFault entries are final, a rejected request ends the submission;
- :class:`BatchCall`, a worker's ``DeleteMessageBatch`` and
  ``ChangeMessageVisibilityBatch`` on received messages
  (:mod:`sqstaskmaster.worker.batching`): stale receipt handles are final, a
  failed request is tried again, and what still failed is reported (log and
  notify, naming task and message id).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type

from ..errors import BatchEntryError, HardTimeoutError, Notify, TaskStuckError, WorkerShutdownError
from .facts import MAX_BATCH_ENTRIES, error_code, failure_context, message_id_of
from .queue import BatchResponse, Queue

logger = logging.getLogger(__name__)

#: Tries of a batch entry SQS failed on its side (or a request that failed) before reporting.
BATCH_TRIES = 3
# Pause between two tries of a worker's batch call (s), times the try's number.
_RETRY_PAUSE_S = 0.02
# Entry codes that no retry can fix: the receipt handle is stale or the message is gone.
_FINAL_CODES = frozenset(
    {"ReceiptHandleIsInvalid", "MessageNotInflight", "InvalidParameterValue", "InvalidIdFormat"}
)
# Raised by a hard deadline or a worker's stop into a signal-mode chore: never swallowed.
PASS_THROUGH = (HardTimeoutError, WorkerShutdownError, TaskStuckError)


@dataclass(frozen=True)
class EntryFailure:
    """Why SQS (or the request) failed one entry."""

    code: str
    text: str
    sender_fault: bool = False
    cause: Optional[BaseException] = None

    @classmethod
    def of(cls, failed: Mapping[str, Any]) -> EntryFailure:
        """The failure of one entry of a batched call's ``Failed`` list."""
        return cls(
            failed.get("Code", "?"), failed.get("Message", ""), bool(failed.get("SenderFault"))
        )


@dataclass(frozen=True)
class RetryRules:
    """How :func:`retry_entries` treats failures.

    ``final`` says which entry failures no retry fixes. ``request_failure``
    turns a request's own error (one of ``request_errors``) into every entry's
    failure; with ``request_ends`` such an error ends the call at once (it is
    returned), else its entries are tried again like the others. With
    ``missing_fails`` an entry SQS names in neither list is a final failure
    (``MissingFromResponse``), else a success.
    """

    tries: int
    pause_s: Callable[[int], float]  # after try n (1, 2, ...)
    final: Callable[[EntryFailure], bool]
    request_failure: Callable[[BaseException], EntryFailure]
    request_errors: Tuple[Type[BaseException], ...] = (Exception,)
    request_ends: bool = False
    missing_fails: bool = False


@dataclass
class Tried:
    """What :func:`retry_entries` did: each sent entry's SQS answer, and a request's error."""

    succeeded: Dict[str, Mapping[str, Any]] = field(default_factory=dict)
    error: Optional[BaseException] = None


# (ids retried, every failure of that try, entries tried, try, pause before the next)
OnRetry = Callable[[List[str], Dict[str, EntryFailure], int, int, float], None]
# (final failures, tries made)
OnFinal = Callable[[Dict[str, EntryFailure], int], None]

_MISSING = EntryFailure(
    "MissingFromResponse", "SQS reported neither success nor failure for this entry"
)


def retry_entries(
    ids: Sequence[str],
    send: Callable[[List[str]], BatchResponse],
    rules: RetryRules,
    on_final: OnFinal,
    on_retry: OnRetry,
) -> Tried:
    """Send the entries ``ids`` (one request: ``send(ids)``), then those SQS failed again.

    Entries are kept in their order; ids stay the same on every try. Final
    failures go to ``on_final`` as soon as they are known (with the tries
    made), and so do those still failing after ``rules.tries`` tries.
    """
    tried = Tried()
    pending = list(ids)
    attempt = 0
    while pending:
        attempt += 1
        failures: Dict[str, EntryFailure] = {}
        try:
            response = send(pending)
        except PASS_THROUGH:
            raise
        except rules.request_errors as error:
            failure = rules.request_failure(error)
            failures = {key: failure for key in pending}
            if rules.request_ends:
                on_final(failures, attempt)
                tried.error = error
                return tried
        else:
            answered = set()
            for success in response.get("Successful", []):
                tried.succeeded[str(success["Id"])] = success
                answered.add(str(success["Id"]))
            for failed in response.get("Failed", []):
                if str(failed["Id"]) not in pending:
                    continue  # not an entry of this request: nothing to try again
                failures[str(failed["Id"])] = EntryFailure.of(failed)
            for key in pending:
                if key in answered or key in failures:
                    continue
                if rules.missing_fails:
                    failures[key] = _MISSING
                else:
                    tried.succeeded[key] = {"Id": key}
        last = attempt >= rules.tries
        finals = {
            key: why for key, why in failures.items() if last or why is _MISSING or rules.final(why)
        }
        if finals:
            on_final(finals, attempt)
        again = [key for key in pending if key in failures and key not in finals]
        if again:
            pause = rules.pause_s(attempt)
            on_retry(again, failures, len(pending), attempt, pause)
            time.sleep(pause)
        pending = again
    return tried


# -- a worker's batched calls on received messages ----------------------------------

QueuedMessage = Tuple[Queue, Any, Optional[str]]  # (its queue, message, task name)


def _ids(entries: Any) -> str:
    """The entries' tasks and message ids, for a log line."""
    return ", ".join(
        f"task {task} message {message_id_of(message)}" for _, message, task in entries
    )


def _request_failure(error: BaseException) -> EntryFailure:
    return EntryFailure(error_code(error) or type(error).__name__, str(error), cause=error)


WORKER_RULES = RetryRules(
    tries=BATCH_TRIES,
    pause_s=lambda attempt: _RETRY_PAUSE_S * attempt,
    final=lambda failure: failure.code in _FINAL_CODES,
    request_failure=_request_failure,
)


class BatchCall:
    """One batch action (delete, or a visibility change) on a list of messages, with retries."""

    def __init__(self, action: str, notify: Notify, what_then: str) -> None:
        self.action = action  # the API's name: DeleteMessageBatch or ChangeMessageVisibilityBatch
        # After a call: id(message) -> a code no retry can fix, for those that got one.
        self.final_codes: Dict[int, str] = {}
        self._notifiers: Dict[int, Notify] = {}
        self.notify = notify
        self.what_then = what_then

    def __call__(
        self,
        entries: Sequence[QueuedMessage],
        notifiers: Optional[Dict[int, Notify]] = None,
        seconds: Optional[int] = None,
    ) -> List[Any]:
        """Carry it out for ``entries``; returns the messages it succeeded for.

        Failures are reported; ``notifiers`` maps ``id(message)`` to the notify
        a failure of it goes to (its handler's), others go to this call's.
        ``seconds`` is a visibility change's timeout.
        """
        self.final_codes = {}
        self._notifiers = notifiers or {}
        done: List[Any] = []
        groups: Dict[Queue, List[QueuedMessage]] = {}
        for entry in entries:
            groups.setdefault(entry[0], []).append(entry)
        for queue, group in groups.items():
            for start in range(0, len(group), MAX_BATCH_ENTRIES):
                done.extend(self._chunk(queue, group[start : start + MAX_BATCH_ENTRIES], seconds))
        return done

    def _chunk(self, queue: Queue, chunk: List[QueuedMessage], seconds: Optional[int]) -> List[Any]:
        by_id = {str(index): entry for index, entry in enumerate(chunk)}

        def send(ids: List[str]) -> BatchResponse:
            pairs = [(key, by_id[key][1]) for key in ids]
            if seconds is None:
                return queue.delete_batch(pairs)
            return queue.change_visibility_batch(pairs, seconds)

        def on_retry(
            again: List[str], failures: Dict[str, EntryFailure], _: int, attempt: int, __: float
        ) -> None:
            first = failures[again[0]]
            logger.warning(
                "%s of %d messages (%s) failed on try %d of %d (%s %s); trying again",
                *(self.action, len(again), _ids(by_id[key] for key in again)),
                *(attempt, BATCH_TRIES, first.code, first.text),
            )

        def on_final(finals: Dict[str, EntryFailure], tries: int) -> None:
            self._report([(by_id[key], why) for key, why in finals.items()], tries)

        tried = retry_entries(list(by_id), send, WORKER_RULES, on_final, on_retry)
        return [entry[1] for key, entry in by_id.items() if key in tried.succeeded]

    def _report(self, failed: List[Tuple[QueuedMessage, EntryFailure]], tries: int) -> None:
        for (_, message, task), why in failed:
            if why.code in _FINAL_CODES:
                self.final_codes[id(message)] = why.code
            message_id = message_id_of(message)
            logger.error(
                "task %s message %s: %s failed after %d %s (%s %s); %s",
                task,
                message_id,
                self.action,
                tries,
                "try" if tries == 1 else "tries",
                why.code,
                why.text,
                self.what_then,
            )
            error = BatchEntryError(self.action, message_id, task, why.code, why.text)
            error.__cause__ = why.cause
            try:
                self._notifiers.get(id(message), self.notify)(
                    error, context=failure_context(message)
                )
            except Exception:
                logger.exception("notify raised while reporting %r", error)
