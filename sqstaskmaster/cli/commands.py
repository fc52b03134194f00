"""The ``sqstaskmaster`` command (also ``python -m sqstaskmaster``).

::

    sqstaskmaster demo                                   # try it: embedded server, no AWS
    sqstaskmaster worker app:worker --queue-url URL      # run tasks
    sqstaskmaster submit URL TASK --kwargs '{"x": 1}'    # send one task
    sqstaskmaster stats URL [--watch [SECONDS]]          # queue depths (and its DLQ's)
    sqstaskmaster purge URL [--yes]                      # empty a queue
    sqstaskmaster provision RULES.json [--dry-run]       # scale ECS services by queue depth

Exit codes are named below (``RET_*``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any, List, Optional

from ..ops.logformat import FORMATS as LOG_FORMATS
from ..ops.logformat import TEXT_FORMAT
from ..sqs.facts import make_session, queue_stats, region_from_url  # noqa: F401 - re-exported
from ..worker.exitcodes import (  # noqa: F401 - re-exported: callers import them from cli
    RET_CONNECT,
    RET_ERROR,
    RET_IMPORT,
    RET_INTERRUPTED,
    RET_KILLED,
    RET_OK,
    RET_USAGE,
)

logger = logging.getLogger(__name__)

LOG_FORMAT = TEXT_FORMAT


def load_app(spec: str) -> Any:
    """Import ``module:attribute`` (attribute may be dotted) from the current directory."""
    from ..errors import AppImportError

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise AppImportError(spec, "expected the form module:attribute")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise AppImportError(spec, f"import of {module_name!r} failed ({error})") from error
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise AppImportError(spec, f"{module_name!r} has no attribute {attribute!r}")
    return value


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint-url", help="SQS endpoint (default: boto3's, e.g. AWS_ENDPOINT_URL)"
    )
    parser.add_argument("--region", help="AWS region (default: boto3's, else the queue URL's)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from ..cli.stats_watch import check_interval
    from ..worker.retry import RetryPolicy
    from ..worker.settings import DEFAULT_POLL_WAIT_S, DEFAULT_SHUTDOWN_GRACE_S

    defaults = RetryPolicy()
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

    worker = commands.add_parser("worker", help="run a worker on a queue")
    worker.add_argument("app", metavar="APP", help="module:attribute, a Worker or a dict")
    worker.add_argument("--queue-url", help="the queue to consume (default: the Worker's)")
    _add_connection(worker)
    worker.add_argument(
        "--processes", "-p", help="worker processes, a number or 'auto' (default 1)"
    )
    worker.add_argument("--sqs-timeout", type=int, help="visibility per heartbeat, s (30)")
    worker.add_argument("--alarm-timeout", type=int, help="heartbeat period, s (sqs/3)")
    worker.add_argument("--hard-timeout", type=int, help="default hard timeout, s (14400)")
    worker.add_argument(
        "--shutdown-grace",
        type=float,
        help=f"seconds a task may go on after SIGTERM (default {DEFAULT_SHUTDOWN_GRACE_S:g})",
    )
    worker.add_argument(
        "--poll-wait", type=int, help=f"long-poll slice, 0-20 s (default {DEFAULT_POLL_WAIT_S})"
    )
    mode = worker.add_mutually_exclusive_group()
    mode.add_argument(
        "--signal-mode",
        dest="isolate",
        action="store_false",
        default=None,
        help="run tasks in the worker process under SIGALRM, not in a forked child",
    )
    mode.add_argument("--isolate", dest="isolate", action="store_true", default=None)
    worker.add_argument(
        "--max-tasks-per-child",
        type=int,
        help="isolated tasks one forked child runs in a row (default 1: a fresh fork each)",
    )
    worker.add_argument(
        "--ecs-protection",
        choices=["auto", "on", "off"],
        help="ECS task scale-in protection while a task runs (default auto: on under ECS)",
    )
    worker.add_argument(
        "--prefetch", type=int, help="messages one poll receives, 1-10 (default 1; README)"
    )
    worker.add_argument("--burst-tasks", type=int, help="stop after this many tasks")
    worker.add_argument("--burst-idle", type=float, help="stop after this many idle seconds")
    worker.add_argument(
        "--retry-first", type=float, help=f"first retry delay, s (default {defaults.first_s:g})"
    )
    worker.add_argument(
        "--retry-factor", type=float, help=f"retry delay factor (default {defaults.factor:g})"
    )
    worker.add_argument(
        "--retry-max", type=float, help=f"longest retry delay, s (default {defaults.max_s:g})"
    )
    worker.add_argument("--retry-jitter", choices=["equal", "full", "none"], help="(default equal)")
    worker.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on this port (needs [metrics])"
    )
    worker.add_argument("--metrics-host", help="address of the metrics endpoint (127.0.0.1)")

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

    from ..cli.provision import add_arguments

    provision = commands.add_parser("provision", help="scale ECS services by queue depth")
    add_arguments(provision)

    purge = commands.add_parser("purge", help="delete every message of a queue")
    purge.add_argument("url", metavar="URL")
    purge.add_argument("--yes", "-y", action="store_true", help="do not ask")
    _add_connection(purge)
    for command in (demo, worker, submit, stats, provision, purge):
        # Also accepted after the subcommand; SUPPRESS keeps the main parser's default.
        command.add_argument(
            "--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS, help=log_format_help
        )
    return parser


def _task_manager(args: argparse.Namespace, url: str) -> Any:
    from ..task_manager import TaskManager

    session = make_session(args.region, url)
    return TaskManager(url, sqs=session.resource("sqs", endpoint_url=args.endpoint_url))


def _connection_errors() -> tuple:
    from ..sqs.queue import SQS_ERRORS

    return SQS_ERRORS


def sqs_failure(doing: str, error: BaseException) -> int:
    """Log an SQS or botocore error met while ``doing`` something; returns its exit code.

    The caller's fault (an invalid request, no region, no credentials) is
    RET_USAGE with what to change; a purge already in progress is RET_ERROR
    with SQS's text; anything else means SQS or the queue cannot be reached.
    """
    from ..sqs.facts import PURGE_IN_PROGRESS_CODES, caller_fault_advice, error_code

    advice = caller_fault_advice(error)
    if advice is not None:
        logger.error("cannot %s: %s. %s", doing, str(error).rstrip("."), advice)
        return RET_USAGE
    if error_code(error) in PURGE_IN_PROGRESS_CODES:
        logger.error(
            "cannot %s: %s. SQS allows one purge per queue every 60 seconds; try again later.",
            doing,
            str(error).rstrip("."),
        )
        return RET_ERROR
    logger.error("cannot %s: %s", doing, error)
    return RET_CONNECT


def cmd_worker(args: argparse.Namespace) -> int:
    """``worker APP``: load the app, apply the options, run (supervised when -p > 1)."""
    from ..errors import AppImportError, PollFailedError
    from ..worker.loop import Worker
    from ..worker.retry import RetryPolicy

    try:
        app = load_app(args.app)
    except AppImportError as error:
        logger.error("%s", error)
        return RET_IMPORT
    if isinstance(app, Worker):
        worker = app
    elif isinstance(app, dict):
        worker = Worker(app)
    else:
        logger.error("%s", AppImportError(args.app, f"it is a {type(app).__name__}"))
        return RET_IMPORT
    options = {
        "sqs_timeout": args.sqs_timeout,
        "alarm_timeout": args.alarm_timeout,
        "hard_timeout": args.hard_timeout,
        "shutdown_grace_s": args.shutdown_grace,
        "poll_wait_s": args.poll_wait,
        "isolate": args.isolate,
        "max_tasks_per_child": args.max_tasks_per_child,
        "burst_tasks": args.burst_tasks,
        "burst_idle_s": args.burst_idle,
        "processes": args.processes,
        "ecs_protection": args.ecs_protection,
        "queue_url": args.queue_url,
        "endpoint_url": args.endpoint_url,
        "metrics_port": args.metrics_port,
        "metrics_host": args.metrics_host,
        "prefetch": args.prefetch,
    }
    retry = {
        "first_s": args.retry_first,
        "factor": args.retry_factor,
        "max_s": args.retry_max,
        "jitter": args.retry_jitter,
    }
    try:
        # One WorkerSettings, checked once with every option in.
        options["retry"] = RetryPolicy(
            **{
                field: (value if value is not None else getattr(worker.retry, field))
                for field, value in retry.items()
            }
        )
        worker = worker.replace(**options)
        if not worker.queue_url:
            raise ValueError("no queue: pass --queue-url URL (or set queue_url on the Worker)")
        if not worker.registry:
            raise ValueError(f"app {args.app!r} registers no task")
        worker.check()
        from ..worker.supervisor import resolve_processes

        resolve_processes(worker.processes)
        if worker.metrics_port is not None:
            from ..ops.metrics import require

            if not 0 <= worker.metrics_port <= 65535:
                raise ValueError(f"--metrics-port must be 0-65535, got {worker.metrics_port!r}")
            require()
    except (ValueError, ImportError) as error:
        logger.error("worker settings: %s", error)
        return RET_USAGE
    if worker.session is None:
        worker.session = make_session(args.region, worker.queue_url)
    try:
        # Fail fast (before forking) when the queue cannot be reached.
        sqs = worker.session.resource("sqs", endpoint_url=worker.endpoint_url)
        sqs.meta.client.get_queue_attributes(QueueUrl=worker.queue_url, AttributeNames=["QueueArn"])
    except _connection_errors() as error:
        return sqs_failure(f"reach queue {worker.queue_url}", error)
    try:
        return worker.run()
    except PollFailedError as error:
        logger.error("%s", error)
        return RET_CONNECT


def cmd_submit(args: argparse.Namespace) -> int:
    """``submit URL TASK``: send one task; prints its message id.

    Checked as ``submit_with`` checks (task name, JSON a worker can decode,
    the queue's MaximumMessageSize) before anything is sent.
    """
    try:
        kwargs = json.loads(args.kwargs)
    except (ValueError, RecursionError) as error:
        logger.error("--kwargs is not JSON (%s): %r", error, args.kwargs[:200])
        return RET_USAGE
    if not isinstance(kwargs, dict):
        logger.error("--kwargs must be a JSON object, got %r", args.kwargs)
        return RET_USAGE
    try:
        response = _task_manager(args, args.url).submit_with(args.task, kwargs)
    except ValueError as error:  # InvalidTaskNameError, EncodeError, MessageTooLargeError
        logger.error("task %r not sent to %s: %s", args.task, args.url, error)
        return RET_USAGE
    except _connection_errors() as error:
        return sqs_failure(f"send to {args.url}", error)
    print(response.get("MessageId", ""))
    return RET_OK


def cmd_stats(args: argparse.Namespace) -> int:
    """``stats URL``: visible, in flight, delayed, and the dead-letter depth."""
    session = make_session(args.region, args.url)
    try:
        sqs = session.resource("sqs", endpoint_url=args.endpoint_url)
        stats = queue_stats(sqs, args.url)
    except _connection_errors() as error:
        return sqs_failure(f"read {args.url}", error)
    if args.watch is not None:
        from ..cli.stats_watch import watch

        try:
            watch(lambda: queue_stats(sqs, args.url), args.watch, as_json=args.json)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a watch ends
        return RET_OK
    if args.json:
        print(json.dumps(stats))
        return RET_OK
    print(f"queue        {stats['url']}")
    print(f"visible      {stats['visible']}")
    print(f"in flight    {stats['in_flight']}")
    print(f"delayed      {stats['delayed']}")
    if "dead_letter" in stats:
        print(f"dead-letter  {stats['dead_letter']}  ({stats['dead_letter_url']}, ", end="")
        print(f"after {stats['max_receive_count']} receives)")
    else:
        print("dead-letter  none (no redrive policy)")
    return RET_OK


def cmd_purge(args: argparse.Namespace) -> int:
    """``purge URL``: delete every message, after asking unless ``--yes``."""
    if not args.yes:
        if not sys.stdin.isatty():
            logger.error("refusing to purge %s without --yes (no terminal to ask)", args.url)
            return RET_USAGE
        answer = input(f"Delete every message in {args.url}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Not purged.")
            return RET_OK
    try:
        _task_manager(args, args.url).purge()
    except _connection_errors() as error:
        return sqs_failure(f"purge {args.url}", error)
    print(f"Purged {args.url}")
    return RET_OK


def cmd_provision(args: argparse.Namespace) -> int:
    """``provision RULES.json``: run the Provisioner every ``--interval`` s until SIGTERM/SIGINT."""
    from ..cli.provision import run_command

    try:
        run_command(args, make_session(args.region))
    except ValueError as error:  # a bad rules file or --interval
        logger.error("%s", error)
        return RET_USAGE
    except _connection_errors() as error:
        # No region or credentials: RET_USAGE, saying what to set; else RET_CONNECT.
        return sqs_failure("reach SQS or ECS to provision", error)
    return RET_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: see :mod:`sqstaskmaster.cli.demo`."""
    from ..cli.demo import run_demo
    from ..testing import ServerStartError

    try:
        return run_demo(
            queue_url=args.queue_url,
            endpoint_url=args.endpoint_url,
            region=args.region,
            as_json=args.json,
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
