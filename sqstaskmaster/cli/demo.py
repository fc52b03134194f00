"""``sqstaskmaster demo``: watch a worker keep its three promises, in under a minute.

With no queue URL it starts moto's server mode on 127.0.0.1 (no AWS account,
nothing leaves the machine), makes a queue whose redrive policy dead-letters
a message after 2 receives, and submits a mix:

- ``add`` x6: quick tasks that succeed;
- ``flaky``: fails on its first run, succeeds on its retry;
- ``crunch``: holds the GIL in C code for about 3 x the visibility timeout,
  within its hard timeout: only the heartbeat of the worker process (the task
  runs in a child) keeps other workers from receiving it meanwhile;
- ``python_spin`` and ``native_spin``: a Python loop and a GIL-holding C loop
  (``sum(range(10**10))``) that run past their 2-second hard timeout: killed
  on time, retried, then dead-lettered;
- one message that is not JSON: never run, dead-lettered.

Then it runs ``sqstaskmaster worker sqstaskmaster.cli.demo:app --processes 2``
as a subprocess, shows progress, stops the worker with SIGTERM, and prints a
summary. Each task run leaves a start file and an end file (see
:func:`_record`), so "lost" and "run twice while running" are measured from
what ran, not assumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..worker.loop import Worker

DIR_ENV = "SQSTASKMASTER_DEMO_DIR"
SPIN_HARD_TIMEOUT_S = 2
SQS_TIMEOUT_S = 3
HEARTBEAT_S = 1
CRUNCH_S = 3 * SQS_TIMEOUT_S
MAX_RECEIVE_COUNT = 2
TIME_LIMIT_S = 50.0
MALFORMED_BODY = "this message is not JSON"

app = Worker()


def _record(task_id: str, event: str, **data: Any) -> None:
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


@app.task
def add(task_id: str, x: int, y: int) -> int:
    _record(task_id, "start")
    time.sleep(0.2)
    _record(task_id, "end", ok=True)
    return x + y


@app.task
def flaky(task_id: str) -> None:
    _record(task_id, "start")
    marker = os.path.join(os.environ.get(DIR_ENV, "."), f"{task_id}.tried")
    if not os.path.exists(marker):
        open(marker, "w").close()
        _record(task_id, "end", ok=False)
        raise RuntimeError("flaky fails on its first run (on purpose)")
    _record(task_id, "end", ok=True)


@app.task(hard_timeout=4 * CRUNCH_S)
def crunch(task_id: str, n: int) -> int:
    _record(task_id, "start")
    total = sum(range(n))  # one C call: holds the GIL throughout
    _record(task_id, "end", ok=True)
    return total % 1000


@app.task(hard_timeout=SPIN_HARD_TIMEOUT_S)
def python_spin(task_id: str) -> None:
    _record(task_id, "start")
    while True:
        pass


@app.task(hard_timeout=SPIN_HARD_TIMEOUT_S)
def native_spin(task_id: str) -> None:
    _record(task_id, "start")
    sum(range(10**10))  # minutes of C code holding the GIL


def _calibrate(seconds: float) -> int:
    """An n for which sum(range(n)) takes about ``seconds`` here."""
    n = 2_000_000
    started = time.perf_counter()
    sum(range(n))
    per_item = max((time.perf_counter() - started) / n, 1e-10)
    return int(seconds / per_item)


# -- the measurement ----------------------------------------------------------


Run = Dict[str, Any]


def read_runs(directory: str) -> Dict[str, List[Run]]:
    """Every run per task id: its start time, end time (None if killed) and success."""
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
        else:
            run["end"] = data["time"]
            run["ok"] = data.get("ok", False)
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
        "retried": sum(1 for task_runs in runs.values() if len(task_runs) > 1),
        "timed_out": sum(
            1 for task_runs in runs.values() if any(r["end"] is None for r in task_runs)
        ),
        "dead_lettered": len(dead_bodies),
        "lost": lost,
        "duplicates": sum(overlapping_runs(r) for r in runs.values()),
    }


# -- the run --------------------------------------------------------------------


@contextlib.contextmanager
def _queues(
    queue_url: Optional[str], endpoint_url: Optional[str], region: Optional[str]
) -> Iterator[Tuple[Any, str, str, Dict[str, str], List[str]]]:
    """(sqs resource, queue url, dead-letter url, environment, extra worker args)."""
    if queue_url is None:
        from ..testing import sqs_server

        with sqs_server() as server:
            queue = server.make_queue(
                f"demo-{os.getpid()}", dead_letter=True, max_receive_count=MAX_RECEIVE_COUNT
            )
            assert queue.dead_letter_url is not None
            yield server.sqs, queue.url, queue.dead_letter_url, server.environment, []
        return
    from ..sqs.facts import make_session, queue_stats

    sqs = make_session(region, queue_url).resource("sqs", endpoint_url=endpoint_url)
    stats = queue_stats(sqs, queue_url)
    if "dead_letter_url" not in stats:
        raise SystemExit(
            f"demo: queue {queue_url} has no redrive policy; give it a dead-letter queue "
            f"(maxReceiveCount {MAX_RECEIVE_COUNT}) or run the demo without --queue-url"
        )
    extra = []
    if endpoint_url:
        extra += ["--endpoint-url", endpoint_url]
    if region:
        extra += ["--region", region]
    yield sqs, queue_url, stats["dead_letter_url"], {}, extra


def _depths(sqs: Any, url: str) -> Tuple[int, int, int]:
    attributes = sqs.meta.client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])[
        "Attributes"
    ]
    return (
        int(attributes.get("ApproximateNumberOfMessages", 0)),
        int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
    )


def _drain(sqs: Any, url: str) -> List[str]:
    """Bodies of every message in a queue (received, not deleted)."""
    bodies: List[str] = []
    empty = 0
    while empty < 2:
        messages = sqs.Queue(url).receive_messages(
            MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60
        )
        empty = empty + 1 if not messages else 0
        bodies.extend(message.body for message in messages)
    return bodies


def _print_table(summary: Dict[str, int], out: Any) -> None:
    rows = [
        ("done", "tasks that succeeded"),
        ("retried", "tasks run more than once"),
        ("timed_out", "tasks stopped at their hard timeout"),
        ("dead_lettered", "messages moved to the dead-letter queue"),
        ("lost", "messages neither done nor dead-lettered"),
        ("duplicates", "times a task ran twice at once"),
    ]
    print("", file=out)
    print(f"  {'outcome':<15}{'count':>6}  meaning", file=out)
    for key, meaning in rows:
        print(f"  {key:<15}{summary[key]:>6}  {meaning}", file=out)


def run_demo(
    queue_url: Optional[str] = None,
    endpoint_url: Optional[str] = None,
    region: Optional[str] = None,
    as_json: bool = False,
) -> int:
    """Run the demo; returns 0 when nothing was lost or run twice, 1 otherwise."""
    out = sys.stderr if as_json else sys.stdout
    interactive = out.isatty()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sqstaskmaster-demo-") as directory:
        with _queues(queue_url, endpoint_url, region) as (sqs, url, dlq_url, env, extra):
            queue = sqs.Queue(url)
            from ..task_manager import TaskManager

            tm = TaskManager(url, sqs=sqs, sender_name="sqstaskmaster demo")
            print(f"queue {url}\n  dead-letter queue {dlq_url}", file=out)
            crunch_n = _calibrate(CRUNCH_S)
            plan: List[Tuple[str, Dict[str, Any]]] = [("add", {"x": i, "y": i}) for i in range(6)]
            plan += [("flaky", {}), ("crunch", {"n": crunch_n})]
            plan += [("python_spin", {}), ("native_spin", {})]
            submitted: Dict[str, str] = {}
            for number, (task, kwargs) in enumerate(plan):
                task_id = f"{task}-{number}"
                tm.submit(task, task_id=task_id, **kwargs)
                submitted[json.dumps({"task": task, "kwargs": {"task_id": task_id, **kwargs}})] = (
                    task_id
                )
            queue.send_message(MessageBody=MALFORMED_BODY)
            submitted[MALFORMED_BODY] = ""
            expected_done = len(plan) - 2
            print(
                f"submitted {len(submitted)} messages: 6 x add, flaky, crunch "
                f"({CRUNCH_S} s of C code, visibility timeout {SQS_TIMEOUT_S} s), "
                "python_spin, native_spin, and one that is not JSON",
                file=out,
            )
            log_path = os.path.join(directory, "worker.log")
            command = [
                sys.executable,
                "-m",
                "sqstaskmaster",
                "worker",
                "sqstaskmaster.cli.demo:app",
                "--queue-url",
                url,
                "--processes",
                "2",
                "--sqs-timeout",
                str(SQS_TIMEOUT_S),
                "--alarm-timeout",
                str(HEARTBEAT_S),
                "--poll-wait",
                "1",
                "--shutdown-grace",
                "5",
                "--retry-first",
                "1",
                "--retry-factor",
                "1",
                "--retry-max",
                "1",
                "--retry-jitter",
                "none",
                *extra,
            ]
            environment = dict(os.environ, **env)
            environment[DIR_ENV] = directory
            print("running: sqstaskmaster " + " ".join(command[3:]), file=out)
            with open(log_path, "w") as log:
                worker = subprocess.Popen(
                    command,
                    env=environment,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                try:
                    _watch(
                        sqs,
                        url,
                        dlq_url,
                        directory,
                        expected_done,
                        len(submitted),
                        out,
                        interactive,
                        worker,
                        started,
                    )
                finally:
                    stop_started = time.monotonic()
                    if worker.poll() is None:
                        worker.send_signal(signal.SIGTERM)
                    try:
                        code = worker.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(worker.pid, signal.SIGKILL)
                        code = worker.wait()
                    stopped_in = time.monotonic() - stop_started
            print(
                f"worker stopped by SIGTERM in {stopped_in:.2f} s, exit code {code} "
                f"(its log: {len(open(log_path).read().splitlines())} lines)",
                file=out,
            )
            runs = read_runs(directory)
            dead = _drain(sqs, dlq_url)
            summary = summarize(submitted, runs, dead)
            if code != 0:
                print(open(log_path).read()[-4000:], file=out)
    _print_table(summary, out)
    print(f"\ndemo took {time.monotonic() - started:.1f} s", file=out)
    if as_json:
        print(json.dumps(summary), flush=True)
    ok = summary["lost"] == 0 and summary["duplicates"] == 0 and code == 0
    return 0 if ok else 1


def _watch(
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
        visible, in_flight, delayed = _depths(sqs, url)
        dead = sum(_depths(sqs, dlq_url)[:2])
        line = (
            f"done {done}/{expected_done}  dead-lettered {dead}/3  "
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
