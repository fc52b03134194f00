"""Reliability 9: workers stopped and killed while resumable tasks go on in continuation messages.

Three worker processes (process isolation, ``--continue-after 3``) share a
queue with three resumable ``steps`` tasks of 36 steps (0.25 to 0.4 s each,
a checkpoint after every step), so each task goes on in a new message every
3 s. Six times, at random (a seeded ``random.Random``; the seed is printed,
``SQSTM_RELIABILITY_SEED`` sets another), the test either SIGTERMs a worker
that runs a step (a warm stop: the task returns after the step it is in, and goes on
from that checkpoint in a continuation message, on another worker) or
SIGKILLs that worker's process group (its message comes back after its 4 s
visibility timeout and runs again from the checkpoint it carries), and
starts a replacement. Then everything finishes.

Passes when every task did every step (lost: 0), no two runs of one task
overlap in time, a run ended by ``continue_after`` or a warm stop repeats no
step, a run after a kill -9 starts from its message's checkpoint, and every
warm-stopped worker exits 0. Reports the steps repeated per interruption.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from .harness import (
    Events,
    WorkerProcess,
    event_directory,
    queue_depth,
    report,
    wait_for,
)

TASKS = 3
STEPS = 36
WORKERS = 3
INTERRUPTIONS = 6
SQS_TIMEOUT_S = 4
WARM = "warm"
KILL9 = "kill9"
CONTINUE = "continue_after"
SETTINGS = (
    *("--continue-after", "3", "--shutdown-grace", "3"),
    *("--sqs-timeout", str(SQS_TIMEOUT_S), "--alarm-timeout", "1", "--poll-wait", "1"),
)


@dataclass
class Run:
    """One run of a task: from the checkpoint its message carried to its last event."""

    key: str
    run: str
    worker: int
    message_id: str
    continuation: int
    start_step: int
    started: float
    ended: float = 0.0
    steps: List[int] = field(default_factory=list)


@dataclass
class Interruption:
    kind: str
    worker: int
    at: float


def runs_of(events: Events) -> Dict[str, List[Run]]:
    """Each task's runs, in the order they started, with their steps and last event."""
    runs: Dict[str, Run] = {}
    for data in events.data("run"):
        runs[data["run"]] = Run(
            data["key"],
            data["run"],
            data["worker"],
            data["message_id"],
            data["continuation"],
            data["step"],
            data["time"],
            data["time"],
        )
    for kind in ("begin", "step", "stop", "done"):
        for data in events.data(kind):
            run = runs[data["run"]]
            run.ended = max(run.ended, data["time"])
            if kind == "step":
                run.steps.append(data["step"])
    by_key: Dict[str, List[Run]] = defaultdict(list)
    for run in sorted(runs.values(), key=lambda run: run.started):
        by_key[run.key].append(run)
    return by_key


def overlaps(runs: List[Run]) -> List[Tuple[Run, Run]]:
    """Pairs of runs of one task that were running at the same time."""
    return [
        (one, other)
        for index, one in enumerate(runs)
        for other in runs[index + 1 :]
        if other.started < one.ended and one.started < other.ended
    ]


def described(pairs: List[Tuple[Run, Run]], interruptions: List[Interruption]) -> str:
    """Overlapping runs, and the interruptions, for a failure's message."""
    lines = [
        f"{run.key} message {run.message_id} continuation {run.continuation} from step "
        f"{run.start_step} on worker {run.worker}: {run.started:.2f} to {run.ended:.2f}"
        for pair in pairs
        for run in pair
    ]
    lines += [f"{item.kind} of worker {item.worker} at {item.at:.2f}" for item in interruptions]
    return "\n".join(lines)


def cause(run: Run, following: Run, interruptions: List[Interruption]) -> str:
    """What ended ``run`` (``following`` is the task's next run): a stop, a kill, or neither.

    A worker starts nothing after its interruption, so at most one falls
    between the run's start and the next run's. A kill after the run had
    sent its continuation (the next run has a new message) lost nothing.
    """
    for interruption in interruptions:
        if interruption.worker == run.worker and run.started <= interruption.at:
            if interruption.at < following.started:
                if interruption.kind == KILL9 and following.message_id != run.message_id:
                    return CONTINUE
                return interruption.kind
    return CONTINUE


def busy_workers(events: Events, live: List[WorkerProcess]) -> List[WorkerProcess]:
    """The live workers whose task began a step within the last second."""
    since_ns = time.monotonic_ns() - 1_000_000_000
    recent = set()
    for name in events.names("begin"):
        if int(name.split(".")[3]) > since_ns:
            try:
                recent.add(json.loads((events.directory / name).read_text())["worker"])
            except ValueError:
                continue  # still being written
    return [worker for worker in live if worker.pid in recent]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a task child's parent pid")
@pytest.mark.timeout(120)
def test_interrupted_resumable_tasks_lose_nothing(
    sqs_server: Any, worker_args: List[str], tmp_path: Path
) -> None:
    seed = int(os.environ.get("SQSTM_RELIABILITY_SEED", "6009"))
    print(f"seed={seed}")
    rng = random.Random(seed)
    events_dir, events = event_directory(tmp_path)
    queue = sqs_server.make_queue()
    keys = [f"c{number}" for number in range(TASKS)]
    sqs_server.task_manager(queue).submit_batch(
        [
            ("steps", {"key": key, "total": STEPS, "step_s": round(rng.uniform(0.25, 0.4), 3)})
            for key in keys
        ]
    )
    kinds = [WARM, KILL9] * (INTERRUPTIONS // 2)
    rng.shuffle(kinds)
    started = time.monotonic()
    everyone: List[WorkerProcess] = []
    live: List[WorkerProcess] = []
    stopped: List[WorkerProcess] = []
    interruptions: List[Interruption] = []

    def start() -> None:
        worker = WorkerProcess(
            sqs_server,
            queue.url,
            events_dir,
            *SETTINGS,
            log_name=f"worker-{len(everyone)}",
            settings=worker_args,
        )
        everyone.append(worker)
        live.append(worker)

    def interrupt(kind: str, worker: WorkerProcess) -> None:
        live.remove(worker)
        interruptions.append(Interruption(kind, worker.pid, time.time()))
        if kind == WARM:
            worker.signal(signal.SIGTERM)
            stopped.append(worker)
        else:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        start()

    def all_done() -> bool:
        return set(events.counts("done")) == set(keys)

    try:
        for _ in range(WORKERS):
            start()
        for kind in kinds:
            # Given a worker in the middle of a step, some time after the last stop...
            pause_until = time.monotonic() + rng.uniform(1.0, 2.5)
            victim: Optional[WorkerProcess] = None
            while victim is None and not all_done():
                busy = busy_workers(events, live)
                if busy and time.monotonic() >= pause_until:
                    victim = rng.choice(busy)
                time.sleep(0.05)
            if victim is None:
                break
            # ...when it is stopped or killed, and replaced.
            interrupt(kind, victim)
        wait_for(all_done, 60, step_s=0.2)
        wait_for(lambda: queue_depth(sqs_server, queue.url) == 0, 3 * SQS_TIMEOUT_S + 10)
        exit_codes = [worker.wait(15) for worker in stopped]
        exit_codes += [worker.stop(15) for worker in live]
    finally:
        for worker in everyone:
            worker.close()
    elapsed = time.monotonic() - started

    # Then: every step done, no two runs at once, and what each interruption cost.
    runs = runs_of(events)
    done_steps = {key: [step for run in runs[key] for step in run.steps] for key in keys}
    lost = [key for key in keys if set(done_steps[key]) != set(range(1, STEPS + 1))]
    duplicates = sum(len(steps) - len(set(steps)) for steps in done_steps.values())
    overlapping = [pair for key in keys for pair in overlaps(runs[key])]
    repeated: Dict[str, List[int]] = defaultdict(list)
    resumed_after_s: Dict[str, List[float]] = defaultdict(list)
    wrong_start: List[str] = []
    for key in keys:
        for run, following in zip(runs[key], runs[key][1:]):
            kind = cause(run, following, interruptions)
            last = max(run.steps, default=run.start_step)
            repeated[kind].append(max(last - following.start_step, 0))
            resumed_after_s[kind].append(following.started - run.ended)
            if kind == KILL9 and following.start_step != run.start_step:
                wrong_start.append(f"{run.run} -> {following.run}")
    continuations = {key: max(run.continuation for run in runs[key]) for key in keys}
    logs = "".join(worker.log for worker in everyone)

    def figures(kind: str) -> str:
        values = repeated[kind]
        if not values:
            return "none"
        return f"{len(values)}x_max{max(values)}_mean{sum(values) / len(values):.1f}"

    report(
        "continuations",
        worker_args=worker_args,
        seed=seed,
        tasks=TASKS,
        steps=STEPS,
        warm_stops=sum(1 for item in interruptions if item.kind == WARM),
        kill9s=sum(1 for item in interruptions if item.kind == KILL9),
        runs=sum(len(task_runs) for task_runs in runs.values()),
        continuations=sum(continuations.values()),
        repeated_after_warm=figures(WARM),
        repeated_after_kill9=figures(KILL9),
        repeated_after_continue=figures(CONTINUE),
        kill9_resumed_after_max_s=f"{max(resumed_after_s[KILL9], default=0):.1f}",
        warm_resumed_after_max_s=f"{max(resumed_after_s[WARM], default=0):.1f}",
        duplicates=duplicates,
        overlaps=len(overlapping),
        lost=len(lost),
        time_s=f"{elapsed:.1f}",
    )
    assert lost == []
    assert overlapping == [], described(overlapping, interruptions)
    assert wrong_start == [], wrong_start
    assert max(repeated[WARM], default=0) <= 1
    assert max(repeated[CONTINUE], default=0) == 0
    # Every step done twice is one an interruption made a later run repeat.
    assert duplicates == sum(repeated[WARM]) + sum(repeated[KILL9])
    assert repeated[WARM] and repeated[KILL9], "both kinds of stop must have struck a run"
    assert len(interruptions) >= INTERRUPTIONS - 1
    assert all(code == 0 for code in exit_codes), exit_codes
    # (A kill -9 runs a message again under its own continuation number.)
    assert min(continuations.values()) >= 1
    assert "worker failed" not in logs
