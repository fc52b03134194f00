"""Worker: registry, retries, the 12-hour budget, graceful shutdown, supervisor, burst mode.

Unit tests run the worker's message path in this process against moto's
server; the shutdown, restart and redrive tests run ``python -m
sqstaskmaster worker worker_apps:app`` in a subprocess, as an operator would.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import worker_apps as apps
from worker_process import running, traces, wait_for

from sqstaskmaster.errors import (
    DecodeError,
    InvalidTaskMessageError,
    UnknownTaskError,
)
from sqstaskmaster.message_handler import MessageHandler
from sqstaskmaster.sqs.facts import MAX_VISIBILITY_S, mark_received, receive_count_of
from sqstaskmaster.worker.loop import Worker
from sqstaskmaster.worker.retry import RetryPolicy
from sqstaskmaster.worker.supervisor import resolve_processes

# -- helpers ------------------------------------------------------------------

# 100,000 levels (200 KB): json.loads raises RecursionError, which is no ValueError,
# on every Python (3.9-3.11 already at about 1,000 levels, 3.12 and 3.13 deeper).
TOO_DEEP = '{"task": "ok", "kwargs": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}"


def receive(queue: Any, visibility: int = 30) -> List[Any]:
    return queue.receive_messages(
        AttributeNames=["All"],
        MaxNumberOfMessages=1,
        WaitTimeSeconds=0,
        VisibilityTimeout=visibility,
    )


# -- backoff ------------------------------------------------------------------


def test_base_delay_grows_by_factor_and_stops_at_the_maximum() -> None:
    policy = RetryPolicy(first_s=10, factor=2, max_s=60, jitter="none")
    assert [policy.delay(n) for n in range(1, 7)] == [10, 20, 40, 60, 60, 60]
    assert policy.delay(0) == 10  # a missing count counts as the first receive


def test_delay_never_exceeds_the_sqs_maximum() -> None:
    policy = RetryPolicy(first_s=3600, factor=10, max_s=10**9, jitter="none")
    assert policy.delay(5) == MAX_VISIBILITY_S
    assert policy.delay(10**6) == MAX_VISIBILITY_S  # no overflow


@pytest.mark.parametrize(
    "jitter, low, high", [("equal", 0.5, 1.0), ("full", 0.0, 1.0), ("none", 1.0, 1.0)]
)
def test_jitter_stays_within_its_range(jitter: str, low: float, high: float) -> None:
    policy = RetryPolicy(first_s=100, factor=2, max_s=800, jitter=jitter)
    rng = random.Random(7)
    for count in range(1, 6):
        base = policy.base_delay(count)
        delays = [policy.delay(count, rng) for _ in range(200)]
        assert min(delays) >= round(base * low) and max(delays) <= round(base * high)
        if jitter != "none":
            assert len(set(delays)) > 10  # actually jittered


def test_default_policy_is_documented_values() -> None:
    policy = RetryPolicy()
    assert (policy.first_s, policy.factor, policy.max_s, policy.jitter) == (10, 2, 900, "equal")


@pytest.mark.parametrize(
    "kwargs, text",
    [({"first_s": -1}, "-1"), ({"factor": 0.5}, "0.5"), ({"jitter": "some"}, "'some'")],
)
def test_bad_policies_name_the_value(kwargs: Dict[str, Any], text: str) -> None:
    with pytest.raises(ValueError, match=text):
        RetryPolicy(**kwargs)


def test_receive_count_of_reads_the_attribute() -> None:
    class Message:
        attributes = {"ApproximateReceiveCount": "4"}

    assert receive_count_of(Message()) == 4
    Message.attributes = {}
    assert receive_count_of(Message()) == 1


# -- registry and settings ------------------------------------------------------


def test_registry_takes_classes_functions_and_decorators() -> None:
    worker = Worker({"echo": apps.Echo})

    @worker.task
    def first() -> None: ...

    @worker.task(name="other", hard_timeout=5)
    def second() -> None: ...

    assert sorted(worker.registry) == ["echo", "first", "other"]
    assert worker.registry["other"].hard_timeout == 5
    assert worker.registry["echo"].is_handler and not worker.registry["first"].is_handler
    assert worker.handler_class("echo").isolate is True
    assert issubclass(worker.handler_class("echo"), apps.Echo)
    assert Worker({"echo": apps.Echo}, isolate=False).handler_class("echo") is apps.Echo


def test_replace_copies_without_touching_the_original() -> None:
    worker = Worker({"echo": apps.Echo}, sqs_timeout=30)
    copy = worker.replace(sqs_timeout=60, hard_timeout=None)
    assert (copy.sqs_timeout, worker.sqs_timeout) == (60, 30)
    assert copy.hard_timeout == worker.hard_timeout and copy.registry == worker.registry
    with pytest.raises(TypeError, match="'nope'"):
        worker.replace(nope=1)


@pytest.mark.parametrize(
    "name, target, error", [("", apps.ok, TypeError), ("x", 42, TypeError), (3, apps.ok, TypeError)]
)
def test_registry_refuses_bad_entries(name: Any, target: Any, error: type) -> None:
    with pytest.raises(error):
        Worker().register(name, target)


@pytest.mark.parametrize(
    "settings, text",
    [
        ({"sqs_timeout": 3, "alarm_timeout": 2}, "alarm_timeout 2"),
        ({"sqs_timeout": 50000}, "50000"),
        ({"poll_wait_s": 21}, "21"),
        ({"hard_timeout": 0}, "hard_timeout"),
    ],
)
def test_settings_are_checked(settings: Dict[str, Any], text: str) -> None:
    with pytest.raises(ValueError, match=text):
        Worker(**settings).check()


def test_processes_auto_and_invalid() -> None:
    assert resolve_processes("auto") == (os.cpu_count() or 1)
    assert resolve_processes("3") == 3
    with pytest.raises(ValueError, match="'many'"):
        resolve_processes("many")
    with pytest.raises(ValueError, match="0"):
        resolve_processes(0)


# -- one message, in this process -------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.errors: List[BaseException] = []

    def __call__(self, exception: BaseException, context: Optional[dict] = None) -> None:
        self.errors.append(exception)


def make_worker(sqs_server: Any, queue: Any, **settings: Any) -> tuple[Worker, Recorder]:
    notify = Recorder()
    settings.setdefault("retry", RetryPolicy(first_s=1, factor=1, max_s=1, jitter="none"))
    worker = Worker(dict(apps.TASKS), sqs_timeout=6, notify=notify, **settings)
    worker.connect(queue.url, sqs=sqs_server.sqs)
    return worker, notify


def receive_one(queue: Any) -> Any:
    messages = wait_for(lambda: receive(queue.queue, visibility=30), 5)
    return messages[0]


def assert_back_after(queue: Any, low_s: float, high_s: float, started: float) -> Any:
    """The message is invisible for at least ``low_s`` and visible again by ``high_s``."""
    messages = wait_for(lambda: receive(queue.queue), high_s + 1)
    elapsed = time.monotonic() - started
    assert low_s - 0.5 <= elapsed <= high_s, elapsed
    return messages[0]


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "signal-mode"])
def test_success_runs_the_task_and_deletes(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, isolate: bool
) -> None:
    worker, notify = make_worker(sqs_server, sqs_queue, isolate=isolate)
    sqs_server.task_manager(sqs_queue).submit("echo", key="e1")
    assert worker.process(receive_one(sqs_queue)) == "done"
    assert len(traces(trace_dir, "done", "e1")) == 1
    assert notify.errors == []
    time.sleep(0.2)
    assert receive(sqs_queue.queue) == []


def test_a_result_json_cannot_carry_does_not_fail_the_task(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, caplog: Any
) -> None:
    # Given a 0.0.11 handler whose run() returns a set, under the default isolation
    worker, notify = make_worker(sqs_server, sqs_queue)
    sqs_server.task_manager(sqs_queue).submit("returns_set", key="s1")
    caplog.set_level("WARNING", logger="sqstaskmaster.run.fork")
    # Then its work counts: done once, no error, the message deleted, one warning
    assert worker.process(receive_one(sqs_queue)) == "done"
    assert len(traces(trace_dir, "done", "s1")) == 1
    assert notify.errors == []
    assert len([r for r in caplog.records if "return value is dropped" in r.message]) == 1
    time.sleep(0.2)
    assert receive(sqs_queue.queue) == []


def test_failure_sets_the_backoff_and_logs_the_receive_count(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, caplog: Any
) -> None:
    worker, notify = make_worker(
        sqs_server, sqs_queue, retry=RetryPolicy(first_s=2, factor=1, max_s=2, jitter="none")
    )
    sqs_server.task_manager(sqs_queue).submit("fail", key="f1")
    caplog.set_level("INFO", logger="sqstaskmaster.worker.loop")
    assert worker.process(receive_one(sqs_queue)) == "failed"
    again = assert_back_after(sqs_queue, 2, 4, time.monotonic())
    assert receive_count_of(again) == 2
    assert "task fail message" in caplog.text and "receive 1: failed" in caplog.text
    assert "visible again in 2 s" in caplog.text
    assert any("fails on purpose" in str(error) for error in notify.errors)


class SwallowsWithoutSuper(MessageHandler):
    """A subclass whose own __exit__ swallows and never reaches MessageHandler.__exit__."""

    notified: List[BaseException] = []

    def notify(self, exception: BaseException, context: Optional[dict] = None) -> None:
        self.notified.append(exception)

    def running(self) -> bool:
        return True

    def run(self) -> None:
        raise ValueError("failed inside")

    def __exit__(self, *exc_info: Any) -> bool:
        return True


def test_a_handler_exit_that_skips_messagehandlers_is_retried_not_deleted(
    sqs_server: Any, sqs_queue: Any
) -> None:
    # Given a handler whose __exit__ swallows the task's error without calling super()
    worker, notify = make_worker(sqs_server, sqs_queue, isolate=False)
    worker.register("swallows", SwallowsWithoutSuper)
    sqs_server.task_manager(sqs_queue).submit("swallows")
    started = time.monotonic()
    before = signal.getsignal(signal.SIGALRM)
    # Then the task is not counted done: reported, and its message comes back
    assert worker.process(receive_one(sqs_queue)) == "failed"
    # and its timer is gone: no heartbeat after the settlement
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is before
    reported = SwallowsWithoutSuper.notified
    assert any("did not reach MessageHandler.__exit__" in str(e) for e in reported)
    assert_back_after(sqs_queue, 1, 3, started)


@pytest.mark.parametrize(
    "body, error_type",
    [
        ('{"task": "nope", "kwargs": {}}', UnknownTaskError),
        ('{"task": 7, "kwargs": {}}', InvalidTaskMessageError),
        ('{"task": "ok", "kwargs": [1]}', InvalidTaskMessageError),
        (TOO_DEEP, DecodeError),
    ],
    ids=["unknown", "task-not-str", "kwargs-not-dict", "too-deep-to-decode"],
)
def test_messages_that_must_not_run_are_notified_and_left(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, body: str, error_type: type
) -> None:
    worker, notify = make_worker(sqs_server, sqs_queue)
    sqs_queue.queue.send_message(MessageBody=body)
    started = time.monotonic()
    assert worker.process(receive_one(sqs_queue)) in ("unknown", "invalid")
    assert [type(error) for error in notify.errors] == [error_type]
    assert list(trace_dir.glob("start.*")) == []  # nothing ran
    assert_back_after(sqs_queue, 1, 3, started)  # not deleted: back after the backoff


def age(message: Any, budget_left_s: float) -> Any:
    """Make a received message look received long ago: ``budget_left_s`` of 12 h left."""
    mark_received([message], time.time() - (MAX_VISIBILITY_S - budget_left_s))
    return message


def test_a_task_whose_hard_timeout_and_stop_margin_do_not_fit_is_handed_back(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, caplog: Any
) -> None:
    # Given a message with 615 s of its receive's 12 hours left, for a task with a 600 s
    # hard timeout: the task fits, but not the 30 s to stop it and settle its message
    worker, notify = make_worker(sqs_server, sqs_queue, hard_timeout=600)
    sqs_server.task_manager(sqs_queue).submit("ok", key="late")
    message = age(receive_one(sqs_queue), 615)
    started = time.monotonic()
    # When the worker gets it, then it hands it back before it starts (a fresh receive
    # has a fresh 12 hours), saying the figures: no refusal, no notify
    assert worker.process(message) == "handed_back"
    assert notify.errors == []
    assert re.search(r"61[45] s are left of this receive's 12-hour", caplog.text), caplog.text
    assert "needs 630 s" in caplog.text
    assert list(trace_dir.glob("start.*")) == []
    assert_back_after(sqs_queue, 0, 3, started)


def test_the_retry_delay_is_capped_by_the_budget_left(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, caplog: Any
) -> None:
    # Given a message with 3 s of its 12 hours left and a 60 s retry delay
    retry = RetryPolicy(first_s=60, factor=1, max_s=60, jitter="none")
    worker, _ = make_worker(sqs_server, sqs_queue, retry=retry, hard_timeout=5)
    sqs_server.task_manager(sqs_queue).submit("nope", key="late")
    message = age(receive_one(sqs_queue), 3)
    started = time.monotonic()
    # When it is refused, then it is visible again within the 3 s left, not after 60 s
    assert worker.process(message) == "unknown"
    assert_back_after(sqs_queue, 0, 4, started)
    assert "capped by the 12-hour budget" in caplog.text


def test_the_entry_visibility_is_capped_by_the_budget_left(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path
) -> None:
    # Given a worker whose heartbeat sets 600 s, and a message with 100 s left
    # (a client of its own, to watch the requests it sends)
    sqs = sqs_server.session.resource("sqs", endpoint_url=sqs_server.endpoint_url)
    sent: List[int] = []
    sqs.meta.client.meta.events.register(
        "provide-client-params.sqs.ChangeMessageVisibility",
        lambda params, **_: sent.append(params["VisibilityTimeout"]),
    )
    worker = Worker(dict(apps.TASKS), sqs_timeout=600, hard_timeout=5, isolate=False)
    worker.connect(sqs_queue.url, sqs=sqs)
    sqs_server.task_manager(sqs_queue).submit("ok", key="entry")
    message = wait_for(lambda: receive(sqs.Queue(sqs_queue.url)), 5)[0]
    # When its task runs, then the entry asks for at most the 100 s left
    assert worker.process(age(message, 100)) == "done"
    assert sent and 95 <= sent[0] <= 100, sent


@pytest.mark.parametrize(
    "settings, register, named",
    [
        ({"hard_timeout": MAX_VISIBILITY_S}, None, "the worker's hard_timeout of 43200 s"),
        ({"hard_timeout": 43141}, None, "43141"),
        ({}, 43171, "task 'long'"),
    ],
    ids=["default-12-hours", "default-just-over", "task's-own"],
)
def test_a_hard_timeout_that_can_never_fit_is_refused_at_start_up(
    settings: Dict[str, Any], register: Optional[int], named: str
) -> None:
    # A worker's own setting is refused as it is made; a task's own at start-up.
    with pytest.raises(ValueError) as refused:
        worker = Worker(dict(apps.TASKS), **settings)
        if register is not None:
            worker.register("long", apps.ok, hard_timeout=register)
        worker.check()
    text = str(refused.value)
    assert named in text and "the longest hard timeout is 43140 s" in text
    assert "does not fit in the 43200 s left" not in text
    if register is not None:
        with pytest.raises(ValueError):
            worker.run("http://127.0.0.1:1/000000000000/never-polled")
    Worker(dict(apps.TASKS), hard_timeout=43140).check()  # the longest that fits


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "signal-mode"])
def test_a_task_calling_sys_exit_fails_and_the_worker_goes_on(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, isolate: bool
) -> None:
    # Given a task that calls sys.exit(0)
    worker, notify = make_worker(sqs_server, sqs_queue, isolate=isolate)
    tm = sqs_server.task_manager(sqs_queue)
    tm.submit("exit", key="x")
    started = time.monotonic()
    # When the worker runs it, then that task failed (not a way out of the worker) ...
    assert worker.process(receive_one(sqs_queue)) == "failed"
    assert len(traces(trace_dir, "start", "x")) == 1
    assert notify.errors and "SystemExit" in repr(notify.errors[0])
    # ... its message comes back after the retry delay, and the next task runs
    assert_back_after(sqs_queue, 1, 3, started)
    time.sleep(0.2)
    tm.submit("ok", key="next")
    assert (
        worker.process(
            wait_for(lambda: [m for m in receive(sqs_queue.queue) if "next" in m.body], 5)[0]
        )
        == "done"
    )


def test_a_message_received_while_stopping_is_handed_back(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path
) -> None:
    worker, _ = make_worker(sqs_server, sqs_queue, poll_wait_s=0)
    sqs_server.task_manager(sqs_queue).submit("ok", key="late")
    worker.request_stop()
    messages = wait_for(lambda: worker._task_manager.receive(0, 30), 5)
    started = time.monotonic()
    for message in messages:
        worker._settlement.hand_back(message, "ok", "received while shutting down")
    assert_back_after(sqs_queue, 0, 1.5, started)
    assert list(trace_dir.glob("start.*")) == []


# -- end to end: shutdown ------------------------------------------------------------


@pytest.mark.parametrize("mode", [[], ["--signal-mode"]], ids=["isolated", "signal-mode"])
def test_sigterm_stops_a_long_task_after_the_grace_and_hands_it_back(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, start_worker: Any, mode: List[str]
) -> None:
    # Given a worker with a short grace, running a task far longer than the grace
    sqs_server.task_manager(sqs_queue).submit("sleep", key="long", seconds=60)
    worker = start_worker(sqs_queue.url, "--shutdown-grace", "0.5", "--sqs-timeout", "30", *mode)
    wait_for(lambda: traces(trace_dir, "start", "long"), 15)
    # When it gets SIGTERM
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    # Then the message is visible again within grace + 2 s, and the worker exits 0
    wait_for(lambda: receive(sqs_queue.queue), 4.0, step_s=0.1)
    assert time.monotonic() - signalled <= 0.5 + 2.0
    assert worker.wait(10) == 0
    assert traces(trace_dir, "done", "long") == []
    assert "interrupted by shutdown" in worker.log and "handed back" in worker.log


def test_a_task_that_ends_within_the_grace_completes(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, start_worker: Any
) -> None:
    sqs_server.task_manager(sqs_queue).submit("sleep", key="short", seconds=1.5)
    worker = start_worker(sqs_queue.url, "--shutdown-grace", "10")
    wait_for(lambda: traces(trace_dir, "start", "short"), 15)
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert len(traces(trace_dir, "done", "short")) == 1
    assert "receive 1: done" in worker.log
    assert receive(sqs_queue.queue) == []  # deleted


def test_second_signal_is_a_cold_stop(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, start_worker: Any
) -> None:
    sqs_server.task_manager(sqs_queue).submit("sleep", key="cold", seconds=60)
    worker = start_worker(sqs_queue.url, "--shutdown-grace", "60")
    wait_for(lambda: traces(trace_dir, "start", "cold"), 15)
    worker.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert worker.process.poll() is None  # warm: the task goes on
    signalled = time.monotonic()
    worker.signal(signal.SIGINT)
    wait_for(lambda: receive(sqs_queue.queue), 4.0, step_s=0.1)
    assert time.monotonic() - signalled <= 2.5
    assert worker.wait(10) == 0
    assert "cold stop" in worker.log


# -- end to end: supervisor ------------------------------------------------------------


def parent_of(pid: int) -> Optional[int]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_supervisor_restarts_a_killed_worker_and_the_task_completes(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, start_worker: Any
) -> None:
    # Given two worker processes, one running a task that sleeps on its first run
    sqs_server.task_manager(sqs_queue).submit("sleep_first", key="k", seconds=60)
    supervisor = start_worker(
        sqs_queue.url, "--processes", "2", "--sqs-timeout", "3", "--alarm-timeout", "1"
    )
    first = wait_for(lambda: traces(trace_dir, "start", "k"), 15)[0]
    parent = supervisor.process.pid
    worker_pid = next(pid for pid in (first["pid"], first["ppid"]) if parent_of(pid) == parent)
    # When that worker process is SIGKILLed mid-task
    os.kill(worker_pid, signal.SIGKILL)
    # Then the parent restarts it, and the message is run again after its
    # visibility timeout and completed
    done = wait_for(lambda: traces(trace_dir, "done", "k"), 20, step_s=0.2)
    assert done[0]["pid"] != first["pid"]
    wait_for(lambda: "restarting" in supervisor.log, 5)
    wait_for(lambda: len(traces(trace_dir, "start", "k")) == 2, 1)
    # The first run (a child of the killed worker, in isolation) died with it
    wait_for(lambda: not running(first["pid"]), 2)
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(15) == 0
    assert receive(sqs_queue.queue) == []


def test_a_signal_mode_worker_outlives_a_task_calling_sys_exit(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, start_worker: Any
) -> None:
    # Given a signal-mode worker, and a task that calls sys.exit(0) queued before a good one
    tm = sqs_server.task_manager(sqs_queue)
    tm.submit("exit", key="x")
    worker = start_worker(sqs_queue.url, "--signal-mode", "--retry-first", "30")
    wait_for(lambda: traces(trace_dir, "start", "x"), 15)
    tm.submit("ok", key="after")
    # When it has run the exiting task, then it goes on to the next one
    wait_for(lambda: traces(trace_dir, "done", "after"), 15)
    assert worker.alive()
    assert "called sys.exit(0)" in worker.log and "receive 1: failed" in worker.log
    assert worker.stop() == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_supervisor_restarts_workers_that_exit_0_unasked(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, start_worker: Any
) -> None:
    # Given two signal-mode worker processes, and two tasks that end their
    # worker process with exit code 0 on their first run
    tm = sqs_server.task_manager(sqs_queue)
    tm.submit("hard_exit_first", key="a")
    tm.submit("hard_exit_first", key="b")
    supervisor = start_worker(
        sqs_queue.url,
        "--processes",
        "2",
        "--signal-mode",
        "--sqs-timeout",
        "3",
        "--alarm-timeout",
        "1",
    )
    # When both first runs end their workers, then the supervisor restarts them
    # and both tasks complete on their second run
    wait_for(lambda: traces(trace_dir, "done", "a") and traces(trace_dir, "done", "b"), 40, 0.2)
    assert supervisor.log.count("died with exit code 0") >= 2
    assert supervisor.alive()
    assert supervisor.stop() == 0
    assert receive(sqs_queue.queue) == []


def test_supervisor_in_burst_mode_ends_without_restarts(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, start_worker: Any
) -> None:
    sqs_server.task_manager(sqs_queue).submit("ok", key="one")
    supervisor = start_worker(sqs_queue.url, "--processes", "2", "--burst-idle", "2")
    assert supervisor.wait(30) == 0
    assert len(traces(trace_dir, "done", "one")) == 1
    assert supervisor.log.count("ended its burst; not restarted") == 2
    assert "restarting" not in supervisor.log


def test_a_worker_that_gives_up_polling_exits_ret_connect(
    sqs_server: Any, trace_dir: Path, start_worker: Any
) -> None:
    # Given a running worker that gives up at its first failed poll
    queue = sqs_server.make_queue()
    worker = start_worker(queue.url, app="worker_apps:impatient")
    wait_for(lambda: "consuming" in worker.log, 20)
    # When its queue disappears, then it exits 4 (RET_CONNECT), saying why
    queue.queue.delete()
    assert worker.wait(20) == 4
    assert "Gave up on queue" in worker.log


# -- end to end: redrive, backoff, burst ---------------------------------------------


def test_poison_unknown_and_malformed_reach_the_dlq_with_the_backoff(
    sqs_server: Any, trace_dir: Path, start_worker: Any
) -> None:
    # Given a queue that dead-letters after 4 receives, a failing task, an unknown
    # task, two malformed messages (one too deep for json) and a good task
    queue = sqs_server.make_queue(dead_letter=True, max_receive_count=4)
    tm = sqs_server.task_manager(queue)
    tm.submit("fail", key="poison")
    tm.submit("no_such_task", x=1)
    queue.queue.send_message(MessageBody="not json")
    queue.queue.send_message(MessageBody=TOO_DEEP)
    tm.submit("ok", key="good")
    # When a worker in burst mode runs with a 1 s, x2, max 2 s backoff (its
    # idle limit above the longest gap, so it outlasts the poison's retries)
    worker = start_worker(
        queue.url,
        "--burst-idle",
        "3.5",
        "--retry-first",
        "1",
        "--retry-factor",
        "2",
        "--retry-max",
        "2",
        "--retry-jitter",
        "none",
    )
    # Then it stops by itself once the queue stays empty (burst mode) ...
    assert worker.wait(40) == 0
    assert "burst mode: idle" in worker.log
    # ... the good task ran once, the others are in the dead-letter queue ...
    assert len(traces(trace_dir, "done", "good")) == 1
    bodies = []
    for _ in range(5):
        bodies += [m.body for m in queue.dead_letter_queue.receive_messages(MaxNumberOfMessages=10)]
    assert sorted(bodies) == sorted(
        [
            '{"task": "fail", "kwargs": {"key": "poison"}}',
            '{"task": "no_such_task", "kwargs": {"x": 1}}',
            "not json",
            TOO_DEEP,
        ]
    )
    assert "unknown task 'no_such_task'" in worker.log
    # ... and the poison task's runs were spaced by the backoff: 1 s, 2 s, 2 s (the
    # cap, not 4 s); the bounds tell 1 s from 2 s and 2 s from 4 s
    starts = [trace["time"] for trace in traces(trace_dir, "start", "poison")]
    assert len(starts) == 4
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    for gap, delay in zip(gaps, [1, 2, 2]):
        assert delay - 0.2 <= gap <= delay + 1.5, gaps
    for count in (1, 2, 3, 4):
        assert f"receive {count}: failed" in worker.log


def test_burst_tasks_stops_after_that_many(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, start_worker: Any
) -> None:
    tm = sqs_server.task_manager(sqs_queue)
    for number in range(3):
        tm.submit("ok", key=f"b{number}")
    worker = start_worker(sqs_queue.url, "--burst-tasks", "2")
    assert worker.wait(20) == 0
    assert "burst mode: 2 tasks run" in worker.log
    assert len(list(trace_dir.glob("done.*"))) == 2
    assert len(receive(sqs_queue.queue)) == 1


@pytest.mark.parametrize("processes", ["1", "2"])
def test_sigterm_while_starting_up_exits_0(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, start_worker: Any, processes: str
) -> None:
    # Given a worker whose app is still importing
    worker = start_worker(sqs_queue.url, "--processes", processes, app="slow_import_app:app")
    wait_for(lambda: list(trace_dir.glob("importing.*")), 20)
    # When SIGTERM arrives before the poll loop exists
    worker.signal(signal.SIGTERM)
    # Then the worker still stops cleanly, without running anything
    assert worker.wait(20) == 0


def record_reserved(key: str, message: str, hard_timeout: int, alarm_timeout: int) -> None:
    apps._trace("done", key, message=message, hard_timeout=hard_timeout)


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "signal-mode"])
def test_function_kwargs_may_share_names_with_handler_parameters(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, isolate: bool
) -> None:
    # Given a function task whose kwargs are named like MessageHandler's parameters
    worker, notify = make_worker(sqs_server, sqs_queue, isolate=isolate)
    worker.register("reserved", record_reserved)
    sqs_server.task_manager(sqs_queue).submit(
        "reserved", key="r1", message="hello", hard_timeout=7, alarm_timeout=1
    )
    # When the worker runs it, then the function gets exactly those kwargs
    assert worker.process(receive_one(sqs_queue)) == "done"
    [trace] = traces(trace_dir, "done", "r1")
    assert (trace["message"], trace["hard_timeout"]) == ("hello", 7)
    assert notify.errors == []
