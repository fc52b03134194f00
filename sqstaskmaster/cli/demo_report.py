"""What the demo measures and shows: each task run's trace files, the summary, the progress.

Each task run leaves a start file and an end file in the directory named by
``SQSTASKMASTER_DEMO_DIR`` (see :func:`record`), so "lost" and "run twice
while running" are measured from what ran, not assumed. A resumable task's
runs also note the continuation message they ran from, the epoch they
resumed from, and whether they went on in a new message (:func:`print_training`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Tuple

from ..sqs.queue import BotoQueue, Receive

DIR_ENV = "SQSTASKMASTER_DEMO_DIR"
TIME_LIMIT_S = 50.0


def record(task_id: str, event: str, **data: Any) -> None:
    """Leave a trace file for this run; a start notes other runs of the task still alive."""
    directory = os.environ.get(DIR_ENV)
    if not directory:
        return
    if event == "start":
        data["alongside"] = [
            pid for pid in _run_pids(directory, task_id) if pid != os.getpid() and _alive(pid)
        ]
    data.update(task_id=task_id, event=event, pid=os.getpid(), time=time.time())
    name = f"{task_id}.{os.getpid()}.{event}"
    with open(os.path.join(directory, name + ".tmp"), "w") as handle:
        json.dump(data, handle)
    os.replace(os.path.join(directory, name + ".tmp"), os.path.join(directory, name))


def _run_pids(directory: str, task_id: str) -> List[int]:
    pids = []
    for name in os.listdir(directory):
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == task_id and parts[2] == "start":
            pids.append(int(parts[1]))
    return pids


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not os.path.isdir("/proc")  # /proc exists but had no entry: gone


Run = Dict[str, Any]


def read_runs(directory: str) -> Dict[str, List[Run]]:
    """Every run per task id: its start time, end time (None if killed) and success.

    A resumable task's run also has its ``continuation`` number, the epoch it
    ``resumed_from``, whether it ``continued`` in a new message and its last ``epoch``.
    """
    runs: Dict[Tuple[str, str], Run] = {}
    for name in os.listdir(directory):
        if name.endswith(".tmp") or name.count(".") != 2:
            continue
        with open(os.path.join(directory, name)) as handle:
            data = json.load(handle)
        run = runs.setdefault((data["task_id"], str(data["pid"])), {"start": None, "end": None})
        if data["event"] == "start":
            run["start"] = data["time"]
            run["alongside"] = data.get("alongside", [])
            run["continuation"] = data.get("continuation", 0)
            run["resumed_from"] = data.get("resumed_from")
        else:
            run["end"] = data["time"]
            run["ok"] = data.get("ok", False)
            run["continued"] = data.get("continued", False)
            run["epoch"] = data.get("epoch")
    by_task: Dict[str, List[Run]] = {}
    for (task_id, _pid), run in runs.items():
        by_task.setdefault(task_id, []).append(run)
    for task_runs in by_task.values():
        task_runs.sort(key=lambda run: run["start"] or 0.0)
    return by_task


def overlapping_runs(task_runs: List[Run]) -> int:
    """Runs of one task that started while another run of it was alive.

    Measured twice: each run notes, as it starts, the other runs of its task
    whose processes are alive; and runs whose start and end are both known
    are checked for overlapping times.
    """
    noted = sum(1 for run in task_runs if run.get("alongside"))
    spans = [
        (r["start"], r["end"]) for r in task_runs if r["start"] is not None and r["end"] is not None
    ]
    overlapping = 0
    for i, (start_i, end_i) in enumerate(spans):
        for start_j, end_j in spans[i + 1 :]:
            if start_j < end_i and start_i < end_j:
                overlapping += 1
    return max(noted, overlapping)


def rerun(task_runs: List[Run]) -> bool:
    """Whether one message of a task ran more than once (a continuation is a new message)."""
    return len(task_runs) > len({run.get("continuation", 0) for run in task_runs})


def continued(task_runs: List[Run]) -> int:
    """Runs of a resumable task that stopped and went on in a continuation message."""
    return sum(1 for run in task_runs if run.get("continued"))


def summarize(
    submitted: Dict[str, str], runs: Dict[str, List[Run]], dead_bodies: List[str]
) -> Dict[str, int]:
    """The demo's summary from what ran (``runs``) and what the dead-letter queue holds.

    ``submitted`` maps each message body to its task id ("" for the malformed one).
    """
    done = {task_id for task_id, task_runs in runs.items() if any(r.get("ok") for r in task_runs)}
    dead_ids = {submitted.get(body) or body for body in dead_bodies}
    accounted = done | dead_ids
    lost = sum(1 for body, task_id in submitted.items() if (task_id or body) not in accounted)
    return {
        "done": len(done),
        "retried": sum(1 for task_runs in runs.values() if rerun(task_runs)),
        "continued": sum(continued(task_runs) for task_runs in runs.values()),
        "timed_out": sum(
            1 for task_runs in runs.values() if any(r["end"] is None for r in task_runs)
        ),
        "dead_lettered": len(dead_bodies),
        "lost": lost,
        "duplicates": sum(overlapping_runs(r) for r in runs.values()),
    }


def _depths(sqs: Any, url: str) -> Tuple[int, int, int]:
    """A queue's (visible, in flight, delayed) message counts."""
    attributes = BotoQueue.of_resource(sqs.Queue(url)).queue_attributes(["All"])
    return (
        int(attributes.get("ApproximateNumberOfMessages", 0)),
        int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
    )


def drain(sqs: Any, url: str) -> List[str]:
    """Bodies of every message in a queue (received, not deleted)."""
    bodies: List[str] = []
    empty = 0
    queue = BotoQueue.of_resource(sqs.Queue(url))
    while empty < 2:
        messages = queue.receive(Receive(max_messages=10, wait_s=0, visibility_s=60))
        empty = empty + 1 if not messages else 0
        bodies.extend(message.body for message in messages)
    return bodies


def print_table(summary: Dict[str, int], out: Any) -> None:
    """The summary, one outcome a line with its count and meaning."""
    rows = [
        ("done", "tasks that succeeded"),
        ("retried", "tasks whose message ran more than once"),
        ("continued", "times a resumable task went on in a new message"),
        ("timed_out", "tasks stopped at their hard timeout"),
        ("dead_lettered", "messages moved to the dead-letter queue"),
        ("lost", "messages neither done nor dead-lettered"),
        ("duplicates", "times a task ran twice at once"),
    ]
    print("", file=out)
    print(f"  {'outcome':<15}{'count':>6}  meaning", file=out)
    for key, meaning in rows:
        print(f"  {key:<15}{summary[key]:>6}  {meaning}", file=out)


def _epochs_run(first: int, last: int) -> str:
    """The epochs after ``first`` up to ``last``, in words."""
    if last <= first:
        return "ran no epoch"
    if last == first + 1:
        return f"ran epoch {last}"
    return f"ran epochs {first + 1}-{last}"


def training_line(run: Run, epochs: int) -> str:
    """What one run of the resumable training task did: its message, where it began, its end."""
    number = run.get("continuation", 0)
    message = f"continuation {number}" if number else "first message"
    first = int(run.get("resumed_from") or 0)
    began = f"resumed from epoch {first}" if first else "started at epoch 0"
    last = run.get("epoch")
    if run["end"] is None or last is None:
        return f"  {message:<16}{began}, stopped before it ended (killed)"
    ran = _epochs_run(first, last)
    if run.get("ok"):
        done = f"finished all {epochs} epochs" if last >= epochs else f"returned at epoch {last}"
        return f"  {message:<16}{began}, {ran}: {done}"
    if run.get("continued"):
        return f"  {message:<16}{began}, {ran}; asked to stop: goes on in a new message"
    return f"  {message:<16}{began}, {ran}; failed"


def print_training(
    task_id: str, task_runs: List[Run], epochs: int, continue_after_s: float, out: Any
) -> None:
    """The resumable task's messages: one line per run, in the order they started."""
    print(
        f"\n{task_id}: {epochs} epochs, a checkpoint after each; the worker's "
        f"--continue-after is {continue_after_s:g} s",
        file=out,
    )
    for run in task_runs:
        print(training_line(run, epochs), file=out)
    if not task_runs:
        print("  never ran", file=out)


def show_progress(
    sqs: Any,
    url: str,
    dlq_url: str,
    directory: str,
    expected_done: int,
    total: int,
    out: Any,
    interactive: bool,
    worker: Any,
    started: float,
) -> None:
    """Print progress until every message is done or dead-lettered (or the time limit)."""
    deadline = time.monotonic() + TIME_LIMIT_S
    last = ""
    while time.monotonic() < deadline and worker.poll() is None:
        runs = read_runs(directory)
        done = sum(1 for r in runs.values() if any(run.get("ok") for run in r))
        running = sum(1 for r in runs.values() for run in r if run["end"] is None)
        went_on = sum(continued(r) for r in runs.values())
        visible, in_flight, delayed = _depths(sqs, url)
        dead = sum(_depths(sqs, dlq_url)[:2])
        line = (
            f"done {done}/{expected_done}  continued {went_on}  dead-lettered {dead}/3  "
            f"queue: {visible} visible, {in_flight} in flight, {delayed} delayed  "
            f"(runs started {sum(len(r) for r in runs.values())}, unfinished {running})"
        )
        if line != last:
            stamp = f"[{time.monotonic() - started:5.1f} s] "
            if interactive:
                print("\r" + stamp + line, end="", file=out, flush=True)
            else:
                print(stamp + line, file=out, flush=True)
            last = line
        if done + dead >= total and visible + in_flight + delayed == 0:
            break
        time.sleep(0.3)
    if interactive:
        print(file=out)
