"""Whether a built task may start on this receive, and for how long it runs here.

SQS keeps a message invisible for at most 12 hours after the receive that
returned it. A task whose hard timeout does not fit what is left of that
budget is handed back when a fresh receive would hold it, refused when none
can. A resumable task (``resumable=True``) is not bounded by one receive: it
runs here until ``continue_after_s`` (at most what this receive's budget
allows, less the stop margin and the time to stop it), is then asked to stop,
and goes on in a continuation message; its hard timeout bounds its run across
all its messages.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import HardTimeoutError, VisibilityBudgetError
from ..sqs import facts as sqs
from ..sqs.continuation import Carried
from ..sqs.facts import message_id_of
from .retry import RetryPolicy
from .settlement import Outcome, Settlement

#: A resumable task is not started for a run shorter than this (s): a fresh receive has more.
MIN_RUN_S = 1.0


def run_hard_timeout(total_s: float, resumable: bool, carried: Carried) -> float:
    """This run's hard timeout: ``total_s``; for a resumable task, less what it ran before."""
    return total_s - carried.run_s if resumable else total_s


def continue_after(setting_s: Optional[float], left_s: float, stop_s: float) -> float:
    """Seconds a resumable task runs on this receive: ``setting_s``, capped by the budget.

    ``left_s`` is what is left of the receive's 12 hours; ``stop_s`` the time
    to stop the task once asked (the shutdown grace and the kill's grace).
    """
    allowed = left_s - sqs.STOP_MARGIN_S - stop_s
    return allowed if setting_s is None else min(setting_s, allowed)


@dataclass
class Admission:
    """What :func:`admit` decided: the ``outcome`` of a task not started, or its ``continue_at``."""

    outcome: Optional[Outcome] = None
    continue_at: Optional[float] = None


def used_up(
    message: Any,
    task: str,
    count: int,
    total_s: float,
    carried: Carried,
    settlement: Settlement,
    policy: RetryPolicy,
) -> Outcome:
    """A resumable task that has run its whole hard timeout: timed out, dead-lettered now."""
    error = HardTimeoutError(
        f"task {task} has run {carried.run_s:.0f} s over {carried.continuation + 1} messages, "
        f"its whole hard timeout of {total_s:g} s",
        total_s,
        carried.run_s,
    )
    settlement.record(task, Outcome.TIMED_OUT)
    settlement.notify(error, context=sqs.failure_context(message))
    settlement.dead_letter(message, task, count, str(error), policy)
    return Outcome.TIMED_OUT


def admit(
    handler: Any,
    message: Any,
    task: str,
    count: int,
    *,
    resumable: bool,
    continue_after_s: Optional[float],
    grace_s: float,
    settlement: Settlement,
    policy: RetryPolicy,
) -> Admission:
    """Whether ``handler`` (task ``task``, ``message``) starts now, and until when it runs."""
    left = handler.visibility_budget_left()
    if resumable:
        run_for = continue_after(continue_after_s, left, grace_s + handler.kill_grace_s)
        if run_for < MIN_RUN_S:
            why = (
                f"{max(int(left), 0)} s are left of this receive's 12-hour visibility budget, "
                "too little for a run of the resumable task; its next receive has a fresh 12 hours"
            )
            return Admission(settlement.not_started(message, task, why))
        if run_for >= handler.hard_timeout:
            return Admission()  # its hard timeout ends this run first
        return Admission(continue_at=time.monotonic() + run_for)
    if sqs.fits(handler.hard_timeout, left):
        return Admission()
    if sqs.fits_a_fresh_receive(handler.hard_timeout):
        # Its wait here ate this receive's 12 hours: the next receive has fresh ones.
        first = sqs.first_receive_of(message)  # a fact for the log only
        why = (
            f"{max(int(left), 0)} s are left of this receive's 12-hour visibility "
            f"budget, the task needs {sqs.needed_s(handler.hard_timeout):g} s; "
            "its next receive has a fresh 12 hours"
            + ("" if first is None else f" (first received {time.time() - first:.0f} s ago)")
        )
        return Admission(settlement.not_started(message, task, why))
    refusal = VisibilityBudgetError(
        message_id_of(message), task, handler.hard_timeout, left, sqs.STOP_MARGIN_S
    )
    settlement.refuse(message, refusal, task, count, policy, Outcome.REFUSED)
    return Admission(Outcome.REFUSED)


def whole_seconds(seconds: float) -> int:
    """A handler's hard timeout from a run's seconds: never more, at least 1."""
    return max(int(math.floor(seconds)), 1)
