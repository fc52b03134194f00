"""Proportional scaling rules for the Provisioner: tasks per worker, bounds, scale-in cooldown.

A Provisioner rule with ``tasks_per_worker`` asks for
``ceil((visible + in flight + delayed) / tasks_per_worker)`` workers, clamped
to ``[min_size, max_size]`` (``min_size`` defaults to 0, ``max_size`` to the
rule's ``active_size``). More workers are asked for at once; fewer only once
a lower figure has held for ``scale_in_cooldown_s`` seconds (default 300), and
then the highest figure seen during that time. A rule without these keys
keeps 0.0.11's all-or-nothing behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Hashable, Mapping, Optional, Tuple

TASKS_PER_WORKER = "tasks_per_worker"
MIN_SIZE = "min_size"
MAX_SIZE = "max_size"
SCALE_IN_COOLDOWN_S = "scale_in_cooldown_s"
KEYS = (TASKS_PER_WORKER, MIN_SIZE, MAX_SIZE, SCALE_IN_COOLDOWN_S)
DEFAULT_SCALE_IN_COOLDOWN_S = 300.0


@dataclass(frozen=True)
class Proportional:
    """A rule's proportional settings (sizes are ECS desired counts, the cooldown seconds)."""

    tasks_per_worker: int
    min_size: int
    max_size: int
    scale_in_cooldown_s: float

    def target(self, total: int) -> int:
        """The desired count for ``total`` messages (visible + in flight + delayed)."""
        wanted = math.ceil(max(total, 0) / self.tasks_per_worker)
        return max(self.min_size, min(self.max_size, wanted))


def _whole(rule: Mapping[str, Any], key: str, default: Any, low: int) -> int:
    value = rule.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(
            f"rule for service {rule.get('service_name')!r}: {key} must be a whole number "
            f">= {low}, got {value!r}"
        )
    return value


def proportional_of(rule: Mapping[str, Any]) -> Optional[Proportional]:
    """The rule's proportional settings, or None for a 0.0.11 rule; ValueError names the key."""
    if TASKS_PER_WORKER not in rule:
        extra = [key for key in KEYS if key in rule]
        if extra:
            raise ValueError(
                f"rule for service {rule.get('service_name')!r}: {extra[0]} needs "
                f"{TASKS_PER_WORKER} (the messages one worker takes on); add it, or remove "
                f"{extra[0]} for all-or-nothing scaling"
            )
        return None
    per_worker = _whole(rule, TASKS_PER_WORKER, None, 1)
    low = _whole(rule, MIN_SIZE, 0, 0)
    high = _whole(rule, MAX_SIZE, rule.get("active_size"), 0)
    if high < low:
        raise ValueError(
            f"rule for service {rule.get('service_name')!r}: {MAX_SIZE} {high!r} is below "
            f"{MIN_SIZE} {low!r}"
        )
    cooldown = rule.get(SCALE_IN_COOLDOWN_S, DEFAULT_SCALE_IN_COOLDOWN_S)
    if isinstance(cooldown, bool) or not isinstance(cooldown, (int, float)) or cooldown < 0:
        raise ValueError(
            f"rule for service {rule.get('service_name')!r}: {SCALE_IN_COOLDOWN_S} must be "
            f"seconds >= 0, got {cooldown!r}"
        )
    return Proportional(per_worker, low, high, float(cooldown))


class ScaleInCooldown:
    """Remembers, per service, since when a lower desired count has been wanted."""

    def __init__(self) -> None:
        self._lower: Dict[Hashable, Tuple[float, int]] = {}

    def decide(
        self, key: Hashable, current: int, target: int, cooldown_s: float, now: float
    ) -> Tuple[int, str]:
        """(desired count, why): ``target`` at once when higher, after the cooldown when lower."""
        if target >= current:
            self._lower.pop(key, None)
            return target, "scale out" if target > current else "steady"
        since, highest = self._lower.get(key, (now, target))
        highest = max(highest, target)
        held = now - since
        if held >= cooldown_s:
            self._lower.pop(key, None)
            return highest, f"scale in, lower figure held {held:.1f} s"
        self._lower[key] = (since, highest)
        return current, f"scale in to {highest} waits: held {held:.1f} of {cooldown_s:g} s"
