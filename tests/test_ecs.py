"""ECS task scale-in protection: the agent client, and workers against a stand-in agent.

The agent's endpoint is served by :class:`ecs_agent.FakeAgent` (no emulator
has it); the workers run as ``python -m sqstaskmaster worker`` against moto's
SQS, with ``ECS_AGENT_URI`` pointing at the stand-in.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from ecs_agent import FakeAgent
from worker_process import WorkerProcess, wait_for

from sqstaskmaster.cli import commands as cli
from sqstaskmaster.errors import TaskProtectionError
from sqstaskmaster.ops.ecs import (
    AgentClient,
    ProtectionState,
    agent_uri_for,
    protection_minutes,
)
from sqstaskmaster.worker.exitcodes import RET_USAGE

POLL_S = 1.0


class Recorder:
    def __init__(self) -> None:
        self.calls: List[Tuple[BaseException, Any]] = []

    def __call__(self, exception: BaseException, context: Any = None) -> None:
        self.calls.append((exception, context))


def traces(directory: Path, kind: str) -> List[Dict[str, Any]]:
    """The task traces of ``kind`` (see worker_apps), each with its task key."""
    found = []
    for path in directory.glob(f"{kind}.*"):
        if not path.name.endswith(".tmp"):
            found.append(dict(json.loads(path.read_text()), key=path.name.split(".")[1]))
    return sorted(found, key=lambda trace: trace["time"])


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    server = FakeAgent()
    yield server
    server.close()


@pytest.fixture
def start_worker(sqs_server: Any, tmp_path: Path, agent: FakeAgent) -> Iterator[Any]:
    started: List[WorkerProcess] = []

    def start(queue_url: str, *args: str, agent_uri: str = "") -> WorkerProcess:
        worker = WorkerProcess(
            sqs_server,
            "worker_apps:app",
            queue_url,
            "--poll-wait",
            str(int(POLL_S)),
            *args,
            directory_variable="SQSTM_TEST_DIR",
            directory=tmp_path,
            log_path=tmp_path / "worker.log",
            env={"ECS_AGENT_URI": agent_uri or agent.uri},
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


# -- settings and the client ---------------------------------------------------------


def test_agent_uri_for_each_setting() -> None:
    env = {"ECS_AGENT_URI": "http://169.254.170.2/api/x"}
    assert agent_uri_for("auto", env) == env["ECS_AGENT_URI"]
    assert agent_uri_for("auto", {}) is None
    assert agent_uri_for("on", env) == env["ECS_AGENT_URI"]
    assert agent_uri_for("off", env) is None
    assert agent_uri_for(True, env) == env["ECS_AGENT_URI"]
    with pytest.raises(ValueError, match="ECS_AGENT_URI"):
        agent_uri_for("on", {})
    with pytest.raises(ValueError, match="'sometimes'"):
        agent_uri_for("sometimes", env)


def test_minutes_round_up_within_the_agent_range() -> None:
    assert protection_minutes(0) == 1
    assert protection_minutes(60) == 1
    assert protection_minutes(61) == 2
    assert protection_minutes(4 * 3600 + 25) == 241
    assert protection_minutes(10**7) == 2880


def test_client_puts_the_documented_bodies(agent: FakeAgent) -> None:
    client = AgentClient(agent.uri)
    assert client.put(True, 5) is True
    assert agent.enabled is True
    assert client.put(False) is True
    assert agent.enabled is False
    assert agent.bodies() == [
        {"ProtectionEnabled": True, "ExpiresInMinutes": 5},
        {"ProtectionEnabled": False},
    ]
    assert {call["method"] for call in agent.calls} == {"PUT"}
    assert {call["path"] for call in agent.calls} == {
        "/api/0123456789abcdef0-1234567890/task-protection/v1/state"
    }
    assert client.calls == 2


def test_each_kind_of_failure_is_notified_and_logged_once(agent: FakeAgent, caplog: Any) -> None:
    # Given a client with a short timeout, and an agent that refuses, errs, then hangs
    notify = Recorder()
    client = AgentClient(agent.uri, timeout_s=0.5, notify=notify)
    caplog.set_level("DEBUG", logger="sqstaskmaster.ops.ecs")
    results = []
    for mode in ["failure", "failure", "error", "error", "hang", "hang"]:
        agent.mode = mode
        started = time.monotonic()
        results.append(client.put(True, 3))
        # Then no call takes longer than the timeout (plus scheduling slack)
        assert time.monotonic() - started < 0.5 + 0.7
    # And each call failed, each kind was notified once, naming the kind
    assert results == [False] * 6
    kinds = [context["kind"] for _, context in notify.calls]
    assert kinds == ["failure TASK_NOT_VALID", "error AccessDeniedException", "timeout"]
    assert all(isinstance(error, TaskProtectionError) for error, _ in notify.calls)
    assert "ecs:UpdateTaskProtection" in str(notify.calls[1][0])
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 3
    assert len([r for r in caplog.records if "failed again" in r.getMessage()]) == 3


def test_an_unreachable_agent_is_one_kind(caplog: Any) -> None:
    notify = Recorder()
    # Port 9 on loopback: nothing listens (connection refused at once).
    client = AgentClient("http://127.0.0.1:9/api/x", notify=notify)
    assert client.put(True, 1) is False and client.put(False) is False
    assert [context["kind"] for _, context in notify.calls] == ["unreachable"]


def test_state_calls_only_on_changes_and_extends_when_needed(agent: FakeAgent) -> None:
    state = ProtectionState(AgentClient(agent.uri))
    now = time.monotonic()
    state.update([0.0, 0.0])  # idle, never protected: no call
    state.update([now + 90, 0.0])  # busy: enable for 2 minutes
    state.update([now + 90, now + 100])  # covered by the 2 minutes: no call
    state.update([0.0, now + 300])  # past the 2 minutes: enable again
    state.update([0.0, 0.0])  # all idle: release
    state.update([0.0, 0.0])
    assert agent.bodies() == [
        {"ProtectionEnabled": True, "ExpiresInMinutes": 2},
        {"ProtectionEnabled": True, "ExpiresInMinutes": 5},
        {"ProtectionEnabled": False},
    ]


def test_a_failed_enable_is_tried_again_at_the_next_task(agent: FakeAgent) -> None:
    # Given an agent that refuses the first enable
    state = ProtectionState(AgentClient(agent.uri, notify=Recorder()))
    agent.mode = "error"
    now = time.monotonic()
    assert state.cover(now + 90) is False
    assert state.protected_until is None
    # When the agent recovers and the next task starts (needing less time)
    agent.mode = "ok"
    assert state.cover(now + 60) is True
    # Then the enable was made again, and applied
    assert agent.enabled is True
    assert [body["ProtectionEnabled"] for body in agent.bodies()] == [True, True]


def test_the_shared_state_retries_for_a_new_task_only(agent: FakeAgent) -> None:
    # Given an agent that refuses enables, and a busy slot
    state = ProtectionState(AgentClient(agent.uri, notify=Recorder()))
    agent.mode = "failure"
    first = time.monotonic() + 600
    state.update([first, 0.0])
    # When the supervisor serves the same slots again: no call (no loop on a failing agent)
    state.update([first, 0.0])
    assert len(agent.calls) == 1
    # When another task starts, even one needing less time: the enable is tried again
    agent.mode = "ok"
    state.update([first, time.monotonic() + 60])
    assert len(agent.calls) == 2 and agent.enabled is True
    # And idle releases it
    state.update([0.0, 0.0])
    assert agent.bodies()[-1] == {"ProtectionEnabled": False} and agent.enabled is False


def test_a_failed_release_is_tried_again_when_idle_until_applied(agent: FakeAgent) -> None:
    # Given a protected container whose agent then refuses the release
    state = ProtectionState(AgentClient(agent.uri, notify=Recorder()), retry_after_s=0.3)
    assert state.cover(time.monotonic() + 90) is True
    agent.mode = "error"
    state.update([0.0])
    assert agent.enabled is True and len(agent.calls) == 2
    # When idle polls come at once: no call in a loop on a failing agent
    state.update([0.0])
    assert len(agent.calls) == 2
    # When the agent recovers and the next idle moment comes after the retry delay
    agent.mode = "ok"
    time.sleep(0.35)
    state.update([0.0])
    # Then the release is made again and applied, and nothing more is called after
    assert agent.bodies()[-1] == {"ProtectionEnabled": False} and agent.enabled is False
    state.update([0.0])
    assert len(agent.calls) == 3


def test_a_failed_enable_is_tried_again_during_the_task(agent: FakeAgent) -> None:
    # Given a task whose enable the agent refused
    state = ProtectionState(AgentClient(agent.uri, notify=Recorder()), retry_after_s=0.3)
    agent.mode = "failure"
    until = time.monotonic() + 90
    assert state.cover(until) is False
    # Then a retry is due one retry period later (the worker's chores ask for it) ...
    due = state.due_at()
    assert due is not None and 0.2 <= due - time.monotonic() <= 0.3
    state.run_due()  # not yet due: no call
    assert len(agent.calls) == 1
    # ... and when it comes, with the agent back, the task is protected
    agent.mode = "ok"
    time.sleep(0.35)
    state.run_due()
    assert agent.enabled is True and state.protected_until is not None
    assert state.due_at() is None
    # The supervisor's state retries the same slots too, after the delay
    shared = ProtectionState(AgentClient(agent.uri, notify=Recorder()), retry_after_s=0.3)
    agent.mode = "error"
    shared.update([until, 0.0])
    shared.update([until, 0.0])
    calls = len(agent.calls)
    agent.mode = "ok"
    time.sleep(0.35)
    shared.update([until, 0.0])
    assert len(agent.calls) == calls + 1 and shared.protected_until is not None


def test_a_timed_out_enable_is_still_released(agent: FakeAgent) -> None:
    # A timed-out enable may have been applied by the agent: idle releases it anyway.
    state = ProtectionState(AgentClient(agent.uri, timeout_s=0.3, notify=Recorder()))
    agent.mode = "hang"
    state.update([time.monotonic() + 90])
    agent.mode = "ok"
    state.update([0.0])
    assert agent.bodies()[-1] == {"ProtectionEnabled": False}


def test_a_trickling_agent_costs_one_bound_in_total(agent: FakeAgent, caplog: Any) -> None:
    # Given an agent that sends its answer one byte every 0.2 s (about 30 s in all)
    agent.mode = "trickle"
    notify = Recorder()
    client = AgentClient(agent.uri, notify=notify)
    caplog.set_level("DEBUG", logger="sqstaskmaster.ops.ecs")
    for _ in range(2):
        started = time.monotonic()
        # When the client calls it, then the call fails within the 2 s bound (plus slack)
        assert client.put(True, 3) is False
        assert time.monotonic() - started < 2.0 + 0.5
    # And the timeout was notified and logged once
    assert [context["kind"] for _, context in notify.calls] == ["timeout"]
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1


@pytest.mark.parametrize(
    "uri", ["not-a-url", "https://127.0.0.1/api/x", "http:///api/x", "http://host:port/x"]
)
def test_a_malformed_agent_uri_names_the_value(uri: str) -> None:
    for setting in ("auto", "on"):
        with pytest.raises(ValueError, match="ECS_AGENT_URI must be an http://"):
            agent_uri_for(setting, {"ECS_AGENT_URI": uri})
    assert agent_uri_for("off", {"ECS_AGENT_URI": uri}) is None


# -- workers against the stand-in agent --------------------------------------------------


def task_windows(directory: Path) -> List[Tuple[float, float]]:
    starts = {t["key"]: t["time"] for t in traces(directory, "start")}
    dones = {t["key"]: t["time"] for t in traces(directory, "done")}
    return [(starts[key], dones[key]) for key in starts]


def check_protection_around(agent: FakeAgent, directory: Path, tasks: int) -> None:
    windows = task_windows(directory)
    assert len(windows) == tasks
    enables = [c for c in agent.calls if c["body"]["ProtectionEnabled"]]
    releases = [c for c in agent.calls if not c["body"]["ProtectionEnabled"]]
    # Protected (the agent answered) before the first task started
    assert enables and enables[0]["answered"] <= min(start for start, _ in windows)
    # Never released while a task ran
    for release in releases:
        for start, done in windows:
            assert not start < release["at"] < done, (release, windows)
    # Released within one poll slice of going idle (plus slack for a loaded machine)
    last_done = max(done for _, done in windows)
    assert releases and releases[-1]["at"] >= last_done
    assert releases[-1]["at"] - last_done <= POLL_S + 3.0
    assert agent.enabled is False


@pytest.mark.parametrize("processes", ["2", "1"])
def test_a_worker_protects_its_task_while_tasks_run(
    sqs_server: Any,
    sqs_queue: Any,
    tmp_path: Path,
    agent: FakeAgent,
    start_worker: Any,
    processes: str,
    capsys: Any,
) -> None:
    # Given 3 tasks of 1.5 s on the queue
    tm = sqs_server.task_manager(sqs_queue)
    for number in range(3):
        tm.submit("sleep", key=f"t{number}", seconds=1.5)
    # When a worker with N processes runs them under ECS
    worker = start_worker(
        sqs_queue.url, "--processes", processes, "--hard-timeout", "60", "--shutdown-grace", "5"
    )
    wait_for(lambda: len(traces(tmp_path, "done")) == 3, 40, step_s=0.1)
    wait_for(lambda: agent.calls and agent.enabled is False, POLL_S + 5)
    # Then protection covered every task and was released once idle
    check_protection_around(agent, tmp_path, 3)
    # Each enable covers hard timeout + grace (65 s) rounded up: 2 minutes
    assert {c["body"].get("ExpiresInMinutes", 2) for c in agent.calls} == {2}
    calls = len(agent.calls)
    assert worker.stop() == 0
    assert len(agent.calls) == calls  # a stop when idle calls nothing more
    with capsys.disabled():
        print(f"\n[ecs] processes={processes}: {calls} agent calls for 3 tasks")


@pytest.mark.parametrize("mode", ["error", "failure", "hang"])
def test_an_agent_that_fails_or_hangs_changes_no_outcome(
    sqs_server: Any,
    sqs_queue: Any,
    tmp_path: Path,
    agent: FakeAgent,
    start_worker: Any,
    mode: str,
) -> None:
    # Given an agent that refuses, errs with HTTP 500 or hangs
    agent.mode = mode
    agent.error_status = 500
    tm = sqs_server.task_manager(sqs_queue)
    for number in range(3):
        tm.submit("sleep", key=f"t{number}", seconds=0.5)
    # When 2 worker processes run 3 tasks
    worker = start_worker(sqs_queue.url, "--processes", "2")
    # Then all three complete and are deleted
    wait_for(lambda: len(traces(tmp_path, "done")) == 3, 60, step_s=0.1)
    assert worker.stop(timeout_s=30) == 0
    assert sqs_queue.queue.receive_messages(WaitTimeSeconds=0) == []
    assert worker.log.count("receive 1: done") == 3
    # And no task waited on the agent past its 2 s timeout (plus slack)
    for call in agent.calls:
        if call["body"]["ProtectionEnabled"]:
            later = [s for s, _ in task_windows(tmp_path) if s >= call["at"]]
            assert later and min(later) - call["at"] <= 2.0 + 1.5
    # And the failure was logged once for its kind
    assert worker.log.count("reported once per kind of failure") == 1


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_failed_enable_is_tried_again_while_the_task_runs(
    sqs_server: Any,
    sqs_queue: Any,
    tmp_path: Path,
    agent: FakeAgent,
    start_worker: Any,
    processes: str,
) -> None:
    # Given an agent that refuses the enable made before a long task starts
    agent.mode = "error"
    sqs_server.task_manager(sqs_queue).submit("sleep", key="long", seconds=5)
    worker = start_worker(
        sqs_queue.url, "--processes", processes, "--sqs-timeout", "6", "--alarm-timeout", "1"
    )
    wait_for(lambda: traces(tmp_path, "start"), 30, step_s=0.05)
    assert agent.calls and agent.enabled is False
    # When the agent recovers while the task runs
    agent.mode = "ok"
    # Then the enable is made again (a heartbeat period later), before the task ends
    wait_for(lambda: agent.enabled is True, 6, step_s=0.05)
    assert not traces(tmp_path, "done")
    # And once the worker is idle, it is released
    wait_for(lambda: traces(tmp_path, "done"), 30, step_s=0.1)
    wait_for(lambda: agent.enabled is False, POLL_S + 5)
    assert worker.stop() == 0


def test_a_warm_stop_mid_task_releases_the_protection(
    sqs_server: Any, sqs_queue: Any, tmp_path: Path, agent: FakeAgent, start_worker: Any
) -> None:
    sqs_server.task_manager(sqs_queue).submit("sleep", key="long", seconds=60)
    worker = start_worker(sqs_queue.url, "--processes", "2", "--shutdown-grace", "0.5")
    wait_for(lambda: traces(tmp_path, "start"), 20)
    assert agent.enabled is True
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert agent.enabled is False
    assert agent.bodies()[-1] == {"ProtectionEnabled": False}


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_stop_while_the_agent_hangs_does_not_start_the_task(
    sqs_server: Any,
    sqs_queue: Any,
    tmp_path: Path,
    agent: FakeAgent,
    start_worker: Any,
    processes: str,
) -> None:
    # Given an agent that hangs, and a worker asking it to protect a task's start
    agent.mode = "hang"
    sqs_server.task_manager(sqs_queue).submit("sleep", key="never", seconds=1)
    worker = start_worker(
        sqs_queue.url, "--processes", processes, "--sqs-timeout", "60", "--shutdown-grace", "5"
    )
    wait_for(lambda: agent.calls, 20)
    # When SIGTERM arrives while the worker waits on the agent
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    # Then the task never started, and its message is visible again at once
    assert traces(tmp_path, "start") == []
    assert len(sqs_queue.queue.receive_messages(WaitTimeSeconds=0)) == 1
    assert "a stop came before the task started; handed back (visibility 0)" in worker.log


def test_off_makes_no_calls_and_on_outside_ecs_is_a_usage_error(
    sqs_server: Any,
    sqs_queue: Any,
    tmp_path: Path,
    agent: FakeAgent,
    start_worker: Any,
    monkeypatch: Any,
    sqs_environment: Any,
    caplog: Any,
) -> None:
    sqs_server.task_manager(sqs_queue).submit("ok", key="k")
    worker = start_worker(sqs_queue.url, "--ecs-protection", "off", "--burst-tasks", "1")
    assert worker.wait(30) == 0
    assert len(traces(tmp_path, "done")) == 1
    assert agent.calls == []

    monkeypatch.delenv("ECS_AGENT_URI", raising=False)
    code = cli.main(
        ["worker", "worker_apps:app", "--queue-url", sqs_queue.url, "--ecs-protection", "on"]
    )
    assert code == RET_USAGE
    assert "ECS_AGENT_URI" in caplog.text


@pytest.mark.parametrize("setting", ["on", "auto"])
def test_a_malformed_agent_uri_is_a_usage_error(
    sqs_queue: Any, sqs_environment: Any, monkeypatch: Any, caplog: Any, setting: str
) -> None:
    # Given ECS_AGENT_URI set to something that is not http://HOST[:PORT]/PATH
    monkeypatch.setenv("ECS_AGENT_URI", "not-a-url")
    argv = ["worker", "worker_apps:app", "--queue-url", sqs_queue.url]
    # When the worker command starts, then it exits 2 with a sentence naming the value
    assert cli.main([*argv, "--ecs-protection", setting]) == RET_USAGE
    assert "ECS_AGENT_URI must be an http://HOST[:PORT]/PATH URL, got 'not-a-url'" in caplog.text
    assert "Traceback" not in caplog.text
