"""SPEC.md's Provisioner and ServiceState contract, against moto's ECS and SQS server."""

from __future__ import annotations

import inspect
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import pytest
from botocore.exceptions import ClientError

from sqstaskmaster.queue_scale import Provisioner, ServiceState

LOGGER_NAME = "sqstaskmaster.queue_scale"
RULE_FAILED = "Failed to update resources for rule %s"


class Recorder:
    """A notify callable that keeps what it was called with."""

    def __init__(self) -> None:
        self.calls: List[Tuple[BaseException, Any]] = []

    def __call__(self, exception: BaseException, *, context: Any) -> None:
        self.calls.append((exception, context))


@dataclass
class Service:
    """A real ECS service on the test server."""

    cluster: str
    name: str
    arn: str
    ecs: Any

    def desired_count(self) -> int:
        response = self.ecs.describe_services(cluster=self.cluster, services=[self.name])
        return int(response["services"][0]["desiredCount"])

    def set_desired_count(self, count: int) -> None:
        self.ecs.update_service(cluster=self.cluster, service=self.name, desiredCount=count)


def make_service(ecs: Any, desired_count: int = 0) -> Service:
    cluster = f"cluster-{uuid.uuid4().hex[:8]}"
    ecs.create_cluster(clusterName=cluster)
    ecs.register_task_definition(
        family="worker",
        containerDefinitions=[{"name": "worker", "image": "worker:latest", "memory": 128}],
    )
    created = ecs.create_service(
        cluster=cluster,
        serviceName="workers",
        taskDefinition="worker",
        desiredCount=desired_count,
        tags=[{"key": "team", "value": "ml"}],
    )
    return Service(cluster, "workers", created["service"]["serviceArn"], ecs)


@pytest.fixture
def service(ecs: Any) -> Service:
    return make_service(ecs)


def rule_for(queue_url: str, service: Service, active_size: int = 3) -> Dict[str, Any]:
    return {
        "queue_name": queue_url,
        "service_name": service.name,
        "cluster_name": service.cluster,
        "active_size": active_size,
    }


def records(caplog: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER_NAME]


# -- names, constants, validation ----------------------------------------------------


def test_service_state_members() -> None:
    assert [state.name for state in ServiceState] == ["STARTING", "ACTIVE", "STOPPING", "FAILING"]
    assert len({state.value for state in ServiceState}) == 4


def test_class_constants() -> None:
    assert Provisioner.QUEUE_NAME == "queue_name"
    assert Provisioner.SERVICE_NAME == "service_name"
    assert Provisioner.CLUSTER_NAME == "cluster_name"
    assert Provisioner.ACTIVE_SIZE == "active_size"
    assert Provisioner.QUEUE_DEPTH_ATTRIBUTES == {
        "pending_jobs": "ApproximateNumberOfMessages",
        "running_jobs": "ApproximateNumberOfMessagesNotVisible",
        "scheduled_jobs": "ApproximateNumberOfMessagesDelayed",
    }
    parameters = list(inspect.signature(Provisioner).parameters.values())
    assert [(p.name, p.default) for p in parameters[:2]] == [
        ("rules", inspect.Parameter.empty),
        ("notify", None),
    ]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[2:])


@pytest.mark.parametrize("rules", [5, None, object()])
def test_rules_must_be_iterable(rules: Any) -> None:
    with pytest.raises(TypeError) as caught:
        Provisioner(rules)
    assert str(caught.value) == f"Rules must be iterable: {rules}"


def test_each_rule_must_be_a_dict() -> None:
    good = {"queue_name": "q", "service_name": "s", "cluster_name": "c", "active_size": 1}
    with pytest.raises(TypeError) as caught:
        Provisioner([good, ["queue_name", "q"]])
    assert str(caught.value) == "Each rule must be a dictionary: ['queue_name', 'q']"


@pytest.mark.parametrize(
    "rule, missing",
    [
        ({}, "queue_name"),
        ({"service_name": "s", "cluster_name": "c", "active_size": 1}, "queue_name"),
        ({"queue_name": "q"}, "service_name"),
        ({"queue_name": "q", "cluster_name": "c", "active_size": 1}, "service_name"),
        ({"queue_name": "q", "service_name": "s"}, "cluster_name"),
        ({"queue_name": "q", "service_name": "s", "active_size": 1}, "cluster_name"),
        ({"queue_name": "q", "service_name": "s", "cluster_name": "c"}, "active_size"),
    ],
)
def test_missing_keys_in_order(rule: Dict[str, Any], missing: str) -> None:
    with pytest.raises(KeyError) as caught:
        Provisioner([rule])
    assert caught.value.args == (f"Rules must specify the {missing}",)


def test_constructor_makes_boto3_sqs_resource_and_ecs_client(env: Any) -> None:
    provisioner = Provisioner(iter([]))
    assert provisioner.sqs.meta.service_name == "sqs"
    assert type(provisioner.sqs).__name__ == "sqs.ServiceResource"
    assert provisioner.ecs.meta.service_model.service_name == "ecs"
    assert provisioner.sqs.meta.client.meta.endpoint_url == env.endpoint_url
    assert provisioner.ecs.meta.endpoint_url == env.endpoint_url
    assert provisioner.ecs.meta.region_name == env.region


# -- run() against the server ------------------------------------------------------


def test_run_scales_up_with_messages_waiting_and_down_when_empty(
    env: Any, sqs_queue: Any, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    provisioner = Provisioner([rule_for(sqs_queue.url, service, active_size=3)])
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)

    provisioner.run()
    assert service.desired_count() == 0

    sqs_queue.queue.send_message(MessageBody="work")
    provisioner.run()
    assert service.desired_count() == 3
    # The depths are logged.
    assert any(
        sqs_queue.url in record.getMessage() and "'pending_jobs': 1" in record.getMessage()
        for record in records(caplog)
    )

    for message in sqs_queue.queue.receive_messages(WaitTimeSeconds=0):
        message.delete()
    provisioner.run()
    assert service.desired_count() == 0


def test_in_flight_and_delayed_messages_count(env: Any, sqs_server: Any, service: Service) -> None:
    in_flight = sqs_server.make_queue()
    in_flight.queue.send_message(MessageBody="taken")
    assert len(in_flight.queue.receive_messages(VisibilityTimeout=60)) == 1
    provisioner = Provisioner([rule_for(in_flight.url, service, active_size=2)])
    provisioner.run()
    assert service.desired_count() == 2

    service.set_desired_count(0)
    delayed = sqs_server.make_queue()
    delayed.queue.send_message(MessageBody="later", DelaySeconds=60)
    Provisioner([rule_for(delayed.url, service, active_size=4)]).run()
    assert service.desired_count() == 4


@pytest.mark.parametrize(
    "state", [ServiceState.STARTING, ServiceState.STOPPING, ServiceState.FAILING]
)
def test_a_service_not_active_is_left_alone(
    env: Any, sqs_server: Any, ecs: Any, state: ServiceState
) -> None:
    class Gated(Provisioner):
        def service_state(self, rule: Dict[str, Any]) -> ServiceState:
            asked.append(rule)
            return state

    asked: List[Dict[str, Any]] = []
    busy_queue = sqs_server.make_queue()
    busy_queue.queue.send_message(MessageBody="work")
    empty_queue = sqs_server.make_queue()
    idle, running = make_service(ecs, 0), make_service(ecs, 2)
    rules = [rule_for(busy_queue.url, idle, 5), rule_for(empty_queue.url, running, 5)]

    Gated(rules).run()

    assert asked == rules
    assert idle.desired_count() == 0
    assert running.desired_count() == 2


def test_a_client_error_in_one_rule_is_logged_notified_and_the_others_run(
    env: Any, sqs_server: Any, sqs_queue: Any, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a rule for a missing cluster, one for a missing queue, and a good one
    sqs_queue.queue.send_message(MessageBody="work")
    no_cluster = dict(rule_for(sqs_queue.url, service), cluster_name="no-such-cluster")
    no_queue = rule_for(sqs_server.endpoint_url + "/123456789012/no-such-queue", service)
    good = rule_for(sqs_queue.url, service, active_size=2)
    notify = Recorder()
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)

    # When the provisioner runs
    Provisioner([no_cluster, no_queue, good], notify).run()

    # Then the good rule was applied
    assert service.desired_count() == 2
    # And each failure was notified with its rule as context, and logged with a traceback
    assert [context for _, context in notify.calls] == [no_cluster, no_queue]
    assert notify.calls[0][1] is no_cluster
    assert all(isinstance(error, ClientError) for error, _ in notify.calls)
    assert "ClusterNotFoundException" in str(notify.calls[0][0])
    failures = [record for record in records(caplog) if record.msg == RULE_FAILED]
    # (logging keeps a lone dict argument as the record's args)
    assert [record.args for record in failures] == [no_cluster, no_queue]
    assert all(record.levelno == logging.ERROR for record in failures)
    assert [record.exc_info[1] for record in failures if record.exc_info] == [
        error for error, _ in notify.calls
    ]


def test_a_client_error_without_notify_is_still_logged(
    env: Any, sqs_queue: Any, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    rule = dict(rule_for(sqs_queue.url, service), service_name="no-such-service")
    Provisioner([rule]).run()
    assert [record.args for record in records(caplog) if record.msg == RULE_FAILED] == [rule]


# -- descriptions, tags, state, notify -----------------------------------------------


def test_get_description_returns_the_service(env: Any, sqs_queue: Any, service: Service) -> None:
    rule = rule_for(sqs_queue.url, service)
    description = Provisioner([rule]).get_description(rule)
    assert description["serviceName"] == service.name
    assert description["serviceArn"] == service.arn
    assert description["tags"] == [{"key": "team", "value": "ml"}]


def test_get_description_is_empty_when_ecs_lists_failures(
    env: Any, sqs_queue: Any, service: Service
) -> None:
    rule = dict(rule_for(sqs_queue.url, service), service_name="no-such-service")
    assert Provisioner([rule]).get_description(rule) == {}


def test_get_tags(env: Any, service: Service) -> None:
    provisioner = Provisioner([])
    assert provisioner.get_tags(service.arn) == [{"key": "team", "value": "ml"}]
    with pytest.raises(ClientError):
        provisioner.get_tags(service.arn.replace(service.cluster, "no-such-cluster"))


def test_default_service_state_warns_and_answers_active(
    env: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rule = {"queue_name": "q", "service_name": "s", "cluster_name": "c", "active_size": 1}
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    assert Provisioner([rule]).service_state(rule) is ServiceState.ACTIVE
    assert [record.levelno for record in records(caplog)] == [logging.WARNING]


def test_notify_passes_context_or_an_empty_dict(env: Any) -> None:
    notify = Recorder()
    provisioner = Provisioner([], notify)
    error = RuntimeError("x")
    provisioner.notify(error)
    provisioner.notify(error, context=None)
    provisioner.notify(error, context={})
    provisioner.notify(error, context={"rule": 1})
    assert notify.calls == [(error, {}), (error, {}), (error, {}), (error, {"rule": 1})]
    assert Provisioner([]).notify(error, context={"rule": 1}) is None
