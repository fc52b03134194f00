"""EC2 Spot interruption notices: the metadata client, the 5 s poll, auto/on/off, the warm stop.

Also: auto is off on an On-Demand instance, and the SIGTERM after a notice joins its warm stop.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from worker_process import WorkerProcess, wait_for

from sqstaskmaster.cli import commands as cli
from sqstaskmaster.errors import MetadataServiceError
from sqstaskmaster.ops.spot import (
    DISABLED_VARIABLE,
    ENDPOINT_VARIABLE,
    InterruptionNotice,
    MetadataClient,
    SpotNotice,
    spot_notice_for,
)
from sqstaskmaster.testing import FakeMetadataService, free_port
from sqstaskmaster.worker.exitcodes import RET_OK
from sqstaskmaster.worker.settings import WorkerSettings
from sqstaskmaster.worker.supervisor import Supervisor, supervise_processes

AT = "2026-12-07T12:00:00Z"


def closed_endpoint() -> str:
    """An endpoint nothing listens on: every request is refused at once."""
    return f"http://127.0.0.1:{free_port()}/"


# -- the client ------------------------------------------------------------------------


def test_the_client_reads_no_notice_with_one_token(metadata_service: FakeMetadataService) -> None:
    client = MetadataClient(metadata_service.endpoint)
    assert client.instance_action(10.0) is None
    assert client.instance_action(20.0) is None
    assert metadata_service.token_requests == 1  # kept, not asked for each time
    assert metadata_service.notice_requests == 2


def test_the_client_reads_a_notice(metadata_service: FakeMetadataService) -> None:
    client = MetadataClient(metadata_service.endpoint)
    metadata_service.announce(at=AT)
    assert client.instance_action(0.0) == InterruptionNotice("terminate", AT)
    at = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.timezone.utc)
    metadata_service.announce("stop", at=at)
    assert client.instance_action(0.0) == InterruptionNotice("stop", AT)


def test_a_refused_token_is_replaced_within_the_same_poll(
    metadata_service: FakeMetadataService,
) -> None:
    client = MetadataClient(metadata_service.endpoint)
    client.instance_action(0.0)
    metadata_service.expire_tokens()  # as a restarted service would
    metadata_service.announce(at=AT)
    assert client.instance_action(1.0) == InterruptionNotice("terminate", AT)
    assert metadata_service.token_requests == 2
    assert metadata_service.notice_requests == 3  # the 401 and its one retry


def test_the_token_is_renewed_before_its_ttl_ends(metadata_service: FakeMetadataService) -> None:
    # A 600 s token is asked for again 300 s before it ends (TOKEN_REFRESH_MARGIN_S).
    client = MetadataClient(metadata_service.endpoint, token_ttl_s=600)
    client.instance_action(0.0)
    client.instance_action(299.0)
    assert metadata_service.token_requests == 1
    client.instance_action(301.0)
    assert metadata_service.token_requests == 2


def test_a_service_that_is_down_raises_naming_it() -> None:
    endpoint = closed_endpoint()
    with pytest.raises(MetadataServiceError) as caught:
        MetadataClient(endpoint).instance_action(0.0)
    assert endpoint in str(caught.value) and "--spot-notice off" in str(caught.value)


def test_a_notice_that_is_not_json_is_no_notice(metadata_service: FakeMetadataService) -> None:
    metadata_service.notice = "<html>"  # type: ignore[assignment]
    client = MetadataClient(metadata_service.endpoint)
    with pytest.raises(MetadataServiceError, match="body not read"):
        client.instance_action(0.0)


# -- the poller ------------------------------------------------------------------------


def test_polls_are_5_s_apart_and_end_with_the_notice(
    metadata_service: FakeMetadataService,
) -> None:
    spot = SpotNotice(MetadataClient(metadata_service.endpoint))
    assert spot.poll(100.0) is None  # the first call polls at once
    assert metadata_service.requests == [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/meta-data/spot/instance-action"),
    ]
    assert spot.poll(104.9) is None
    assert metadata_service.notice_requests == 1  # not due yet
    assert spot.poll(105.0) is None
    assert metadata_service.notice_requests == 2
    metadata_service.announce(at=AT)
    assert spot.poll(109.9) is None
    assert spot.poll(110.0) == InterruptionNotice("terminate", AT)
    assert spot.poll(115.0) is None and spot.poll(200.0) is None  # seen once; polling ended
    assert metadata_service.notice_requests == 3


def test_failing_polls_warn_at_most_once_a_minute(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="sqstaskmaster.ops.spot")
    spot = SpotNotice(MetadataClient(closed_endpoint()))
    for second in range(0, 65, 5):
        assert spot.poll(float(second)) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # at 0 s and at 60 s
    assert warnings[0].startswith("spot interruption notices: 1 poll(s) failed")
    assert warnings[1].startswith("spot interruption notices: 12 poll(s) failed")


def test_a_service_back_up_is_logged(metadata_service: FakeMetadataService, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="sqstaskmaster.ops.spot")
    spot = SpotNotice(MetadataClient(closed_endpoint()))
    assert spot.poll(0.0) is None
    spot.client = MetadataClient(metadata_service.endpoint)  # as if it came back
    assert spot.poll(5.0) is None
    assert "answers again" in caplog.text


# -- auto, on, off ---------------------------------------------------------------------


def test_auto_is_on_on_a_spot_instance_and_keeps_the_probes_token(
    metadata_service: FakeMetadataService, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="sqstaskmaster.ops.spot")
    spot = spot_notice_for("auto", metadata_service.environment())
    assert isinstance(spot, SpotNotice)
    assert metadata_service.token_requests == 1 and metadata_service.life_cycle_requests == 1
    assert metadata_service.notice_requests == 0
    assert "spot notices: on (instance-life-cycle spot)" in caplog.text
    spot.poll(time.monotonic())
    assert metadata_service.token_requests == 1


@pytest.mark.parametrize("life_cycle", ["on-demand", "scheduled"])
def test_auto_is_off_on_an_instance_that_is_not_spot(
    metadata_service: FakeMetadataService, caplog: Any, life_cycle: str
) -> None:
    caplog.set_level(logging.INFO, logger="sqstaskmaster.ops.spot")
    metadata_service.life_cycle = life_cycle
    assert spot_notice_for("auto", metadata_service.environment()) is None
    assert metadata_service.life_cycle_requests == 1 and metadata_service.notice_requests == 0
    decisions = [r for r in caplog.records if r.getMessage().startswith("spot notices:")]
    assert [(r.levelno, r.getMessage()) for r in decisions] == [
        (logging.INFO, f"spot notices: off (instance-life-cycle {life_cycle})")
    ]
    # "on" is asked for by name: it polls all the same, without asking the life cycle.
    assert isinstance(spot_notice_for("on", metadata_service.environment()), SpotNotice)
    assert metadata_service.life_cycle_requests == 1


def test_auto_is_off_with_a_warning_when_the_life_cycle_is_not_read(
    metadata_service: FakeMetadataService, caplog: Any
) -> None:
    metadata_service.life_cycle = None  # the token works, the life cycle answers 404
    assert spot_notice_for("auto", metadata_service.environment()) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("spot notices: off")
    assert "instance-life-cycle" in warnings[0] and "HTTP 404" in warnings[0]
    assert "--spot-notice on" in warnings[0]


def test_auto_is_off_where_nothing_answers() -> None:
    started = time.monotonic()
    assert spot_notice_for("auto", {ENDPOINT_VARIABLE: closed_endpoint()}) is None
    assert time.monotonic() - started < 1.5


def test_auto_is_off_without_a_probe_when_botocore_is_told_so(
    metadata_service: FakeMetadataService,
) -> None:
    environ = dict(metadata_service.environment(), **{DISABLED_VARIABLE: "True"})
    assert spot_notice_for("auto", environ) is None
    assert spot_notice_for("off", metadata_service.environment()) is None
    assert metadata_service.requests == []
    # "on" is asked for by name: it polls all the same.
    assert isinstance(spot_notice_for("on", environ), SpotNotice)


def test_on_polls_where_nothing_answers(caplog: Any) -> None:
    spot = spot_notice_for("on", {ENDPOINT_VARIABLE: closed_endpoint()})
    assert isinstance(spot, SpotNotice)
    assert spot.poll(0.0) is None
    assert "poll(s) failed" in caplog.text


def test_a_malformed_endpoint_is_off_for_auto_and_an_error_for_on() -> None:
    environ = {ENDPOINT_VARIABLE: "169.254.169.254"}
    assert spot_notice_for("auto", environ) is None
    with pytest.raises(ValueError, match=ENDPOINT_VARIABLE):
        spot_notice_for("on", environ)
    with pytest.raises(ValueError, match="'sometimes'"):
        spot_notice_for("sometimes", environ)


def test_the_setting_and_its_option(capsys: Any) -> None:
    assert WorkerSettings().spot_notice == "auto"
    with pytest.raises(ValueError, match="spot_notice"):
        WorkerSettings(spot_notice="yes")
    with pytest.raises(SystemExit):
        cli.main(["worker", "--help"])
    assert "--spot-notice {auto,on,off}" in capsys.readouterr().out


def test_the_test_suite_never_reaches_the_metadata_service(sqs_server: Any) -> None:
    assert os.environ[DISABLED_VARIABLE] == "true"
    assert sqs_server.environment[DISABLED_VARIABLE] == "true"


# -- the supervisor --------------------------------------------------------------------


class NoticeAfter:
    """A SpotNotice stand-in (no HTTP, no thread): a notice once ``delay_s`` have passed."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.first: Optional[float] = None
        self.seen = False

    def poll(self, now: float) -> Optional[InterruptionNotice]:
        self.first = now if self.first is None else self.first
        if self.seen or now - self.first < self.delay_s:
            return None
        self.seen = True
        return InterruptionNotice("terminate", AT)


def sigterms_after_the_first() -> List[int]:
    """In a worker process: note each SIGTERM; return (the list, still filling) after the first."""
    got: List[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    return got


def test_a_notice_is_a_warm_stop_of_every_worker_process(tmp_path: Path, caplog: Any) -> None:
    # Given two worker processes that each note the SIGTERMs they get
    def run_one(slot: Any) -> int:
        got = sigterms_after_the_first()
        (tmp_path / f"slot{slot.index}").write_text(str(len(got)))
        return 0

    # When the supervisor sees a notice
    caplog.set_level(logging.INFO, logger="sqstaskmaster.worker.supervisor")
    started = time.monotonic()
    options: Dict[str, Any] = {"spot_notice": NoticeAfter(0.3)}
    assert supervise_processes(run_one, 2, 1.0, **options) == RET_OK
    # Then each got one SIGTERM (a warm stop), and none was restarted
    assert time.monotonic() - started < 5
    assert sorted(p.read_text() for p in tmp_path.glob("slot*")) == ["1", "1"]
    assert f"spot interruption notice: terminate at {AT}" in caplog.text
    assert "passing a warm stop on" in caplog.text and "restarting" not in caplog.text


@pytest.mark.parametrize("sigterms", [1, 2])
def test_the_sigterm_after_a_notice_joins_its_warm_stop_and_a_second_is_cold(
    tmp_path: Path, caplog: Any, sigterms: int
) -> None:
    # Given two worker processes that note the SIGTERMs they get for 1.5 s after the first;
    # worker 0, once warned, sends the supervisor `sigterms` SIGTERMs 0.3 s apart (as ECS
    # draining the instance would after the notice)
    def run_one(slot: Any) -> int:
        got = sigterms_after_the_first()
        for _ in range(sigterms if slot.index == 0 else 0):
            time.sleep(0.3)
            os.kill(os.getppid(), signal.SIGTERM)
        time.sleep(1.5 - 0.3 * sigterms)
        (tmp_path / f"slot{slot.index}").write_text(str(len(got)))
        return 0

    # When the supervisor sees a notice, then the SIGTERM(s)
    caplog.set_level(logging.INFO, logger="sqstaskmaster.worker.supervisor")
    options: Dict[str, Any] = {"spot_notice": NoticeAfter(0.3)}
    assert supervise_processes(run_one, 2, 5.0, **options) == RET_OK
    # Then the first SIGTERM is absorbed into the notice's warm stop; a second is cold
    counts = sorted(p.read_text() for p in tmp_path.glob("slot*"))
    assert counts == [str(sigterms)] * 2
    assert "SIGTERM after the spot interruption notice: the warm stop goes on" in caplog.text
    assert "passing a warm stop on" in caplog.text
    assert ("passing a cold stop on" in caplog.text) == (sigterms == 2)


def test_the_kill_deadline_counts_from_the_notice() -> None:
    options: Dict[str, Any] = {"spot_notice": NoticeAfter(0.0)}
    supervisor = Supervisor(lambda slot: 0, 1, **options)
    supervisor._poll_spot_notice(time.monotonic())
    noticed_at = supervisor._stop_at
    assert supervisor._signals == 1 and noticed_at is not None
    supervisor._on_signal(signal.SIGTERM, None)
    assert supervisor._signals == 1 and supervisor._stop_at == noticed_at
    supervisor._on_signal(signal.SIGTERM, None)
    assert supervisor._signals == 2 and supervisor._stop_at == noticed_at


# -- end to end ------------------------------------------------------------------------


def test_a_worker_warm_stops_on_a_notice_and_hands_its_message_back(
    sqs_server: Any, sqs_queue: Any, tmp_path: Path, metadata_service: FakeMetadataService
) -> None:
    # Given a worker with spot notices on, running a task far longer than its grace
    sqs_server.task_manager(sqs_queue).submit("sleep", key="spot", seconds=60)
    worker = WorkerProcess(
        sqs_server,
        "worker_apps:app",
        sqs_queue.url,
        *("--poll-wait", "1", "--shutdown-grace", "0.5", "--spot-notice", "auto"),
        directory_variable="SQSTM_TEST_DIR",
        directory=tmp_path,
        log_path=tmp_path / "worker.log",
        env=metadata_service.environment(),
    )
    try:
        wait_for(lambda: list(tmp_path.glob("start.spot.*")), 15, "the task started")
        wait_for(lambda: metadata_service.notice_requests, 10, "the supervisor's first poll")
        # When EC2 announces an interruption (seen by the next poll, 5 s later at most)
        metadata_service.announce(at=AT)
        announced = time.monotonic()
        # Then the worker stops within 10 s, exits 0, and its message is back in the queue
        assert worker.wait(10) == RET_OK
        assert time.monotonic() - announced < 10
        back = sqs_queue.queue.receive_messages(MaxNumberOfMessages=1, WaitTimeSeconds=1)
        assert len(back) == 1 and "spot" in back[0].body
        assert f"spot interruption notice: terminate at {AT}" in worker.log
        assert "handed back" in worker.log
        assert list(tmp_path.glob("done.spot.*")) == []
    finally:
        worker.close()
