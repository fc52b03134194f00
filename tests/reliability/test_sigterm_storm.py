"""Reliability 2: workers stopped (SIGTERM) and started again and again while 100 tasks run.

Two worker slots (one in signal mode, one in process isolation) each run a
worker for 0.5 to 1.5 s once it consumes (every fourth one only 0.6 to
0.9 s from its start, while it starts up; once, one is stopped right as it
starts a long task), stop it with SIGTERM and start a new one, until every
task has completed and the queue is empty. The shutdown grace is short
(0.2 s) and some tasks are longer, so both stop paths happen: a task that
ends within the grace is completed and deleted; one that does not is stopped
and its message handed back (visibility 0) for the next worker. Every stop
must exit 0, and no task may be lost.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from .harness import WorkerProcess, event_directory, queue_depth, report, wait_for

TASKS = 100
MODES: Tuple[List[str], ...] = (["--signal-mode"], [])


@pytest.mark.timeout(120)
def test_sigterm_storm_loses_nothing(
    sqs_server: Any, worker_args: List[str], tmp_path: Path
) -> None:
    rng = random.Random(6002)
    events_dir, events = event_directory(tmp_path)
    queue = sqs_server.make_queue()
    keys = [f"s{number:03d}" for number in range(TASKS)]
    # Mostly short tasks, one in ten longer than the grace.
    durations = [
        round(rng.uniform(0.35, 0.45) if rng.random() < 0.1 else rng.uniform(0.01, 0.04), 3)
        for _ in keys
    ]
    sqs_server.task_manager(queue).submit_batch(
        [("work", {"key": key, "seconds": seconds}) for key, seconds in zip(keys, durations)]
    )
    started = time.monotonic()
    slots: Dict[int, Optional[WorkerProcess]] = {0: None, 1: None}
    stop_at: Dict[int, float] = {}
    everyone: List[WorkerProcess] = []
    exit_codes: List[int] = []
    stop_times: List[float] = []
    early: List[WorkerProcess] = []

    def start(slot: int) -> None:
        worker = WorkerProcess(
            sqs_server,
            queue.url,
            events_dir,
            *MODES[slot],
            "--shutdown-grace",
            "0.2",
            "--sqs-timeout",
            "10",
            "--poll-wait",
            "1",
            log_name=f"worker-{len(everyone)}",
            settings=worker_args,
        )
        everyone.append(worker)
        slots[slot] = worker
        stop_at.pop(slot, None)
        if len(everyone) % 4 == 0:
            # Every fourth worker is stopped while it starts up (importing the
            # app, checking the queue): that stop must be clean too.
            stop_at[slot] = time.monotonic() + rng.uniform(0.6, 0.9)
            early.append(worker)

    def stop(slot: int, final: bool = False) -> None:
        worker = slots[slot]
        assert worker is not None
        if final:
            wait_for(lambda: "consuming" in worker.log, 20)
        signalled = time.monotonic()
        exit_codes.append(worker.stop(15))
        stop_times.append(time.monotonic() - signalled)
        slots[slot] = None

    long_keys = {key for key, seconds in zip(keys, durations) if seconds > 0.3}
    forced: List[int] = []

    def running_long_task(worker: WorkerProcess) -> bool:
        """Whether the (signal-mode) worker is inside a long task right now."""
        done = events.counts("done")
        for name in events.names("start"):
            _, key, pid, _ = name.split(".")
            if key in long_keys and not done[key] and int(pid) == worker.pid:
                return True
        return False

    def finished() -> bool:
        return len(events.counts("done")) == TASKS and queue_depth(sqs_server, queue.url) == 0

    try:
        for slot in slots:
            start(slot)
        deadline = time.monotonic() + 90
        while not finished():
            assert time.monotonic() < deadline, "tasks still pending after 90 s"
            for slot, worker in slots.items():
                # Once, stop the signal-mode worker right as a long task runs,
                # so that the stop-after-the-grace path is taken in every run.
                if not forced and slot == 0 and worker is not None and running_long_task(worker):
                    stop_at[slot] = time.monotonic()
                    forced.append(worker.pid)
                # Other workers live 0.5 to 1.5 s from their "consuming" line.
                if slot not in stop_at and worker is not None and "consuming" in worker.log:
                    stop_at[slot] = time.monotonic() + rng.uniform(0.5, 1.5)
                if slot in stop_at and time.monotonic() >= stop_at[slot]:
                    stop(slot)
                    start(slot)
            time.sleep(0.05)
        for slot in slots:
            stop(slot, final=True)
    finally:
        for worker in everyone:
            worker.close()
    elapsed = time.monotonic() - started
    done = events.counts("done")
    lost = [key for key in keys if done[key] == 0]
    twice = [key for key in keys if done[key] > 1]
    logs = "".join(worker.log for worker in everyone)
    handed_back = logs.count("interrupted by shutdown")
    report(
        "sigterm_storm",
        worker_args=worker_args,
        tasks=TASKS,
        stops=len(exit_codes),
        stops_during_startup=len(early),
        nonzero_exits=sum(1 for code in exit_codes if code != 0),
        interrupted_and_handed_back=handed_back,
        lost=len(lost),
        run_twice=len(twice),
        slowest_stop_s=f"{max(stop_times):.2f}",
        time_s=f"{elapsed:.1f}",
    )
    assert lost == []
    assert exit_codes and all(code == 0 for code in exit_codes), exit_codes
    assert len(exit_codes) >= 8, "the storm must have stopped workers many times"
    assert len(early) >= 2
    # Both stop paths were taken: tasks interrupted after the grace and handed back...
    assert handed_back >= 1
    # ...and a stop arriving while idle or during a short task is quick.
    assert min(stop_times) < 2.0
    assert "worker failed" not in logs
