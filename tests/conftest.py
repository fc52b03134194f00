"""Fixtures shared by the Provisioner tests (test_queue_scale, test_provision)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest


@pytest.fixture
def env(sqs_environment: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """boto3's defaults pointed at the test server, with no default session cached."""
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    return sqs_environment


@pytest.fixture
def ecs(ecs_client: Any) -> Any:
    """An ECS client on the test server (skips where the server has no ECS)."""
    return ecs_client
