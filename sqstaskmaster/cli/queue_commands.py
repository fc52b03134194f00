"""``submit``, ``stats``, ``purge`` and ``provision``: the commands that call SQS (or ECS).

:func:`sqs_failure` turns what SQS or botocore raised into a log line and an
exit code, for these commands and the worker's start-up alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..sqs.facts import make_session
from ..sqs.queue import BotoQueue, queue_stats
from ..worker.exitcodes import RET_CONNECT, RET_ERROR, RET_OK, RET_USAGE

logger = logging.getLogger(__name__)


def _task_manager(args: argparse.Namespace, url: str) -> Any:
    from ..task_manager import TaskManager

    session = make_session(args.region, url)
    return TaskManager(url, sqs=session.resource("sqs", endpoint_url=args.endpoint_url))


def connection_errors() -> tuple:
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
    except connection_errors() as error:
        return sqs_failure(f"send to {args.url}", error)
    print(response.get("MessageId", ""))
    return RET_OK


def cmd_stats(args: argparse.Namespace) -> int:
    """``stats URL``: visible, in flight, delayed, and the dead-letter depth."""
    session = make_session(args.region, args.url)
    try:
        sqs = session.resource("sqs", endpoint_url=args.endpoint_url)
        queue = BotoQueue.of_resource(sqs.Queue(args.url))
        stats = queue_stats(queue)
    except connection_errors() as error:
        return sqs_failure(f"read {args.url}", error)
    if args.watch is not None:
        from .stats_watch import watch

        try:
            watch(lambda: queue_stats(queue), args.watch, as_json=args.json)
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
    except connection_errors() as error:
        return sqs_failure(f"purge {args.url}", error)
    print(f"Purged {args.url}")
    return RET_OK


def cmd_provision(args: argparse.Namespace) -> int:
    """``provision RULES.json``: run the Provisioner every ``--interval`` s until SIGTERM/SIGINT."""
    from .provision import run_command

    try:
        run_command(args, make_session(args.region))
    except ValueError as error:  # a bad rules file or --interval
        logger.error("%s", error)
        return RET_USAGE
    except connection_errors() as error:
        # No region or credentials: RET_USAGE, saying what to set; else RET_CONNECT.
        return sqs_failure("reach SQS or ECS to provision", error)
    return RET_OK
