"""The contracts of the small modules under the worker: wire, sqs, settings, shutdown,
settlement and the supervisor's independence from the worker."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, Set

import pytest

from sqstaskmaster.errors import (
    BodyError,
    HardTimeoutError,
    InvalidTaskMessageError,
    MalformedBodyError,
    Reject,
    Retry,
    TaskCancelled,
    WorkerShutdownError,
)
from sqstaskmaster.sqs import facts as sqs
from sqstaskmaster.sqs import wire
from sqstaskmaster.worker.exitcodes import RET_OK
from sqstaskmaster.worker.loop import Worker
from sqstaskmaster.worker.settings import WorkerSettings
from sqstaskmaster.worker.settlement import Outcome, classify
from sqstaskmaster.worker.shutdown import StopController
from sqstaskmaster.worker.supervisor import supervise_processes

PACKAGE = Path(__file__).resolve().parent.parent / "sqstaskmaster"
ZERO_ZERO_ELEVEN = {"task_manager", "message_handler", "local", "queue_scale"}


# -- wire -------------------------------------------------------------------------------


def test_wire_encodes_0_0_11_bytes() -> None:
    assert wire.encode_body("t", {"a": 1}) == '{"task": "t", "kwargs": {"a": 1}}'
    assert wire.service_name_attribute("me") == {
        "service_name": {"StringValue": "me", "DataType": "String"}
    }


@pytest.mark.parametrize(
    "body, cause",
    [
        ("not json", json.JSONDecodeError),
        ('{"task": "t"}', KeyError),
        ('["t", {}]', TypeError),
        ("[" * 100_000 + "]" * 100_000, RecursionError),
    ],
)
def test_wire_raises_one_error_type_for_every_undecodable_body(body: str, cause: type) -> None:
    with pytest.raises(MalformedBodyError) as caught:
        wire.decode(body, "m-1")
    assert isinstance(caught.value.cause, cause) and isinstance(caught.value, BodyError)
    assert "m-1" in str(caught.value)


def test_wire_validates_task_and_kwargs_types() -> None:
    assert wire.decode_task('{"task": "t", "kwargs": {}}') == ("t", {})
    for body in ('{"task": 7, "kwargs": {}}', '{"task": "t", "kwargs": [1]}'):
        with pytest.raises(InvalidTaskMessageError) as caught:
            wire.decode_task(body, "m-2")
        assert isinstance(caught.value, BodyError)


# -- sqs --------------------------------------------------------------------------------


class Message:
    def __init__(self, attributes: Dict[str, str]) -> None:
        self.attributes = attributes
        self.body = "b"


def test_sqs_facts_and_message_helpers() -> None:
    assert sqs.MAX_VISIBILITY_S == 43200 and sqs.MAX_POLL_WAIT_S == 20
    assert sqs.receive_count_of(Message({"ApproximateReceiveCount": "3"})) == 3
    assert sqs.receive_count_of(Message({})) == 1
    # The 12 hours count from the receive (the clock kept with the message), not the first one
    day_ago = str(int((time.time() - 24 * 3600) * 1000))
    message = Message({"ApproximateFirstReceiveTimestamp": day_ago})
    sqs.mark_received([message], time.time() - 3600)
    left = sqs.budget_left_s(message, 0)
    assert 39590 <= left <= 39600
    assert sqs.budget_left_s(Message({"ApproximateFirstReceiveTimestamp": day_ago})) is None
    assert sqs.capped_visibility(10**9, 50.5) == 50 and sqs.capped_visibility(-5, 100) == 0
    assert sqs.failure_context(Message({"x": "1"})) == {"body": "b", "x": "1"}
    assert sqs.message_size("é", {"n": {"DataType": "String", "StringValue": "v"}}) == 2 + 8


def test_sqs_finds_a_dead_letter_queue_from_its_arn(sqs_server: Any) -> None:
    queue = sqs_server.make_queue(dead_letter=True)
    arn = queue.dead_letter_queue.attributes["QueueArn"]
    assert sqs.queue_url_of_arn(sqs_server.client, arn) == queue.dead_letter_url
    with pytest.raises(ValueError, match="'nope'"):
        sqs.queue_url_of_arn(sqs_server.client, "nope")


# -- settings ---------------------------------------------------------------------------


def test_settings_are_one_frozen_checked_object_shared_by_worker_and_cli() -> None:
    with pytest.raises(ValueError, match="50000"):
        WorkerSettings(sqs_timeout=50000)
    settings = WorkerSettings(sqs_timeout=60)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.sqs_timeout = 5  # type: ignore[misc]
    assert settings.replace(hard_timeout=None) == settings
    with pytest.raises(TypeError, match="'nope'"):
        settings.replace(nope=1)
    worker = Worker(sqs_timeout=60)
    assert worker.settings == settings
    with pytest.raises(ValueError, match="poll_wait_s 21"):
        worker.poll_wait_s = 21
    assert worker.poll_wait_s == settings.poll_wait_s


# -- shutdown ---------------------------------------------------------------------------


def test_stop_controller_warm_then_cold() -> None:
    stop = StopController(grace_s=30.0)
    calls = []
    stop.listener = lambda: calls.append(stop.signals)
    assert not stop.stopping and stop.interrupt_at() is None and not stop.must_interrupt()
    stop.request()
    assert stop.stopping and not stop.cold and not stop.must_interrupt()
    assert stop.interrupt_at() == pytest.approx(stop.requested_at + 30.0)
    assert "grace expired" in str(stop.error())
    stop.request()
    assert stop.cold and stop.must_interrupt() and "cold stop" in str(stop.error())
    assert calls == [1, 2]


def test_stop_controller_handles_signals_only_inside() -> None:
    stop = StopController(grace_s=0.0)
    previous = signal.getsignal(signal.SIGTERM)
    with stop.handling_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
    assert stop.stopping and signal.getsignal(signal.SIGTERM) is previous


# -- settlement -------------------------------------------------------------------------


def test_outcomes_are_metric_labels_and_classify_errors() -> None:
    assert {outcome.value for outcome in Outcome} == {
        "done",
        "failed",
        "timed_out",
        "refused",
        "unknown",
        "invalid",
        "handed_back",
        "rejected",
        "retried_by_task",
        "continued",
        "cancelled",
    }
    assert Outcome.DONE == "done" and str(Outcome.TIMED_OUT) == "timed_out"
    assert classify(None) is Outcome.DONE
    assert classify(WorkerShutdownError("x")) is Outcome.HANDED_BACK
    assert classify(TaskCancelled("by me", "t", "m")) is Outcome.CANCELLED
    assert classify(Retry(1)) is Outcome.RETRIED_BY_TASK
    assert classify(Reject()) is Outcome.REJECTED
    assert classify(KeyError("k"), (KeyError,)) is Outcome.REJECTED
    assert classify(HardTimeoutError("late", 1)) is Outcome.TIMED_OUT
    assert classify(ValueError()) is Outcome.FAILED


# -- layering ---------------------------------------------------------------------------


# What each layer may import (the package's own modules; see README, "How it is built").
LAYERS = {
    "sqs": {"errors", "sqs"},
    "ops": {"errors", "sqs", "ops"},
    "run": {"errors", "sqs", "ops", "run"},
    "worker": {"errors", "sqs", "ops", "run", "worker", *ZERO_ZERO_ELEVEN, "isolation"},
    "testing": {"errors", "sqs", "ops", "testing", "task_manager", "local"},
}


def _layer_of(module: str) -> str:
    return module.split(".")[0]


def _imports(path: Path) -> Set[str]:
    """The package's modules ``path`` imports, as dotted names under the package."""
    own = path.relative_to(PACKAGE).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(own[:-1]) if own[-1] != "__init__" else list(own[:-1])
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
                found.add(module or ".".join(a.name for a in node.names[:1]))
            elif (node.module or "").startswith("sqstaskmaster."):
                found.add(node.module[len("sqstaskmaster.") :])  # type: ignore[index]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sqstaskmaster."):
                    found.add(alias.name[len("sqstaskmaster.") :])
    return {name for name in found if name}


def test_each_layer_imports_only_the_layers_below_it() -> None:
    for layer, allowed in LAYERS.items():
        for path in sorted((PACKAGE / layer).glob("*.py")):
            wrong = {m for m in _imports(path) if _layer_of(m) not in allowed}
            assert not wrong, f"{path.relative_to(PACKAGE)} imports {sorted(wrong)}"


def test_nothing_but_the_command_line_imports_the_command_line() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name != "cli" and path.name != "__main__.py":
            assert not {m for m in _imports(path) if _layer_of(m) == "cli"}, path


def test_the_supervisor_runs_any_callable() -> None:
    # The parent does no SQS work: it forks N copies of run_one and collects exit
    # codes. Each copy says its burst ended, or it would be restarted.
    def run_one(slot: Any) -> int:
        slot.report_burst_ended()
        return 0

    assert supervise_processes(run_one, 2, shutdown_grace_s=1.0) == RET_OK
