"""A fake EC2 instance metadata service on 127.0.0.1, to test Spot interruption notices.

::

    from sqstaskmaster.testing import FakeMetadataService

    with FakeMetadataService() as imds:
        worker = subprocess.Popen([..., "--spot-notice", "on"],
                                  env=dict(os.environ, **imds.environment()))
        imds.announce(action="terminate")        # then the worker warm-stops

It serves the IMDSv2 requests the worker makes: ``PUT /latest/api/token``
(400 without ``X-aws-ec2-metadata-token-ttl-seconds`` in 1-21600), ``GET
/latest/meta-data/instance-life-cycle`` (its ``life_cycle``, ``spot`` unless
told otherwise; 404 when None) and ``GET
/latest/meta-data/spot/instance-action`` (404 until
:meth:`FakeMetadataService.announce`, then 200 and the notice's JSON). Each
GET answers 401 without a token it gave.
It runs in a thread of the test process; the worker under test is another
process. Standard library only.
"""

from __future__ import annotations

import datetime
import http.server
import json
import secrets
import threading
from typing import Any, Dict, List, Optional, Set, Tuple, Union

TOKEN_PATH = "/latest/api/token"
NOTICE_PATH = "/latest/meta-data/spot/instance-action"
LIFE_CYCLE_PATH = "/latest/meta-data/instance-life-cycle"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL_S = 21600


class FakeMetadataService:
    """An IMDSv2 endpoint that serves a token and, once announced, a Spot interruption notice.

    ``endpoint`` is its URL; :meth:`environment` points botocore (and the
    worker) at it. ``life_cycle`` is what instance-life-cycle answers
    (``spot``, ``on-demand``, ``scheduled``; None: 404); change it at any
    time. ``requests`` lists ``(method, path)`` of every request served;
    :attr:`token_requests`, :attr:`life_cycle_requests` and
    :attr:`notice_requests` count them. :meth:`expire_tokens` makes the
    tokens given so far answer 401, as after their TTL. Use it as a context
    manager, or :meth:`start` and :meth:`stop`.
    """

    def __init__(self, host: str = "127.0.0.1", life_cycle: Optional[str] = "spot") -> None:
        self.host = host
        self.life_cycle = life_cycle
        self.requests: List[Tuple[str, str]] = []
        self.notice: Optional[Dict[str, str]] = None
        self._tokens: Set[str] = set()
        self._lock = threading.Lock()
        self._server: Optional[http.server.HTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def endpoint(self) -> str:
        """The service's URL, ``http://127.0.0.1:PORT/``, once started."""
        if self._server is None:
            raise RuntimeError("FakeMetadataService is not running: start() it, or use `with`")
        return f"http://{self.host}:{self._server.server_address[1]}/"

    def environment(self) -> Dict[str, str]:
        """Variables that point botocore's metadata client (and the worker's) at this service."""
        return {
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "false",
        }

    @property
    def token_requests(self) -> int:
        """How many token PUTs were served."""
        return sum(1 for method, path in list(self.requests) if path == TOKEN_PATH)

    @property
    def life_cycle_requests(self) -> int:
        """How many instance-life-cycle GETs were served (with a valid token or not)."""
        return sum(1 for method, path in list(self.requests) if path == LIFE_CYCLE_PATH)

    @property
    def notice_requests(self) -> int:
        """How many instance-action GETs were served (with a valid token or not)."""
        return sum(1 for method, path in list(self.requests) if path == NOTICE_PATH)

    def announce(
        self, action: str = "terminate", at: Union[None, str, datetime.datetime] = None
    ) -> Dict[str, str]:
        """From now on, answer the instance-action GET with this notice; returns its JSON.

        ``at``: when the interruption happens, a datetime or an ISO 8601 string
        (default two minutes from now, as EC2 gives).
        """
        if at is None:
            at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=2)
        if isinstance(at, datetime.datetime):
            at = at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.notice = {"action": action, "time": at}
        return dict(self.notice)

    def withdraw(self) -> None:
        """Back to no notice (404)."""
        self.notice = None

    def expire_tokens(self) -> None:
        """The tokens given so far are refused (401) from now on."""
        with self._lock:
            self._tokens.clear()

    def start(self) -> FakeMetadataService:
        """Listen on a free port of ``host``, served by a daemon thread."""
        if self._server is None:
            self._server = http.server.HTTPServer((self.host, 0), _handler_for(self))
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="fake-metadata-service",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port (a request then fails to connect)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> FakeMetadataService:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _new_token(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens.add(token)
        return token

    def _knows(self, token: Optional[str]) -> bool:
        with self._lock:
            return token in self._tokens


def _handler_for(service: FakeMetadataService) -> type:
    """A request handler class that answers for ``service``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            service.requests.append(("PUT", self.path))
            if self.path != TOKEN_PATH:
                return self._answer(404, b"")
            ttl = self.headers.get(TTL_HEADER, "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TTL_S:
                return self._answer(400, b"")
            self._answer(200, service._new_token().encode())

        def do_GET(self) -> None:
            service.requests.append(("GET", self.path))
            if not service._knows(self.headers.get(TOKEN_HEADER)):
                return self._answer(401, b"")
            life_cycle = service.life_cycle
            if self.path == LIFE_CYCLE_PATH and life_cycle is not None:
                return self._answer(200, life_cycle.encode())
            notice = service.notice
            if self.path != NOTICE_PATH or notice is None:
                return self._answer(404, b"")
            self._answer(200, json.dumps(notice).encode(), "application/json")

        def _answer(self, status: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: a test reads ``service.requests`` instead."""

    return Handler
