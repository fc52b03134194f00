"""A child reused for consecutive isolated tasks (Worker(max_tasks_per_child=N)).

Most tests drive ``Worker.process`` on a local message (the worker's own
isolated path, without SQS); the end-to-end ones run a worker on a moto queue.
Tasks record their process id in a file, since a function task's result is dropped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from reliability.harness import group_members

from sqstaskmaster.cli import commands as cli
from sqstaskmaster.errors import Reject, Retry
from sqstaskmaster.local import LocalMessage
from sqstaskmaster.message_handler import MessageHandler
from sqstaskmaster.sqs import wire
from sqstaskmaster.worker.exitcodes import RET_OK
from sqstaskmaster.worker.loop import Worker
from sqstaskmaster.worker.settings import WorkerSettings
from sqstaskmaster.worker.settlement import Outcome

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="isolation needs fork")


class PermanentError(Exception):
    pass


# -- tasks (run in the child; they write what the test checks to a file) ------------


def record(path: str, pad: str = "") -> None:
    with open(path, "a") as out:
        out.write(f"{os.getpid()}\n")


def fail(path: str) -> None:
    record(path)
    raise ValueError("bad input 42")


def exits(path: str) -> None:
    record(path)
    sys.exit(3)


def dies(path: str) -> None:
    record(path)
    os._exit(9)


def retries(path: str) -> None:
    record(path)
    raise Retry(7, "not yet")


def rejects(path: str) -> None:
    record(path)
    raise Reject("never")


def throws_permanent(path: str) -> None:
    record(path)
    raise PermanentError("listed in throws")


def leaves_a_process(path: str) -> None:
    record(path)
    subprocess.Popen(["sleep", "30"])


def leaves_a_background_process(path: str) -> None:
    """A shell starts ``sleep 300 &`` and ends: the sleep stays in the task's group, orphaned."""
    record(path)
    os.system("sleep 300 &")
    with open(path + ".group", "w") as out:
        out.write(str(os.getpgrp()))


def spawns_and_sleeps(path: str) -> None:
    """Starts ``sleep 300`` and sleeps; writes its process group once both run."""
    record(path)
    subprocess.Popen(["sleep", "300"])
    with open(path + ".group.tmp", "w") as out:
        out.write(str(os.getpgrp()))
    os.replace(path + ".group.tmp", path + ".group")
    time.sleep(300)


def meddles_with_signals(path: str) -> None:
    """Leaves what a careless task or a C extension leaves: ignored signals, timers, a mask."""
    import ctypes

    record(path)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.setitimer(signal.ITIMER_VIRTUAL, 1000)
    signal.setitimer(signal.ITIMER_PROF, 1000)
    signal.setitimer(signal.ITIMER_REAL, 1000)
    # C code ignoring SIGUSR2: Python's own view of it does not change.
    ctypes.CDLL(None).signal(int(signal.SIGUSR2), ctypes.c_void_p(1))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})


def signal_state(path: str) -> None:
    """What a task finds: the kernel's view of its signals, its timers, a subprocess's code."""
    record(path)
    status = dict(
        line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines()
    )
    state = {
        "kernel": [status[field].strip() for field in ("SigBlk", "SigIgn", "SigCgt")],
        "sigchld": int(signal.getsignal(signal.SIGCHLD)),  # type: ignore[arg-type]
        "timers": [
            signal.getitimer(timer)
            for timer in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)
        ],
        "code": subprocess.run(["sh", "-c", "exit 3"]).returncode,
    }
    with open(path + ".state", "a") as out:
        out.write(json.dumps(state) + "\n")


def hangs_with_a_grandchild(path: str) -> None:
    record(path)
    grandchild = subprocess.Popen(["sleep", "60"])
    with open(path + ".grandchild", "w") as out:
        out.write(str(grandchild.pid))
    time.sleep(60)


def stops_the_worker_then_sleeps(path: str) -> None:
    record(path)
    os.kill(os.getppid(), signal.SIGTERM)
    time.sleep(30)


def private_memory(path: str) -> None:
    """Write this process's private (copied) kB and the big object's size."""
    import big_import_app

    assert big_import_app.BIG.count(b"x", 0, 1 << 20) == 1 << 20  # reads it
    fields: Dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    private_kb = fields["Private_Clean"] + fields["Private_Dirty"]
    Path(path).write_text(f"{os.getpid()} {private_kb}\n")


def collects_then_measures(path: str) -> None:
    """A full garbage collection in the child, then its private kB."""
    import gc

    gc.collect()
    private_memory(path)


class ReturnsASet(MessageHandler):
    def __init__(self, message: Any, path: str, **timeouts: Any) -> None:
        super().__init__(message, **timeouts)
        self.path = path

    def run(self) -> Any:
        record(self.path)
        return {1, 2}

    def running(self) -> bool:
        return True

    def notify(self, exception: BaseException, context: Optional[dict] = None) -> None:
        pass


class EntersItsOwnWay(ReturnsASet):
    def __enter__(self) -> Any:
        self.opened = True
        return super().__enter__()

    def run(self) -> Any:
        assert self.opened
        record(self.path)


TASKS = {
    name: function
    for name, function in globals().items()
    if name
    in (
        "record fail exits dies retries rejects leaves_a_process hangs_with_a_grandchild "
        "leaves_a_background_process spawns_and_sleeps meddles_with_signals signal_state "
        "stops_the_worker_then_sleeps private_memory collects_then_measures"
    ).split()
}


class RecordingMessage(LocalMessage):
    """A local message that remembers its visibility changes."""

    def __init__(self, body: str) -> None:
        super().__init__(body, {"ApproximateReceiveCount": "1"}, {})
        self.message_id = "m-1"
        self.visibility: List[int] = []

    def change_visibility(self, *args: Any, **kwargs: Any) -> None:
        self.visibility.append(kwargs["VisibilityTimeout"])


def make_worker(max_tasks: int, notes: Optional[List[Any]] = None, **settings: Any) -> Worker:
    def notify(error: BaseException, context: Any = None) -> None:
        if notes is not None:
            notes.append(error)

    worker = Worker(TASKS, notify=notify, max_tasks_per_child=max_tasks, sqs_timeout=6, **settings)
    worker.register("throws_permanent", throws_permanent, throws=PermanentError)
    worker.register("hangs", hangs_with_a_grandchild, hard_timeout=1)
    worker.register("returns_a_set", ReturnsASet)
    worker.register("enters", EntersItsOwnWay)
    return worker


def run(worker: Worker, task: str, path: Path) -> RecordingMessage:
    message = RecordingMessage(wire.encode_body(task, {"path": str(path)}))
    message.outcome = worker.process(message)  # type: ignore[attr-defined]
    return message


def pids(path: Path) -> List[int]:
    return [int(line) for line in path.read_text().split()]


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie awaiting its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def reaped(pid: int) -> bool:
    """True when ``pid`` is no child of this process any more (no zombie of ours)."""
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0) and process_gone(pid)
    except ChildProcessError:
        return True


@pytest.fixture
def worker_closing() -> Any:
    made: List[Worker] = []
    yield made
    for worker in made:
        worker.child_pool.close()


# -- reuse ------------------------------------------------------------------------------


def test_consecutive_clean_tasks_share_one_child_until_max_tasks(
    tmp_path: Path, worker_closing: List[Worker]
) -> None:
    worker = make_worker(3)
    worker_closing.append(worker)
    path = tmp_path / "pids"
    outcomes = [run(worker, "record", path).outcome for _ in range(7)]  # type: ignore
    assert outcomes == [Outcome.DONE] * 7
    seen = pids(path)
    assert seen[0] == seen[1] == seen[2] != seen[3] == seen[4] == seen[5] != seen[6]
    assert os.getpid() not in seen
    # The retired children were reaped at once: no zombie.
    assert reaped(seen[0]) and reaped(seen[3])


def test_one_task_per_child_forks_afresh_each_time(
    tmp_path: Path, worker_closing: List[Worker]
) -> None:
    worker = make_worker(1)
    path = tmp_path / "pids"
    for _ in range(3):
        run(worker, "record", path)
    assert len(set(pids(path))) == 3


@pytest.mark.parametrize(
    "task, outcome",
    [("fail", Outcome.FAILED), ("retries", Outcome.RETRIED_BY_TASK)],
)
def test_a_task_that_raised_an_exception_keeps_the_child(
    tmp_path: Path, worker_closing: List[Worker], task: str, outcome: Outcome
) -> None:
    worker = make_worker(10)
    worker_closing.append(worker)
    path = tmp_path / "pids"
    assert run(worker, task, path).outcome == outcome  # type: ignore[attr-defined]
    assert run(worker, "record", path).outcome == Outcome.DONE  # type: ignore[attr-defined]
    first, second = pids(path)
    assert first == second


@pytest.mark.parametrize(
    "task, outcome",
    [
        ("exits", Outcome.FAILED),  # sys.exit in a task is a failure
        ("dies", Outcome.FAILED),  # the child died without a report
        ("leaves_a_process", Outcome.DONE),  # done, but its sleep would outlive it
    ],
)
def test_a_task_that_did_not_end_cleanly_gets_a_fresh_child_next(
    tmp_path: Path, worker_closing: List[Worker], task: str, outcome: Outcome
) -> None:
    worker = make_worker(10)
    worker_closing.append(worker)
    path = tmp_path / "pids"
    assert run(worker, task, path).outcome == outcome  # type: ignore[attr-defined]
    assert run(worker, "record", path).outcome == Outcome.DONE  # type: ignore[attr-defined]
    first, second = pids(path)
    assert first != second
    assert reaped(first)


def test_task_errors_cross_with_their_type_and_controls_as_today(
    tmp_path: Path, worker_closing: List[Worker], caplog: Any
) -> None:
    caplog.set_level("INFO")
    notes: List[Any] = []
    worker = make_worker(10, notes)
    worker_closing.append(worker)
    path = tmp_path / "pids"
    assert run(worker, "fail", path).outcome == Outcome.FAILED  # type: ignore[attr-defined]
    assert isinstance(notes[-1], ValueError) and "bad input 42" in str(notes[-1])
    retried = run(worker, "retries", path)
    assert retried.outcome == Outcome.RETRIED_BY_TASK  # type: ignore[attr-defined]
    assert retried.visibility[-1] == 7  # Retry(7)'s delay crossed
    assert run(worker, "rejects", path).outcome == Outcome.REJECTED  # type: ignore
    permanent = run(worker, "throws_permanent", path)
    assert permanent.outcome == Outcome.REJECTED  # type: ignore[attr-defined]
    assert isinstance(notes[-1], PermanentError)
    caplog.clear()
    assert run(worker, "returns_a_set", path).outcome == Outcome.DONE  # type: ignore
    assert caplog.text.count("return value is dropped") == 1
    assert len(set(pids(path))) == 1  # all in one child


def test_a_handler_with_its_own_enter_keeps_a_fresh_fork_per_task(
    tmp_path: Path, worker_closing: List[Worker]
) -> None:
    worker = make_worker(10)
    worker_closing.append(worker)
    path = tmp_path / "pids"
    for _ in range(2):
        assert run(worker, "enters", path).outcome == Outcome.DONE  # type: ignore
    assert len(set(pids(path))) == 2


def test_an_idle_child_that_takes_no_task_is_replaced(
    tmp_path: Path, worker_closing: List[Worker], monkeypatch: Any
) -> None:
    from sqstaskmaster.run import reuse_parent as task_process

    monkeypatch.setattr(task_process, "_SEND_TIMEOUT_S", 0.5)
    worker = make_worker(10)
    worker_closing.append(worker)
    path = tmp_path / "pids"
    run(worker, "record", path)
    (stuck,) = pids(path)
    os.kill(stuck, signal.SIGSTOP)  # it cannot read the next task
    try:
        # Over a pipe's buffer, so the write has to wait for the child.
        message = RecordingMessage(
            wire.encode_body("record", {"path": str(path), "pad": "x" * 200_000})
        )
        started = time.monotonic()
        assert worker.process(message) == Outcome.DONE
        assert time.monotonic() - started < 5
    finally:
        if not process_gone(stuck):
            os.kill(stuck, signal.SIGCONT)
    assert pids(path)[-1] != stuck
    assert reaped(stuck)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("subreaper", [True, False], ids=["subreaper", "group-scan"])
def test_a_task_that_leaves_a_process_in_its_group_retires_the_child_and_the_group_dies(
    tmp_path: Path, worker_closing: List[Worker], monkeypatch: Any, subreaper: bool
) -> None:
    from sqstaskmaster.run import reuse_child as reused_child

    if not subreaper:  # a child that cannot be a subreaper scans /proc for its group
        monkeypatch.setattr(reused_child, "_become_subreaper", lambda prctl: False)
    worker = make_worker(10)
    worker_closing.append(worker)
    path = tmp_path / "pids"
    # The shell's sleep is no child of the task child: only its process group tells.
    assert run(worker, "leaves_a_background_process", path).outcome == Outcome.DONE  # type: ignore
    group = int(Path(str(path) + ".group").read_text())
    assert group_members(group) == []  # killed with the child, before the next task
    assert run(worker, "record", path).outcome == Outcome.DONE  # type: ignore[attr-defined]
    first, second = pids(path)
    assert first == group and first != second  # the next task ran in a new child
    assert reaped(first)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_reused_child_starts_each_task_with_its_first_signal_state(
    tmp_path: Path, worker_closing: List[Worker]
) -> None:
    worker = make_worker(10)
    worker_closing.append(worker)
    path = tmp_path / "pids"
    for task in ("signal_state", "meddles_with_signals", "signal_state"):
        assert run(worker, task, path).outcome == Outcome.DONE  # type: ignore[attr-defined]
    assert len(set(pids(path))) == 1  # all three in one child
    before, after = map(json.loads, Path(f"{path}.state").read_text().splitlines())
    assert after == before
    assert after["sigchld"] == int(signal.SIG_DFL)
    assert after["timers"] == [[0.0, 0.0]] * 3
    assert after["code"] == 3


# -- stopping ---------------------------------------------------------------------------


def test_a_hard_timeout_kills_the_reused_childs_whole_group_within_the_grace(
    tmp_path: Path, worker_closing: List[Worker]
) -> None:
    worker = make_worker(10)
    worker_closing.append(worker)
    path = tmp_path / "pids"
    run(worker, "record", path)
    started = time.monotonic()
    assert run(worker, "hangs", path).outcome == Outcome.TIMED_OUT  # type: ignore
    # hard_timeout 1 s + kill_grace_s 1 s, with room for a loaded machine.
    assert time.monotonic() - started < 8
    first, hung = pids(path)
    assert first == hung  # the timeout hit a reused child
    grandchild = int(Path(str(path) + ".grandchild").read_text())
    assert reaped(hung)
    assert process_gone(grandchild)
    run(worker, "record", path)
    assert pids(path)[-1] not in (hung,)


def test_a_stop_reaches_a_task_in_a_reused_child_and_no_child_is_left(
    sqs_server: Any, sqs_queue: Any, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level("INFO")
    worker = make_worker(10, shutdown_grace_s=0.5, poll_wait_s=0, burst_tasks=3)
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    path = tmp_path / "pids"
    tasks = sqs_server.task_manager(sqs_queue)
    tasks.submit("record", path=str(path))
    tasks.submit("stops_the_worker_then_sleeps", path=str(path))
    started = time.monotonic()
    assert worker.run_single() == 0
    assert time.monotonic() - started < 15
    assert "handed back" in caplog.text
    first, stopped = pids(path)
    assert first == stopped
    assert reaped(stopped)


def test_a_worker_on_a_queue_reuses_children_and_leaves_none_at_exit(
    sqs_server: Any, sqs_queue: Any, tmp_path: Path, count_threads_at_fork: List[int]
) -> None:
    worker = make_worker(3, poll_wait_s=0, burst_tasks=7)
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    path = tmp_path / "pids"
    tasks = sqs_server.task_manager(sqs_queue)
    for _ in range(7):
        tasks.submit("record", path=str(path))
    assert worker.run_single() == 0
    seen = pids(path)
    assert len(seen) == 7 and len(set(seen)) == 3
    assert count_threads_at_fork == [1, 1, 1]  # one fork per three tasks, single-threaded
    assert all(reaped(pid) for pid in set(seen))  # the last one too, at the worker's exit
    leftover = sqs_queue.queue.receive_messages(MaxNumberOfMessages=10, WaitTimeSeconds=0)
    assert leftover == []


# -- copy-on-write ----------------------------------------------------------------------


@pytest.mark.parametrize("max_tasks", [1, 5])
def test_a_tasks_child_does_not_copy_what_the_app_loaded_at_import(
    tmp_path: Path, worker_closing: List[Worker], max_tasks: int
) -> None:
    import big_import_app

    rss_kb = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE")
    assert rss_kb >= big_import_app.BIG_BYTES  # resident here, so a copy would show
    worker = make_worker(max_tasks)
    worker_closing.append(worker)
    path = tmp_path / "memory"
    for _ in range(2):  # the second one in a reused child
        assert run(worker, "private_memory", path).outcome == Outcome.DONE  # type: ignore
        _pid, private_kb = map(int, path.read_text().split())
        assert private_kb * 1024 < big_import_app.BIG_BYTES / 4


@pytest.mark.parametrize("max_tasks", [1, 5])
def test_a_collection_in_a_tasks_child_does_not_copy_the_apps_objects(
    tmp_path: Path, worker_closing: List[Worker], max_tasks: int
) -> None:
    import big_import_app

    assert len(big_import_app.TRACKED) == 500_000  # about 60 MB of tracked objects
    worker = make_worker(max_tasks)
    worker_closing.append(worker)
    path = tmp_path / "memory"
    for _ in range(2):
        assert run(worker, "collects_then_measures", path).outcome == Outcome.DONE  # type: ignore
        _pid, private_kb = map(int, path.read_text().split())
        # Without gc.freeze() in the child, the collection copies most of them.
        assert private_kb < 20 * 1024


# -- the setting ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, "3", True, 2.5])
def test_max_tasks_per_child_is_checked_and_the_error_names_the_value(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_tasks_per_child") as raised:
        WorkerSettings(max_tasks_per_child=bad)
    assert repr(bad) in str(raised.value)


# The app of the CLI test (a dict app: task name -> function).
CLI_APP = {"record": record}


def test_the_cli_flag_makes_the_worker_reuse_its_child(
    sqs_environment: Any, sqs_queue: Any, tmp_path: Path
) -> None:
    path = tmp_path / "pids"
    tasks = sqs_environment.task_manager(sqs_queue)
    for _ in range(4):
        tasks.submit("record", path=str(path))
    code = cli.main(
        [
            *("--log-level", "WARNING", "worker", "test_task_process:CLI_APP"),
            *("--queue-url", sqs_queue.url, "--endpoint-url", sqs_environment.endpoint_url),
            *("--max-tasks-per-child", "100", "--isolate", "--burst-tasks", "4"),
            *("--poll-wait", "0"),
        ]
    )
    assert code == RET_OK
    seen = pids(path)
    assert len(seen) == 4 and len(set(seen)) == 1 and seen[0] != os.getpid()
    assert reaped(seen[0])


def test_task_facts_cross_as_json_binary_attributes_included() -> None:
    from sqstaskmaster.run.pipes import TaskFacts

    facts = TaskFacts(
        "resize",
        {"path": "a.png", "sizes": [1, 2.5, None]},
        '{"task": "resize"}',
        "m-1",
        {"ApproximateReceiveCount": "2"},
        {"blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff"}},
        2,
        30,
        10,
        60,
    )
    data = facts.encode()
    assert data.startswith(b"{")  # JSON, never pickle
    assert TaskFacts.decode(data) == facts
