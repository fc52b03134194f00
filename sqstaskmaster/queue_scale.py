"""Provisioner: scale ECS services by the depth of their SQS queue.

Each rule names a queue URL, an ECS cluster and service, and the service's
``active_size``. On :meth:`Provisioner.run`, a service whose state is ACTIVE is
set to ``active_size`` tasks when its queue holds any message (visible, in
flight or delayed) and to 0 when it holds none. A rule with
``tasks_per_worker`` scales in proportion instead (:mod:`sqstaskmaster.ops.scale_rules`).
``dry_run=True`` logs each decision without calling ``update_service``.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Any, Dict, Iterable, List, Optional

import boto3
from botocore.exceptions import ClientError

from .errors import Notify
from .ops.scale_rules import Proportional, ScaleInCooldown, proportional_of

logger = logging.getLogger(__name__)


class ServiceState(enum.Enum):
    STARTING = 1
    ACTIVE = 2
    STOPPING = 3
    FAILING = 4


class Provisioner:
    """Apply scaling rules; override :meth:`service_state` to gate them."""

    QUEUE_NAME = "queue_name"
    SERVICE_NAME = "service_name"
    CLUSTER_NAME = "cluster_name"
    ACTIVE_SIZE = "active_size"

    QUEUE_DEPTH_ATTRIBUTES = {
        "pending_jobs": "ApproximateNumberOfMessages",
        "running_jobs": "ApproximateNumberOfMessagesNotVisible",
        "scheduled_jobs": "ApproximateNumberOfMessagesDelayed",
    }

    REQUIRED_KEYS = (QUEUE_NAME, SERVICE_NAME, CLUSTER_NAME, ACTIVE_SIZE)

    def __init__(
        self,
        rules: Iterable[Dict[str, Any]],
        notify: Optional[Notify] = None,
        *,
        session: Any = None,
        dry_run: bool = False,
        endpoint_url: Optional[str] = None,
    ) -> None:
        try:
            rule_list: List[Dict[str, Any]] = list(rules)
        except TypeError:
            raise TypeError(f"Rules must be iterable: {rules}") from None
        for rule in rule_list:
            if not isinstance(rule, dict):
                raise TypeError(f"Each rule must be a dictionary: {rule}")
            for key in self.REQUIRED_KEYS:
                if key not in rule:
                    raise KeyError(f"Rules must specify the {key}")
            proportional_of(rule)  # ValueError for a bad tasks_per_worker, min/max size, cooldown
        self.rules = rule_list
        self.dry_run = dry_run
        self._cooldown = ScaleInCooldown()
        self._notify = notify
        # ``endpoint_url`` (e.g. an emulator's) is used for both SQS and ECS.
        where = {} if endpoint_url is None else {"endpoint_url": endpoint_url}
        if session is None:
            # The module-level name: tests patch sqstaskmaster.queue_scale.boto3.
            self.sqs = boto3.resource("sqs", **where)
            self.ecs = boto3.client("ecs", **where)
        else:
            self.sqs = session.resource("sqs", **where)
            self.ecs = session.client("ecs", **where)

    def queue_depths(self, rule: Dict[str, Any]) -> Dict[str, int]:
        """The three depth counts of the rule's queue, keyed as QUEUE_DEPTH_ATTRIBUTES."""
        queue = self.sqs.Queue(rule[self.QUEUE_NAME])
        queue.load()
        return {
            name: int(queue.attributes.get(attribute, 0))
            for name, attribute in self.QUEUE_DEPTH_ATTRIBUTES.items()
        }

    def run(self) -> None:
        """Apply every rule once; a ClientError in one rule does not stop the others."""
        for rule in self.rules:
            try:
                depths = self.queue_depths(rule)
                total = sum(depths.values())
                logger.info(
                    "queue %s depths %s (total %d) for service %s in cluster %s",
                    rule[self.QUEUE_NAME],
                    depths,
                    total,
                    rule[self.SERVICE_NAME],
                    rule[self.CLUSTER_NAME],
                )
                state = self.service_state(rule)
                if state is not ServiceState.ACTIVE:
                    logger.info(
                        "service %s is %s; leaving it alone", rule[self.SERVICE_NAME], state
                    )
                    continue
                plan = proportional_of(rule)
                if plan is not None:
                    self._scale_proportionally(rule, depths, plan)
                    continue
                desired = rule[self.ACTIVE_SIZE] if total > 0 else 0
                if self.dry_run:
                    logger.info("dry run: would set rule %s desired count to %d", rule, desired)
                    continue
                self.ecs.update_service(
                    cluster=rule[self.CLUSTER_NAME],
                    service=rule[self.SERVICE_NAME],
                    desiredCount=desired,
                )
                logger.info("service %s desired count set to %d", rule[self.SERVICE_NAME], desired)
            except ClientError as error:
                logger.exception("Failed to update resources for rule %s", rule)
                self.notify(error, context=rule)

    def _scale_proportionally(
        self, rule: Dict[str, Any], depths: Dict[str, int], plan: Proportional
    ) -> None:
        """Set the desired count in proportion to the depths, scaling in after the cooldown."""
        description = self.get_description(rule)
        if "desiredCount" not in description:
            error = LookupError(
                f"service {rule[self.SERVICE_NAME]!r} not found in cluster "
                f"{rule[self.CLUSTER_NAME]!r}; check the rule's service_name and cluster_name"
            )
            logger.error("Failed to update resources for rule %s: %s", rule, error)
            self.notify(error, context=rule)
            return
        current = int(description["desiredCount"])
        target = plan.target(sum(depths.values()))
        key = (rule[self.CLUSTER_NAME], rule[self.SERVICE_NAME])
        desired, why = self._cooldown.decide(
            key, current, target, plan.scale_in_cooldown_s, time.monotonic()
        )
        logger.info(
            "%srule %s: visible %d, in flight %d, delayed %d; desired count %d -> %d (%s)",
            "dry run: " if self.dry_run and desired != current else "",
            rule,
            depths["pending_jobs"],
            depths["running_jobs"],
            depths["scheduled_jobs"],
            current,
            desired,
            why,
        )
        if desired != current and not self.dry_run:
            self.ecs.update_service(
                cluster=rule[self.CLUSTER_NAME],
                service=rule[self.SERVICE_NAME],
                desiredCount=desired,
            )

    def get_description(self, rule: Dict[str, Any]) -> Dict[str, Any]:
        """The ECS description of the rule's service (with tags), or {} if ECS lists a failure."""
        response = self.ecs.describe_services(
            cluster=rule[self.CLUSTER_NAME], services=[rule[self.SERVICE_NAME]], include=["TAGS"]
        )
        if response.get("failures"):
            logger.warning("describe_services failed for rule %s: %s", rule, response["failures"])
            return {}
        services = response.get("services") or [{}]
        return services[0]

    def get_tags(self, arn: str) -> List[Dict[str, str]]:
        """The tags of an ECS resource; errors propagate."""
        return self.ecs.list_tags_for_resource(resourceArn=arn)["tags"]

    def service_state(self, rule: Dict[str, Any]) -> ServiceState:
        """Override to say whether the rule's service may be scaled; the default is ACTIVE."""
        logger.warning(
            "Provisioner.service_state is not overridden; treating service %s as ACTIVE",
            rule.get(self.SERVICE_NAME),
        )
        return ServiceState.ACTIVE

    def notify(self, exception: BaseException, context: Optional[Dict[str, Any]] = None) -> None:
        """Pass an error to the notify callable, if one was given."""
        if self._notify is not None:
            self._notify(exception, context=context or {})
