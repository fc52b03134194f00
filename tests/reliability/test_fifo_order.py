"""Reliability 7: a FIFO queue keeps each message group's order under prefetch and failures.

Six message groups of five messages each on a FIFO queue; three messages
fail their first run (one fails its first two), retried at once (no retry
delay: with one, moto's server breaks a group's order by itself when several
of its messages were in flight, and LocalStack delivers a group's visible
messages while one of it is in flight; SQS does neither). One worker process
polls it (with prefetch 1, and with prefetch 10, when one poll brings a whole
group; one process, because moto's server may return one message to two
concurrent receives, which SQS does not). After a message of a group did
not succeed, the worker hands back the group's waiting messages, so that
each group runs 1, 2, 2, 3, ... (the failed message again, then the rest),
never 1, 2, 3, 2. A fault-free proxy counts the requests the workers send.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from .harness import FaultProxy, WorkerProcess, event_directory, queue_depth, report

GROUPS = 6
PER_GROUP = 5
# (group, position in it) -> how many first runs fail.
FAILS = {(1, 2): 1, (3, 1): 2, (4, 5): 1}


def key_of(group: int, position: int) -> str:
    return f"g{group}m{position}"


def runs_in_order(directory: Path) -> List[Tuple[float, str]]:
    """Every start event: (wall-clock time, key), oldest first."""
    found = []
    for path in directory.iterdir():
        kind, key = path.name.split(".")[:2]
        if kind == "start":
            found.append((json.loads(path.read_text())["time"], key))
    return sorted(found)


@pytest.mark.timeout(120)
def test_each_fifo_group_runs_in_order_under_prefetch_and_failures(
    sqs_server: Any, worker_args: List[str], tmp_path: Path
) -> None:
    events_dir, events = event_directory(tmp_path)
    queue = sqs_server.make_queue(fifo=True)
    tm = sqs_server.task_manager(queue)
    expected: Dict[str, List[str]] = {}
    for group in range(GROUPS):
        for position in range(1, PER_GROUP + 1):
            key = key_of(group, position)
            fails = FAILS.get((group, position), 0)
            expected.setdefault(f"g{group}", []).extend([key] * (fails + 1))
            tm.submit_with(
                "flaky",
                {"key": key, "fails": fails},
                message_group_id=f"g{group}",
                deduplication_id=uuid.uuid4().hex,
            )
    started = time.monotonic()
    with FaultProxy(sqs_server.endpoint_url, {}) as proxy:
        worker = WorkerProcess(
            sqs_server,
            queue.url,
            events_dir,
            "--processes",
            "1",
            "--sqs-timeout",
            "4",
            "--alarm-timeout",
            "1",
            "--poll-wait",
            "1",
            "--burst-idle",
            "4",
            "--retry-first",
            "0",
            "--retry-factor",
            "1",
            "--retry-jitter",
            "none",
            endpoint_url=proxy.url,
            settings=worker_args,
        )
        try:
            exit_code = worker.wait(90)
        finally:
            worker.close()
    elapsed = time.monotonic() - started
    ran: Dict[str, List[str]] = {}
    for _, key in runs_in_order(events_dir):
        ran.setdefault(key.split("m")[0], []).append(key)
    done = events.counts("done")
    keys = [key for group in expected.values() for key in dict.fromkeys(group)]
    lost = [key for key in keys if done[key] == 0]
    out_of_order = sorted(group for group, order in expected.items() if ran.get(group) != order)
    log = worker.log
    report(
        "fifo_order",
        worker_args=worker_args,
        messages=len(keys),
        groups=GROUPS,
        failed_runs=sum(FAILS.values()),
        runs=sum(len(order) for order in ran.values()),
        receives=proxy.requests["ReceiveMessage"],
        group_hand_backs=log.count("of its FIFO group"),
        out_of_order_groups=len(out_of_order),
        lost=len(lost),
        run_twice=sum(1 for key in keys if done[key] > 1),
        time_s=f"{elapsed:.1f}",
    )
    assert exit_code == 0
    assert out_of_order == [], {group: ran.get(group) for group in out_of_order}
    assert lost == []
    assert all(done[key] == 1 for key in keys)
    assert queue_depth(sqs_server, queue.url) == 0
