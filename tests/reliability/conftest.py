"""The worker settings every worker-side reliability test runs with, one run each."""

from __future__ import annotations

from typing import Any, List

import pytest

# Batched deletes are always on; prefetch 1 is the default, 10 the most SQS allows.
WORKER_SETTINGS = {"prefetch-1": [], "prefetch-10": ["--prefetch", "10"]}


@pytest.fixture(params=list(WORKER_SETTINGS.values()), ids=list(WORKER_SETTINGS))
def worker_args(request: Any) -> List[str]:
    """Extra ``sqstaskmaster worker`` options for the test's workers."""
    return list(request.param)
