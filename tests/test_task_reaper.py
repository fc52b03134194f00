"""No process a task started outlives its worker process; no stop is lost to a new worker.

A worker process killed by SIGKILL (here the Worker run by a script, and a
supervised worker the supervisor kills after the grace) takes its running
task's whole process group with it, through the task reaper. A stop the
supervisor passes on while a worker process is starting is kept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List

import pytest
from reliability.harness import WorkerProcess, event_directory, group_members, running, wait_for

from sqstaskmaster.worker.exitcodes import RET_KILLED

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

TESTS = Path(__file__).resolve().parent

# Worker.process of one task that starts `sleep 300` and sleeps, in a fresh or reused child.
_RUN_ONE = """
import sys
from pathlib import Path
import test_task_process as tasks
worker = tasks.make_worker(int(sys.argv[1]))
tasks.run(worker, "spawns_and_sleeps", Path(sys.argv[2]))
"""


def _python(code: str, *args: str, **options: Any) -> subprocess.Popen:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(TESTS), environment.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=str(TESTS), env=environment, **options
    )


def _kill_groups(groups: List[int]) -> None:
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("max_tasks", [1, 5], ids=["fresh-child", "reused-child"])
def test_a_killed_worker_process_takes_its_tasks_process_group_along(
    tmp_path: Path, max_tasks: int
) -> None:
    path = tmp_path / "pids"
    worker = _python(_RUN_ONE, str(max_tasks), str(path))
    group = 0
    try:
        group = int(
            wait_for(
                lambda: Path(f"{path}.group").exists() and Path(f"{path}.group").read_text(), 20
            )
        )
        assert len(group_members(group)) == 2  # the task child and its sleep
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        died = time.monotonic()
        wait_for(lambda: group_members(group) == [], 5, step_s=0.02)
        assert time.monotonic() - died < 5
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if group:
            _kill_groups([group])


def test_the_supervisors_kill_after_the_grace_takes_the_tasks_group_along(
    sqs_server: Any, sqs_queue: Any, tmp_path: Path
) -> None:
    events_dir, events = event_directory(tmp_path)
    sqs_server.task_manager(sqs_queue).submit("spawns", key="k", seconds=300)
    supervisor = WorkerProcess(
        sqs_server,
        sqs_queue.url,
        events_dir,
        *("--processes", "2", "--shutdown-grace", "1", "--sqs-timeout", "6"),
        *("--alarm-timeout", "2", "--poll-wait", "1"),
    )
    group = 0
    try:
        (started,) = wait_for(lambda: events.data("start"), 20)
        group, worker = started["group"], started["worker"]
        assert len(group_members(group)) == 2
        # A worker process that cannot stop its task: the supervisor kills it
        # shutdown_grace + STOP_MARGIN_S (5 s) after the stop.
        os.kill(worker, signal.SIGSTOP)
        supervisor.signal(signal.SIGTERM)
        wait_for(lambda: not running(worker), 20, step_s=0.02)
        died = time.monotonic()
        wait_for(lambda: group_members(group) == [], 5, step_s=0.02)
        assert time.monotonic() - died < 5
        assert supervisor.wait(15) == RET_KILLED
        assert "killing it" in supervisor.log
    finally:
        supervisor.close()
        if group:
            _kill_groups([group])


# The supervisor of one worker process whose start (between the fork and its own
# handlers) takes argv[1] seconds; the worker polls until a stop reaches it.
_SLOW_START = """
import logging
import sys
import time

from sqstaskmaster.worker import supervisor
from sqstaskmaster.worker.shutdown import StopController

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
original = supervisor.record_early_signals


def slow_start():
    time.sleep(float(sys.argv[1]))
    original()


supervisor.record_early_signals = slow_start


def run_one(slot):
    stop = StopController(30.0)
    with stop.handling_signals():
        end = time.monotonic() + 60
        while not stop.stopping and time.monotonic() < end:
            time.sleep(0.02)
    print("worker stopping" if stop.stopping else "worker never saw the stop", flush=True)
    return 0 if stop.stopping else 3


sys.exit(supervisor.supervise_processes(run_one, 1, shutdown_grace_s=2.0))
"""


def test_a_stop_passed_on_to_a_worker_process_still_starting_is_kept(tmp_path: Path) -> None:
    log_path = tmp_path / "supervisor.log"
    with open(log_path, "w") as log:
        process = _python(_SLOW_START, "2", stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "worker 0 started" in log_path.read_text(), 20)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)  # passed on at once, while the worker starts
        code = process.wait(30)
        text = log_path.read_text()
        assert code == 0, text
        assert "worker stopping" in text
        # The 2 s start, not the 60 s loop nor the kill after the grace.
        assert time.monotonic() - started < 15
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
