"""``sqstaskmaster stats URL --watch [SECONDS]``: queue depths, refreshed until Ctrl-C.

On a terminal the table is redrawn in place; elsewhere (a pipe, a file) each
refresh prints one line. Each figure comes with its change per minute, over
the refreshes of the last minute (or since the start, when it is younger).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import time
from typing import Any, Callable, Deque, Dict, Optional, TextIO, Tuple

logger = logging.getLogger(__name__)

#: The figures watched, with their labels.
FIGURES = (
    ("visible", "visible"),
    ("in_flight", "in flight"),
    ("delayed", "delayed"),
    ("dead_letter", "dead-letter"),
)
RATE_WINDOW_S = 60.0
_CLEAR = "\x1b[H\x1b[2J"

Sample = Tuple[float, Dict[str, Any]]


def rates_per_minute(history: Deque[Sample]) -> Dict[str, float]:
    """Each figure's change per minute between the oldest and newest samples."""
    if len(history) < 2:
        return {}
    (then, old), (now, new) = history[0], history[-1]
    elapsed = now - then
    if elapsed <= 0:
        return {}
    return {
        key: (new[key] - old[key]) * 60.0 / elapsed
        for key, _ in FIGURES
        if key in new and key in old
    }


def _rate(rates: Dict[str, float], key: str) -> str:
    return f"{rates[key]:+.1f}/min" if key in rates else "-"


def table(stats: Dict[str, Any], rates: Dict[str, float], every_s: float) -> str:
    """The redrawn screen: one row per figure, with its change per minute."""
    lines = [f"queue        {stats['url']}", f"{'':13s}{'now':>8s}  {'change':>12s}"]
    for key, label in FIGURES:
        if key in stats:
            lines.append(f"{label:13s}{stats[key]:8d}  {_rate(rates, key):>12s}")
        else:
            lines.append(f"{label:13s}{'none':>8s}  (no redrive policy)")
    stamp = time.strftime("%H:%M:%S")
    lines.append(f"\n{stamp}, every {every_s:g} s; Ctrl-C to stop")
    return "\n".join(lines) + "\n"


def line(stats: Dict[str, Any], rates: Dict[str, float]) -> str:
    """One refresh as one line (for a stream that is not a terminal)."""
    parts = [time.strftime("%Y-%m-%dT%H:%M:%S")]
    for key, _ in FIGURES:
        if key in stats:
            parts.append(f"{key}={stats[key]} ({_rate(rates, key)})")
    return " ".join(parts)


def watch(
    read: Callable[[], Dict[str, Any]],
    every_s: float,
    *,
    as_json: bool = False,
    out: Optional[TextIO] = None,
    refreshes: Optional[int] = None,
) -> None:
    """Print ``read()``'s figures every ``every_s`` seconds until Ctrl-C (or ``refreshes``).

    A failed read is logged and tried again at the next refresh.
    """
    out = out or sys.stdout
    tty = out.isatty() and not as_json
    history: Deque[Sample] = collections.deque()
    done = 0
    while refreshes is None or done < refreshes:
        started = time.monotonic()
        try:
            stats = read()
        except Exception as error:
            logger.warning("stats: cannot read the queue (%s); retrying in %g s", error, every_s)
        else:
            history.append((started, stats))
            while len(history) > 2 and started - history[1][0] >= RATE_WINDOW_S:
                history.popleft()
            _show(out, stats, rates_per_minute(history), every_s, tty, as_json)
        done += 1
        if refreshes is None or done < refreshes:
            time.sleep(max(0.0, every_s - (time.monotonic() - started)))


def _show(
    out: TextIO,
    stats: Dict[str, Any],
    rates: Dict[str, float],
    every_s: float,
    tty: bool,
    as_json: bool,
) -> None:
    if as_json:
        text = json.dumps({**stats, "change_per_min": rates}) + "\n"
    elif tty:
        text = _CLEAR + table(stats, rates, every_s)
    else:
        text = line(stats, rates) + "\n"
    out.write(text)
    out.flush()


def check_interval(value: str) -> float:
    """argparse type of ``--watch``: seconds, > 0."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"--watch takes seconds > 0, got {value!r}")
    return seconds
