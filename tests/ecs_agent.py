"""A stand-in for the ECS agent's task scale-in protection endpoint, on 127.0.0.1.

No emulator has this endpoint, so this server implements it as AWS documents
it: ``PUT $ECS_AGENT_URI/task-protection/v1/state`` with
``{"ProtectionEnabled": bool, "ExpiresInMinutes": 1..2880}``; 200 and
``{"protection": {...}}`` when applied, ``{"failure": {...}}`` when ECS lists
a failure, ``{"error": {...}}`` with an HTTP error status otherwise. It records
every call, and can refuse, fail or hang on demand (``agent.mode``).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional

TASK_ARN = "arn:aws:ecs:us-east-1:123456789012:task/test-cluster/0123456789abcdef0"
CONTAINER_PATH = "/api/0123456789abcdef0-1234567890"


class FakeAgent:
    """The endpoint, in a thread of the test process. ``uri`` is what ECS_AGENT_URI would be.

    ``mode``: ``"ok"``; ``"failure"`` (200 with a failure, as for a task ECS
    cannot protect); ``"error"`` (``error_status`` with an AccessDenied error);
    ``"hang"`` (answers only after ``hang_s`` seconds, or at close); ``"trickle"``
    (answers at once, one byte of the response every ``trickle_s`` seconds).
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.error_status = 400
        self.hang_s = 30.0
        self.trickle_s = 0.2
        self.calls: List[Dict[str, Any]] = []
        self.enabled = False
        self._closing = threading.Event()
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_PUT(self) -> None:
                agent._handle(self)

            def do_GET(self) -> None:
                agent._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}{CONTAINER_PATH}"

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

    def bodies(self) -> List[Optional[Dict[str, Any]]]:
        return [call["body"] for call in self.calls]

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        call = {"method": request.command, "path": request.path, "body": body, "at": time.time()}
        self.calls.append(call)
        status, document = self._answer(request, body)
        if self.mode == "hang":
            self._closing.wait(self.hang_s)
        payload = json.dumps(document).encode()
        if self.mode == "trickle":
            self._trickle(request, status, payload)
            call["answered"] = time.time()
            return
        try:
            request.send_response(status)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            request.wfile.write(payload)
        except OSError:
            pass  # the client gave up waiting
        call["answered"] = time.time()

    def _trickle(self, request: BaseHTTPRequestHandler, status: int, payload: bytes) -> None:
        head = f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(payload)}\r\n\r\n"
        request.close_connection = True
        for byte in head.encode() + payload:
            try:
                request.wfile.write(bytes([byte]))
                request.wfile.flush()
            except OSError:
                return  # the client gave up waiting
            if self._closing.wait(self.trickle_s):
                return

    def _answer(self, request: BaseHTTPRequestHandler, body: Any) -> tuple:
        if request.path != CONTAINER_PATH + "/task-protection/v1/state":
            return 404, {"error": {"Code": "NotFound", "Message": f"no route {request.path}"}}
        if request.command != "PUT":
            return 405, {"error": {"Code": "MethodNotAllowed", "Message": request.command}}
        enabled = body.get("ProtectionEnabled") if isinstance(body, dict) else None
        minutes = body.get("ExpiresInMinutes") if isinstance(body, dict) else None
        if not isinstance(enabled, bool) or (
            enabled and not (isinstance(minutes, int) and 1 <= minutes <= 2880)
        ):
            message = f"invalid request body {body!r}"
            return 400, {"error": {"Code": "InvalidParameterException", "Message": message}}
        if self.mode == "failure":
            return 200, {"failure": {"Arn": TASK_ARN, "Reason": "TASK_NOT_VALID"}}
        if self.mode == "error":
            message = "User is not authorized to perform: ecs:UpdateTaskProtection"
            return self.error_status, {
                "error": {"Arn": TASK_ARN, "Code": "AccessDeniedException", "Message": message}
            }
        self.enabled = enabled
        protection: Dict[str, Any] = {"ProtectionEnabled": enabled, "TaskArn": TASK_ARN}
        if enabled:
            expires = datetime.now(timezone.utc) + timedelta(minutes=minutes)
            protection["ExpirationDate"] = expires.isoformat().replace("+00:00", "Z")
        else:
            protection["ExpirationDate"] = None
        return 200, {"protection": protection}
