"""Shutdown timings of ``sqstaskmaster worker``, against moto's server mode.

- idle stop: SIGTERM to an idle worker (default 2 s poll slices) until it exits;
- hand-back: SIGTERM to a worker running a 60 s task with a 0.5 s grace, until
  the task's message can be received again, minus the grace (isolation and
  signal mode);
- exit after hand-back: SIGTERM until the worker process has exited.

Median of RUNS runs each. The last line is one JSON object with keys
``idle_stop_s``, ``handback_after_grace_s``, ``signal_mode_handback_after_grace_s``,
``exit_after_signal_s``.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqstaskmaster.testing import sqs_server

RUNS = 5
GRACE_S = 0.5
TESTS = Path(__file__).resolve().parent.parent / "tests"


def start_worker(server, url, directory, *args):
    env = dict(os.environ, **server.environment, SQSTM_TEST_DIR=directory)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "sqstaskmaster", "--log-level", "WARNING", "worker"]
    command += ["worker_apps:app", "--queue-url", url, *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(predicate, timeout_s=30.0, step_s=0.01):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise RuntimeError("timed out")


def idle_stop(server):
    queue = server.make_queue()
    with tempfile.TemporaryDirectory() as directory:
        worker = start_worker(server, queue.url, directory)
        time.sleep(3)
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        return time.monotonic() - started


def handback(server, *mode):
    queue = server.make_queue()
    server.task_manager(queue).submit("sleep", key="long", seconds=60)
    with tempfile.TemporaryDirectory() as directory:
        worker = start_worker(server, queue.url, directory, "--shutdown-grace", str(GRACE_S), *mode)
        wait_for(lambda: any(name.startswith("start.") for name in os.listdir(directory)))
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        wait_for(lambda: queue.queue.receive_messages(WaitTimeSeconds=0, VisibilityTimeout=30))
        back = time.monotonic() - started - GRACE_S
        worker.wait(30)
        exited = time.monotonic() - started
        return back, exited


def main():
    with sqs_server() as server:
        idle = [idle_stop(server) for _ in range(RUNS)]
        isolated = [handback(server) for _ in range(RUNS)]
        signal_mode = [handback(server, "--signal-mode") for _ in range(RUNS)]
    result = {
        "idle_stop_s": round(statistics.median(idle), 3),
        "handback_after_grace_s": round(statistics.median(b for b, _ in isolated), 3),
        "signal_mode_handback_after_grace_s": round(
            statistics.median(b for b, _ in signal_mode), 3
        ),
        "exit_after_signal_s": round(statistics.median(e for _, e in isolated), 3),
    }
    print(f"idle stop (SIGTERM to exit), median of {RUNS}: {result['idle_stop_s']} s")
    print(
        f"message visible again after the {GRACE_S} s grace: isolated "
        f"{result['handback_after_grace_s']} s, signal mode "
        f"{result['signal_mode_handback_after_grace_s']} s"
    )
    print(f"worker exit after SIGTERM (busy, isolated): {result['exit_after_signal_s']} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
