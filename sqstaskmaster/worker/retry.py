"""RetryPolicy: how long a failed message waits before SQS delivers it again."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

from ..sqs.facts import MAX_VISIBILITY_S


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, from a message's ``ApproximateReceiveCount``.

    The base delay after the n-th receive failed is
    ``min(max_s, first_s * factor ** (n - 1))`` seconds. ``jitter``:
    ``"equal"`` (default) draws uniformly from [base/2, base], ``"full"``
    from [0, base], ``"none"`` uses the base. The result is a whole number of
    seconds, at most SQS's 12-hour maximum. Defaults: 10 s, x2, 15 minutes.
    """

    first_s: float = 10.0
    factor: float = 2.0
    max_s: float = 15 * 60.0
    jitter: str = "equal"

    def __post_init__(self) -> None:
        if self.first_s < 0 or self.max_s < 0:
            raise ValueError(
                f"Retry delays must be >= 0 seconds, got first {self.first_s!r} "
                f"and max {self.max_s!r}"
            )
        if self.factor < 1:
            raise ValueError(f"Retry factor must be >= 1, got {self.factor!r}")
        if self.jitter not in ("equal", "full", "none"):
            raise ValueError(f"Retry jitter must be 'equal', 'full' or 'none', got {self.jitter!r}")

    def base_delay(self, receive_count: int) -> float:
        """The delay before jitter, in seconds, after receive number ``receive_count``."""
        exponent = max(receive_count, 1) - 1
        try:
            raw = self.first_s * self.factor**exponent
        except OverflowError:
            raw = float("inf")
        return min(raw, self.max_s, float(MAX_VISIBILITY_S))

    def delay(self, receive_count: int, rng: Optional[random.Random] = None) -> int:
        """The visibility timeout, whole seconds, to give a message that just failed."""
        base = self.base_delay(receive_count)
        uniform = (rng or random).uniform
        if self.jitter == "full":
            value = uniform(0.0, base)
        elif self.jitter == "equal":
            value = uniform(base / 2.0, base)
        else:
            value = base
        return int(min(round(value), MAX_VISIBILITY_S))
