"""One owner for each shared fact: turns and refusals ask the same place, so they cannot drift.

Each test changes or reads the fact at its owner and checks that every path that uses it follows:
a served turn and a refused request (the two ways a request is counted and logged) through the
app on a scripted engine, in process.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from server.app.responses import TURN_GRACE_S, Completion, PlainStream
from server.base import errors
from server.base.logs import JsonFormatter, TextFormatter
from server.base.outcomes import Outcome
from server.base.settings import ModelsSettings, Settings
from server.serving.lifecycle import Runtime
from server.serving.metrics import Metrics
from tests.scripted_engine import FALLBACK, STALL, ScriptedEngine, scripted_turn, serve_settings

SERVER = Path(__file__).resolve().parents[2] / "server"
AUTH = "test-code-0123456789"
HEADERS = {"Authorization": AUTH}
MESSAGES = [{"role": "user", "content": "Is my table booked?"}]


def _settings(model: Path, **sections: Any) -> Settings:
    alias = {"fallback_text": FALLBACK, "system_prompt": "You are a phone agent."}
    return Settings(
        engine={"model": str(model)},
        models={"default": "qwen-plus", "aliases": {"qwen-plus": alias, "qwen-max": alias}},
        **sections,
    )


@asynccontextmanager
async def _serve(
    settings: Settings, engine: ScriptedEngine
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    async with serve_settings(settings, engine.factory, AUTH) as served:
        yield served


def _counted(runtime: Runtime, alias: str, outcome: str) -> float:
    return runtime.metrics.requests.labels(alias, outcome)._value.get()


def _written_in(literal: str) -> set[str]:
    """The modules of server/ whose code has `literal` as a whole string constant (docstrings
    and descriptions that mention it are longer strings)."""
    found = set()
    for path in SERVER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == literal:
                found.add(str(path.relative_to(SERVER.parent)))
    return found


# -- the alias rule: ModelsSettings.alias_for ---------------------------------------------------


def test_a_configured_model_is_its_own_alias_and_any_other_name_the_default() -> None:
    models = ModelsSettings(default="qwen-plus", aliases={"qwen-plus": {}, "qwen-max": {}})
    assert models.alias_for("qwen-max") == "qwen-max"
    assert models.alias_for("qwen-plus") == "qwen-plus"
    assert models.alias_for("gpt-4o") == "qwen-plus"
    assert models.alias_for("") == "qwen-plus"  # refused before the body was read


def test_turns_and_refusals_take_their_alias_from_the_one_rule(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the rule says is what both paths count under: here, everything is qwen-max.
    monkeypatch.setattr(ModelsSettings, "alias_for", lambda self, model: "qwen-max")
    served, refusing = ScriptedEngine(["Yes."]), ScriptedEngine(refuse="no such sampling value")

    async def scenario(engine: ScriptedEngine, outcome: str, status: int) -> None:
        async with _serve(_settings(tiny_model_dir), engine) as (client, runtime):
            body = {"model": "qwen-plus", "messages": MESSAGES}
            response = await client.post("/", json=body, headers=HEADERS)
            assert response.status_code == status
            assert _counted(runtime, "qwen-max", outcome) == 1
            assert _counted(runtime, "qwen-plus", outcome) == 0

    asyncio.run(scenario(served, "stop", 200))
    asyncio.run(scenario(refusing, "invalid", 400))


# -- Retry-After: server.base.errors.retry_after ------------------------------------------------


def test_every_503_says_retry_after_from_the_one_setting(tiny_model_dir: Path) -> None:
    # Two paths refuse with a 503: the runtime's (draining) and the switchboard's (full).
    settings = _settings(tiny_model_dir, limits={"retry_after_s": 7})

    async def scenario(engine: ScriptedEngine, drain: bool, code: str) -> None:
        async with _serve(settings, engine) as (client, runtime):
            if drain:
                runtime.begin_drain()
            response = await client.post("/", json={"messages": MESSAGES}, headers=HEADERS)
            assert (response.status_code, response.json()["code"]) == (503, code)
            assert response.headers["Retry-After"] == "7"

    asyncio.run(scenario(ScriptedEngine(["Yes."]), True, "server_draining"))
    asyncio.run(scenario(ScriptedEngine(["Yes."], overloaded=True), False, "server_overloaded"))


def test_the_retry_after_header_is_built_in_one_place() -> None:
    assert _written_in("Retry-After") == {"server/base/errors.py"}


# -- the outcome names: server.base.outcomes.Outcome --------------------------------------------


def test_the_metrics_declare_every_outcome_as_before() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.declare(["qwen-plus"])
    (family,) = metrics.requests.collect()
    declared = [s.labels["outcome"] for s in family.samples if s.name == "callgate_requests_total"]
    assert declared == [o.value for o in Outcome]
    assert declared == [
        "stop", "length", "client_gone", "deadline", "superseded", "error", "rejected", "invalid",
        "unauthorized", "draining",
    ]  # fmt: skip


def test_an_outcome_is_its_plain_word_in_labels_logs_and_json() -> None:
    assert (str(Outcome.CLIENT_GONE), f"{Outcome.CLIENT_GONE}") == ("client_gone", "client_gone")
    line = logging.LogRecord(
        "callgate.turn", logging.INFO, "", 0, "turn %s %s", ("r", Outcome.STOP), None
    )
    assert line.getMessage() == "turn r stop"
    assert json.dumps({"outcome": Outcome.STOP}) == '{"outcome": "stop"}'


def test_every_error_is_counted_under_an_outcome() -> None:
    classes = [errors.CallgateError]
    for cls in classes:
        assert isinstance(cls.outcome, Outcome), cls
        classes.extend(cls.__subclasses__())
    assert len(classes) > 10


def _outcome_written_as_a_string(tree: ast.AST) -> list[int]:
    """Lines where an outcome is set, compared or handed to `interrupt` as a bare string."""

    def is_outcome(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "outcome") or (
            isinstance(node, ast.Attribute) and node.attr == "outcome"
        )

    def strings(node: ast.AST | None) -> bool:
        return node is not None and any(
            isinstance(n, ast.Constant) and isinstance(n.value, str) for n in ast.walk(node)
        )

    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if is_outcome(target) and strings(node.value):
                    bad.append(node.lineno)
                elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    for t, v in zip(target.elts, node.value.elts, strict=False):
                        if is_outcome(t) and strings(v):
                            bad.append(node.lineno)
        elif isinstance(node, ast.Compare) and any(
            is_outcome(n) for n in [node.left, *node.comparators]
        ):
            if any(strings(n) for n in [node.left, *node.comparators]):
                bad.append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "interrupt"
            and any(strings(a) for a in node.args)
        ):
            bad.append(node.lineno)
    return bad


def test_no_outcome_is_spelled_outside_its_enum() -> None:
    bad = {
        str(path.relative_to(SERVER.parent)): lines
        for path in SERVER.rglob("*.py")
        if (lines := _outcome_written_as_a_string(ast.parse(path.read_text())))
    }
    assert not bad


def test_the_outcome_scan_finds_a_bare_string() -> None:
    source = """
rec.outcome = rec.outcome or "client_gone"
status, code, outcome = 400, "x", "invalid"
if turn.record.outcome not in ("stop", "length"): pass
turn.interrupt("draining")
rec.outcome = Outcome.STOP
"""
    assert _outcome_written_as_a_string(ast.parse(source)) == [2, 3, 4, 5]


# -- the log line's fields: server.serving.turn_log ---------------------------------------------

HEAD = ["time", "level", "logger", "pid", "message", "event", "request_id", "session_id"]


def test_served_and_refused_requests_log_one_line_each_in_the_one_shape(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"model": "qwen-max", "session_id": "call-1", "out_id": "o-1", "messages": MESSAGES}

    async def scenario(engine: ScriptedEngine, rid: str) -> None:
        async with _serve(_settings(tiny_model_dir), engine) as (client, _):
            await client.post("/", json=body, headers={**HEADERS, "X-Request-Id": rid})

    with caplog.at_level(logging.INFO, logger="callgate.turn"):
        asyncio.run(scenario(ScriptedEngine(["Yes."]), "served"))
        asyncio.run(scenario(ScriptedEngine(refuse="top_k must be -1 or positive"), "refused"))
    served, refused = (r for r in caplog.records if r.name == "callgate.turn")

    line = json.loads(JsonFormatter().format(served))
    assert list(line) == [
        *HEAD, "out_id", "model", "alias", "call", "outcome", "prompt_tokens", "cached_tokens",
        "output_tokens", "dropped_turns", "ttft_ms", "first_clause_ms", "total_ms", "stream",
    ]  # fmt: skip
    assert line["message"] == "turn served stop"
    assert (line["session_id"], line["out_id"], line["model"], line["alias"]) == (
        "call-1", "o-1", "qwen-max", "qwen-max",
    )  # fmt: skip
    assert (line["outcome"], line["output_tokens"], line["stream"]) == ("stop", 1, False)
    assert isinstance(line["ttft_ms"], float) and line["total_ms"] >= line["ttft_ms"]

    line = json.loads(JsonFormatter().format(refused))
    assert list(line) == [
        *HEAD, "model", "alias", "call", "outcome", "status", "error", "total_ms",
    ]  # fmt: skip
    assert line["message"] == "turn refused invalid"
    assert (line["model"], line["alias"], line["outcome"], line["status"]) == (
        "qwen-max", "qwen-max", "invalid", 400,
    )  # fmt: skip
    assert line["error"] == "top_k must be -1 or positive"
    text = TextFormatter().format(refused)
    assert text.endswith(
        "turn refused invalid request_id=refused session_id=call-1 model=qwen-max "
        'alias=qwen-max call=first outcome=invalid status=400 error="top_k must be -1 or positive" '
        f"total_ms={line['total_ms']}"
    )


def test_the_log_lines_fields_are_named_in_one_module() -> None:
    for name in ("total_ms", "ttft_ms", "dropped_turns", "disconnect_stage", "speech_filtered"):
        assert _written_in(name) == {"server/serving/turn_log.py"}, name


# -- turn_s: the turn's own deadline (TurnPlan.turn_s -> Turn.deadline) ------------------------


def _used_in(name: str) -> set[str]:
    """The modules of server/ that read an attribute `name` or pass a keyword `name`."""
    found = set()
    for path in SERVER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == name) or (
                isinstance(node, ast.keyword) and node.arg == name
            ):
                found.add(str(path.relative_to(SERVER.parent)))
    return found


def test_turn_s_goes_from_the_settings_to_the_plan_to_the_turn_only() -> None:
    assert _used_in("turn_s") == {"server/serving/switchboard.py", "server/serving/turn.py"}


@pytest.mark.parametrize("response", [Completion, PlainStream])
def test_the_response_cuts_a_turn_that_will_not_end_after_its_own_deadline(
    response: type[Completion | PlainStream],
) -> None:
    # An engine that ignores the deadline's abort: only the response's cut ends the turn, at
    # the turn's deadline (turn_s after arrival) plus the grace, whatever the settings say.
    engine = ScriptedEngine(script=["Hold on", STALL], hung=True)
    turn = scripted_turn(engine, turn_s=0.05)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # a caller who stays
        return {}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    kwargs: dict[str, Any] = {"headers": {}}
    if response is PlainStream:
        kwargs["ping_s"] = 0
    asgi = response(turn, **kwargs)
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}}

    async def run() -> float:
        start = time.perf_counter()
        await asyncio.wait_for(asgi(scope, receive, send), 30)  # bounds a broken test only
        return time.perf_counter() - start

    took = asyncio.run(run())
    assert TURN_GRACE_S <= took < TURN_GRACE_S + 5
    assert engine.aborts and turn.record.outcome == "deadline"
    body = b"".join(m.get("body", b"") for m in sent)
    assert b"Hold on" in body
    if response is Completion:
        assert json.loads(body)["choices"][0]["message"]["content"] == "Hold on " + FALLBACK
