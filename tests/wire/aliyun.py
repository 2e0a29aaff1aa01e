"""A local stand-in for Alibaba Cloud's API (`HangupOperate`): it receives the SDK's real signed
request, checks its ACS3-HMAC-SHA256 signature against the test key (written here from
Alibaba's published signing rules, not with the SDK's own code), records it, and answers as
scripted.

    with AliyunStandIn() as api:                 # answers {"Code": "OK", "Result": true}
        ... settings.hangup.endpoint = api.endpoint   # http://127.0.0.1:<port>
        api.wait_for(1)
        assert api.calls[0].query == {"CallId": "...", "ImmediateHangup": "false", ...}

`answers` scripts the replies in order, (status, JSON body) or `STALL` (no answer within a
test's timeout); after the script, every request gets the last answer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

# The test's key: what the server's credential chain reads from the environment.
ACCESS_KEY_ID = "LTAI-test-key-id"
ACCESS_KEY_SECRET = "test-secret-never-logged-0123456789"
KEY_ENV = {
    "ALIBABA_CLOUD_ACCESS_KEY_ID": ACCESS_KEY_ID,
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ACCESS_KEY_SECRET,
    # No ECS metadata lookups from a test machine, whatever the chain tries.
    "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
}
OK = (200, {"Code": "OK", "Result": True, "RequestId": "stand-in", "Mesage": "Success"})
STALL = (0, {})


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    signed: bool  # the signature is right for ACCESS_KEY_SECRET
    at: float = field(default_factory=time.monotonic)

    @property
    def action(self) -> str:
        return self.headers.get("x-acs-action", "")


def _signature_ok(method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> bool:
    """Alibaba's V3 signature (ACS3-HMAC-SHA256): the canonical request, hashed, HMAC'd."""
    auth = headers.get("authorization", "")
    algorithm, _, rest = auth.partition(" ")
    if algorithm != "ACS3-HMAC-SHA256":
        return False
    parts = dict(p.split("=", 1) for p in rest.split(","))
    if parts.get("Credential") != ACCESS_KEY_ID:
        return False
    payload = hashlib.sha256(body).hexdigest()
    if headers.get("x-acs-content-sha256") != payload:
        return False
    signed = parts["SignedHeaders"].split(";")
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    canonical_query = "&".join(f"{k}={quote(v, safe='~')}" for k, v in pairs)
    canonical_headers = "".join(f"{h}:{headers[h].strip()}\n" for h in signed)
    canonical = "\n".join(
        [method, path or "/", canonical_query, canonical_headers, ";".join(signed), payload]
    )
    to_sign = f"{algorithm}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    expected = hmac.new(ACCESS_KEY_SECRET.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["Signature"])


class AliyunStandIn:
    def __init__(self, answers: list[tuple[int, dict[str, Any]]] | None = None) -> None:
        self.answers = list(answers or [OK])
        self.calls: list[Recorded] = []
        self._lock = threading.Lock()
        self._release = threading.Event()  # ends stalled answers at exit
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                url = urlsplit(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                record = Recorded(
                    "POST",
                    url.path,
                    dict(parse_qsl(url.query, keep_blank_values=True)),
                    headers,
                    body,
                    _signature_ok("POST", url.path, url.query, headers, body),
                )
                with stand_in._lock:
                    n = len(stand_in.calls)
                    stand_in.calls.append(record)
                    status, answer = stand_in.answers[min(n, len(stand_in.answers) - 1)]
                if status == 0:  # STALL: no answer before the client gives up
                    stand_in._release.wait(30)
                    return
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def wait_for(self, n: int, timeout_s: float = 10.0) -> list[Recorded]:
        """The first `n` requests, once they have arrived."""
        end = time.monotonic() + timeout_s
        while len(self.calls) < n and time.monotonic() < end:
            time.sleep(0.01)
        assert len(self.calls) >= n, f"{len(self.calls)} of {n} requests arrived"
        return self.calls[:n]

    def __enter__(self) -> AliyunStandIn:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
