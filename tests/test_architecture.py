"""The shape of the package: no import circles, and the config layer free of the engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hires_nst"
ENGINE_LIBRARIES = ("torch", "torchvision")


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.glob("*.py"))}


def _imports(tree: ast.Module) -> set[str]:
    """Every top-level name imported anywhere in the module (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "hires_nst":  # from hires_nst import images
                names.update(f"hires_nst.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (``hires_nst.x`` -> ``x``)."""
    modules = _modules()
    graph = {}
    for name, tree in modules.items():
        targets = {n.split(".")[1] for n in _imports(tree) if n.startswith("hires_nst.")}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as a path ``[a, b, ..., a]``, or [] when there is none."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_find_cycle_finds_a_circle_and_accepts_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 30 and "config" in graph and "render" in graph
    assert find_cycle(graph) == []


def test_config_depends_on_nothing_that_runs_the_network() -> None:
    graph, modules = import_graph(), _modules()
    reached, todo = set(), ["config"]
    while todo:
        for target in graph[todo.pop()] - reached:
            reached.add(target)
            todo.append(target)
    assert "catalog" in reached and not reached & {"backbones", "features", "placement", "weights", "render"}
    for name in reached | {"config"}:
        libraries = {n.split(".")[0] for n in _imports(modules[name])}
        assert not libraries & set(ENGINE_LIBRARIES), f"config reaches {name}, which imports torch"


def test_every_module_imports_in_a_fresh_interpreter_and_config_leaves_torch_out() -> None:
    names = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__main__")
    code = ("import sys; import hires_nst.config.settings; assert 'torch' not in sys.modules, 'config imported torch'; "
            + "; ".join(f"import hires_nst.{n}" for n in names) + "; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
