"""The package's layers, checked from the source: no upward import, no import circle, vLLM only
in the engine package, the HTTP framework only in the app and process layers.

Every import counts, those inside functions too; an import under `if TYPE_CHECKING:` does not
(it never runs). The layers, lowest first, are the folders of `server/` (docs/architecture.md).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "server"
LAYERS = ["base", "wire", "text", "engine", "serving", "app", "process"]
RANK = {name: i for i, name in enumerate(LAYERS)} | {"": -1, "__main__": len(LAYERS)}
VLLM_HOMES = {"server.engine.vllm_adapter", "server.engine.shared_core"}
WEB = ("fastapi", "uvicorn", "starlette", "sse_starlette")


def _modules() -> dict[str, Path]:
    found = {}
    for path in SERVER.rglob("*.py"):
        parts = path.relative_to(SERVER.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """Every module `path` imports when it runs, lazy imports included."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                names.add(child.module)
                # `from server.x import y`: y may be a module of its own
                names.update(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {i for i in _imports(path) if i in modules} - {name} for name, path in modules.items()
    }


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{m} ({_layer(m) or 'server'}) imports {i} ({_layer(i)})"
        for m, deps in _graph().items()
        for i in deps
        if RANK[_layer(i)] > RANK[_layer(m)]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circles() -> None:
    graph = _graph()
    seen: set[str] = set()
    on_path: list[str] = []

    def walk(node: str) -> list[str] | None:
        if node in on_path:
            return [*on_path[on_path.index(node) :], node]
        if node in seen:
            return None
        seen.add(node)
        on_path.append(node)
        for dep in sorted(graph[node]):
            circle = walk(dep)
            if circle:
                return circle
        on_path.pop()
        return None

    for start in sorted(graph):
        circle = walk(start)
        assert circle is None, " -> ".join(circle)


def test_only_the_engine_package_imports_vllm() -> None:
    bad = [
        m
        for m, path in _modules().items()
        if m not in VLLM_HOMES and any(i.split(".")[0] == "vllm" for i in _imports(path))
    ]
    assert not bad, bad


def test_only_the_app_and_process_layers_import_the_http_framework() -> None:
    bad = [
        m
        for m, path in _modules().items()
        if _layer(m) not in ("app", "process")
        and any(i.split(".")[0] in WEB for i in _imports(path))
    ]
    assert not bad, bad


def test_the_layers_below_the_engine_adapter_load_no_vllm() -> None:
    """What the unit tier imports: every module but vLLM's two homes, and no vLLM with them
    (the default engine factory is handed in by `python -m server`)."""
    names = sorted(m for m in _modules() if m not in VLLM_HOMES and m != "server.__main__")
    probe = (
        "import sys\n" + "".join(f"import {m}\n" for m in names) + "print('vllm' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_unit_tier_imports_neither_vllm_nor_its_adapter() -> None:
    unit = Path(__file__).resolve().parent
    bad = {
        f"{path.name}: {i}"
        for path in unit.glob("*.py")
        for i in _imports(path)
        if i.split(".")[0] == "vllm" or i in VLLM_HOMES
    }
    assert not bad, sorted(bad)
