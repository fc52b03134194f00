"""The ``sqstaskmaster`` command (also ``python -m sqstaskmaster``): its parser and dispatch.

::

    sqstaskmaster demo                                   # try it: embedded server, no AWS
    sqstaskmaster worker app:worker --queue-url URL      # run tasks
    sqstaskmaster submit URL TASK --kwargs '{"x": 1}'    # send one task
    sqstaskmaster stats URL [--watch [SECONDS]]          # queue depths (and its DLQ's)
    sqstaskmaster purge URL [--yes]                      # empty a queue
    sqstaskmaster provision RULES.json [--dry-run]       # scale ECS services by queue depth
    sqstaskmaster status-table create NAME               # the table workers write task status to
    sqstaskmaster tasks --status-table NAME [--watch]    # tasks: state, progress, heartbeat
    sqstaskmaster task ID --status-table NAME            # one task in full: result or error
    sqstaskmaster cancel ID --status-table NAME          # cancel a task (running or waiting)

The worker command is :mod:`sqstaskmaster.cli.worker_command` (its options:
:mod:`sqstaskmaster.cli.worker_options`), the others that reach SQS
:mod:`sqstaskmaster.cli.queue_commands`, those of the task status table
:mod:`sqstaskmaster.cli.status_commands`. Exit codes:
:mod:`sqstaskmaster.worker.exitcodes`.
"""

from __future__ import annotations

import argparse
import logging
from typing import List, Optional

from ..ops.logformat import FORMATS as LOG_FORMATS
from ..worker.exitcodes import RET_CONNECT, RET_ERROR, RET_INTERRUPTED, RET_OK
from .queue_commands import cmd_provision, cmd_purge, cmd_stats, cmd_submit
from .status_commands import add_status_commands, cmd_cancel, cmd_status_table, cmd_task, cmd_tasks
from .worker_command import cmd_worker
from .worker_options import add_endpoint_option, add_setting_options

logger = logging.getLogger(__name__)


def _add_region(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", help="AWS region (default: boto3's, else the queue URL's)")


def _add_connection(parser: argparse.ArgumentParser) -> None:
    add_endpoint_option(parser)
    _add_region(parser)


def _demo_continue_after(text: str) -> float:
    """``demo --continue-after``: seconds, at least the shortest run a resumable task is given."""
    from ..worker.budget import MIN_RUN_S

    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    if not MIN_RUN_S <= seconds <= 60:
        raise argparse.ArgumentTypeError(
            f"{text} s: give {MIN_RUN_S:g} to 60 seconds (the worker starts no resumable "
            f"task for a run shorter than {MIN_RUN_S:g} s)"
        )
    return seconds


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from .provision import add_arguments
    from .stats_watch import check_interval

    parser = argparse.ArgumentParser(
        prog="sqstaskmaster",
        description="Run uncooperative, hours-long Python tasks on workers fed by Amazon SQS.",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )
    log_format_help = "text (default) or json, one object per line"
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text", help=log_format_help)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser("demo", help="see a worker keep its promises (no AWS needed)")
    demo.add_argument("--queue-url", help="use this queue instead of an embedded server")
    _add_connection(demo)
    demo.add_argument(
        "--json", action="store_true", help="print the summary as JSON on the last line"
    )
    demo.add_argument(
        "--continue-after",
        type=_demo_continue_after,
        metavar="SECONDS",
        help="seconds the demo's resumable task runs on one receive before it goes on in a "
        "new message (default 2; at least 1)",
    )

    worker = commands.add_parser("worker", help="run a worker on a queue")
    worker.add_argument("app", metavar="APP", help="module:attribute, a Worker or a dict")
    add_setting_options(worker)
    _add_region(worker)

    submit = commands.add_parser("submit", help="send one task")
    submit.add_argument("url", metavar="URL")
    submit.add_argument("task", metavar="TASK")
    submit.add_argument("--kwargs", default="{}", help="the task's kwargs, a JSON object")
    _add_connection(submit)

    stats = commands.add_parser("stats", help="show a queue's depths")
    stats.add_argument("url", metavar="URL")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=check_interval,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2), with each figure's change per minute",
    )
    _add_connection(stats)

    provision = commands.add_parser("provision", help="scale ECS services by queue depth")
    add_arguments(provision)

    purge = commands.add_parser("purge", help="delete every message of a queue")
    purge.add_argument("url", metavar="URL")
    purge.add_argument("--yes", "-y", action="store_true", help="do not ask")
    _add_connection(purge)
    status = add_status_commands(commands)
    for command in (demo, worker, submit, stats, provision, purge, *status):
        # Also accepted after the subcommand; SUPPRESS keeps the main parser's default.
        command.add_argument(
            "--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS, help=log_format_help
        )
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: see :mod:`sqstaskmaster.cli.demo`."""
    from ..testing import ServerStartError
    from .demo import run_demo

    try:
        return run_demo(
            queue_url=args.queue_url,
            endpoint_url=args.endpoint_url,
            region=args.region,
            as_json=args.json,
            **({} if args.continue_after is None else {"continue_after_s": args.continue_after}),
        )
    except ServerStartError as error:
        logger.error("demo: %s", error)
        return RET_CONNECT


COMMANDS = {
    "demo": cmd_demo,
    "worker": cmd_worker,
    "submit": cmd_submit,
    "stats": cmd_stats,
    "purge": cmd_purge,
    "provision": cmd_provision,
    "status-table": cmd_status_table,
    "tasks": cmd_tasks,
    "task": cmd_task,
    "cancel": cmd_cancel,
}


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        parser.error(f"--log-level: unknown level {args.log_level!r}")
    if args.command == "worker":
        from ..worker.shutdown import record_early_signals

        record_early_signals()
    from ..ops.logformat import configure

    configure(level, args.log_format)
    if level > logging.DEBUG:
        # boto's INFO lines ("Found credentials in environment variables") are noise here.
        logging.getLogger("botocore").setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        # A worker treats Ctrl-C as a stop (exit 0); other commands were cut short.
        return RET_OK if args.command == "worker" else RET_INTERRUPTED
    except Exception:
        logger.exception("sqstaskmaster %s failed", args.command)
        return RET_ERROR
