"""Model Address checker: `python -m benchmarks.check URL --auth CODE [--model NAME]`.

Sends what the communication engine's gateway sends (the seed's curl request, the documented
example, sampling values as strings, `topP`, an opening-line-only history, Chinese text, a wrong
and a missing code) and checks every protocol point the gateway or its peers are known to depend
on: status, content type, SSE framing, DashScope's chunk key order, one id per stream, the role
chunk first, a final `finish_reason`, `data: [DONE]`, and 401 on a wrong code. Prints a table of
points against requests with the TTFT each request saw; exits 1 if any point failed.

It judges the bytes on the wire, not what an OpenAI client library would tolerate, so it is as
useful against someone else's endpoint as against ours.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from rich.console import Console
from rich.table import Table

CHUNK_KEYS = ["choices", "object", "usage", "created", "system_fingerprint", "model", "id"]
CHOICE_KEYS = ["delta", "finish_reason", "index", "logprobs"]
FINISH_REASONS = {"stop", "length"}

# Point id -> what it checks (the table's row labels and the README's list).
POINTS: dict[str, str] = {
    "status": "200 (401 on a wrong/missing code)",
    "content_type": "text/event-stream",
    "framing": "`data: ` lines + blank line",
    "json": "payloads are JSON objects",
    "key_order": "DashScope chunk key order",
    "choice_keys": "choices[0] key order",
    "object": "chat.completion.chunk",
    "single_id": "one id, one created",
    "model_echo": "request's model echoed",
    "role_first": "role chunk first",
    "content": "non-empty content",
    "finish_reason": "final finish_reason",
    "done": "ends with data: [DONE]",
    "error_body": "JSON error body",
}

Status = Literal["pass", "fail", "warn"]


@dataclass
class Case:
    """One request the gateway could send, and whether it should stream or be refused."""

    name: str
    title: str
    body: dict[str, Any]
    auth: str | None
    expect: Literal["stream", "unauthorized"] = "stream"


@dataclass
class CaseResult:
    case: Case
    points: dict[str, tuple[Status, str]] = field(default_factory=dict)
    ttft_ms: float | None = None
    status_code: int | None = None

    def mark(self, point: str, ok: bool, detail: str = "", *, warn_only: bool = False) -> None:
        status: Status = "pass" if ok else ("warn" if warn_only else "fail")
        self.points[point] = (status, "" if ok else detail)

    @property
    def failed(self) -> bool:
        return any(s == "fail" for s, _ in self.points.values())


def build_cases(model: str, auth: str | None, max_tokens: int | None) -> list[Case]:
    """The seed's curl request and the variants real gateways and consoles produce."""
    opening = "This is a test opening message."
    curl = [
        {"role": "assistant", "content": opening},
        {"role": "user", "content": "Who are you?"},
    ]
    example = {
        "top_p": 0.1,
        "stream": True,
        "top_k": 1,
        "temperature": 0.1,
        "session_id": "147417592084^1341000001",
        "messages": [
            {
                "role": "assistant",
                "content": "Hello, valued Alibaba Cloud customer. This is a test of the opening "
                "message. We apologize for any inconvenience.",
            },
            {"role": "user", "content": "What is this about?"},
        ],
        "model": model,
        "biz_params": {"city": "Hangzhou"},
        "out_id": "222356001",
    }
    strings = {**example, "top_p": "0.1", "top_k": "1", "temperature": "0.1"}
    camel = {k: v for k, v in example.items() if k not in ("top_p", "top_k")}
    camel.update({"topP": 0.1, "topK": 1})
    chinese = {
        "model": model,
        "stream": True,
        "messages": [
            {"role": "assistant", "content": "您好，尊敬的阿里云客户，这是一条开场白测试消息。"},
            {"role": "user", "content": "请问这是关于什么的？"},
        ],
    }
    cases = [
        Case(
            "curl",
            "the seed's curl request",
            {"model": model, "messages": curl, "stream": True},
            auth,
        ),
        Case("example", "the seed's full example (numbers)", example, auth),
        Case("strings", "sampling values as strings", strings, auth),
        Case("topP", "topP/topK spelling", camel, auth),
        Case(
            "opening",
            "history is only the opening line",
            {"model": model, "messages": curl[:1], "stream": True},
            auth,
        ),
        Case("chinese", "Chinese text", chinese, auth),
    ]
    if auth:
        bearer = auth if auth.lower().startswith("bearer ") else f"Bearer {auth}"
        cases.append(Case("bearer", "`Bearer <code>` form", cases[0].body, bearer))
        wrong = "sk-callgate-check-wrong-" + auth[-4:][::-1] + "x"
        cases.append(Case("bad-auth", "wrong code", cases[0].body, wrong, "unauthorized"))
        cases.append(Case("no-auth", "no Authorization", cases[0].body, None, "unauthorized"))
    if max_tokens is not None:
        for case in cases:
            case.body = {**case.body, "max_tokens": max_tokens}
    return cases


def check_stream(result: CaseResult, events: list[tuple[float, str]], clean_end: bool) -> None:
    """Judge the events of a 200 stream; `events` are (arrival seconds, raw event text)."""
    framing_problems: list[str] = []
    payloads: list[tuple[float, str]] = []
    comments = 0
    for t, event in events:
        lines = event.split("\n")
        data_lines = [ln for ln in lines if ln.startswith("data:")]
        comment_lines = [ln for ln in lines if ln.startswith(":")]
        comments += len(comment_lines)
        other = [ln for ln in lines if ln not in data_lines and ln not in comment_lines]
        if other:
            framing_problems.append(f"unexpected line {other[0][:60]!r}")
        if len(data_lines) > 1:
            framing_problems.append("an event with several data: lines")
        for ln in data_lines:
            if not ln.startswith("data: "):
                framing_problems.append("`data:` without the space")
            payloads.append((t, ln[5:].strip()))
    if not clean_end:
        framing_problems.append("stream does not end with a blank line")
    result.mark("framing", not framing_problems, "; ".join(dict.fromkeys(framing_problems)))
    if comments and not framing_problems:
        result.points["framing"] = (
            "warn",
            f"{comments} SSE comment line(s): gateway parser unknown",
        )

    done_at = [i for i, (_, p) in enumerate(payloads) if p == "[DONE]"]
    if not done_at:
        result.mark("done", False, "no data: [DONE]")
    elif done_at[0] != len(payloads) - 1:
        result.mark("done", False, "events after [DONE]")
    else:
        result.mark("done", True)
    before_done = payloads[: done_at[0]] if done_at else payloads

    chunks: list[tuple[float, dict[str, Any]]] = []
    bad_json = []
    for t, p in before_done:
        try:
            obj = json.loads(p)
        except ValueError:
            bad_json.append(p[:60])
            continue
        if isinstance(obj, dict):
            chunks.append((t, obj))
        else:
            bad_json.append(p[:60])
    result.mark(
        "json",
        not bad_json and bool(chunks),
        f"not JSON objects: {bad_json[:2]}" if bad_json else "no chunks",
    )
    if not chunks:
        for point in (
            "key_order",
            "choice_keys",
            "object",
            "single_id",
            "model_echo",
            "role_first",
            "content",
            "finish_reason",
        ):
            result.mark(point, False, "no chunks")
        return
    _check_chunks(result, chunks)


def _check_chunks(result: CaseResult, chunks: list[tuple[float, dict[str, Any]]]) -> None:
    objs = [c for _, c in chunks]
    wrong_order = [list(c) for c in objs if list(c) != CHUNK_KEYS]
    result.mark("key_order", not wrong_order, f"got {wrong_order[0]}" if wrong_order else "")
    with_choice = [c for c in objs if isinstance(c.get("choices"), list) and c["choices"]]
    choice_keys = [list(c["choices"][0]) for c in with_choice if isinstance(c["choices"][0], dict)]
    bad_choice = [k for k in choice_keys if k != CHOICE_KEYS]
    result.mark(
        "choice_keys",
        not bad_choice and bool(choice_keys),
        f"got {bad_choice[0]}" if bad_choice else "no choices",
    )
    objects = {c.get("object") for c in objs}
    result.mark("object", objects == {"chat.completion.chunk"}, f"got {sorted(map(str, objects))}")
    ids = {c.get("id") for c in objs}
    created = {c.get("created") for c in objs}
    result.mark(
        "single_id",
        len(ids) == 1 and None not in ids and len(created) == 1,
        f"{len(ids)} ids, {len(created)} created values",
    )
    models = {c.get("model") for c in objs}
    want = result.case.body.get("model")
    result.mark("model_echo", models == {want}, f"sent {want!r}, got {sorted(map(str, models))}")

    deltas = [c["choices"][0].get("delta") or {} for c in with_choice]
    first = deltas[0] if deltas else {}
    role_ok = first.get("role") == "assistant" and not first.get("content")
    exact = first == {"content": "", "role": "assistant"} and list(first) == ["content", "role"]
    if role_ok and not exact:
        result.points["role_first"] = ("warn", f"first delta {json.dumps(first)}")
    else:
        result.mark("role_first", role_ok, f"first delta {json.dumps(first)[:80]}")

    content_times = [
        t
        for t, c in chunks
        if c.get("choices") and ((c["choices"][0].get("delta") or {}).get("content"))
    ]
    result.mark("content", bool(content_times), "no chunk with non-empty content")

    reasons = [c["choices"][0].get("finish_reason") for c in with_choice]
    last = reasons[-1] if reasons else None
    early = [r for r in reasons[:-1] if r is not None]
    result.mark(
        "finish_reason",
        last in FINISH_REASONS and not early,
        f"last {last!r}" + (f", earlier {early[:2]}" if early else ""),
    )
    if content_times:
        result.ttft_ms = content_times[0] * 1000


def run_case(client: httpx.Client, url: str, case: Case) -> CaseResult:
    """Send one case and judge the response."""
    result = CaseResult(case)
    headers = {"Content-Type": "application/json"}
    if case.auth is not None:
        headers["Authorization"] = case.auth
    payload = json.dumps(case.body, ensure_ascii=False).encode()
    t0 = time.perf_counter()
    try:
        with client.stream("POST", url, content=payload, headers=headers) as resp:
            result.status_code = resp.status_code
            if case.expect == "unauthorized":
                body = resp.read()
                _check_refusal(result, resp.status_code, body)
                return result
            result.mark("status", resp.status_code == 200, f"got {resp.status_code}")
            ctype = resp.headers.get("content-type", "")
            result.mark(
                "content_type", ctype.split(";")[0].strip() == "text/event-stream", f"got {ctype!r}"
            )
            if resp.status_code != 200:
                body = resp.read()
                result.points["status"] = ("fail", f"got {resp.status_code}: {body[:120]!r}")
                return result
            events: list[tuple[float, str]] = []
            buf = ""
            raw = b""
            for piece in resp.iter_bytes():
                now = time.perf_counter() - t0
                raw += piece
                buf += piece.decode("utf-8", errors="replace").replace("\r\n", "\n")
                while "\n\n" in buf:
                    event, buf = buf.split("\n\n", 1)
                    if event.strip():
                        events.append((now, event))
            if buf.strip():
                events.append((time.perf_counter() - t0, buf))
            check_stream(result, events, raw.replace(b"\r\n", b"\n").endswith(b"\n\n"))
    except httpx.HTTPError as exc:
        result.mark("status", False, f"{type(exc).__name__}: {exc}")
    return result


def _check_refusal(result: CaseResult, status: int, body: bytes) -> None:
    result.mark("status", status == 401, f"got {status}, want 401")
    if 200 <= status < 300:
        return  # accepted: there is no error body to judge
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    has_message = isinstance(obj, dict) and (
        (isinstance(obj.get("error"), dict) and "message" in obj["error"]) or "message" in obj
    )
    result.mark("error_body", has_message, f"body {body[:80]!r}", warn_only=status == 401)


def run_checks(
    url: str,
    auth: str | None,
    model: str = "qwen-plus",
    *,
    max_tokens: int | None = None,
    timeout_s: float = 60.0,
) -> list[CaseResult]:
    """Run every case against `url`; the programmatic entry point (tests use it)."""
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    with httpx.Client(timeout=timeout) as client:
        return [run_case(client, url, case) for case in build_cases(model, auth, max_tokens)]


_MARK = {"pass": "[green]✓", "fail": "[red]✗", "warn": "[yellow]!"}


def render(results: list[CaseResult], url: str) -> Table:
    table = Table(title=f"Model Address check: {url}", title_justify="left")
    table.add_column("point")
    for r in results:
        table.add_column(r.case.name, justify="center")
    for point, label in POINTS.items():
        if not any(point in r.points for r in results):
            continue
        cells = [_MARK[r.points[point][0]] if point in r.points else "·" for r in results]
        table.add_row(f"{point}: {label}", *cells)
    table.add_row(
        "TTFT ms (first non-empty content)",
        *[f"{r.ttft_ms:.0f}" if r.ttft_ms is not None else "-" for r in results],
    )
    return table


def details(results: list[CaseResult]) -> list[str]:
    """One line per distinct failed or warned point, naming the cases where it was seen."""
    seen: dict[tuple[str, str, str], list[str]] = {}
    for r in results:
        for point, (status, detail) in r.points.items():
            if status != "pass":
                seen.setdefault((status, point, detail), []).append(r.case.name)
    return [
        f"{status.upper()} {point} [{', '.join(cases)}]: {detail}"
        for (status, point, detail), cases in seen.items()
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", help="The Model Address exactly as configured in the console.")
    p.add_argument(
        "--auth",
        default=os.environ.get("CALLGATE_CHECK_AUTH"),
        help="Authorization code (env CALLGATE_CHECK_AUTH). Without it the auth cases are skipped.",
    )
    p.add_argument("--model", default="qwen-plus", help="The console's Base Model name.")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="Add max_tokens to every request (the gateway sends none).",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="Per-request timeout (s).")
    p.add_argument("--json", type=Path, default=None, help="Also write the results as JSON.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    results = run_checks(
        args.url, args.auth, args.model, max_tokens=args.max_tokens, timeout_s=args.timeout
    )
    console.print(render(results, args.url))
    for line in details(results):
        console.print(line, markup=False, highlight=False)
    failed = [r.case.name for r in results if r.failed]
    console.print(f"[red]FAIL: {', '.join(failed)}" if failed else "[green]PASS: all points")
    if args.json:
        doc = [
            {
                "case": r.case.name,
                "title": r.case.title,
                "status_code": r.status_code,
                "ttft_ms": r.ttft_ms,
                "points": {k: {"status": s, "detail": d} for k, (s, d) in r.points.items()},
            }
            for r in results
        ]
        args.json.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
