"""Hanging up a call the model ended (`server/serving/hangup.py`): the SDK's real signed
`HangupOperate` request to a local stand-in for Alibaba's API, the bounded retries, the skips,
once per call, and shutdown. The turn's side (when a turn asks) is tests/unit/test_end_call.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import pytest

from server.base.settings import HangupSettings
from server.serving.hangup import AlibabaHangupApi, HangupOutcome, Hangups
from tests.wire.aliyun import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    OK,
    STALL,
    AliyunStandIn,
)


def static_key() -> Any:
    """The SDK's credential client on the test key (the server's reads the default chain)."""
    from alibabacloud_credentials.client import Client
    from alibabacloud_credentials.models import Config

    return Client(
        Config(type="access_key", access_key_id=ACCESS_KEY_ID, access_key_secret=ACCESS_KEY_SECRET)
    )


def no_key() -> Any:
    """A credential chain that finds nothing (as a server without any key)."""
    from alibabacloud_credentials.client import Client
    from alibabacloud_credentials.exceptions import CredentialException

    class Nothing:
        def get_credentials(self) -> None:
            raise CredentialException("no credentials anywhere in the chain")

        async def get_credentials_async(self) -> None:
            self.get_credentials()

        def get_provider_name(self) -> str:
            return "nothing"

    return Client(provider=Nothing())


class Counts(Counter[HangupOutcome]):
    def __call__(self, model: str, outcome: HangupOutcome) -> None:
        self[outcome] += 1


def hangups(
    api: AliyunStandIn | None, credential: Any = None, **settings: Any
) -> tuple[Hangups, Counts]:
    values = {"timeout_s": 1.0, "attempts": 3, "backoff_s": 0.01, **settings}
    if api is not None:
        values["endpoint"] = api.endpoint
    s = HangupSettings(**values)
    counts = Counts()
    client = AlibabaHangupApi(s, credential or static_key()) if api is not None else None
    return Hangups(s, counts, api=client), counts


async def settle(h: Hangups) -> None:
    while h.pending:
        await asyncio.sleep(0.01)


def test_one_signed_hangup_operate_with_the_call_id_and_after_playback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with AliyunStandIn() as api:
        h, counts = hangups(api)

        async def go() -> None:
            assert h.request("assistant", "call-42", "r1") is None  # decided in the background
            await settle(h)

        asyncio.run(go())
    [call] = api.calls
    assert call.method == "POST" and call.path == "/"
    assert call.action == "HangupOperate"
    assert call.headers["x-acs-version"] == "2019-10-15"
    # "False": the SDK's own rendering of the bool (Python's str), as every Python client of
    # the API sends it.
    assert call.query == {"CallId": "call-42", "ImmediateHangup": "False"}
    assert call.signed, call.headers  # the test key's signature, checked by the stand-in
    assert counts == {HangupOutcome.SENT: 1}
    assert "hangup sent: session_id=call-42 request_id=r1" in caplog.text
    assert ACCESS_KEY_SECRET not in caplog.text


@pytest.mark.parametrize(
    ("answers", "outcome", "attempts"),
    [
        ([(500, {"Code": "ServiceUnavailable"})], HangupOutcome.FAILED, 3),
        ([STALL], HangupOutcome.FAILED, 3),  # each attempt times out
        ([(503, {"Code": "Busy"}), OK], HangupOutcome.SENT, 2),  # a retry that works
        ([(403, {"Code": "Forbidden.RAM", "Message": "no"})], HangupOutcome.REJECTED, 1),
        ([(200, {"Code": "NotExists.CallId", "Result": False})], HangupOutcome.REJECTED, 1),
    ],
)
def test_failures_are_retried_a_bounded_number_of_times_and_counted(
    answers: list[Any], outcome: HangupOutcome, attempts: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "callgate.hangup")
    stalls = answers == [STALL]
    with AliyunStandIn(answers) as api:
        # A stalled API costs every attempt its whole timeout: short there, generous elsewhere
        # (a loaded machine must not turn an answer into a timeout).
        h, counts = hangups(api, timeout_s=0.3 if stalls else 5.0)

        async def go() -> None:
            h.request("assistant", "call-1", "r1")
            await settle(h)

        asyncio.run(go())
    assert counts == {outcome: 1}
    assert (
        f"hangup {outcome}: session_id=call-1 request_id=r1 model=assistant "
        f"attempts={attempts} " in caplog.text
    )
    # Every attempt that reached the API, and no more (a stalled attempt may time out before
    # the stand-in has read its request).
    assert 1 <= len(api.calls) <= attempts if stalls else len(api.calls) == attempts
    assert all(c.query["CallId"] == "call-1" for c in api.calls)


def test_no_session_and_no_configuration_skip_without_a_request() -> None:
    with AliyunStandIn() as api:
        h, counts = hangups(api)
        unconfigured, skipped = hangups(None)

        async def go() -> None:
            assert h.request("assistant", None, "r1") is HangupOutcome.NO_SESSION
            assert h.request("assistant", "", "r2") is HangupOutcome.NO_SESSION
            assert unconfigured.request("assistant", "call-1", "r3") is (
                HangupOutcome.NOT_CONFIGURED
            )

        asyncio.run(go())
        assert api.calls == []
    assert counts == {HangupOutcome.NO_SESSION: 2}
    assert skipped == {HangupOutcome.NOT_CONFIGURED: 1}
    assert not unconfigured.configured


def test_a_server_without_credentials_counts_not_configured() -> None:
    with AliyunStandIn() as api:
        h, counts = hangups(api, credential=no_key())

        async def go() -> None:
            h.request("assistant", "call-1", "r1")
            await settle(h)

        asyncio.run(go())
        assert api.calls == []  # nothing to sign with: nothing sent
    assert counts == {HangupOutcome.NOT_CONFIGURED: 1}


def test_a_call_is_hung_up_once() -> None:
    with AliyunStandIn() as api:
        h, counts = hangups(api)

        async def go() -> None:
            h.request("assistant", "call-1", "r1")
            assert h.request("assistant", "call-1", "r2") is HangupOutcome.DUPLICATE
            h.request("assistant", "call-2", "r3")
            await settle(h)

        asyncio.run(go())
        assert sorted(c.query["CallId"] for c in api.calls) == ["call-1", "call-2"]
    assert counts == {HangupOutcome.SENT: 2, HangupOutcome.DUPLICATE: 1}


def test_shutdown_waits_a_grace_period_then_cancels_and_counts() -> None:
    with AliyunStandIn([STALL]) as api:
        h, counts = hangups(api, timeout_s=5.0, attempts=1)

        async def go() -> None:
            h.request("assistant", "call-1", "r1")
            api_seen = asyncio.get_running_loop().run_in_executor(None, api.wait_for, 1)
            await api_seen
            await h.close(grace_s=0.1)
            assert h.pending == 0

        asyncio.run(go())
    assert counts == {HangupOutcome.CANCELLED: 1}


def test_the_endpoint_setting_is_a_host_or_a_url() -> None:
    from server.serving.hangup import _endpoint

    assert _endpoint(None) == (None, None)
    assert _endpoint("aiccs.aliyuncs.com") == ("aiccs.aliyuncs.com", None)
    assert _endpoint("http://127.0.0.1:9000") == ("127.0.0.1:9000", "HTTP")
