"""The ``sqstaskmaster provision RULES.json`` loop: run the Provisioner every few seconds.

RULES.json is a JSON list of Provisioner rules (0.0.11's keys, plus the
proportional ones of :mod:`sqstaskmaster.ops.scale_rules`). :func:`load_rules`
checks it all before the first round and names the rule and key at fault;
:func:`run_rounds` applies the rules until told to stop, only between rounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
from typing import Any, Callable, Dict, List

from ..ops.scale_rules import KEYS, proportional_of
from ..queue_scale import Provisioner

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 60.0
_TEXT_KEYS = (Provisioner.QUEUE_NAME, Provisioner.SERVICE_NAME, Provisioner.CLUSTER_NAME)
KNOWN_KEYS = (*Provisioner.REQUIRED_KEYS, *KEYS)


class RulesFileError(ValueError):
    """A rules file that cannot be used; the text names the file, rule and key."""


def _check_rule(rule: Any) -> None:
    if not isinstance(rule, dict):
        raise ValueError(f"must be a JSON object, got {rule!r}")
    for key in Provisioner.REQUIRED_KEYS:
        if key not in rule:
            raise ValueError(f"key {key!r} is missing")
    for key in _TEXT_KEYS:
        if not isinstance(rule[key], str) or not rule[key]:
            raise ValueError(f"key {key!r} must be a non-empty string, got {rule[key]!r}")
    size = rule[Provisioner.ACTIVE_SIZE]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"key 'active_size' must be a whole number >= 0, got {size!r}")
    unknown = sorted(set(rule) - set(KNOWN_KEYS))
    if unknown:
        raise ValueError(f"key {unknown[0]!r} is not a rule key (known: {', '.join(KNOWN_KEYS)})")
    proportional_of(rule)


def load_rules(path: str) -> List[Dict[str, Any]]:
    """The rules in ``path``; RulesFileError naming the rule (index and service) and key."""
    try:
        with open(path) as handle:
            rules = json.load(handle)
    except OSError as error:
        raise RulesFileError(f"cannot read rules file {path}: {error}") from error
    except ValueError as error:
        raise RulesFileError(f"rules file {path} is not JSON: {error}") from error
    except RecursionError as error:
        raise RulesFileError(
            f"rules file {path} is nested too deeply to read ({error}); "
            "a rules file is a flat JSON list of rule objects"
        ) from error
    if not isinstance(rules, list):
        raise RulesFileError(
            f"rules file {path} must hold a JSON list of rules, got {type(rules).__name__}"
        )
    for index, rule in enumerate(rules):
        try:
            _check_rule(rule)
        except ValueError as error:
            name = rule.get(Provisioner.SERVICE_NAME) if isinstance(rule, dict) else None
            raise RulesFileError(
                f"rules file {path}, rule {index} (service {name!r}): {error}"
            ) from error
    return rules


def run_rounds(
    provisioner: Provisioner, interval_s: float, once: bool, stopping: Callable[[], bool]
) -> int:
    """Apply the rules every ``interval_s`` seconds (once with ``once``); returns the rounds run.

    ``stopping()`` is checked between rounds and while waiting, never inside one.
    """
    rounds = 0
    while not stopping():
        started = time.monotonic()
        provisioner.run()
        rounds += 1
        if once:
            break
        while not stopping() and time.monotonic() - started < interval_s:
            time.sleep(min(0.1, max(0.0, interval_s - (time.monotonic() - started))))
    logger.info("provision: stopped after %d rounds", rounds)
    return rounds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``provision`` subcommand's arguments."""
    parser.add_argument("rules", metavar="RULES.json", help="a JSON list of Provisioner rules")
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL_S,
        help=f"seconds between rounds (default {DEFAULT_INTERVAL_S:g})",
    )
    parser.add_argument("--once", action="store_true", help="run one round and exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="log the decisions, do not call update_service"
    )
    parser.add_argument("--region", help="AWS region (default: boto3's)")
    parser.add_argument(
        "--endpoint-url", help="SQS and ECS endpoint (default: boto3's, e.g. AWS_ENDPOINT_URL)"
    )


def run_command(args: argparse.Namespace, session: Any) -> int:
    """Check the rules, then run rounds until SIGTERM/SIGINT (or one with ``--once``).

    ValueError (RulesFileError) for a bad rules file or interval; botocore's
    errors when SQS or ECS cannot be reached. Returns the rounds run.
    """
    if args.interval <= 0:
        raise ValueError(f"--interval must be > 0 seconds, got {args.interval!r}")
    rules = load_rules(args.rules)
    signals: List[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        # Only a flag: the round in progress finishes, the loop ends after it.
        signal.signal(sig, lambda signum, frame: signals.append(signum))
    try:
        provisioner = Provisioner(
            rules, session=session, dry_run=args.dry_run, endpoint_url=args.endpoint_url
        )
        return run_rounds(provisioner, args.interval, args.once, lambda: bool(signals))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
