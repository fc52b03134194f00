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
- ``train``: a resumable task of 10 half-second epochs that saves a checkpoint
  after each; the worker asks it to stop at its ``--continue-after`` (2 s by
  default), and it goes on from its last epoch in a continuation message;
- one message that is not JSON: never run, dead-lettered.

Then it runs ``sqstaskmaster worker sqstaskmaster.cli.demo:app --processes 2``
as a subprocess, shows progress, stops the worker with SIGTERM, and prints
the training task's messages and a summary. What ran is measured from the
trace files each task run leaves, not assumed: see
:mod:`sqstaskmaster.cli.demo_report`, which also shows the progress, the
training task's messages and the summary.
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

from ..run.context import TaskContext
from ..worker.loop import Worker
from .demo_report import (
    DIR_ENV,
    drain,
    print_table,
    print_training,
    read_runs,
    record,
    show_progress,
    summarize,
)

SPIN_HARD_TIMEOUT_S = 2
SQS_TIMEOUT_S = 3
HEARTBEAT_S = 1
CRUNCH_S = 3 * SQS_TIMEOUT_S
MAX_RECEIVE_COUNT = 2
MALFORMED_BODY = "this message is not JSON"
EPOCHS = 10
EPOCH_S = 0.5
#: Seconds the worker lets a resumable task run on one receive (``--continue-after``).
CONTINUE_AFTER_S = 2.0

app = Worker()


@app.task
def add(task_id: str, x: int, y: int) -> int:
    record(task_id, "start")
    time.sleep(0.2)
    record(task_id, "end", ok=True)
    return x + y


@app.task
def flaky(task_id: str) -> None:
    record(task_id, "start")
    marker = os.path.join(os.environ.get(DIR_ENV, "."), f"{task_id}.tried")
    if not os.path.exists(marker):
        open(marker, "w").close()
        record(task_id, "end", ok=False)
        raise RuntimeError("flaky fails on its first run (on purpose)")
    record(task_id, "end", ok=True)


@app.task(hard_timeout=4 * CRUNCH_S)
def crunch(task_id: str, n: int) -> int:
    record(task_id, "start")
    total = sum(range(n))  # one C call: holds the GIL throughout
    record(task_id, "end", ok=True)
    return total % 1000


@app.task(hard_timeout=SPIN_HARD_TIMEOUT_S)
def python_spin(task_id: str) -> None:
    record(task_id, "start")
    while True:
        pass


@app.task(hard_timeout=SPIN_HARD_TIMEOUT_S)
def native_spin(task_id: str) -> None:
    record(task_id, "start")
    sum(range(10**10))  # minutes of C code holding the GIL


@app.task(resumable=True, hard_timeout=60)
def train(task_id: str, epochs: int, epoch_s: float, *, context: TaskContext) -> int:
    """``epochs`` epochs of ``epoch_s`` seconds, a checkpoint after each; stops when asked.

    A run that stops before the last epoch goes on, from its checkpoint, in a
    continuation message; its trace notes the continuation and the epoch it
    resumed from.
    """
    epoch = int((context.state or {}).get("epoch", 0))
    record(task_id, "start", continuation=context.continuation, resumed_from=epoch)
    while epoch < epochs:
        if context.stop_requested:
            record(task_id, "end", continued=True, epoch=epoch)
            return epoch
        time.sleep(epoch_s)
        epoch += 1
        context.checkpoint({"epoch": epoch})
    record(task_id, "end", ok=True, epoch=epoch)
    return epoch


def _calibrate(seconds: float) -> int:
    """An n for which sum(range(n)) takes about ``seconds`` here."""
    n = 2_000_000
    started = time.perf_counter()
    sum(range(n))
    per_item = max((time.perf_counter() - started) / n, 1e-10)
    return int(seconds / per_item)


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
    from ..sqs.facts import make_session
    from ..sqs.queue import BotoQueue, queue_stats

    sqs = make_session(region, queue_url).resource("sqs", endpoint_url=endpoint_url)
    stats = queue_stats(BotoQueue.of_resource(sqs.Queue(queue_url)))
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


APP = "sqstaskmaster.cli.demo:app"
#: The worker's options: short timeouts and retry delays, so that the demo takes under a minute.
WORKER_OPTIONS = (
    f"--processes 2 --sqs-timeout {SQS_TIMEOUT_S} --alarm-timeout {HEARTBEAT_S} --poll-wait 1 "
    "--shutdown-grace 5 --retry-first 1 --retry-factor 1 --retry-max 1 --retry-jitter none"
).split()


def _submit_mix(tm: Any, queue: Any) -> Tuple[Dict[str, str], int]:
    """Submit the mix: each message body with its task id ("" for the malformed one), and
    how many tasks should succeed."""
    plan: List[Tuple[str, Dict[str, Any]]] = [("add", {"x": i, "y": i}) for i in range(6)]
    plan += [("train", {"epochs": EPOCHS, "epoch_s": EPOCH_S})]
    plan += [("flaky", {}), ("crunch", {"n": _calibrate(CRUNCH_S)})]
    plan += [("python_spin", {}), ("native_spin", {})]
    submitted: Dict[str, str] = {}
    for number, (task, kwargs) in enumerate(plan):
        task_id = f"{task}-{number}"
        tm.submit(task, task_id=task_id, **kwargs)
        submitted[json.dumps({"task": task, "kwargs": {"task_id": task_id, **kwargs}})] = task_id
    queue.send_message(MessageBody=MALFORMED_BODY)
    submitted[MALFORMED_BODY] = ""
    return submitted, len(plan) - 2


def _stop(worker: Any) -> Tuple[int, float]:
    """Stop the worker with SIGTERM (SIGKILL after 30 s): its exit code, and how long it took."""
    stop_started = time.monotonic()
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        code = worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        code = worker.wait()
    return code, time.monotonic() - stop_started


def run_demo(
    queue_url: Optional[str] = None,
    endpoint_url: Optional[str] = None,
    region: Optional[str] = None,
    as_json: bool = False,
    continue_after_s: float = CONTINUE_AFTER_S,
) -> int:
    """Run the demo; returns 0 when nothing was lost or run twice, 1 otherwise.

    ``continue_after_s``: seconds the worker lets the resumable ``train`` task
    run on one receive before it is asked to stop and go on in a new message.
    """
    out = sys.stderr if as_json else sys.stdout
    interactive = out.isatty()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sqstaskmaster-demo-") as directory:
        with _queues(queue_url, endpoint_url, region) as (sqs, url, dlq_url, env, extra):
            from ..task_manager import TaskManager

            tm = TaskManager(url, sqs=sqs, sender_name="sqstaskmaster demo")
            print(f"queue {url}\n  dead-letter queue {dlq_url}", file=out)
            submitted, expected_done = _submit_mix(tm, sqs.Queue(url))
            print(
                f"submitted {len(submitted)} messages: 6 x add, train ({EPOCHS} epochs of "
                f"{EPOCH_S:g} s, resumable), flaky, crunch ({CRUNCH_S} s of C code, visibility "
                f"timeout {SQS_TIMEOUT_S} s), python_spin, native_spin, and one that is not JSON",
                file=out,
            )
            log_path = os.path.join(directory, "worker.log")
            command = [sys.executable, "-m", "sqstaskmaster", "worker", APP, "--queue-url", url]
            command += [*WORKER_OPTIONS, "--continue-after", f"{continue_after_s:g}", *extra]
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
                    show_progress(
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
                    code, stopped_in = _stop(worker)
            print(
                f"worker stopped by SIGTERM in {stopped_in:.2f} s, exit code {code} "
                f"(its log: {len(open(log_path).read().splitlines())} lines)",
                file=out,
            )
            runs = read_runs(directory)
            for task_id in sorted(set(submitted.values())):
                if task_id.startswith("train-"):
                    print_training(task_id, runs.get(task_id, []), EPOCHS, continue_after_s, out)
            summary = summarize(submitted, runs, drain(sqs, dlq_url))
            if code != 0:
                print(open(log_path).read()[-4000:], file=out)
    print_table(summary, out)
    print(f"\ndemo took {time.monotonic() - started:.1f} s", file=out)
    if as_json:
        print(json.dumps(summary), flush=True)
    ok = summary["lost"] == 0 and summary["duplicates"] == 0 and code == 0
    return 0 if ok else 1
