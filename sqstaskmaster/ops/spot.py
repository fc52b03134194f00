"""EC2 Spot interruption notices: a warm stop of every worker process when EC2 announces one.

EC2 announces a Spot interruption about two minutes ahead through the
instance metadata service (IMDSv2): ``PUT /latest/api/token`` (header
``X-aws-ec2-metadata-token-ttl-seconds``) gives a session token, and ``GET
/latest/meta-data/spot/instance-action`` with it (header
``X-aws-ec2-metadata-token``) answers 404 while there is no notice, then 200
and ``{"action": "terminate", "time": "2026-12-07T12:00:00Z"}``. ``GET
/latest/meta-data/instance-life-cycle`` answers ``spot``, ``on-demand`` or
``scheduled``.

:func:`spot_notice_for` turns the ``spot_notice`` setting (auto, on, off)
into a :class:`SpotNotice`, or None. ``auto`` is on only on a Spot instance
(the life cycle answers ``spot``): an On-Demand one gets no notice, and
polling it would only cost requests and force the supervised path. The
supervisor calls :meth:`~SpotNotice.poll` from its wait loop, since no
thread may live in a process that forks tasks; a notice starts a warm stop,
which the SIGTERM that usually follows joins. The endpoint is botocore's:
``AWS_EC2_METADATA_SERVICE_ENDPOINT``, and ``AWS_EC2_METADATA_DISABLED=true``
turns ``auto`` off. Each request is tried once, its connect and each read
bounded by :data:`TIMEOUT_S`; the next poll is the retry.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple
from urllib.parse import urlsplit

from ..errors import MetadataServiceError

logger = logging.getLogger(__name__)

ENDPOINT_VARIABLE = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
DISABLED_VARIABLE = "AWS_EC2_METADATA_DISABLED"
DEFAULT_ENDPOINT = "http://169.254.169.254/"
TOKEN_PATH = "latest/api/token"
NOTICE_PATH = "latest/meta-data/spot/instance-action"
LIFE_CYCLE_PATH = "latest/meta-data/instance-life-cycle"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
#: Seconds a token lives (the service's maximum); a new one is asked for before it ends.
TOKEN_TTL_S = 21600
TOKEN_REFRESH_MARGIN_S = 300.0
#: Seconds each connect and each read may take.
TIMEOUT_S = 1.0
#: Seconds between two polls.
POLL_INTERVAL_S = 5.0
#: Seconds between two warnings about failing polls (the failures between are counted).
WARN_EVERY_S = 60.0
SETTINGS = ("auto", "on", "off")


@dataclass(frozen=True)
class InterruptionNotice:
    """A Spot interruption EC2 announced: ``action`` (terminate, stop, hibernate) at ``time``."""

    action: str
    time: str


def metadata_endpoint(environ: Optional[Mapping[str, str]] = None) -> str:
    """The metadata service's URL: ``AWS_EC2_METADATA_SERVICE_ENDPOINT``, else EC2's own."""
    environ = os.environ if environ is None else environ
    return environ.get(ENDPOINT_VARIABLE) or DEFAULT_ENDPOINT


def metadata_disabled(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether botocore's ``AWS_EC2_METADATA_DISABLED`` is ``true``."""
    environ = os.environ if environ is None else environ
    return environ.get(DISABLED_VARIABLE, "").strip().lower() == "true"


def metadata_address(endpoint: str) -> Tuple[str, int, str, bool]:
    """``(host, port, path prefix, https)`` of ``endpoint``; ValueError naming it when malformed."""
    parts = urlsplit(endpoint)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    if parts.scheme not in ("http", "https") or not parts.hostname or not port:
        raise ValueError(
            f"{ENDPOINT_VARIABLE} must be an http://HOST[:PORT]/ URL, got {endpoint!r}; "
            f"unset it for EC2's own ({DEFAULT_ENDPOINT})"
        )
    return parts.hostname, port, parts.path.rstrip("/") + "/", parts.scheme == "https"


class MetadataClient:
    """IMDSv2 requests to ``endpoint``: a session token, the life cycle, the Spot instance action.

    One connection per request, tried once; its connect and each read take at
    most ``timeout_s`` seconds. The token is kept and asked for again
    :data:`TOKEN_REFRESH_MARGIN_S` (at most half its life) before its
    ``token_ttl_s`` ends, or when the service answers 401. ``requests`` counts the requests made.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        timeout_s: float = TIMEOUT_S,
        token_ttl_s: int = TOKEN_TTL_S,
    ) -> None:
        self.endpoint = endpoint
        self.host, self.port, self._prefix, self._https = metadata_address(endpoint)
        self.timeout_s = timeout_s
        self.token_ttl_s = token_ttl_s
        self.requests = 0
        self._token: Optional[str] = None
        self._token_until = 0.0

    def token(self, now: float) -> str:
        """A session token valid at ``now`` (monotonic seconds); MetadataServiceError if none."""
        if self._token is not None and now < self._token_until:
            return self._token
        self._token = None
        request = f"PUT {TOKEN_PATH}"
        status, body = self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(self.token_ttl_s)})
        if status != 200 or not body.strip():
            raise MetadataServiceError(self.endpoint, request, f"HTTP {status}")
        self._token = body.decode("ascii", "replace").strip()
        margin = min(TOKEN_REFRESH_MARGIN_S, self.token_ttl_s / 2)
        self._token_until = now + self.token_ttl_s - margin
        return self._token

    def instance_life_cycle(self, now: float) -> str:
        """``spot``, ``on-demand`` or ``scheduled``; MetadataServiceError if there is no answer."""
        status, body = self._get(LIFE_CYCLE_PATH, now)
        life_cycle = body.decode("ascii", "replace").strip()
        if status != 200 or not life_cycle:
            raise MetadataServiceError(self.endpoint, f"GET {LIFE_CYCLE_PATH}", f"HTTP {status}")
        return life_cycle[:40]

    def instance_action(self, now: float) -> Optional[InterruptionNotice]:
        """The announced interruption, or None; MetadataServiceError when there is no answer."""
        status, body = self._get(NOTICE_PATH, now)
        if status == 404:
            return None
        request = f"GET {NOTICE_PATH}"
        if status != 200:
            raise MetadataServiceError(self.endpoint, request, f"HTTP {status}")
        try:
            document = json.loads(body)
            return InterruptionNotice(str(document["action"]), str(document["time"]))
        except (ValueError, TypeError, KeyError):
            # Not a notice: a proxy's page, say. Warm-stopping every worker on it would be wrong.
            raise MetadataServiceError(self.endpoint, request, f"a body not read: {body[:200]!r}")

    def _get(self, path: str, now: float) -> Tuple[int, bytes]:
        """``GET path`` with a token: ``(status, body)``; MetadataServiceError if no answer.

        A 401 (the token expired early, say the service restarted) gets a new
        token and one more try, so a notice is not a poll late.
        """
        for _ in range(2):
            status, body = self._request("GET", path, {TOKEN_HEADER: self.token(now)})
            if status != 401:
                break
            self._token = None
        return status, body

    def _request(self, method: str, path: str, headers: dict) -> Tuple[int, bytes]:
        """One request: ``(status, body)``; MetadataServiceError if it got no answer."""
        self.requests += 1
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = kind(self.host, self.port, timeout=self.timeout_s)
        try:
            connection.request(method, self._prefix + path, headers=headers)
            response = connection.getresponse()
            return response.status, response.read(64 * 1024)
        except (TimeoutError, socket.timeout):
            detail = f"no answer within {self.timeout_s:g} s"
        except (OSError, http.client.HTTPException) as error:
            detail = f"{type(error).__name__}: {error}"
        finally:
            connection.close()
        raise MetadataServiceError(self.endpoint, f"{method} {path}", detail)


class SpotNotice:
    """Polls for a Spot interruption notice every ``interval_s`` seconds, with ``client``.

    :meth:`poll` is called often (the supervisor's loop wakes every 0.1 s) and
    makes requests only when one is due. A failed poll logs a warning, at most
    one every ``warn_every_s`` seconds (the failures between are counted in
    it), and is retried by the next poll. Once a notice is seen, polling ends.
    """

    def __init__(
        self,
        client: MetadataClient,
        interval_s: float = POLL_INTERVAL_S,
        warn_every_s: float = WARN_EVERY_S,
    ) -> None:
        self.client = client
        self.interval_s = interval_s
        self.warn_every_s = warn_every_s
        self.notice: Optional[InterruptionNotice] = None
        self.failures = 0  # failed polls since the last warning
        self._due_at: Optional[float] = None  # None: the first call polls
        self._warned_at: Optional[float] = None
        self._failing = False

    def poll(self, now: float) -> Optional[InterruptionNotice]:
        """The notice, the one time it is first seen; else None. ``now``: ``time.monotonic()``.

        Makes requests (each bounded by the client's timeout) only on the first
        call and then every ``interval_s``; never raises.
        """
        if self.notice is not None or (self._due_at is not None and now < self._due_at):
            return None
        self._due_at = now + self.interval_s
        try:
            notice = self.client.instance_action(now)
        except MetadataServiceError as error:
            self._failed(now, error)
            return None
        if self._failing:
            self._failing = False
            logger.info("spot interruption notices: %s answers again", self.client.endpoint)
        self.notice = notice
        return notice

    def _failed(self, now: float, error: MetadataServiceError) -> None:
        self._failing = True
        self.failures += 1
        if self._warned_at is not None and now - self._warned_at < self.warn_every_s:
            logger.debug("spot interruption notices: poll failed: %s", error)
            return
        logger.warning(
            "spot interruption notices: %d poll(s) failed, the last: %s (polling again every "
            "%g s; warned at most every %g s)",
            *(self.failures, error, self.interval_s, self.warn_every_s),
        )
        self._warned_at = now
        self.failures = 0


def spot_notice_for(
    setting: str,
    environ: Optional[Mapping[str, str]] = None,
) -> Optional[SpotNotice]:
    """The :class:`SpotNotice` for ``spot_notice`` = ``setting``, or None when off.

    ``"auto"``: on when the metadata service gives a token and its
    instance-life-cycle is ``spot`` (two requests, each bounded by
    :data:`TIMEOUT_S` per connect and read; the token is kept); off when it
    does not answer, on any other life cycle (logged at INFO), when the life
    cycle cannot be read (a WARNING), and without a request when
    ``AWS_EC2_METADATA_DISABLED`` is true. ``"on"``: polls, asking nothing
    first, even if the service does not answer (each failing poll is logged).
    ``environ``: where the two variables are read (``os.environ``).
    """
    if setting not in SETTINGS:
        raise ValueError(f"spot_notice must be 'auto', 'on' or 'off', got {setting!r}")
    if setting == "off" or (setting == "auto" and metadata_disabled(environ)):
        return None
    endpoint = metadata_endpoint(environ)
    try:
        client = MetadataClient(endpoint)
    except ValueError as error:
        if setting == "on":
            raise
        logger.warning("spot interruption notices off: %s", error)
        return None
    if setting == "auto" and not _on_a_spot_instance(client):
        return None
    if setting == "on" and metadata_disabled(environ):
        logger.info("spot interruption notices on: %s=true is overridden", DISABLED_VARIABLE)
    logger.info("spot interruption notices: polling %s every %g s", endpoint, POLL_INTERVAL_S)
    return SpotNotice(client)


def _on_a_spot_instance(client: MetadataClient) -> bool:
    """Whether ``auto`` turns on: the service gives a token and its life cycle is ``spot``."""
    try:
        client.token(time.monotonic())
    except MetadataServiceError as error:
        logger.info("spot interruption notices off: not on EC2, it seems: %s", error)
        return False
    try:
        life_cycle = client.instance_life_cycle(time.monotonic())
    except MetadataServiceError as error:
        logger.warning(
            "spot notices: off (instance-life-cycle not read: %s failed, %s); "
            "--spot-notice on polls for notices all the same",
            *(error.request, error.detail),
        )
        return False
    decision = "on" if life_cycle == "spot" else "off"
    logger.info("spot notices: %s (instance-life-cycle %s)", decision, life_cycle)
    return decision == "on"
