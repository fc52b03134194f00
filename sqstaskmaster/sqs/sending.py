"""The producer side's batch submission: requests of prepared messages, sent with retries.

:class:`~sqstaskmaster.task_manager.TaskManager` exposes this module as
``submit_batch`` (many messages through ``SendMessageBatch``); each message
was made ready first (:mod:`sqstaskmaster.sqs.preparing`: 0.0.11's wire
format, options, size checks), and one bad message stops the whole
submission with nothing sent. A batch is cut, in input order, into requests
of at most 10 entries and at most ``MaximumMessageSize`` bytes in total, sent
up to ``max_in_flight`` at once (one at a time on FIFO queues, to keep group
order). Entries SQS reports as failed are retried a bounded number of times
(:func:`sqstaskmaster.sqs.batch.retry_entries`); whatever still fails is
raised in one :class:`~sqstaskmaster.errors.BatchSendError` that lists every
unsent entry, so no message is ever dropped silently.
"""

from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set

from ..errors import BatchSendError, FailedEntry
from .batch import EntryFailure, RetryRules, retry_entries
from .facts import MAX_BATCH_ENTRIES
from .preparing import PreparedMessage
from .queue import SQS_ERRORS, BatchResponse, Queue

logger = logging.getLogger(__name__)

#: Attempts per entry (the first send included) before a failure is final.
DEFAULT_MAX_ATTEMPTS = 3
#: Pause before the first retry of failed entries; doubled for each later retry.
RETRY_BACKOFF_S = 0.1
#: SendMessageBatch requests a standard queue's batch keeps in flight at once.
#: Each costs a network round trip (tens of ms against SQS), so a few at once
#: multiply a script's throughput; FIFO queues always send one at a time.
DEFAULT_MAX_IN_FLIGHT = 4


def plan_batches(
    sizes: Sequence[int], max_bytes: int, max_entries: int = MAX_BATCH_ENTRIES
) -> List[range]:
    """Cut messages, in order, into runs of at most ``max_entries`` and ``max_bytes`` in total.

    Every size must already be at most ``max_bytes``.
    """
    batches: List[range] = []
    start = 0
    total = 0
    for index, size in enumerate(sizes):
        if index > start and (index - start >= max_entries or total + size > max_bytes):
            batches.append(range(start, index))
            start, total = index, 0
        total += size
    if start < len(sizes):
        batches.append(range(start, len(sizes)))
    return batches


def send_batch(
    queue: Queue,
    prepared: Sequence[PreparedMessage],
    *,
    max_bytes: int,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff_s: float = RETRY_BACKOFF_S,
    max_in_flight: int = 1,
) -> List[str]:
    """Send prepared messages through SendMessageBatch; their message ids, in input order.

    ``prepared[i].index`` must be ``i`` (as :func:`prepare` makes them in a batch).

    With ``max_in_flight`` 1, requests go out one after the other through
    ``queue.send_batch``, in input order. With more, up to that many
    requests are in flight at once, from a thread pool, if the queue allows
    it (:attr:`~sqstaskmaster.sqs.queue.Queue.parallel_sends`; else they go
    out one after the other). FIFO callers must pass 1: concurrent requests
    lose group order.

    Entries SQS fails are retried (those with ``SenderFault`` are final at
    once) up to ``max_attempts`` sends in all, within the request's own slot.
    A request SQS (or the network) rejects as a whole stops the submission:
    requests in flight finish and are accounted for, later ones are not
    started. Either way, :class:`BatchSendError` lists every entry not sent
    (``NotAttempted`` for requests never started), and carries the ids of
    those that were.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts is {max_attempts!r}; it must be at least 1")
    check_max_in_flight(max_in_flight)
    ids: List[Optional[str]] = [None] * len(prepared)
    failed: List[FailedEntry] = []
    batches = plan_batches([message.size for message in prepared], max_bytes)
    workers = max(1, min(max_in_flight, len(batches))) if queue.parallel_sends else 1

    def request(batch: range) -> _Outcome:
        return _send_request(
            queue, [prepared[position] for position in batch], max_attempts, backoff_s
        )

    started = 0  # batches[:started] were sent (or are in flight)
    error: Optional[BaseException] = None
    if workers == 1:
        for batch in batches:
            started += 1
            outcome = request(batch)
            _merge(outcome, ids, failed)
            if outcome.error is not None:
                error = outcome.error
                break
    else:
        _warn_if_pool_too_small(queue, workers)
        with ThreadPoolExecutor(workers, thread_name_prefix="sqstaskmaster-send") as pool:
            in_flight: Set[Future[_Outcome]] = set()
            while True:
                while error is None and started < len(batches) and len(in_flight) < workers:
                    in_flight.add(pool.submit(request, batches[started]))
                    started += 1
                if not in_flight:
                    break
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    outcome = future.result()
                    _merge(outcome, ids, failed)
                    if error is None and outcome.error is not None:
                        error = outcome.error
    failed.extend(_not_attempted(prepared, batches[started:]))
    if failed:
        failed.sort(key=lambda entry: entry.index)
        if error is not None:
            raise BatchSendError(failed, ids) from error
        raise BatchSendError(failed, ids)
    logger.debug(
        "submitted %d messages in %d requests, at most %d at once",
        len(prepared),
        len(batches),
        workers,
    )
    return [message_id for message_id in ids if message_id is not None]  # all of them


def check_max_in_flight(max_in_flight: Any) -> None:
    """Raise ValueError unless ``max_in_flight`` is an int of at least 1."""
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError(
            f"max_in_flight is {max_in_flight!r}; it must be an int of at least 1 (the number "
            f"of SendMessageBatch requests sent at once; {DEFAULT_MAX_IN_FLIGHT} by default, "
            "1 to send one request after the other)"
        )


@dataclass
class _Outcome:
    """What one request (with its retries) did: ids sent, entries failed, its own error."""

    ids: Dict[int, str] = field(default_factory=dict)
    failed: List[FailedEntry] = field(default_factory=list)
    error: Optional[BaseException] = None


def _merge(outcome: _Outcome, ids: List[Optional[str]], failed: List[FailedEntry]) -> None:
    for index, message_id in outcome.ids.items():
        ids[index] = message_id
    failed.extend(outcome.failed)


def _send_request(
    queue: Queue, pending: List[PreparedMessage], max_attempts: int, backoff_s: float
) -> _Outcome:
    """Send one request's entries, retrying those SQS fails; SQS and network errors are returned."""
    outcome = _Outcome()
    by_id = {str(message.index): message for message in pending}

    def send(ids: List[str]) -> BatchResponse:
        return queue.send_batch([dict(by_id[key].params, Id=key) for key in ids])

    def on_final(finals: Dict[str, EntryFailure], _: int) -> None:
        for key, why in finals.items():
            message = by_id[key]
            outcome.failed.append(
                FailedEntry(message.index, message.task, why.code, why.text, why.sender_fault)
            )

    def on_retry(
        again: List[str], _: Dict[str, EntryFailure], tried: int, attempt: int, pause_s: float
    ) -> None:
        logger.warning(
            "SQS failed %d of %d entries of a batch (attempt %d of %d); retrying "
            "entries %s in %.2f s",
            *(len(again), tried, attempt, max_attempts),
            *([by_id[key].index for key in again], pause_s),
        )

    rules = RetryRules(
        tries=max_attempts,
        pause_s=lambda attempt: backoff_s * 2 ** (attempt - 1),
        final=lambda failure: failure.sender_fault,
        request_failure=_request_failure,
        request_errors=SQS_ERRORS,
        request_ends=True,
        missing_fails=True,
    )
    tried = retry_entries(list(by_id), send, rules, on_final, on_retry)
    outcome.error = tried.error
    for key, success in tried.succeeded.items():
        outcome.ids[by_id[key].index] = success["MessageId"]
    return outcome


def _warn_if_pool_too_small(queue: Queue, workers: int) -> None:
    pool_size = queue.connections
    if pool_size is not None and workers > pool_size:
        logger.warning(
            "max_in_flight is %d but the SQS client keeps at most %d connections "
            "(botocore's max_pool_connections): the extra requests open and drop "
            "connections; give the client Config(max_pool_connections=%d) or lower "
            "max_in_flight",
            workers,
            pool_size,
            workers,
        )


def _request_failure(error: BaseException) -> EntryFailure:
    response = getattr(error, "response", None)
    if isinstance(response, dict) and "Error" in response:
        code = str(response["Error"].get("Code", type(error).__name__))
        text = str(response["Error"].get("Message", error))
        sender_fault = response["Error"].get("Type") == "Sender"
    else:
        code = type(error).__name__
        text = f"{error} (the request failed in transit: SQS may or may not have enqueued it)"
        sender_fault = False
    return EntryFailure(code, text, sender_fault, error)


def _not_attempted(
    prepared: Sequence[PreparedMessage], batches: Sequence[range]
) -> List[FailedEntry]:
    return [
        FailedEntry(
            prepared[position].index,
            prepared[position].task,
            "NotAttempted",
            "not sent: an earlier request of this submission failed",
            False,
        )
        for batch in batches
        for position in batch
    ]
