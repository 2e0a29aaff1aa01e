"""Hanging up a call the model ended: Alibaba's `HangupOperate`, after the reply has been sent.

The gateway protocol carries text only, so nothing in a reply can end a call. When an alias has
`end_call` on, its model writes a marker after its goodbye (`server/text/end_call.py`); once the
turn's last byte (`[DONE]`, or the whole `stream: false` body) has been handed to the caller's
connection, the turn asks `Hangups.request` to end the call out of band: `HangupOperate` of
Alibaba's communication engine (API version 2019-10-15, `alibabacloud-aiccs20191015`) with
`CallId` = the turn's `session_id` and `ImmediateHangup=false`, which hangs up once the current
playback has finished, so the caller hears the goodbye.

- **Off the stream's path.** `request` decides at once and starts a background task; the
  request to Alibaba runs after the reply has ended. The runtime owns the tasks: at shutdown
  `close` gives them a grace period, then cancels them, and each one is counted, so none is
  lost silently.
- **Once per call.** `claim` (the per-call record's `claim_hangup`, shared by all front-end
  workers) says yes once per `session_id`: a second marker, a later turn or another worker
  does not call again.
- **Bounded.** Each attempt has `hangup.timeout_s`; network errors, timeouts, throttling and
  5xx answers are retried up to `hangup.attempts` in all, with a doubling `backoff_s`. An error
  answer (4xx: bad credentials, an unknown call) is not retried.
- **Counted and logged** by outcome (`HangupOutcome`, `callgate_hangups{model,outcome}`), one log
  line each on `callgate.hangup`. Credentials are never logged: they stay inside the SDK's
  credential chain (`alibabacloud-credentials`: environment, profile file, ECS or RRSA RAM role),
  never in settings or on a command line.

A turn without `session_id` and a server without `hangup.region` or `hangup.endpoint` speak
normally and only count the skip. Which turns may hang up at all (the marker seen, the reply
ended well and was delivered: never a turn whose caller left, that was superseded, cut off or
aborted) is the turn's decision (`Turn.delivered`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlsplit

from server.base.logs import one_line
from server.base.settings import HangupSettings

log = logging.getLogger("callgate.hangup")

API_VERSION = "2019-10-15"


class HangupOutcome(StrEnum):
    SENT = "sent"  # HangupOperate answered OK: the engine hangs up after the playback
    REJECTED = "rejected"  # the API answered with an error (4xx, or a Code other than OK)
    FAILED = "failed"  # no answer after every attempt (network, timeouts, 5xx, throttling)
    NO_SESSION = "no_session"  # the turn had no session_id: there is no CallId to hang up
    NOT_CONFIGURED = "not_configured"  # no hangup.region/endpoint, or no credentials found
    DUPLICATE = "duplicate"  # this call's hang-up was already claimed (a turn, another worker)
    CANCELLED = "cancelled"  # the server shut down before the API answered


class Rejected(Exception):
    """The API answered that it will not hang up this call: retrying cannot help."""


class NoCredentials(Exception):
    """The credential chain found nothing to sign with."""


class HangupApi(Protocol):
    """One `HangupOperate` request: returns when the API accepted it, raises otherwise."""

    async def hangup(self, call_id: str) -> None: ...


class AlibabaHangupApi:
    """`HangupOperate` through Alibaba's SDK, signed with the credential chain's key.

    `credential` is the SDK's credential client; by default its default chain
    (`alibabacloud_credentials.client.Client()`), which the SDK asks for a key at each request
    (it caches and refreshes role credentials itself)."""

    def __init__(self, settings: HangupSettings, credential: Any = None) -> None:
        # Imported here: a second of imports that only a server that hangs up needs.
        from alibabacloud_aiccs20191015.client import Client
        from alibabacloud_credentials.client import Client as CredentialClient
        from alibabacloud_tea_openapi import models as open_api_models

        host, protocol = _endpoint(settings.endpoint)
        timeout_ms = int(settings.timeout_s * 1000)
        config = open_api_models.Config(
            credential=credential if credential is not None else CredentialClient(),
            region_id=settings.region,
            endpoint=host,
            protocol=protocol,
            read_timeout=timeout_ms,
            connect_timeout=timeout_ms,
        )
        self._client = Client(config)

    async def hangup(self, call_id: str) -> None:
        from alibabacloud_aiccs20191015 import models
        from alibabacloud_credentials.exceptions import CredentialException
        from alibabacloud_tea_openapi.exceptions import ClientException, ThrottlingException
        from darabonba.runtime import RuntimeOptions

        request = models.HangupOperateRequest(call_id=call_id, immediate_hangup=False)
        try:
            response = await self._client.hangup_operate_with_options_async(
                request, RuntimeOptions(autoretry=False)
            )
        except Exception as e:
            inner = getattr(e, "inner_exception", None) or e  # the SDK wraps what it gives up on
            if isinstance(inner, CredentialException):
                raise NoCredentials(one_line(inner)) from None
            if isinstance(inner, ClientException) and not isinstance(inner, ThrottlingException):
                raise Rejected(f"{inner.status_code} {inner.code}: {inner.message}") from None
            raise
        body = response.body
        if body is None or body.code != "OK" or body.result is False:
            code, message = (body.code, body.mesage) if body is not None else (None, None)
            raise Rejected(f"{response.status_code} {code}: {message}")


def _endpoint(endpoint: str | None) -> tuple[str | None, str | None]:
    """`hangup.endpoint` as the SDK's host and protocol: a bare host is HTTPS."""
    if endpoint is None:
        return None, None
    if "://" not in endpoint:
        return endpoint, None
    url = urlsplit(endpoint)
    return url.netloc, url.scheme.upper()


class LocalClaims:
    """`claim` within one process, for a server without the per-call record: yes once per key
    among the last `size` keys."""

    def __init__(self, size: int = 8192) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def claim_hangup(self, key: str) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return True


class Hangups:
    """The runtime's hang-ups: `request` one, `close` at shutdown. `count(model, outcome)` is
    the metric; `api` is the request itself (built from the settings when they name an endpoint
    or a region)."""

    def __init__(
        self,
        settings: HangupSettings,
        count: Callable[[str, HangupOutcome], None],
        api: HangupApi | None = None,
    ) -> None:
        self.settings = settings
        self._count = count
        self._local = LocalClaims()
        self.configured = api is not None or bool(settings.region or settings.endpoint)
        self._api = api if api is not None or not self.configured else AlibabaHangupApi(settings)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def request(
        self,
        model: str,
        session_id: str | None,
        request_id: str,
        claim: Callable[[str], bool] | None = None,
    ) -> HangupOutcome | None:
        """The model ended this call and its reply has been delivered: hang it up in the
        background. `claim(session_id)` is True once per call (the per-call record's
        `claim_hangup`, shared by the workers; default: this process's memory). Returns the
        outcome when it is decided at once (a skip), else None."""
        if not session_id:
            return self._done(model, HangupOutcome.NO_SESSION, session_id, request_id)
        if self._api is None:
            return self._done(model, HangupOutcome.NOT_CONFIGURED, session_id, request_id)
        if not (claim or self._local.claim_hangup)(session_id):
            return self._done(model, HangupOutcome.DUPLICATE, session_id, request_id)
        task = asyncio.get_running_loop().create_task(
            self._hang_up(self._api, model, session_id, request_id)
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return None

    async def _hang_up(self, api: HangupApi, model: str, call_id: str, request_id: str) -> None:
        start = time.perf_counter()
        try:
            outcome, attempts, why = await self._attempts(api, call_id)
        except asyncio.CancelledError:
            self._done(model, HangupOutcome.CANCELLED, call_id, request_id, why="shutdown")
            raise
        self._done(model, outcome, call_id, request_id, attempts, why, time.perf_counter() - start)

    async def _attempts(self, api: HangupApi, call_id: str) -> tuple[HangupOutcome, int, str]:
        s = self.settings
        why = ""
        for attempt in range(1, s.attempts + 1):
            try:
                async with asyncio.timeout(s.timeout_s):
                    await api.hangup(call_id)
                return HangupOutcome.SENT, attempt, ""
            except Rejected as e:
                return HangupOutcome.REJECTED, attempt, str(e)
            except NoCredentials as e:
                return HangupOutcome.NOT_CONFIGURED, attempt, str(e)
            except TimeoutError:
                why = f"no answer in {s.timeout_s:g} s"
            except Exception as e:  # network, 5xx, throttling: worth another attempt
                why = one_line(e)
            if attempt < s.attempts:
                await asyncio.sleep(s.backoff_s * 2 ** (attempt - 1))
        return HangupOutcome.FAILED, s.attempts, why

    def _done(
        self,
        model: str,
        outcome: HangupOutcome,
        call_id: str | None,
        request_id: str,
        attempts: int = 0,
        why: str = "",
        seconds: float = 0.0,
    ) -> HangupOutcome:
        self._count(model, outcome)
        # A warning when a caller stays on the line though a hang-up was meant to happen; a
        # skip the settings or the request explain is information.
        level = logging.WARNING if attempts or outcome is HangupOutcome.CANCELLED else logging.INFO
        if outcome is HangupOutcome.SENT:
            level = logging.INFO
        log.log(
            level,
            "hangup %s: session_id=%s request_id=%s model=%s attempts=%d seconds=%.3f%s",
            outcome,
            call_id,
            request_id,
            model,
            attempts,
            seconds,
            f" why={why}" if why else "",
        )
        return outcome

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hangup task failed", exc_info=task.exception())

    async def close(self, grace_s: float) -> None:
        """Shutdown: the hang-ups in flight get `grace_s` to finish, then are cancelled (each
        counted `cancelled`)."""
        tasks = set(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
