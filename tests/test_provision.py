"""Proportional Provisioner rules and the ``provision`` command, against moto's ECS and SQS."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from test_queue_scale import Service, make_service, rule_for

from sqstaskmaster.cli import commands as cli
from sqstaskmaster.queue_scale import Provisioner
from sqstaskmaster.worker.exitcodes import RET_OK, RET_USAGE

LOGGER_NAME = "sqstaskmaster.queue_scale"


@pytest.fixture
def service(ecs: Any) -> Service:
    return make_service(ecs)


def proportional(queue_url: str, service: Service, **keys: Any) -> Dict[str, Any]:
    rule = rule_for(queue_url, service, active_size=10)
    rule.update(keys)
    return rule


def send(queue: Any, count: int, **options: Any) -> None:
    for number in range(count):
        queue.queue.send_message(MessageBody=f"m{number}", **options)


def drain(queue: Any) -> None:
    while True:
        messages = queue.queue.receive_messages(MaxNumberOfMessages=10, WaitTimeSeconds=0)
        if not messages:
            return
        for message in messages:
            message.delete()


def decisions(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME and "->" in r.msg]


# -- proportional rules ------------------------------------------------------------


def test_desired_count_follows_all_three_depths_with_bounds(
    env: Any, sqs_queue: Any, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    # Given 3 visible, 1 in flight and 1 delayed message, 2 tasks per worker
    send(sqs_queue, 4)
    assert len(sqs_queue.queue.receive_messages(VisibilityTimeout=60)) == 1
    sqs_queue.queue.send_message(MessageBody="later", DelaySeconds=60)
    rule = proportional(sqs_queue.url, service, tasks_per_worker=2, min_size=1, max_size=10)
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    # When the provisioner runs, then ceil(5 / 2) = 3 workers are asked for at once
    Provisioner([rule]).run()
    assert service.desired_count() == 3
    # And the decision names the rule, the three depths and the counts
    [line] = decisions(caplog)
    assert repr(rule) in line or str(rule) in line
    assert "visible 3, in flight 1, delayed 1; desired count 0 -> 3 (scale out)" in line
    # And the bounds hold: max_size caps, min_size floors
    Provisioner([dict(rule, tasks_per_worker=1, max_size=2, scale_in_cooldown_s=0)]).run()
    assert service.desired_count() == 2
    drain(sqs_queue)
    relaxed = dict(rule, scale_in_cooldown_s=0, tasks_per_worker=100)
    Provisioner([dict(relaxed, min_size=0)]).run()
    assert service.desired_count() == 1  # ceil(1 delayed / 100)
    Provisioner([dict(relaxed, min_size=3)]).run()
    assert service.desired_count() == 3


def test_scale_in_waits_for_the_cooldown_and_a_refill_restarts_it(
    env: Any, sqs_queue: Any, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    # Given 6 messages, 2 per worker, a 1.5 s scale-in cooldown
    send(sqs_queue, 6)
    rule = proportional(sqs_queue.url, service, tasks_per_worker=2, scale_in_cooldown_s=1.5)
    provisioner = Provisioner([rule])
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    provisioner.run()
    assert service.desired_count() == 3
    # When the queue drains, the lower figure does not apply at once
    drain(sqs_queue)
    send(sqs_queue, 1)
    provisioner.run()
    assert service.desired_count() == 3
    assert "waits" in decisions(caplog)[-1]
    # And a refill during the cooldown resets it (no flapping)
    time.sleep(1.0)
    send(sqs_queue, 5)
    provisioner.run()
    assert service.desired_count() == 3
    drain(sqs_queue)
    send(sqs_queue, 1)
    provisioner.run()
    time.sleep(0.8)  # 1.8 s after the first drain, only 0.8 s after the second
    provisioner.run()
    assert service.desired_count() == 3
    # Then once the lower figure held for the cooldown, the service scales in
    time.sleep(1.0)
    provisioner.run()
    assert service.desired_count() == 1
    assert "desired count 3 -> 1 (scale in" in decisions(caplog)[-1]


def test_old_and_proportional_rules_side_by_side(env: Any, sqs_server: Any, ecs: Any) -> None:
    queue = sqs_server.make_queue()
    send(queue, 5)
    old, new = make_service(ecs), make_service(ecs)
    rules = [rule_for(queue.url, old, 4), proportional(queue.url, new, tasks_per_worker=5)]
    Provisioner(rules).run()
    assert (old.desired_count(), new.desired_count()) == (4, 1)


@pytest.mark.parametrize(
    "keys, text",
    [
        ({"tasks_per_worker": 0}, "tasks_per_worker must be a whole number >= 1, got 0"),
        ({"tasks_per_worker": "2"}, "tasks_per_worker must be a whole number >= 1, got '2'"),
        ({"tasks_per_worker": 2, "min_size": 5, "max_size": 3}, "max_size 3 is below min_size 5"),
        ({"tasks_per_worker": 2, "scale_in_cooldown_s": -1}, "scale_in_cooldown_s must be"),
        ({"min_size": 1}, "min_size needs tasks_per_worker"),
    ],
)
def test_bad_proportional_keys_name_the_key(env: Any, keys: Dict[str, Any], text: str) -> None:
    rule = {"queue_name": "q", "service_name": "s", "cluster_name": "c", "active_size": 3}
    with pytest.raises(ValueError, match=text):
        Provisioner([dict(rule, **keys)])


def test_dry_run_decides_and_logs_without_updating(
    env: Any, sqs_queue: Any, ecs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    send(sqs_queue, 4)
    old, new = make_service(ecs), make_service(ecs)
    rules = [rule_for(sqs_queue.url, old, 3), proportional(sqs_queue.url, new, tasks_per_worker=1)]
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    Provisioner(rules, dry_run=True).run()
    assert (old.desired_count(), new.desired_count()) == (0, 0)
    assert "dry run: would set rule" in caplog.text and "desired count to 3" in caplog.text
    assert "dry run: rule" in caplog.text and "desired count 0 -> 4" in caplog.text


# -- the provision command -------------------------------------------------------------


def write_rules(tmp_path: Path, rules: Any) -> str:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    return str(path)


def test_provision_once_and_dry_run(
    env: Any, sqs_queue: Any, service: Service, tmp_path: Path, caplog: Any
) -> None:
    send(sqs_queue, 3)
    path = write_rules(tmp_path, [proportional(sqs_queue.url, service, tasks_per_worker=1)])
    caplog.set_level(logging.INFO)
    assert cli.main(["provision", path, "--once", "--dry-run"]) == RET_OK
    assert service.desired_count() == 0
    assert "dry run: rule" in caplog.text
    assert cli.main(["provision", path, "--once"]) == RET_OK
    assert service.desired_count() == 3


@pytest.mark.parametrize(
    "rules, text",
    [
        ([{"service_name": "s"}], "rule 0 (service 's'): key 'queue_name' is missing"),
        (
            [
                {"queue_name": "q", "service_name": "a", "cluster_name": "c", "active_size": 1},
                {
                    "queue_name": "q",
                    "service_name": "b",
                    "cluster_name": "c",
                    "active_size": 1,
                    "tasks_per_worker": -2,
                },
            ],
            "rule 1 (service 'b'): rule for service 'b': tasks_per_worker must be",
        ),
        (
            [
                {
                    "queue_name": "q",
                    "service_name": "s",
                    "cluster_name": "c",
                    "active_size": 1,
                    "tasks_per_workers": 2,
                }
            ],
            "rule 0 (service 's'): key 'tasks_per_workers' is not a rule key",
        ),
        ({"rules": []}, "must hold a JSON list of rules, got dict"),
        ([5], "rule 0 (service None): must be a JSON object, got 5"),
    ],
)
def test_a_malformed_rules_file_exits_2_naming_rule_and_key(
    env: Any, tmp_path: Path, caplog: Any, rules: Any, text: str
) -> None:
    path = write_rules(tmp_path, rules)
    assert cli.main(["provision", path, "--once"]) == RET_USAGE
    assert text in caplog.text


def test_a_rules_file_that_is_not_json_exits_2(env: Any, tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "rules.json"
    path.write_text("[{")
    assert cli.main(["provision", str(path)]) == RET_USAGE
    assert "is not JSON" in caplog.text


def test_sigterm_stops_the_loop_between_rounds_with_exit_0(
    env: Any, sqs_server: Any, sqs_queue: Any, service: Service, tmp_path: Path
) -> None:
    # Given the command running every 0.3 s
    send(sqs_queue, 2)
    path = write_rules(tmp_path, [proportional(sqs_queue.url, service, tasks_per_worker=1)])
    log_path = tmp_path / "provision.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sqstaskmaster", "provision", path, "--interval", "0.3"],
            env=dict(os.environ, **sqs_server.environment),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while log_path.read_text().count("desired count") < 2:
                assert time.monotonic() < deadline, log_path.read_text()
                assert process.poll() is None, log_path.read_text()
                time.sleep(0.1)
            # When it gets SIGTERM, then it exits 0 after the round it was in
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert service.desired_count() == 2
    assert "provision: stopped after" in log_path.read_text()


def test_a_non_positive_interval_exits_2(env: Any, tmp_path: Path, caplog: Any) -> None:
    path = write_rules(tmp_path, [])
    assert cli.main(["provision", path, "--interval", "0"]) == RET_USAGE
    assert "--interval must be > 0 seconds, got 0.0" in caplog.text


def test_a_missing_region_exits_2_saying_what_to_set(
    env: Any, tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no region anywhere (no variable, no config file)
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    rule = {"queue_name": "q", "service_name": "s", "cluster_name": "c", "active_size": 1}
    path = write_rules(tmp_path, [rule])
    # Then provision exits 2 (the caller's fault), not 4, naming what to do
    assert cli.main(["provision", path, "--once"]) == RET_USAGE
    assert "No AWS region is configured: pass --region REGION" in caplog.text


def test_a_rules_file_nested_too_deep_exits_2_naming_it(
    env: Any, tmp_path: Path, caplog: Any
) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert cli.main(["provision", str(path), "--once"]) == RET_USAGE
    assert f"rules file {path} is nested too deeply to read" in caplog.text
    assert "Traceback" not in caplog.text


def test_endpoint_url_serves_both_sqs_and_ecs(
    env: Any,
    sqs_server: Any,
    sqs_queue: Any,
    service: Service,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given boto3's own endpoint pointing nowhere (a closed loopback port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    send(sqs_queue, 2)
    path = write_rules(tmp_path, [proportional(sqs_queue.url, service, tasks_per_worker=1)])
    # When provision is given the server's endpoint
    argv = ["provision", path, "--once", "--endpoint-url", sqs_server.endpoint_url]
    assert cli.main(argv) == RET_OK
    # Then it read the queue and scaled the service through it
    assert service.desired_count() == 2


def test_provisioner_takes_an_endpoint_and_keeps_its_0011_signature(
    env: Any, sqs_server: Any, sqs_queue: Any, service: Service, monkeypatch: Any
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    send(sqs_queue, 1)
    rule = proportional(sqs_queue.url, service, tasks_per_worker=1)
    # 0.0.11's Provisioner(rules, notify) still takes boto3's own endpoint
    legacy = Provisioner([rule], lambda error, context=None: None)
    assert legacy.sqs.meta.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert legacy.ecs.meta.endpoint_url == "http://127.0.0.1:9"
    # And endpoint_url= points both clients elsewhere
    given = Provisioner([rule], None, endpoint_url=sqs_server.endpoint_url)
    assert given.ecs.meta.endpoint_url == sqs_server.endpoint_url
    given.run()
    assert service.desired_count() == 1


def test_log_format_after_the_provision_subcommand(
    sqs_server: Any, sqs_queue: Any, service: Service, tmp_path: Path
) -> None:
    path = write_rules(tmp_path, [proportional(sqs_queue.url, service, tasks_per_worker=1)])
    result = subprocess.run(
        [sys.executable, "-m", "sqstaskmaster", "provision", path, "--once"]
        + ["--dry-run", "--log-format", "json"],
        env=dict(os.environ, **sqs_server.environment),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(text) for text in result.stderr.splitlines()]
    assert any("provision: stopped after 1 rounds" in line["message"] for line in lines)
