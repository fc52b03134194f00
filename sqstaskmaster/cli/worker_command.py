"""``sqstaskmaster worker APP``: load the app's Worker, apply the options, run it.

The options are those of :mod:`sqstaskmaster.cli.worker_options` (one per
setting); an app that cannot be loaded is RET_IMPORT, settings that cannot
work are RET_USAGE, a queue that cannot be reached is RET_CONNECT, all before
any worker process is forked.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from ..errors import AppImportError, PollFailedError
from ..sqs.facts import make_session
from ..sqs.queue import BotoQueue
from ..worker.exitcodes import RET_CONNECT, RET_IMPORT, RET_USAGE
from .queue_commands import connection_errors, sqs_failure
from .worker_options import setting_changes

logger = logging.getLogger(__name__)


def load_app(spec: str) -> Any:
    """Import ``module:attribute`` (attribute may be dotted) from the current directory."""
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


def cmd_worker(args: argparse.Namespace) -> int:
    """``worker APP``: load the app, apply the options, run (supervised when -p > 1)."""
    from ..worker.loop import Worker

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
    try:
        # One WorkerSettings, checked once with every option in.
        worker = worker.replace(**setting_changes(args, worker.settings))
        if not worker.queue_url:
            raise ValueError("no queue: pass --queue-url URL (or set queue_url on the Worker)")
        if not worker.registry:
            raise ValueError(f"app {args.app!r} registers no task")
        worker.check()
        from ..worker.supervisor import resolve_processes

        resolve_processes(worker.processes)
        if worker.metrics_port is not None:
            from ..ops.metrics import require

            require()
        if worker.spot_notice == "on":
            from ..ops.spot import metadata_address, metadata_endpoint

            metadata_address(metadata_endpoint())  # a malformed endpoint is a usage error
    except (ValueError, ImportError) as error:
        logger.error("worker settings: %s", error)
        return RET_USAGE
    if worker.session is None:
        worker.session = make_session(args.region, worker.queue_url)
    try:
        # Fail fast (before forking) when the queue cannot be reached.
        sqs = worker.session.resource("sqs", endpoint_url=worker.endpoint_url)
        BotoQueue.of_resource(sqs.Queue(worker.queue_url)).queue_attributes(["QueueArn"])
    except connection_errors() as error:
        return sqs_failure(f"reach queue {worker.queue_url}", error)
    try:
        return worker.run()
    except PollFailedError as error:
        logger.error("%s", error)
        return RET_CONNECT
