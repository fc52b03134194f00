"""The task status table's reading side: StatusTable, TaskStatus, the commands, the fixture.

Items are written as a worker writes them (the low-level client, values
through ``to_item``) to a real DynamoDB on the test server (moto).
"""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
from typing import Any, List, Tuple

import pytest

from sqstaskmaster import StatusTable, TaskStatus
from sqstaskmaster.cli import commands as cli
from sqstaskmaster.cli import status_commands
from sqstaskmaster.errors import (
    SQSTaskMasterError,
    StatusTableExistsError,
    StatusTableMissingError,
    StatusWaitTimeoutError,
)
from sqstaskmaster.ops.status_items import ATTRIBUTES, DEFAULT_TTL_DAYS, STATE_INDEX, to_item
from sqstaskmaster.ops.status_items import key as item_key
from sqstaskmaster.testing import DYNAMODB_ENDPOINT_VARIABLE, SQSServer
from sqstaskmaster.worker.exitcodes import RET_CONNECT, RET_ERROR, RET_OK, RET_USAGE

NOW = time.time()


def write(table: StatusTable, message_id: str, **fields: Any) -> None:
    """Put an item as a worker would (whole item; its expiry as the worker sets it)."""
    fields.setdefault("expires_at", int(time.time()) + DEFAULT_TTL_DAYS * 86400)
    table.client.put_item(TableName=table.name, Item=to_item({"message_id": message_id, **fields}))


def raw(table: StatusTable, message_id: str) -> Any:
    return table.client.get_item(TableName=table.name, Key=item_key(message_id)).get("Item")


def running(table: StatusTable, message_id: str, **fields: Any) -> None:
    now = time.time()
    base = dict(
        task="train",
        queue="jobs",
        state="running",
        host="ip-10-0-1-5",
        pid=4242,
        receive_count=1,
        started_at=now - 65,
        heartbeat_at=now - 4,
        updated_at=now - 4,
    )
    write(table, message_id, **{**base, **fields})


def chain_of_three(table: StatusTable, last_state: str = "running", **last: Any) -> None:
    """m1 continued as m2, m2 as m3; m3 in ``last_state``."""
    write(table, "m1", task="train", state="continued", continued_as="m2", updated_at=NOW - 30)
    write(
        table,
        "m2",
        task="train",
        state="continued",
        continued_as="m3",
        first_message_id="m1",
        continuation=1,
        updated_at=NOW - 20,
    )
    fields = dict(first_message_id="m1", continuation=2, started_at=NOW - 10, updated_at=NOW - 1)
    write(table, "m3", task="train", state=last_state, **{**fields, **last})


# -- creating ------------------------------------------------------------------------


def test_create_makes_the_index_and_turns_ttl_on(status_table: StatusTable) -> None:
    ttl = status_table.client.describe_time_to_live(TableName=status_table.name)
    assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expires_at"
    described = status_table.client.describe_table(TableName=status_table.name)["Table"]
    assert described["TableStatus"] == "ACTIVE"
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert [index["IndexName"] for index in described["GlobalSecondaryIndexes"]] == [STATE_INDEX]


def test_creating_a_table_twice_is_our_clear_error(status_table: StatusTable) -> None:
    again = StatusTable(status_table.name, client=status_table.client)
    with pytest.raises(StatusTableExistsError, match=f"'{status_table.name}' already exists"):
        again.create()
    with pytest.raises(ValueError):  # also a ValueError
        again.create()


def test_a_missing_table_is_named_with_how_to_create_it(status_table: StatusTable) -> None:
    missing = StatusTable("no-such-status-table", client=status_table.client)
    with pytest.raises(StatusTableMissingError) as caught:
        missing.get("m1")
    text = str(caught.value)
    assert "no-such-status-table" in text and "us-east-1" in text
    assert "sqstaskmaster status-table create no-such-status-table" in text
    assert isinstance(caught.value, SQSTaskMasterError)


def test_a_bad_table_name_is_refused_before_any_call() -> None:
    with pytest.raises(ValueError, match="not a DynamoDB table name"):
        StatusTable("a b", client=object())


# -- get -----------------------------------------------------------------------------


def test_get_an_absent_item_is_none(status_table: StatusTable) -> None:
    assert status_table.get("never-written") is None


def test_get_follows_a_continued_task_to_its_latest_message(status_table: StatusTable) -> None:
    chain_of_three(status_table, progress=0.5)
    latest = status_table.get("m1")
    assert latest is not None
    assert (latest.message_id, latest.state, latest.progress) == ("m3", "running", 0.5)
    assert latest.chain == ["m1", "m2", "m3"]
    first = status_table.get("m1", follow=False)
    assert first is not None and first.state == "continued" and first.chain == ["m1"]


def test_get_stops_at_a_continuation_no_worker_wrote_yet(status_table: StatusTable) -> None:
    write(status_table, "m1", state="continued", continued_as="m2", updated_at=NOW)
    status = status_table.get("m1")
    assert status is not None and status.state == "continued" and status.chain == ["m1"]


# -- list ----------------------------------------------------------------------------


def test_list_one_state_newest_first_with_task_and_limit(status_table: StatusTable) -> None:
    for index in range(5):
        task = "train" if index % 2 else "resize"
        write(status_table, f"r{index}", task=task, state="running", updated_at=NOW - 50 + index)
    write(status_table, "d1", task="train", state="done", updated_at=NOW)

    assert [s.message_id for s in status_table.list("running")] == ["r4", "r3", "r2", "r1", "r0"]
    assert [s.message_id for s in status_table.list("running", task="train")] == ["r3", "r1"]
    assert [s.message_id for s in status_table.list("running", limit=2)] == ["r4", "r3"]
    assert [s.message_id for s in status_table.list("running", "resize", limit=2)] == ["r4", "r2"]
    assert status_table.list("failed") == []


def test_list_without_a_state_merges_every_state(status_table: StatusTable) -> None:
    write(status_table, "old", state="done", updated_at=NOW - 30)
    write(status_table, "mid", state="running", updated_at=NOW - 20)
    write(status_table, "new", state="failed", updated_at=NOW - 10)
    status_table.cancel("not-received")  # an item without a state: in no index, not listed
    assert [s.message_id for s in status_table.list()] == ["new", "mid", "old"]
    assert [s.message_id for s in status_table.list(limit=2)] == ["new", "mid"]


def test_list_refuses_an_unknown_state_and_a_zero_limit(status_table: StatusTable) -> None:
    with pytest.raises(ValueError, match="unknown state 'sleeping'"):
        status_table.list("sleeping")
    with pytest.raises(ValueError, match="limit"):
        status_table.list(limit=0)


# -- cancel --------------------------------------------------------------------------


def test_cancel_marks_a_running_task(status_table: StatusTable) -> None:
    running(status_table, "m1", expires_at=1234567890)
    before = time.time()
    status = status_table.cancel("m1")
    assert status.cancel_requested and status.state == "running"
    assert before - 1 <= status.cancel_requested_at <= time.time() + 1  # type: ignore[operator]
    assert status.cancel_requested_by and "@" in status.cancel_requested_by
    item = raw(status_table, "m1")
    assert item["expires_at"] == {"N": "1234567890"}  # kept: the worker's own expiry
    assert item["task"] == {"S": "train"}
    assert status_table.cancel("m1", by="ops-bot").cancel_requested_by == "ops-bot"


def test_cancel_of_a_message_no_worker_received_creates_its_item(
    status_table: StatusTable,
) -> None:
    status = status_table.cancel("queued", by="alice@laptop")
    assert status.state is None and status.cancel_requested
    assert status.chain == ["queued"]
    expires = raw(status_table, "queued")["expires_at"]
    assert abs(int(expires["N"]) - (time.time() + DEFAULT_TTL_DAYS * 86400)) < 60


def test_cancel_of_a_continued_task_marks_its_latest_message(status_table: StatusTable) -> None:
    chain_of_three(status_table)
    status = status_table.cancel("m1")
    assert status.message_id == "m3" and status.chain == ["m1", "m2", "m3"]
    for message_id in ("m1", "m2", "m3"):
        assert "cancel_requested_at" in raw(status_table, message_id)


# -- wait ----------------------------------------------------------------------------


def test_wait_returns_once_done_with_the_value(status_table: StatusTable) -> None:
    running(status_table, "m1")

    def finish() -> None:
        now = time.time()
        running(status_table, "m1", state="done", ended_at=now, updated_at=now, result='{"n": 3}')

    threading.Timer(0.3, finish).start()
    status = status_table.wait("m1", timeout=10, poll_s=0.1)
    assert status.state == "done" and status.value == {"n": 3}


def test_wait_gives_up_after_its_timeout_naming_the_state(status_table: StatusTable) -> None:
    running(status_table, "m1")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="still running") as caught:
        status_table.wait("m1", timeout=0.5, poll_s=0.1)
    assert 0.5 <= time.monotonic() - started < 3
    assert isinstance(caught.value, StatusWaitTimeoutError)
    assert caught.value.message_id == "m1" and caught.value.last_state == "running"
    with pytest.raises(StatusWaitTimeoutError, match="no item"):
        status_table.wait("never-written", timeout=0.2, poll_s=0.1)


def test_wait_follows_a_continued_task(status_table: StatusTable) -> None:
    chain_of_three(status_table, "failed", error_type="ValueError", error="bad row 7")
    status = status_table.wait("m1", timeout=5, poll_s=0.1)
    assert (status.message_id, status.state, status.chain) == ("m3", "failed", ["m1", "m2", "m3"])
    assert status.error == "bad row 7" and status.value is None


# -- TaskStatus ----------------------------------------------------------------------


def test_task_status_has_a_field_per_attribute() -> None:
    names = [item.name for item in dataclasses.fields(TaskStatus)]
    assert names == [*ATTRIBUTES, "chain", "extra"]
    status = TaskStatus.from_item(to_item({"message_id": "m", "later_attribute": "x"}))
    assert status.extra == {"later_attribute": "x"} and status.chain == ["m"]


def test_task_status_times() -> None:
    now = 1_800_000_000.0
    live = TaskStatus("m", state="running", started_at=now - 3723, heartbeat_at=now - 4)
    assert live.elapsed_s_at(now) == 3723 and live.heartbeat_age_s_at(now) == 4
    assert not live.stale(now=now) and live.stale(3, now=now)
    assert TaskStatus("m", state="running", heartbeat_at=now - 121).stale(now=now)
    real = TaskStatus("m", state="running", started_at=time.time() - 60, heartbeat_at=time.time())
    assert 60 <= real.elapsed_s < 70 and 0 <= real.heartbeat_age_s < 10  # type: ignore[operator]
    ended = TaskStatus("m", state="done", started_at=now - 30, ended_at=now - 10, heartbeat_at=0)
    assert ended.elapsed_s_at(now) == 20 and ended.heartbeat_age_s is None
    assert not ended.stale(now=now) and ended.ended and not ended.running
    assert TaskStatus("m").elapsed_s is None and not TaskStatus("m").cancel_requested


def test_task_status_json() -> None:
    status = TaskStatus(
        "m", state="done", started_at=1_800_000_000, ended_at=1_800_000_001.5, result="[1, 2]"
    )
    data = status.to_json(now=1_800_000_010)
    assert data["started_at"] == 1_800_000_000
    assert data["started_at_iso"] == "2027-01-15T08:00:00Z"
    assert data["ended_at_iso"] == "2027-01-15T08:00:01.500Z"
    assert data["heartbeat_at_iso"] is None and data["value"] == [1, 2]
    assert data["elapsed_s"] == 1.5 and data["chain"] == ["m"] and not data["cancel_requested"]
    json.dumps(data)


# -- the fixture ---------------------------------------------------------------------


def test_the_server_points_workers_at_its_dynamodb(
    sqs_server: SQSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sqs_server.environment["AWS_ENDPOINT_URL_DYNAMODB"] == sqs_server.dynamodb_endpoint_url
    monkeypatch.setenv(DYNAMODB_ENDPOINT_VARIABLE, "http://127.0.0.1:9/")
    other = SQSServer(sqs_server.endpoint_url)
    assert other.dynamodb_endpoint_url == "http://127.0.0.1:9"
    assert other.environment["AWS_ENDPOINT_URL_DYNAMODB"] == "http://127.0.0.1:9"
    assert other.environment["AWS_ENDPOINT_URL"] == sqs_server.endpoint_url


def test_a_server_without_dynamodb_says_so(sqs_server: SQSServer, monkeypatch: Any) -> None:
    from sqstaskmaster.testing import free_port

    assert sqs_server.has_dynamodb
    monkeypatch.setenv(DYNAMODB_ENDPOINT_VARIABLE, f"http://127.0.0.1:{free_port()}")
    assert not SQSServer(sqs_server.endpoint_url).has_dynamodb


def test_a_table_made_from_boto3_defaults_reaches_the_same_dynamodb(
    env: Any, status_table: StatusTable
) -> None:
    running(status_table, "m1")
    status = StatusTable(status_table.name).get("m1")  # endpoint: AWS_ENDPOINT_URL_DYNAMODB
    assert status is not None and status.host == "ip-10-0-1-5"


# -- the commands --------------------------------------------------------------------


class Cli:
    """Runs ``cli.main`` in this process; returns (code, stdout, stderr and log lines)."""

    def __init__(self, table: StatusTable, capsys: Any, caplog: Any) -> None:
        self.table, self.capsys, self.caplog = table, capsys, caplog

    def __call__(self, *args: str, table: bool = True) -> Tuple[int, str, str]:
        self.caplog.clear()
        more = ["--status-table", self.table.name] if table else []
        code = cli.main(["--log-level", "WARNING", *args, *more])
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err + self.caplog.text


@pytest.fixture
def run_cli(env: Any, status_table: StatusTable, capsys: Any, caplog: Any) -> Cli:
    """The commands, reaching the test server through the environment (as in production)."""
    return Cli(status_table, capsys, caplog)


def test_tasks_shows_the_table(status_table: StatusTable, run_cli: Cli) -> None:
    running(status_table, "m-live", progress=0.6, progress_note="epoch 6 of 10")
    running(status_table, "m-stale", heartbeat_at=time.time() - 200, receive_count=2)
    write(status_table, "m-done", task="resize", state="done", updated_at=NOW - 100)
    code, out, _ = run_cli("tasks")
    assert code == RET_OK
    header, *rows = out.splitlines()
    assert header.split() == [
        "ID",
        "TASK",
        "STATE",
        "PROGRESS",
        "ELAPSED",
        "HEARTBEAT",
        "WORKER",
        "RECV",
    ]
    live = next(row for row in rows if row.startswith("m-live"))
    assert "[######    ]  60% epoch 6 of 10" in live
    assert "0:01:05" in live and "4s ago" in live and "ip-10-0-1-5:4242" in live
    stale = next(row for row in rows if row.startswith("m-stale"))
    assert "STALE 3m ago" in stale and stale.endswith("2")
    assert "\x1b[" not in out  # no colour: not a terminal
    code, out, _ = run_cli("tasks", "--state", "done")
    assert [row.split()[0] for row in out.splitlines()[1:]] == ["m-done"]
    code, out, _ = run_cli("tasks", "--task", "nothing-of-that-name")
    assert code == RET_OK and "(no tasks)" in out


def test_tasks_json(status_table: StatusTable, run_cli: Cli) -> None:
    running(status_table, "m1", progress=0.25)
    code, out, _ = run_cli("tasks", "--json")
    assert code == RET_OK
    (only,) = json.loads(out)
    assert only["message_id"] == "m1" and only["progress"] == 0.25
    assert only["started_at_iso"].endswith("Z") and only["heartbeat_age_s"] >= 4


def test_task_shows_a_result_or_an_error(status_table: StatusTable, run_cli: Cli) -> None:
    now = time.time()
    running(status_table, "ok", state="done", ended_at=now, result='{"pages": 3, "ok": true}')
    chain_of_three(status_table, "failed", error_type="ValueError", error="bad row 7")
    code, out, _ = run_cli("task", "ok")
    assert code == RET_OK
    assert 'result:\n  {\n    "ok": true,\n    "pages": 3\n  }' in out
    assert "host                 ip-10-0-1-5" in out and "ended_at" in out
    code, out, _ = run_cli("task", "m1")
    assert "chain                m1 -> m2 -> m3" in out
    assert "error: ValueError: bad row 7" in out
    code, out, _ = run_cli("task", "ok", "--json")
    assert json.loads(out)["value"] == {"pages": 3, "ok": True}


def test_task_without_an_item_is_an_error(status_table: StatusTable, run_cli: Cli) -> None:
    code, out, err = run_cli("task", "never-written")
    assert code == RET_ERROR and out == ""
    assert f"no item for message never-written in table {status_table.name}" in err


def test_cancel_says_what_happens_next(status_table: StatusTable, run_cli: Cli) -> None:
    running(status_table, "live")
    write(status_table, "over", task="t", state="done", updated_at=NOW)
    code, out, _ = run_cli("cancel", "live")
    out = " ".join(out.split())  # one line: the text is wrapped at 88 columns
    assert code == RET_OK
    assert "Cancel requested for message live." in out
    assert "learns it at its next heartbeat" in out and "context.stop_requested" in out
    assert "deleted, not retried" in out
    out = " ".join(run_cli("cancel", "waiting")[1].split())
    assert "No worker has received it yet" in out and "without running it" in out
    out = " ".join(run_cli("cancel", "over")[1].split())
    assert "It had already ended (done): nothing to stop." in out
    assert all(raw(status_table, m).get("cancel_requested_at") for m in ("live", "waiting", "over"))


def test_the_commands_name_a_missing_table(run_cli: Cli) -> None:
    for command in (["tasks"], ["task", "m1"], ["cancel", "m1"]):
        code, _, err = run_cli(*command, "--status-table", "no-such-table", table=False)
        assert code == RET_CONNECT
        assert "No status table 'no-such-table' in region us-east-1" in err
        assert "Traceback" not in err


def test_no_credentials_is_a_usage_error(
    run_cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, _, err = run_cli("tasks")
    assert code == RET_USAGE and "no AWS credentials were found" in err


def test_status_table_create_prints_what_it_made(run_cli: Cli, status_table: StatusTable) -> None:
    name = f"{status_table.name}-cli"
    code, out, _ = run_cli("status-table", "create", name, table=False)
    assert code == RET_OK
    assert f"Created status table {name} in region us-east-1" in out
    assert "on demand" in out and "TTL          on expires_at" in out and STATE_INDEX in out
    assert "dynamodb:UpdateItem" in out and "dynamodb:BatchGetItem" in out
    code, _, err = run_cli("status-table", "create", name, table=False)
    assert code == RET_ERROR and "already exists" in err
    status_table.client.delete_table(TableName=name)


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, sleeps: int) -> List[float]:
    """Make the watch's sleep return ``sleeps`` times, then raise KeyboardInterrupt (Ctrl-C)."""
    slept: List[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) > sleeps:
            raise KeyboardInterrupt

    monkeypatch.setattr(status_commands.time, "sleep", sleep)
    return slept


def test_tasks_watch_redraws_until_ctrl_c(
    status_table: StatusTable, run_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    running(status_table, "m1")
    slept = _interrupt_after(monkeypatch, 2)
    code, out, _ = run_cli("tasks", "--watch", "0.5")
    assert code == RET_OK and len(slept) == 3 and all(0 < s <= 0.5 for s in slept)
    assert out.count("\n-- ") + out.startswith("-- ") == 3 and out.count("m1 ") == 3
    _interrupt_after(monkeypatch, 1)
    code, out, _ = run_cli("tasks", "--watch", "--json")
    documents = [json.loads(line) for line in out.splitlines()]
    assert code == RET_OK and [[s["message_id"] for s in d] for d in documents] == [["m1"]] * 2


def test_watch_on_a_terminal_redraws_in_place_in_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    _interrupt_after(monkeypatch, 1)
    stale = TaskStatus("m1", state="running", heartbeat_at=time.time() - 500)
    out = Terminal()
    with pytest.raises(KeyboardInterrupt):
        status_commands.watch(lambda: [stale], 2.0, as_json=False, out=out)
    assert out.getvalue().count("\x1b[H\x1b[2J") == 2
    assert "\x1b[31mSTALE 8m ago" in out.getvalue() and "Ctrl-C to stop" in out.getvalue()


def test_an_unreachable_dynamodb_is_a_connection_error(
    run_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqstaskmaster.testing import free_port

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run_cli("tasks", "--endpoint-url", url)
    assert code == RET_CONNECT and "cannot read status table" in err and url in err
