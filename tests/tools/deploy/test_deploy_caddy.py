"""Caddy (deploy/Caddyfile): it streams unbuffered, passes only the protocol's POSTs to the server,
and its limits match the server's own in configs/gpu.yaml. Read both as Caddy adapts it and as a
tree of directives.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.tools.deploy.files import (
    DEPLOY,
    HANDLER_PATHS,
    INTERNAL_PATHS,
    ROOT,
    need_tool,
    run,
    seconds,
)


@dataclass
class Directive:
    """One Caddyfile line (its tokens) and, when it opens a block, the lines inside."""

    tokens: list[str]
    body: list[Directive] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.tokens[0]

    def walk(self) -> Iterator[Directive]:
        for d in self.body:
            yield d
            yield from d.walk()


def caddyfile(path: Path) -> list[Directive]:
    """The Caddyfile as a tree of directives (comments dropped; one directive per line)."""
    root = Directive([])
    stack = [root]
    for raw in path.read_text().splitlines():
        line = re.sub(r"(^|\s)#.*", "", raw).strip()
        if not line:
            continue
        if line == "}":
            stack.pop()
            assert stack, f"unbalanced braces in {path}"
            continue
        tokens = line.split()
        opens = tokens[-1] == "{"
        directive = Directive(tokens[:-1] if opens else tokens)
        stack[-1].body.append(directive)
        if opens:
            stack.append(directive)
    assert len(stack) == 1, f"unclosed block in {path}"
    return root.body


def caddy_size(value: str) -> int:
    m = re.fullmatch(r"(\d+)(B|KB|KiB|MB|MiB)?", value)
    assert m, value
    units = {None: 1, "B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20}
    return int(m.group(1)) * units[m.group(2)]


def test_caddy_streams_unbuffered_to_the_server(
    env_example: dict[str, str], tmp_path: Path
) -> None:
    text = (DEPLOY / "Caddyfile").read_text()
    assert re.search(r"reverse_proxy\s+server:8000\s*\{[^}]*flush_interval\s+-1", text)
    caddy = need_tool("caddy")
    env = {
        "CALLGATE_DOMAIN": env_example["CALLGATE_DOMAIN"],
        # caddy keeps state under HOME/XDG dirs: keep it in the test's own directory
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    adapted = json.loads(
        run(
            caddy, "adapt", "--config", "deploy/Caddyfile", "--adapter", "caddyfile", env=env
        ).stdout
    )
    dump = json.dumps(adapted)
    assert env["CALLGATE_DOMAIN"] in dump
    assert '"flush_interval": -1' in dump and '"dial": "server:8000"' in dump
    # Caddy's own reading: every proxy handler is reached only through POST on the handler paths.
    proxied = list(caddy_proxy_matchers(adapted["apps"]["http"]["servers"]))
    assert proxied
    for matchers in proxied:
        assert {"method": ["POST"], "path": sorted(HANDLER_PATHS)} in [
            {k: sorted(v) for k, v in m.items()} for m in matchers
        ], matchers
    run(caddy, "validate", "--config", "deploy/Caddyfile", "--adapter", "caddyfile", env=env)


def caddy_proxy_matchers(
    node: Any, matchers: tuple[dict[str, Any], ...] = ()
) -> Iterator[tuple[dict[str, Any], ...]]:
    """For each reverse_proxy handler in Caddy's JSON config: the matcher sets of the routes
    that enclose it (each set must match for a request to get there)."""
    if isinstance(node, dict):
        if "handle" in node:  # a route
            own = tuple(m for m in node.get("match", []) if "host" not in m)
            for handler in node["handle"]:
                if handler.get("handler") == "reverse_proxy":
                    yield matchers + own
                yield from caddy_proxy_matchers(handler, matchers + own)
        else:
            for value in node.values():
                yield from caddy_proxy_matchers(value, matchers)
    elif isinstance(node, list):
        for value in node:
            yield from caddy_proxy_matchers(value, matchers)


def caddy_site() -> Directive:
    tree = caddyfile(DEPLOY / "Caddyfile")
    (site,) = [d for d in tree if d.tokens == ["{$CALLGATE_DOMAIN}"]]
    return site


def caddy_matcher(site: Directive, name: str) -> dict[str, list[str]]:
    """A named matcher `@name` of the site as {matcher type: arguments}."""
    (definition,) = [d for d in site.body if d.name == name]
    lines = definition.body or [Directive(definition.tokens[1:])]
    return {d.name: d.tokens[1:] for d in lines}


def test_caddy_passes_only_the_protocol_to_the_server() -> None:
    """Only POST on the three handler paths reaches server:8000 (as the k8s HTTPRoute routes);
    /metrics, /openapi.json, probes and everything else get 404 from Caddy."""
    site = caddy_site()
    proxies = [d for d in site.walk() if d.name == "reverse_proxy"]
    handles = [d for d in site.body if d.name == "handle"]
    routed = [h for h in handles if any(d.name == "reverse_proxy" for d in h.body)]
    assert proxies and len(proxies) == len(routed), "reverse_proxy only directly in a handle"
    for handle in routed:
        assert len(handle.tokens) == 2 and handle.tokens[1].startswith("@"), handle.tokens
        matcher = caddy_matcher(site, handle.tokens[1])
        assert set(matcher) == {"method", "path"}, matcher
        assert matcher["method"] == ["POST"]
        assert set(matcher["path"]) == HANDLER_PATHS, "exact paths, no wildcards"
        assert not set(INTERNAL_PATHS) & set(matcher["path"])
        (proxy,) = [d for d in handle.body if d.name == "reverse_proxy"]
        assert proxy.tokens == ["reverse_proxy", "server:8000"]
    # The rest: one catch-all handle that answers 404, and nothing else that serves content.
    (fallback,) = [h for h in handles if h.tokens == ["handle"]]
    assert [d.tokens for d in fallback.body] in (
        [["respond", "404"]],
        [["error", "404"]],
    ), fallback
    for d in site.body:
        assert d.name in {"handle", "log"} or d.name.startswith("@"), d.tokens


def test_caddy_limits_match_the_server() -> None:
    from server.base.settings import load_settings

    server = load_settings(ROOT / "configs" / "gpu.yaml").server
    site = caddy_site()
    (handle,) = [
        h
        for h in site.body
        if h.name == "handle" and any(d.name == "reverse_proxy" for d in h.body)
    ]
    (body,) = [d for d in handle.body if d.name == "request_body"]
    (max_size,) = [d.tokens[1] for d in body.body if d.name == "max_size"]
    assert caddy_size(max_size) == server.max_body_bytes
    assert [d.name for d in handle.body].index("request_body") < [
        d.name for d in handle.body
    ].index("reverse_proxy")
    (options,) = [d for d in caddyfile(DEPLOY / "Caddyfile") if d.tokens == []]
    (servers,) = [d for d in options.body if d.name == "servers"]
    (timeouts,) = [d for d in servers.body if d.name == "timeouts"]
    limits = {d.name: d.tokens[1] for d in timeouts.body}
    assert seconds(limits["read_header"]) == server.head_timeout_s
    # A whole-request read deadline would keep running while the reply streams.
    assert "read_body" not in limits
    (header_size,) = [d.tokens[1] for d in servers.body if d.name == "max_header_size"]
    assert caddy_size(header_size) == server.max_header_bytes
