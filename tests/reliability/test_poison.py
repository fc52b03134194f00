"""Reliability 4: poison messages reach the dead-letter queue; good messages keep flowing.

The queue dead-letters after ``maxReceiveCount`` = 3 receives. Poison: three
function tasks that always raise, a 0.0.11-style handler class that always
raises, and a task that always passes its 1-second hard timeout. Good tasks
come in two waves, the second once the first poison run was seen, so they
must run while the poison is still being retried. Two worker processes in
burst mode stop by themselves once the queue stays empty.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, List

import pytest

from .harness import WorkerProcess, drain_bodies, event_directory, queue_depth, report, wait_for

MAX_RECEIVE_COUNT = 3
GOOD_PER_WAVE = 20
# 1 s: the retries stay apart (the hang task alone needs 1 s a run) and the
# longest empty stretch (a 1 s run, then a 1 s backoff) stays below --burst-idle 3.
RETRY_S = 1


@pytest.mark.timeout(90)
def test_poison_is_dead_lettered_and_good_work_flows(
    sqs_server: Any, worker_args: List[str], tmp_path: Path
) -> None:
    events_dir, events = event_directory(tmp_path)
    queue = sqs_server.make_queue(dead_letter=True, max_receive_count=MAX_RECEIVE_COUNT)
    tm = sqs_server.task_manager(queue)
    poison = [("poison", {"key": f"p{number}"}) for number in range(3)]
    poison += [("poison_class", {"key": "pclass"}), ("hang", {"key": "phang"})]
    poison_keys = [kwargs["key"] for _, kwargs in poison]
    first_wave = [("work", {"key": f"g{number:02d}"}) for number in range(GOOD_PER_WAVE)]
    second_wave = [
        ("work", {"key": f"g{number:02d}"}) for number in range(GOOD_PER_WAVE, 2 * GOOD_PER_WAVE)
    ]
    good_keys = [kwargs["key"] for _, kwargs in first_wave + second_wave]
    tm.submit_batch(poison + first_wave)
    started = time.monotonic()
    worker = WorkerProcess(
        sqs_server,
        queue.url,
        events_dir,
        "--processes",
        "2",
        "--sqs-timeout",
        "4",
        "--alarm-timeout",
        "1",
        "--poll-wait",
        "1",
        "--burst-idle",
        "3",
        "--retry-first",
        str(RETRY_S),
        "--retry-factor",
        "1",
        "--retry-jitter",
        "none",
        settings=worker_args,
    )
    try:
        wait_for(lambda: events.counts("start")["p0"] >= 1, 20)
        tm.submit_batch(second_wave)
        exit_code = worker.wait(60)
    finally:
        worker.close()
    elapsed = time.monotonic() - started
    starts = events.counts("start")
    done = events.counts("done")
    dead = [json.loads(body) for body in drain_bodies(queue.dead_letter_queue)]
    dead_keys = sorted(body["kwargs"]["key"] for body in dead)
    last_poison_run = max(max(events.times("start", key)) for key in poison_keys)
    first_poison_run = min(min(events.times("start", key)) for key in poison_keys)
    second_wave_keys = [kwargs["key"] for _, kwargs in second_wave]
    flowed = sum(
        1
        for key in second_wave_keys
        if done[key] and first_poison_run < events.times("done", key)[0] < last_poison_run
    )
    lost = [key for key in good_keys if done[key] == 0]
    report(
        "poison",
        worker_args=worker_args,
        poison=len(poison_keys),
        good=len(good_keys),
        dead_lettered=len(dead_keys),
        poison_runs=sum(starts[key] for key in poison_keys),
        good_done_while_poison_retried=flowed,
        lost=len(lost),
        run_twice=sum(1 for key in good_keys if done[key] > 1),
        time_s=f"{elapsed:.1f}",
    )
    assert exit_code == 0
    assert lost == []
    # Every poison message ran exactly maxReceiveCount times, then went to the DLQ.
    assert dead_keys == sorted(poison_keys)
    assert {key: starts[key] for key in poison_keys} == dict.fromkeys(
        poison_keys, MAX_RECEIVE_COUNT
    )
    assert all(done[key] == 0 for key in poison_keys)
    # Good tasks ran once each, some of them while the poison was still being retried.
    assert all(done[key] == 1 for key in good_keys)
    assert flowed >= 1
    assert queue_depth(sqs_server, queue.url) == 0
    log = worker.log
    for count in range(1, MAX_RECEIVE_COUNT + 1):
        assert f"receive {count}: failed" in log
        assert f"receive {count}: timed out" in log
