"""Errors met running a worker (its queue, its app, its ECS task protection, the EC2 metadata)
and reading its task status table."""

from __future__ import annotations

from typing import Optional

from .root import SQSTaskMasterError, error_type


@error_type(
    "Gave up on queue {queue_url} after {failures} failed polls in a row, the last with "
    "{error.__class__.__name__}: {error}. Check that the queue exists, the endpoint and region "
    "are right and the network reaches SQS; a supervisor restarts the worker."
)
class PollFailedError(SQSTaskMasterError):
    """The worker gave up after its polls of the queue failed too many times in a row."""

    queue_url: Optional[str]
    failures: int
    error: BaseException


@error_type(
    "Cannot load worker app {spec!r}: {reason}. APP is 'module:attribute', naming a Worker or "
    "a dict of task name -> MessageHandler subclass or function, importable from the current "
    "directory."
)
class AppImportError(SQSTaskMasterError, ImportError):
    """The worker's APP (module:attribute) cannot be imported or is not a worker or a dict."""

    spec: str
    reason: str


@error_type(
    "ECS task scale-in protection {action} failed ({kind}): {detail}. Tasks go on running, but "
    "ECS may stop this container while one runs. Check that ECS_AGENT_URI is the agent's and "
    "that the task role allows ecs:UpdateTaskProtection."
)
class TaskProtectionError(SQSTaskMasterError):
    """The ECS agent did not apply a scale-in protection change (refused, failed or timed out)."""

    action: str
    kind: str
    detail: str


@error_type(
    "EC2 instance metadata service at {endpoint}: {request} failed ({detail}). Spot "
    "interruption notices go unseen while it fails. Check that the instance allows IMDSv2 "
    "(in a container, a PUT response hop limit of 2), or turn them off: --spot-notice off."
)
class MetadataServiceError(SQSTaskMasterError):
    """The EC2 instance metadata service did not answer a request (unreachable, timeout, status)."""

    endpoint: str
    request: str
    detail: str


@error_type(
    "No status table {table!r} in region {region}: create it with "
    "`sqstaskmaster status-table create {table}` (check the region and the endpoint too)."
)
class StatusTableMissingError(SQSTaskMasterError, LookupError):
    """The task status table (DynamoDB) does not exist where it was looked for."""

    table: str
    region: Optional[str]


@error_type(
    "Status table {table!r} already exists in region {region} (or is being created or "
    "deleted): use it as it is, or create one under another name."
)
class StatusTableExistsError(SQSTaskMasterError, ValueError):
    """``create`` found a table of that name already there."""

    table: str
    region: Optional[str]


@error_type(
    "Task of message {message_id} has not ended after {timeout_s:g} s: its state is still "
    "{last_state}. Wait longer, or cancel it."
)
class StatusWaitTimeoutError(SQSTaskMasterError, TimeoutError):
    """``StatusTable.wait`` gave up: the task did not end within its timeout."""

    message_id: str
    timeout_s: float
    last_state: str
