"""``status-table create``, ``tasks``, ``task`` and ``cancel``: the task status table's commands.

They read and mark the DynamoDB table workers write with ``--status-table``
(:class:`~sqstaskmaster.ops.status_table.StatusTable`); the text they print
comes from :mod:`sqstaskmaster.cli.status_view`. ``--endpoint-url`` is
DynamoDB's (by default boto3's: ``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from typing import Any, Callable, List, Optional, TextIO

from ..errors import StatusTableExistsError, StatusTableMissingError
from ..ops.status_items import DEFAULT_TTL_DAYS, STATE_INDEX, STATES, TTL_ATTRIBUTE
from ..ops.status_table import StatusTable, TaskStatus
from ..sqs.facts import error_code, missing_configuration
from ..worker.exitcodes import RET_CONNECT, RET_ERROR, RET_OK, RET_USAGE
from .stats_watch import check_interval
from .status_view import cancel_report, details, json_lines, table

logger = logging.getLogger(__name__)

_CLEAR = "\x1b[H\x1b[2J"
#: DynamoDB error codes that are the caller's to fix: sending the request again fails alike.
_CALLER_FAULT_CODES = frozenset(
    {"ValidationException", "AccessDeniedException", "UnrecognizedClientException"}
)
WORKER_ACTIONS = (
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:BatchWriteItem",
)


# -- the parser ------------------------------------------------------------------------


def _connection(parser: argparse.ArgumentParser, table_option: bool = True) -> None:
    if table_option:
        parser.add_argument(
            "--status-table", required=True, metavar="NAME", help="the DynamoDB status table"
        )
    parser.add_argument(
        "--endpoint-url",
        help="DynamoDB endpoint (default: boto3's, e.g. AWS_ENDPOINT_URL_DYNAMODB)",
    )
    parser.add_argument("--region", help="AWS region (default: boto3's)")


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--limit takes a whole number >= 1, got {text!r}")
    return value


def add_status_commands(commands: Any) -> List[argparse.ArgumentParser]:
    """Add ``status-table``, ``tasks``, ``task`` and ``cancel`` to ``commands`` (the
    subparsers); returns their parsers."""
    status_table = commands.add_parser("status-table", help="create a task status table")
    actions = status_table.add_subparsers(dest="status_table_command", metavar="ACTION")
    actions.required = True
    create = actions.add_parser("create", help="create the DynamoDB table workers write")
    create.add_argument("name", metavar="NAME")
    _connection(create, table_option=False)

    tasks = commands.add_parser("tasks", help="list tasks from a status table")
    _connection(tasks)
    tasks.add_argument("--state", choices=STATES, help="only tasks in this state")
    tasks.add_argument("--task", metavar="NAME", help="only tasks of this name")
    tasks.add_argument(
        "--limit", type=_limit, default=50, metavar="N", help="at most N, newest first (50)"
    )
    tasks.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=check_interval,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )
    tasks.add_argument(
        "--json", action="store_true", help="one JSON array (with --watch: one per refresh)"
    )

    task = commands.add_parser("task", help="show one task's status in full")
    task.add_argument("message_id", metavar="ID", help="the task's SQS message id")
    _connection(task)
    task.add_argument("--json", action="store_true", help="print one JSON object")

    cancel = commands.add_parser("cancel", help="cancel a task (running or not received yet)")
    cancel.add_argument("message_id", metavar="ID", help="the task's SQS message id")
    _connection(cancel)
    return [status_table, create, tasks, task, cancel]


# -- errors ----------------------------------------------------------------------------


def _table(args: argparse.Namespace, name: str) -> StatusTable:
    return StatusTable(name, endpoint_url=args.endpoint_url, region_name=args.region)


def dynamodb_failure(doing: str, error: BaseException) -> int:
    """Log what went wrong ``doing`` something with the status table, in one line; its exit
    code: RET_USAGE for what the caller must change, RET_CONNECT for a missing table or
    an unreachable DynamoDB, RET_ERROR for a table that already exists."""
    missing = missing_configuration(error)
    if isinstance(error, StatusTableExistsError):
        logger.error("cannot %s: %s", doing, error)
        return RET_ERROR
    if isinstance(error, StatusTableMissingError):
        logger.error("cannot %s: %s", doing, error)
        return RET_CONNECT
    if missing == "region":
        logger.error(
            "cannot %s: no AWS region is configured: pass --region REGION or set "
            "AWS_DEFAULT_REGION.",
            doing,
        )
        return RET_USAGE
    if missing == "credentials":
        logger.error(
            "cannot %s: no AWS credentials were found: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or give the machine a role.",
            doing,
        )
        return RET_USAGE
    if error_code(error) in _CALLER_FAULT_CODES:
        logger.error("cannot %s: %s", doing, error)
        return RET_USAGE
    logger.error("cannot %s: %s", doing, error)
    return RET_CONNECT


def _errors() -> tuple:
    from ..sqs.queue import SQS_ERRORS  # botocore's BotoCoreError and ClientError

    return (StatusTableMissingError, StatusTableExistsError, *SQS_ERRORS)


# -- the commands ----------------------------------------------------------------------


def cmd_status_table(args: argparse.Namespace) -> int:
    """``status-table create NAME``: create the table; print what it made and the IAM
    actions a worker needs."""
    try:
        status_table = _table(args, args.name)
        status_table.create()
    except _errors() as error:
        return dynamodb_failure(f"create status table {args.name}", error)
    except ValueError as error:  # a name DynamoDB refuses
        logger.error("%s", error)
        return RET_USAGE
    print(f"Created status table {status_table.name} in region {status_table.region}:")
    print("  billing      on demand (PAY_PER_REQUEST)")
    print("  key          message_id (the SQS message id)")
    print(f"  index        {STATE_INDEX} (state, newest updated_at first)")
    print(
        f"  TTL          on {TTL_ATTRIBUTE}: items expire {DEFAULT_TTL_DAYS} days after "
        "their last write"
    )
    print(f"Workers write it with --status-table {status_table.name}; they need, on its ARN:")
    print("  " + ", ".join(WORKER_ACTIONS))
    return RET_OK


def cmd_tasks(args: argparse.Namespace) -> int:
    """``tasks --status-table NAME``: the tasks table (``--watch``: redrawn until Ctrl-C)."""
    try:
        status_table = _table(args, args.status_table)

        def read() -> List[TaskStatus]:
            return status_table.list(state=args.state, task=args.task, limit=args.limit)

        statuses = read()
    except _errors() as error:
        return dynamodb_failure(f"read status table {args.status_table}", error)
    except ValueError as error:
        logger.error("%s", error)
        return RET_USAGE
    out = sys.stdout
    if args.watch is None:
        out.write(_render(statuses, args.json, out))
        return RET_OK
    try:
        watch(read, args.watch, as_json=args.json, out=out, first=statuses)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends
    return RET_OK


def _render(statuses: List[TaskStatus], as_json: bool, out: TextIO) -> str:
    if as_json:
        return json_lines(statuses)
    if not out.isatty():
        return table(statuses)
    return table(statuses, width=shutil.get_terminal_size((120, 24)).columns, colour=True)


def watch(
    read: Callable[[], List[TaskStatus]],
    every_s: float,
    *,
    as_json: bool,
    out: TextIO,
    first: Optional[List[TaskStatus]] = None,
) -> None:
    """Show ``read()``'s tasks every ``every_s`` seconds until Ctrl-C: redrawn in place on a
    terminal, else each refresh after a time line (``--json``: one array per line).

    A failed read is logged and tried again at the next refresh.
    """
    tty = out.isatty() and not as_json
    statuses = first
    while True:
        started = time.monotonic()
        if statuses is None:
            try:
                statuses = read()
            except _errors() as error:
                logger.warning(
                    "tasks: cannot read the status table (%s); retrying in %g s", error, every_s
                )
        if statuses is not None:
            text = _render(statuses, as_json, out)
            if tty:
                stamp = time.strftime("%H:%M:%S")
                text = f"{_CLEAR}{text}\n{stamp}, every {every_s:g} s; Ctrl-C to stop\n"
            elif not as_json:
                text = f"-- {time.strftime('%Y-%m-%dT%H:%M:%S')}, {len(statuses)} tasks\n{text}"
            out.write(text)
            out.flush()
        statuses = None
        time.sleep(max(0.0, every_s - (time.monotonic() - started)))


def cmd_task(args: argparse.Namespace) -> int:
    """``task ID --status-table NAME``: one task in full (following its continuations)."""
    try:
        status = _table(args, args.status_table).get(args.message_id, follow=True)
    except _errors() as error:
        return dynamodb_failure(f"read status table {args.status_table}", error)
    except ValueError as error:
        logger.error("%s", error)
        return RET_USAGE
    if status is None:
        logger.error(
            "no item for message %s in table %s: no worker has written it (not received "
            "yet, or the worker runs without --status-table), or it expired",
            args.message_id,
            args.status_table,
        )
        return RET_ERROR
    if args.json:
        print(json.dumps(status.to_json()))
    else:
        sys.stdout.write(details(status))
    return RET_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    """``cancel ID --status-table NAME``: mark it cancelled; say what happens next."""
    try:
        status = _table(args, args.status_table).cancel(args.message_id)
    except _errors() as error:
        return dynamodb_failure(f"cancel message {args.message_id}", error)
    except ValueError as error:
        logger.error("%s", error)
        return RET_USAGE
    sys.stdout.write(cancel_report(status))
    return RET_OK
