"""Fixtures: the tiny checkpoint, callgate server processes, and an HTTP helper for API tests.

API tests run against a real `python -m server` subprocess with the real vLLM engine on a tiny
random-weight checkpoint (vLLM's `RemoteOpenAIServer` pattern): the subprocess boundary is what
the gateway sees, and it keeps the engine's spawned core process out of pytest. Servers are
started by the harness the benchmarks use (`benchmarks/lib/servers.py`); `server_side` is
callgate as the tests run it. Engine start-up costs 30-60 s on this machine, so everything
that can share one server uses the session `server`, and modules whose settings do not conflict
share one of a few others (`guarded_server`, `narrow_server`, `busy_slot`: see "the shared
servers" below); tests that need settings of their own use `start_server(env=..., config=...)`,
and a module whose tests end its server (engine death, draining) holds it in a `ServerSlot`, so
that no test depends on running last. A test that needs any server but `server` is marked
`slow`; one that a vLLM release could break (the engine adapter's paths) is marked `compat`
(`make test-compat` runs those on the GPU host's release).

Checkpoints with Qwen's real vocabulary and chat templates (`benchmarks/lib/qwen_checkpoint.py`)
are `qwen_model_dir` (Qwen2.5) and `qwen3_model_dir` (Qwen3, for thinking), for the unit tier's
tokenizer tests and the model tier, whose servers on them are in `tests/models/conftest.py`.
What a test uses to talk to a server and judge the reply is `tests/wire/`.

Public fixtures: `tiny_model_dir`, `qwen_model_dir`, `qwen3_model_dir`, `lora_adapter_dir`,
`start_server`, `server`, `guarded_server`, `narrow_server`, `busy_slot`, `api`, `make_api`,
`chat_body`.
"""

from __future__ import annotations

import contextlib
import copy
import subprocess
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
import pytest
import yaml

from benchmarks.lib import qwen_checkpoint
from benchmarks.lib.servers import (
    REPO,
    Running,
    ServerFailed,
    Side,
    callgate_side,
    free_port,
    launch,
    tail,
    wait_ready,
)
from benchmarks.lib.tiny_checkpoint import build
from tests.wire import ChatStream, assert_error, parse_chat_stream

REPO_ROOT = REPO
TINY_CONFIG = Path(__file__).resolve().parent / "tiny.yaml"
AUTH_CODE = "test-code-0123456789"
READY_TIMEOUT_S = 240.0

T = TypeVar("T")

# The shape of a turn the gateway sends: the bot's opening line, then the caller's question.
OPENING = "Hello, valued Alibaba Cloud customer. This is a test of the opening message."


@dataclass
class ServerHandle:
    """A running callgate subprocess: where it listens and how to read its log."""

    url: str
    auth: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    model_dir: Path | None
    env: dict[str, str] = field(repr=False)

    def log_text(self) -> str:
        """The server's combined stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    @property
    def admin_url(self) -> str:
        """Where `/metrics` is served when the server has an admin port."""
        return f"http://127.0.0.1:{self.env['CALLGATE_SERVER__ADMIN_PORT']}"

    @property
    def metrics_url(self) -> str:
        """`/metrics`: on the admin port when there is one, else on the main port."""
        has_admin = "CALLGATE_SERVER__ADMIN_PORT" in self.env
        return f"{self.admin_url if has_admin else self.url}/metrics"


def server_side(
    model_dir: Path | None,
    *,
    env: dict[str, str] | None = None,
    config: Path | str | None = None,
    extra_args: list[str] | None = None,
) -> Side:
    """callgate as the tests run it: `tests/tiny.yaml` unless `config`, the test auth code, a
    1 GiB KV cache and JSON logs, then `env` on top. Without `model_dir`, the config's
    `engine.model` is served, as `make run` does."""
    defaults = {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "CALLGATE_SERVER__LOG_FORMAT": "json",
        **(env or {}),
    }
    return callgate_side(
        model_dir,
        config or TINY_CONFIG,
        auth=AUTH_CODE,
        env=defaults,
        name="server",
        extra_args=tuple(extra_args or ()),
    )


@contextlib.contextmanager
def launch_server(
    model_dir: Path | None,
    log_dir: Path,
    *,
    env: dict[str, str] | None = None,
    config: Path | str | None = None,
    extra_args: list[str] | None = None,
    wait_ready: bool = True,
    ready_timeout_s: float = READY_TIMEOUT_S,
    shared: bool = False,
) -> Iterator[ServerHandle]:
    """Run `python -m server` on a free port until the block exits (see `start_server`). Unless
    the server is one of the shared ones, the test it starts for must be marked `slow`."""
    if not shared and _running and _running[-1].get_closest_marker("slow") is None:
        pytest.fail(f"{_running[-1].nodeid} starts a server of its own: mark it `slow`")
    side = server_side(model_dir, env=env, config=config, extra_args=extra_args)
    try:
        with launch(
            side, log_dir, ready=wait_ready, timeout_s=ready_timeout_s, stop_timeout_s=30.0
        ) as running:
            assert running.proc is not None
            yield ServerHandle(
                url=running.base_url,
                auth=running.env["CALLGATE_AUTH_CODES"].split(",")[0].strip(),
                proc=running.proc,
                log_path=running.log_path,
                model_dir=None if model_dir is None else Path(model_dir),
                env=running.env,
            )
    except ServerFailed as exc:
        pytest.fail(str(exc), pytrace=False)


class ServerSlot(Generic[T]):
    """A server that a destructive test may use up, so that no test depends on running last:
    `get()` gives the running server, starting one if none runs or the last was used up;
    `use_up()` gives it to a test that will end it, and the next `get()` starts a fresh one.
    Ordered as it is now, the destructive test comes last and nothing is started twice."""

    def __init__(self, start: Callable[[], contextlib.AbstractContextManager[T]]) -> None:
        self._start = start
        self._stack = contextlib.ExitStack()
        self._current: T | None = None

    def get(self) -> T:
        """The module's running server."""
        if self._current is None:
            self._current = self._stack.enter_context(self._start())
        return self._current

    def use_up(self) -> T:
        """The running server, for a test that ends it; the next `get()` starts another."""
        current = self.get()
        self._current = None
        return current

    def __enter__(self) -> ServerSlot[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight Qwen2 checkpoint, built once per session (a few seconds)."""
    return build(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def qwen_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight checkpoint with Qwen2.5's real tokenizer and chat template (about
    8 s, most of it importing transformers and converting the 151,643 BPE ranks)."""
    return qwen_checkpoint.build(tmp_path_factory.mktemp("qwen-model"))


@pytest.fixture(scope="session")
def qwen3_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same with Qwen3's added tokens (`<think>`, ...) and chat template (`enable_thinking`)."""
    return qwen_checkpoint.build(tmp_path_factory.mktemp("qwen3-model"), qwen3=True)


@pytest.fixture(scope="session")
def start_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., contextlib.AbstractContextManager[ServerHandle]]:
    """Factory: `with start_server(env={...}, config=path) as srv:` runs a server of its own.

    Defaults: `tests/tiny.yaml`, the tiny checkpoint, auth code `test-code`, JSON logs. Returns
    once `GET /ready` is 200 (unless `wait_ready=False`); fails fast with the log tail if the
    process exits. On exit: SIGTERM, then SIGKILL after 30 s.
    """

    def factory(
        env: dict[str, str] | None = None,
        config: Path | str | None = None,
        **kwargs: Any,
    ) -> contextlib.AbstractContextManager[ServerHandle]:
        log_dir = tmp_path_factory.mktemp("server-logs")
        return launch_server(tiny_model_dir, log_dir, env=env, config=config, **kwargs)

    return factory


# -- the shared servers ---------------------------------------------------------------------
#
# Every engine start costs 30-60 s here, so modules whose settings do not conflict share a
# session server: `server` (tests/tiny.yaml as it is), `guarded_server`, `narrow_server` and the
# `busy_slot`. A test that needs any server but `server` is marked `slow` (checked at
# collection). The ones a run needs start before its first test, two at a time, and stop at its end.

# The guarded server's connection limits: short, so that the attacks on it take seconds.
GUARDED = {"head_timeout_s": 2.0, "body_timeout_s": 3.0, "max_connections": 24}
# The LoRA alias that the guarded server also serves (tests/models/test_lora.py): qwen-plus's
# prompt through a tiny adapter.
HOTEL = "qwen-plus-hotel"

# The narrow server: one setting or two for each of four modules, none of which the others
# notice (each module says why it needs its own):
NARROW: dict[str, dict[str, Any]] = {
    # test_security_pipelining: a short keep-alive, a write timeout, few pipelined requests;
    # test_api_seams: the turn line says what was said (and, by `--log-format text`, as text).
    "server": {"keep_alive_s": 3, "write_timeout_s": 2.0, "max_pipelined": 8, "log_content": True},
    "limits": {"max_in_flight": 1},  # test_security_body_cost: one stream fills the server
    "sampling": {"max_tokens": 2000},  # test_api_seams, test_security_body_cost: long turns
    # test_security_seed: prompts prefilled in chunks of 64 tokens.
    "engine": {"enable_chunked_prefill": True, "max_num_batched_tokens": 64},
}

# The busy server's sizes; tests/reliability/test_reliability_hangup.py says why each.
BUSY: dict[str, dict[str, Any]] = {
    "engine": {
        "max_num_seqs": 4,
        "max_model_len": 16384,  # past the tiny checkpoint's 4096 positions (see `busy_env`)
        "max_num_batched_tokens": 256,
        "enable_chunked_prefill": True,  # tests/tiny.yaml turns it off (for seeds)
    },
    "sampling": {"max_tokens": 16_000},
    "limits": {"max_in_flight": 16, "new_call_max_in_flight": 12},
    "deadlines": {"turn_s": 20.0},
}


def settings_env(sections: dict[str, dict[str, Any]]) -> dict[str, str]:
    """`{"server": {"keep_alive_s": 3}}` as `{"CALLGATE_SERVER__KEEP_ALIVE_S": "3"}`."""
    return {
        f"CALLGATE_{section.upper()}__{key.upper()}": str(value).lower()
        if isinstance(value, bool)
        else str(value)
        for section, values in sections.items()
        for key, value in values.items()
    }


def busy_env() -> dict[str, str]:
    """The busy server's environment: `BUSY`, with vLLM allowed past the model's positions."""
    return {**settings_env(BUSY), "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}


def lora_config(dest: Path, lora: str) -> Path:
    """tests/tiny.yaml plus `HOTEL`: qwen-plus's prompt, through adapter `lora`."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    aliases = config["models"]["aliases"]
    aliases[HOTEL] = {**aliases["qwen-plus"], "lora": lora}
    path = dest / "lora.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def lora_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LoRA adapter for the tiny checkpoint (`benchmarks/lib/tiny_adapter.py`)."""
    from benchmarks.lib.tiny_adapter import build_adapter  # imports torch and peft

    return build_adapter(tiny_model_dir, tmp_path_factory.mktemp("hotel-adapter"))


class SharedServers:
    """The session's shared servers. The first test that needs one starts every one the run
    needs, `AT_ONCE` at a time, and waits until all are ready, so no test runs beside a
    start-up; they stop together at the session's end.

    Two at a time: a start-up is three processes importing vLLM one after another (the API
    process, the engine core, its worker). On a warm machine the four took 76 s at once against
    95 s two at a time, but in a fresh-clone CI run, with both new environments in the page
    cache, 123 s at once against 87 s two at a time (memory: twelve such processes at once)."""

    AT_ONCE = 2

    def __init__(
        self,
        starts: dict[str, Callable[[], contextlib.AbstractContextManager[ServerHandle]]],
        needed: set[str],
    ) -> None:
        self._starts = starts
        self._needed = needed
        self._running: list[contextlib.AbstractContextManager[ServerHandle]] = []
        self._started: dict[str, ServerHandle] = {}
        self._failed: dict[str, str] = {}

    def get(self, name: str) -> ServerHandle:
        """Server `name`, ready; on the first call, every one the run needs starts with it."""
        names = [name] if self._started else sorted(self._needed | {name})
        fresh = [n for n in names if n not in self._started]
        for wave in (fresh[i : i + self.AT_ONCE] for i in range(0, len(fresh), self.AT_ONCE)):
            for each in wave:
                self._running.append(self._starts[each]())
                self._started[each] = self._running[-1].__enter__()
            for each in wave:
                try:
                    wait_until_ready(self._started[each])
                except pytest.fail.Exception as exc:  # failed for its own users, not this one's
                    self._failed[each] = str(exc)
        if name in self._failed:
            pytest.fail(self._failed[name], pytrace=False)
        return self._started[name]

    def close(self) -> None:
        """Stop them all at once: each takes seconds, mostly waiting on vLLM's shutdown."""
        with ThreadPoolExecutor(max(1, len(self._running))) as pool:
            list(pool.map(lambda running: running.__exit__(None, None, None), self._running))


def wait_until_ready(handle: ServerHandle) -> None:
    """Block until `GET /ready` is 200; fail with the log tail if the process exits first."""
    running = Running("server", handle.url, "", [], handle.log_path, 0.0, handle.proc.pid)
    running.proc = handle.proc
    try:
        wait_ready(running, "/ready", READY_TIMEOUT_S)
    except ServerFailed as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def _shared(
    request: pytest.FixtureRequest,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SharedServers]:
    def start(**kwargs: Any) -> Callable[[], contextlib.AbstractContextManager[ServerHandle]]:
        def launched() -> contextlib.AbstractContextManager[ServerHandle]:
            log_dir = tmp_path_factory.mktemp("server-logs")
            return launch_server(tiny_model_dir, log_dir, wait_ready=False, shared=True, **kwargs)

        return launched

    def guarded() -> contextlib.AbstractContextManager[ServerHandle]:
        env = settings_env({"server": {**GUARDED, "admin_port": free_port()}})
        env["CALLGATE_SAMPLING__MAX_TOKENS"] = "1000"  # streams long enough to watch for pauses
        adapter = request.getfixturevalue("lora_adapter_dir")
        config = lora_config(tmp_path_factory.mktemp("lora-config"), str(adapter))
        return start(env=env, config=config)()

    starts = {
        "server": start(),
        "guarded_server": guarded,
        "narrow_server": start(env=settings_env(NARROW), extra_args=["--log-format", "text"]),
        "busy_slot": start(env=busy_env()),
    }
    uses = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    shared = SharedServers(starts, needed=uses & set(starts))
    yield shared
    shared.close()


@pytest.fixture(scope="session")
def server(_shared: SharedServers) -> ServerHandle:
    """The shared callgate server on `tests/tiny.yaml`. Tests must not change its state."""
    return _shared.get("server")


@pytest.fixture(scope="session")
def guarded_server(_shared: SharedServers) -> ServerHandle:
    """The server for the connection-level attacks (`GUARDED` limits) and the admin port
    (`handle.admin_url`): its connection cap must not refuse other modules' calls. It also
    serves the LoRA alias `HOTEL` (`lora_adapter_dir`), which no connection limit touches."""
    return _shared.get("guarded_server")


@pytest.fixture(scope="session")
def narrow_server(_shared: SharedServers) -> ServerHandle:
    """The server with `NARROW`'s settings and text logs. Tests leave it idle."""
    return _shared.get("narrow_server")


@pytest.fixture(scope="session")
def busy_slot(
    _shared: SharedServers,
    start_server: Callable[..., contextlib.AbstractContextManager[ServerHandle]],
) -> Iterator[ServerSlot[ServerHandle]]:
    """The busy server (`BUSY`: long turns, a small engine, a turn deadline) for the hang-up and
    cancel tests, in a slot: the hang-up module's engine-death test uses it up, last."""
    first = [_shared.get("busy_slot")]

    def next_server() -> contextlib.AbstractContextManager[ServerHandle]:
        if first:
            return contextlib.nullcontext(first.pop())  # stopped with the shared ones
        return start_server(env=busy_env())

    with ServerSlot(next_server) as slot:
        yield slot


# The test being run, for `launch_server`'s check.
_running: list[pytest.Item] = []

# Fixtures that give a server other than `server`; a test that starts one directly
# (`launch_server`, a script that starts servers) is marked by hand, and `launch_server` checks.
OWN_SERVERS = {"start_server", "guarded_server", "narrow_server", "busy_slot"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`slow` means "needs a server other than the shared `server`": refuse a run in which a
    test that uses one is not marked so."""
    unmarked = [
        item.nodeid
        for item in items
        if OWN_SERVERS & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError("not marked `slow`, yet start a server:\n" + "\n".join(unmarked))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of every server log a failed test used, so failures explain themselves."""
    report = yield
    if report.failed and call.when == "call":
        funcargs = getattr(item, "funcargs", {})
        handles = {id(v): v for v in funcargs.values() if isinstance(v, ServerHandle)}
        handles.update({id(v.handle): v.handle for v in funcargs.values() if isinstance(v, Api)})
        for handle in handles.values():
            report.sections.append((f"server log tail ({handle.url})", tail(handle.log_path)))
    return report


class Api:
    """Thin HTTP helper for one server: post chat requests, parse streams, check errors."""

    def __init__(self, handle: ServerHandle, client: httpx.Client) -> None:
        self.handle = handle
        self.client = client

    def headers(self, auth: str | None = "raw") -> dict[str, str]:
        """Request headers with the auth code raw (`auth="raw"`), as `Bearer`, or none."""
        if auth == "raw":
            return {"Authorization": self.handle.auth}
        if auth == "bearer":
            return {"Authorization": f"Bearer {self.handle.auth}"}
        return {}

    def post(
        self,
        body: dict[str, Any] | bytes | str,
        *,
        path: str = "/",
        headers: dict[str, str] | None = None,
        auth: str | None = "raw",
    ) -> httpx.Response:
        """POST a chat request (a dict is sent as JSON, bytes/str as the raw body)."""
        all_headers = {**self.headers(auth), **(headers or {})}
        url = f"{self.handle.url}{path}"
        if isinstance(body, dict):
            return self.client.post(url, json=body, headers=all_headers)
        all_headers.setdefault("Content-Type", "application/json")
        return self.client.post(url, content=body, headers=all_headers)

    def stream(self, body: dict[str, Any], **kwargs: Any) -> tuple[httpx.Response, ChatStream]:
        """POST a streaming request, assert 200, and parse the whole body strictly."""
        response = self.post(body, **kwargs)
        assert response.status_code == 200, response.text
        return response, parse_chat_stream(response.content)

    def complete(self, body: dict[str, Any], **kwargs: Any) -> tuple[httpx.Response, Any]:
        """POST a `stream: false` request, assert 200, return the response and its JSON."""
        response = self.post({**body, "stream": False}, **kwargs)
        assert response.status_code == 200, response.text
        return response, response.json()

    # Assert `status` and the error body with both shapes (`tests/wire/http.py`).
    assert_error = staticmethod(assert_error)

    def metrics_text(self) -> str:
        """The Prometheus exposition of `GET /metrics`."""
        response = self.client.get(self.handle.metrics_url, headers=self.headers())
        assert response.status_code == 200, response.text
        return response.text


@pytest.fixture(scope="session")
def _http_client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0)) as client:
        yield client


@pytest.fixture(scope="session")
def api(server: ServerHandle, _http_client: httpx.Client) -> Api:
    """`Api` bound to the shared session server."""
    return Api(server, _http_client)


@pytest.fixture(scope="session")
def make_api(_http_client: httpx.Client) -> Callable[[ServerHandle], Api]:
    """Factory: `make_api(handle)` gives an `Api` for a server from `start_server`."""
    return lambda handle: Api(handle, _http_client)


@pytest.fixture(scope="session")
def chat_body() -> Callable[..., dict[str, Any]]:
    """Factory for a gateway-shaped request; keyword arguments override or add fields.

    Default: streaming, `qwen-plus`, the opening line then a user question, `max_tokens` 8.
    """
    base: dict[str, Any] = {
        "model": "qwen-plus",
        "messages": [
            {"role": "assistant", "content": OPENING},
            {"role": "user", "content": "What is this about?"},
        ],
        "stream": True,
        "max_tokens": 8,
    }

    def make(**overrides: Any) -> dict[str, Any]:
        body = copy.deepcopy(base)
        body.update(overrides)
        return body

    return make
