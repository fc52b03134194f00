"""Process isolation (issue 3): heartbeat and hard timeout that hold inside native code.

The tasks here are real: ``sum(range(N))`` runs in C and holds the GIL, so no
Python signal handler of the process running it can fire until it returns.
N is calibrated once per module to this machine's speed.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from sqstaskmaster.errors import (
    ChildDiedError,
    ChildTaskError,
    HardTimeoutError,
    IsolationUnavailableError,
    TaskStuckError,
)
from sqstaskmaster.isolation import MAX_RESULT_BYTES, IsolatedMessageHandler, run_in_child
from sqstaskmaster.message_handler import MessageHandler
from sqstaskmaster.run.background import HEARTBEAT_JOIN_S

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="process isolation needs fork")

Work = Callable[..., Any]


# -- helpers -------------------------------------------------------------------------


def loop_size_for(seconds: float, _cache: Dict[str, float] = {}) -> int:  # noqa: B006
    """N such that ``sum(range(N))`` (a GIL-holding C loop) takes about ``seconds`` of CPU.

    CPU time, not wall time, so other work on the machine cannot shrink N.
    """
    if "per_item" not in _cache:
        n = 2_000_000
        best = min(_cpu_time(lambda: sum(range(n))) for _ in range(3))
        _cache["per_item"] = best / n
    return int(seconds / _cache["per_item"])


def _cpu_time(func: Callable[[], Any]) -> float:
    started = time.process_time()
    func()
    return time.process_time() - started


def c_loop(handler: Any, seconds: float) -> int:
    """Hold the GIL in C for ``seconds`` of CPU time, in calls of at most a second each.

    Counted on this process's own CPU clock, so a calibration made while the
    machine was busy cannot make the loop shorter than asked.
    """
    chunk = loop_size_for(min(seconds, 1.0))
    total = 0
    end = time.process_time() + seconds
    while time.process_time() < end:
        total += sum(range(chunk))
    return total


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie awaiting its reaper)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(pid: int, timeout_s: float = 2.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if process_gone(pid):
            return True
        time.sleep(0.02)
    return process_gone(pid)


def read_pids(path: Path) -> List[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


class CountingMessage:
    """A boto3 Message that counts the handler's calls to it (calls still reach the server)."""

    def __init__(self, message: Any) -> None:
        self._message = message
        self.deletes = 0
        self.extensions: List[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def delete(self) -> Any:
        self.deletes += 1
        return self._message.delete()

    def change_visibility(self, **kwargs: Any) -> Any:
        self.extensions.append(kwargs["VisibilityTimeout"])
        return self._message.change_visibility(**kwargs)


class Handler(IsolatedMessageHandler):
    """Runs ``work(self, **kwargs)`` in a child; remembers what notify received."""

    def __init__(
        self,
        message: Any,
        work: Work,
        sqs_timeout: int = 10,
        alarm_timeout: int = 2,
        hard_timeout: int = 30,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, sqs_timeout, alarm_timeout, hard_timeout)
        self.work = work
        self.kwargs = kwargs
        self.notified: List[Tuple[BaseException, Any]] = []
        self.result: Any = None

    def run(self) -> Any:
        return self.work(self, **self.kwargs)

    def notify(self, exception: BaseException, context: Optional[Dict[str, Any]] = None) -> None:
        self.notified.append((exception, context))


class FlagHandler(MessageHandler):
    """The other way to opt in: a plain MessageHandler with ``isolate = True``."""

    isolate = True
    kill_grace_s = 0.5

    def __init__(self, message: Any, work: Work, **timeouts: int) -> None:
        super().__init__(message, **timeouts)
        self.work = work
        self.notified: List[BaseException] = []
        self.running_answer = True

    def run(self) -> Any:
        return self.work(self)

    def running(self) -> bool:
        return self.running_answer

    def notify(self, exception: BaseException, context: Optional[Dict[str, Any]] = None) -> None:
        self.notified.append(exception)


def queue_counts(queue: Any) -> Tuple[int, int]:
    queue.reload()
    attributes = queue.attributes
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


@pytest.fixture
def receive(sqs_server: Any, sqs_queue: Any) -> Callable[..., CountingMessage]:
    """Submit one task through TaskManager and receive it like a worker does."""

    def receive_one(sqs_timeout: int = 10) -> CountingMessage:
        manager = sqs_server.task_manager(sqs_queue)
        manager.submit("work", n=1)
        task, kwargs, message = next(manager.task_generator(wait_time=5, sqs_timeout=sqs_timeout))
        assert (task, kwargs) == ("work", {"n": 1})
        return CountingMessage(message)

    return receive_one


SECOND_CONSUMER = textwrap.dedent(
    """
    import json, os, sys, boto3
    url, stop_file = sys.argv[1], sys.argv[2]
    sqs = boto3.session.Session().client("sqs", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    received = []
    print("ready", flush=True)
    while not os.path.exists(stop_file):
        answer = sqs.receive_message(
            QueueUrl=url, WaitTimeSeconds=1, MaxNumberOfMessages=1, VisibilityTimeout=1
        )
        received += [m["MessageId"] for m in answer.get("Messages", [])]
    print(json.dumps(received), flush=True)
    """
)


class SecondConsumer:
    """Another worker polling the same queue, in its own process, from start() to stop()."""

    def __init__(self, queue_url: str, environment: Dict[str, str], stop_file: Path) -> None:
        self.queue_url = queue_url
        self.environment = environment
        self.stop_file = stop_file
        self.process: Optional[subprocess.Popen[str]] = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SECOND_CONSUMER, self.queue_url, str(self.stop_file)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **self.environment},
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def stop(self) -> List[str]:
        """The ids of the messages it received."""
        assert self.process is not None
        self.stop_file.touch()
        out, _ = self.process.communicate(timeout=15)
        return list(json.loads(out))


@pytest.fixture
def second_consumer(sqs_server: Any, sqs_queue: Any, tmp_path: Path) -> Iterator[SecondConsumer]:
    consumer = SecondConsumer(sqs_queue.url, sqs_server.environment, tmp_path / "stop")
    yield consumer
    if consumer.process is not None and consumer.process.poll() is None:
        consumer.process.kill()
        consumer.process.wait()


# -- the hard timeout ---------------------------------------------------------------


def test_hard_timeout_stops_a_gil_holding_c_loop(receive: Any, sqs_queue: Any) -> None:
    loop_size_for(6)  # calibrate before the hard-timeout clock starts
    message = receive()
    with Handler(message, c_loop, hard_timeout=2, seconds=6) as handler:
        handler.run()
    overshoot = time.monotonic() - handler.deadline
    assert overshoot < handler.kill_grace_s + 0.5
    [(error, context)] = handler.notified
    assert isinstance(error, HardTimeoutError) and isinstance(error, TimeoutError)
    assert str(error) == "Hit Hard Timeout for message handler"
    assert context["body"] == message.body
    assert message.deletes == 0
    assert queue_counts(sqs_queue.queue) == (0, 1)  # left for SQS to redeliver


def test_child_ignoring_sigterm_is_killed_after_the_grace(receive: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"

    def stubborn(handler: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        pid_file.write_text(f"{os.getpid()}\n")
        time.sleep(60)

    with FlagHandler(
        receive(), stubborn, sqs_timeout=10, alarm_timeout=2, hard_timeout=1
    ) as handler:
        handler.run()
    overshoot = time.monotonic() - handler.deadline
    assert handler.kill_grace_s <= overshoot < handler.kill_grace_s + 0.5
    assert isinstance(handler.notified[0], HardTimeoutError)
    [pid] = read_pids(pid_file)
    assert process_gone(pid)


def test_processes_the_task_started_are_gone_after_a_kill(receive: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"

    def starts_processes(handler: Any) -> None:
        plain = subprocess.Popen(["sleep", "1000"])
        # This one ignores SIGTERM (an ignored signal stays ignored across exec).
        deaf = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 1000 & wait"])
        pid_file.write_text(f"{os.getpid()}\n{plain.pid}\n{deaf.pid}\n")
        time.sleep(60)

    with Handler(receive(), starts_processes, hard_timeout=1) as handler:
        handler.run()
    assert isinstance(handler.notified[0][0], HardTimeoutError)
    pids = read_pids(pid_file)
    assert len(pids) == 3
    assert all(wait_gone(pid) for pid in pids), [p for p in pids if not process_gone(p)]


def test_leftover_processes_are_swept_when_the_task_returns(receive: Any, tmp_path: Path) -> None:
    def leaves_a_process(handler: Any) -> int:
        return subprocess.Popen(["sleep", "1000"]).pid

    with Handler(receive(), leaves_a_process) as handler:
        pid = handler.run()
    assert handler.notified == []
    assert wait_gone(pid)


# -- the heartbeat ------------------------------------------------------------------


def test_a_long_c_loop_is_never_handed_to_a_second_consumer(
    receive: Any, sqs_queue: Any, second_consumer: SecondConsumer
) -> None:
    # Given a received message, another worker polling the queue, and a task
    # lasting over 2 x sqs_timeout (7 s of CPU, so at least 7 s of wall time)
    loop_size_for(7)
    message = receive(sqs_timeout=30)
    second_consumer.start()
    # When the task runs in isolation with heartbeats every alarm_timeout seconds
    with Handler(
        message, c_loop, sqs_timeout=3, alarm_timeout=1, hard_timeout=60, seconds=7
    ) as handler:
        total = handler.run()
    # Then the other worker never received the message, and it was deleted once
    assert second_consumer.stop() == []
    assert total > 0 and handler.notified == []
    assert len(message.extensions) >= 6  # entry plus about one heartbeat a second
    assert set(message.extensions) == {3}
    assert message.deletes == 1
    assert queue_counts(sqs_queue.queue) == (0, 0)


def test_running_false_stops_the_child_with_a_stuck_error(receive: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"

    def sleeps(handler: Any) -> None:
        pid_file.write_text(f"{os.getpid()}\n")
        time.sleep(60)

    message = receive()
    handler = FlagHandler(message, sleeps, sqs_timeout=10, alarm_timeout=1, hard_timeout=30)
    handler.running_answer = False
    started = time.monotonic()
    with handler:
        handler.run()
    assert time.monotonic() - started < 5
    [error] = handler.notified
    assert isinstance(error, TaskStuckError)
    assert str(error).startswith("Handler is stuck on")
    assert message.deletes == 0
    assert wait_gone(read_pids(pid_file)[0])


def test_a_slow_heartbeat_does_not_delay_the_hard_timeout(receive: Any) -> None:
    # running() stands in for an SQS call that hangs (a network partition, retries).
    class SlowBeat(FlagHandler):
        child_ended_during_beat: Optional[bool] = None

        def running(self) -> bool:
            time.sleep(2.5)
            entry = self._strategy_entry
            child = entry.child if entry is not None else None
            self.child_ended_during_beat = child is not None and child.exited()
            return True

    with SlowBeat(
        receive(), lambda handler: time.sleep(60), sqs_timeout=10, alarm_timeout=1, hard_timeout=2
    ) as handler:
        handler.run()
    overshoot = time.monotonic() - handler.deadline
    # The child was killed at the deadline, while the heartbeat (from 1 s, 2.5 s
    # long) still ran; the handler then waits (bounded) for that heartbeat before it
    # leaves, so that the heartbeat cannot land after the caller hands the message
    # back. On a loaded machine the bounded wait may give up first: wait here.
    deadline = time.monotonic() + 5
    while handler.child_ended_during_beat is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handler.child_ended_during_beat is True
    assert overshoot < handler.kill_grace_s + HEARTBEAT_JOIN_S + 0.5
    assert isinstance(handler.notified[0], HardTimeoutError)


# -- children that fail -------------------------------------------------------------


class TaskFailure(Exception):
    pass


def raises(handler: Any, reason: str) -> None:
    raise TaskFailure(reason)


def test_a_raising_child_is_reported_with_type_message_and_traceback(
    receive: Any, sqs_queue: Any
) -> None:
    message = receive()
    with Handler(message, raises, reason="no solution found") as handler:
        handler.run()
    [(error, context)] = handler.notified
    assert isinstance(error, ChildTaskError) and isinstance(error, TaskFailure)
    assert error.type_name.endswith("TaskFailure")
    assert error.message == "no solution found"
    assert str(error) == "no solution found"
    assert "in raises" in error.traceback and "raise TaskFailure(reason)" in error.traceback
    assert "child_process.py" not in error.traceback
    assert context["body"] == message.body
    assert message.deletes == 0
    assert queue_counts(sqs_queue.queue) == (0, 1)


class CodedFailure(Exception):
    """A user exception whose constructor needs arguments the parent does not have."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code

    def __str__(self) -> str:
        return f"failure {self.code}"


class PickyNew(ValueError):
    """A user exception whose __new__ refuses anything but its own arguments."""

    def __new__(cls, *, reason: str) -> PickyNew:
        return super().__new__(cls, reason)

    def __init__(self, *, reason: str) -> None:
        super().__init__(f"picky: {reason}")


class Abort(BaseException):
    """Not an Exception: the parent may not raise it as such."""


def raise_kind(kind: str) -> None:
    if kind == "builtin":
        raise ValueError("bad value 7")
    if kind == "user":
        raise TaskFailure("no solution")
    if kind == "required-init":
        raise CodedFailure(42, "disk")
    if kind == "custom-new":
        raise PickyNew(reason="odd")
    if kind == "os-error":
        raise FileNotFoundError(2, "No such file", "/data/x")
    if kind == "local":

        class LocalFailure(Exception):
            pass

        raise LocalFailure("defined in a function")
    if kind == "base-exception":
        raise Abort("stop")


def child_error(kind: str) -> ChildTaskError:
    with pytest.raises(ChildTaskError) as caught:
        run_in_child(raise_kind, {"kind": kind}, hard_timeout_s=10)
    error = caught.value
    assert "raise_kind" in error.traceback and error.pid is not None
    return error


@pytest.mark.parametrize(
    ("kind", "cls", "text"),
    [
        ("builtin", ValueError, "bad value 7"),
        ("user", TaskFailure, "no solution"),
        ("required-init", CodedFailure, "failure 42"),
        ("custom-new", PickyNew, "picky: odd"),
        ("os-error", FileNotFoundError, "[Errno 2] No such file: '/data/x'"),
    ],
)
def test_an_importable_exception_keeps_its_class(kind: str, cls: type, text: str) -> None:
    error = child_error(kind)
    assert isinstance(error, cls) and isinstance(error, ChildTaskError)
    assert type(error).__name__ == cls.__name__ and type(error).__module__ == cls.__module__
    assert str(error) == text and error.message == text and error.args == (text,)
    assert repr(error) == f"{cls.__name__}({text!r})"
    assert f"{cls.__name__}: {text}" in error.traceback
    # Caught as the task's own class, as it would be in one process.
    with pytest.raises(cls):
        run_in_child(raise_kind, {"kind": kind}, hard_timeout_s=10)


def test_the_derived_classes_are_cached() -> None:
    assert type(child_error("user")) is type(child_error("user"))


@pytest.mark.parametrize(
    ("kind", "type_name"),
    [("local", "raise_kind.<locals>.LocalFailure"), ("base-exception", "Abort")],
)
def test_a_class_the_parent_cannot_raise_falls_back_to_child_task_error(
    kind: str, type_name: str
) -> None:
    error = child_error(kind)
    assert type(error) is ChildTaskError
    assert type_name in error.type_name and type_name in str(error)


def test_a_segfaulting_child_is_reported_with_its_signal(receive: Any) -> None:
    def segfault(handler: Any) -> None:
        faulthandler.disable()  # pytest's traceback dump would only add noise
        os.kill(os.getpid(), signal.SIGSEGV)

    message = receive()
    with Handler(message, segfault) as handler:
        handler.run()
    [(error, _context)] = handler.notified
    assert isinstance(error, ChildDiedError)
    assert error.signal_name == "SIGSEGV" and "SIGSEGV" in str(error)
    assert message.deletes == 0


def test_a_child_that_exits_without_reporting_names_its_exit_code() -> None:
    def exits(code: int) -> None:
        os._exit(code)

    with pytest.raises(ChildDiedError, match="exited with code 3") as caught:
        run_in_child(exits, {"code": 3}, hard_timeout_s=10)
    assert caught.value.exit_code == 3 and caught.value.signal_name is None


# -- what crosses the process boundary ------------------------------------------------


def test_run_returns_the_childs_json_result_and_self_is_not_shared(receive: Any) -> None:
    def work(handler: Any, n: int) -> Any:
        handler.result = "set in the child"
        return {"pid": os.getpid(), "squares": [i * i for i in range(n)], "pair": (1, 2)}

    message = receive()
    with Handler(message, work, n=4) as handler:
        result = handler.run()
    assert result["squares"] == [0, 1, 4, 9]
    assert result["pair"] == [1, 2]  # JSON has no tuples
    assert result["pid"] != os.getpid()
    assert handler.result is None  # the child's changes to self stay in the child
    assert handler.notified == [] and message.deletes == 1
    assert "run" not in vars(handler)  # the instance is plain again after the block


def nested(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


UNSENDABLE = [
    ({1, 2}, "cannot be sent to the parent process as JSON"),
    ("x" * MAX_RESULT_BYTES, "limit"),
    (nested(100_000), "RecursionError"),  # too deep for json on any Python
]


@pytest.mark.parametrize(("result", "expected"), UNSENDABLE, ids=["set", "too-large", "too-deep"])
def test_a_result_that_cannot_cross_is_dropped_and_the_task_is_done(
    receive: Any, caplog: Any, result: Any, expected: str
) -> None:
    message = receive()
    caplog.set_level("WARNING", logger="sqstaskmaster.run.fork")
    with Handler(message, lambda handler: result) as handler:
        returned = handler.run()
    assert returned is None
    assert handler.notified == [] and message.deletes == 1
    [warning] = [r for r in caplog.records if r.levelname == "WARNING" and "dropped" in r.message]
    assert expected in warning.message and message.message_id in warning.message


@pytest.mark.parametrize(("result", "expected"), UNSENDABLE, ids=["set", "too-large", "too-deep"])
def test_run_in_child_still_raises_for_a_result_it_cannot_return(
    result: Any, expected: str
) -> None:
    # run_in_child's caller asked for the function's result: no silent None.
    with pytest.raises(ChildTaskError, match=expected):
        run_in_child(lambda: result, hard_timeout_s=10)


def test_isolated_handlers_work_outside_the_main_thread(receive: Any) -> None:
    message = receive()
    previous = signal.getsignal(signal.SIGALRM)
    outcome: Dict[str, Any] = {}

    def in_thread() -> None:
        outcome["thread"] = threading.current_thread().name
        with Handler(message, lambda handler: os.getpid()) as handler:
            outcome["result"] = handler.run()
            outcome["notified"] = handler.notified

    thread = threading.Thread(target=in_thread, name="not-main")
    thread.start()
    thread.join(30)
    assert outcome["thread"] == "not-main"
    assert outcome["result"] != os.getpid() and outcome["notified"] == []
    assert signal.getsignal(signal.SIGALRM) is previous
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert message.deletes == 1


class ParentInterrupt(Exception):
    pass


def test_an_exception_in_the_parent_stops_the_child(receive: Any, tmp_path: Path) -> None:
    # A worker's shutdown handler raising in the parent while the child runs a C loop.
    pid_file = tmp_path / "pids"

    def loop(handler: Any) -> int:
        pid_file.write_text(f"{os.getpid()}\n")
        return c_loop(handler, 30)

    def interrupt(signum: int, frame: Any) -> None:
        raise ParentInterrupt("shutdown")

    loop_size_for(30)
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with Handler(receive(), loop) as handler:
            handler.run()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    [(error, _context)] = handler.notified
    assert isinstance(error, ParentInterrupt)
    assert wait_gone(read_pids(pid_file)[0])


def test_without_fork_entering_fails_clearly(receive: Any, monkeypatch: Any) -> None:
    message = receive()
    monkeypatch.delattr(os, "fork")
    handler = Handler(message, lambda handler: None)
    with pytest.raises(IsolationUnavailableError, match="needs os.fork") as caught:
        with handler:
            pass  # pragma: no cover
    assert "isolate = False" in str(caught.value)
    assert message.extensions == [] and message.deletes == 0


# -- run_in_child for plain functions -------------------------------------------------


def napping(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"


def test_run_in_child_runs_a_function_with_kwargs_and_heartbeats() -> None:
    beats: List[float] = []

    result = run_in_child(
        napping,
        {"seconds": 0.7},
        hard_timeout_s=10,
        heartbeat_s=0.2,
        on_heartbeat=lambda: beats.append(time.monotonic()),
    )
    assert result == "rested"
    assert 2 <= len(beats) <= 4


def test_a_heartbeat_due_while_a_slow_one_runs_is_made_as_soon_as_it_ends() -> None:
    # Given a first heartbeat that takes 1.2 periods (a request that timed out and retried)
    spans: List[Tuple[float, float]] = []

    def heartbeat() -> None:
        started = time.monotonic()
        time.sleep(1.2 if not spans else 0.0)
        spans.append((started, time.monotonic()))

    run_in_child(
        napping, {"seconds": 3.5}, hard_timeout_s=10, heartbeat_s=1.0, on_heartbeat=heartbeat
    )
    # Then the one that fell due meanwhile (at 2 s) was made right after it ended
    # (about 2.2 s), not skipped until the one after (3 s): the visibility gets
    # its next extension as early as it can
    assert len(spans) >= 2
    (_, first_end), (second_start, _) = spans[0], spans[1]
    assert second_start - first_end < 0.4


def test_run_in_child_raises_hard_timeout_error() -> None:
    started = time.monotonic()
    with pytest.raises(HardTimeoutError, match="Hit Hard Timeout") as caught:
        run_in_child(napping, {"seconds": 60}, hard_timeout_s=0.5, kill_grace_s=0.2)
    assert time.monotonic() - started < 2
    assert caught.value.hard_timeout == 0.5


PARENT_DIES = textwrap.dedent(
    """
    import os, sys, time
    from sqstaskmaster.isolation import run_in_child
    def report_and_sleep():
        print(os.getpid(), flush=True)
        time.sleep(1000)
    run_in_child(report_and_sleep, hard_timeout_s=1000)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses PR_SET_PDEATHSIG")
def test_the_child_dies_with_its_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_DIES], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    assert wait_gone(child_pid, timeout_s=5)


def quick(value: int) -> int:
    return value * 2


@pytest.mark.parametrize("missing", [("pidfd_open",), ("waitid",), ("pidfd_open", "waitid")])
def test_without_pidfd_or_waitid_the_parent_polls(monkeypatch: Any, missing: Tuple[str]) -> None:
    # Older kernels have no pidfd; macOS has no waitid.
    for name in missing:
        monkeypatch.delattr(os, name, raising=False)
    assert run_in_child(quick, {"value": 21}, hard_timeout_s=10) == 42
    with pytest.raises(TaskFailure, match="slow"):
        run_in_child(raises, {"handler": None, "reason": "slow"}, hard_timeout_s=10)
    started = time.monotonic()
    with pytest.raises(HardTimeoutError):
        run_in_child(napping, {"seconds": 60}, hard_timeout_s=0.3, kill_grace_s=0.2)
    assert time.monotonic() - started < 1.5


def test_a_heartbeat_in_flight_lands_before_the_handler_exits() -> None:
    # Given a heartbeat that is slow (botocore retrying) when the deadline comes
    calls: List[Tuple[str, int]] = []

    class SlowSecondCall:
        message_id = "slow-beat"
        body = "{}"
        attributes: Dict[str, str] = {}

        def change_visibility(self, VisibilityTimeout: int) -> None:
            if calls:
                time.sleep(1.5)
            calls.append((threading.current_thread().name, VisibilityTimeout))

        def delete(self) -> None:
            calls.append(("delete", 0))

    class Slow(IsolatedMessageHandler):
        kill_grace_s = 0.1

        def run(self) -> None:
            time.sleep(60)

        def notify(self, exception: BaseException, context: Any = None) -> None:
            pass

    message = SlowSecondCall()
    with Slow(message, sqs_timeout=10, alarm_timeout=1, hard_timeout=2) as handler:
        handler.run()
    # When the caller then hands the message back (as the worker does)
    message.change_visibility(VisibilityTimeout=0)
    time.sleep(0.5)
    # Then the hand-back is the last word: no heartbeat overwrote it
    assert isinstance(handler.error, TimeoutError)
    assert calls[-1] == ("MainThread", 0)
    assert [c for c in calls if c[1] == 10 and c[0] != "MainThread"]


def test_run_in_child_refuses_a_bad_heartbeat_before_it_forks() -> None:
    # A bad argument must not leave a child behind, running with no hard timeout.
    before = set(os.listdir("/proc")) if os.path.isdir("/proc") else set()
    with pytest.raises(ValueError, match="Heartbeat interval"):
        run_in_child(time.sleep, {"seconds": 30}, hard_timeout_s=5, heartbeat_s=0)
    children = [
        pid
        for pid in set(os.listdir("/proc")) - before
        if pid.isdigit() and _parent_of(int(pid)) == os.getpid()
    ]
    assert children == []


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1
