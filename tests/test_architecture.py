"""The shape of the package: imports only go down its layers of folders, no import circles, and the config
layer free of the engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hires_nst"
ENGINE_LIBRARIES = ("torch", "torchvision")


def module_name(path: Path) -> str:
    """A file's module name relative to the package: ``engine/render.py`` -> ``engine.render``, a
    subpackage's ``__init__.py`` -> its folder (``engine``); the package's own stays ``__init__``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.Module) -> set[str]:
    """Every top-level name imported anywhere in the module (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module.split(".")[0] == "hires_nst":  # from hires_nst.io import images
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _resolve(name: str, modules: Iterable[str]) -> str | None:
    """The package module an imported name lands in: the longest known prefix, relative to the package
    (``hires_nst.io.images.load_image`` -> ``io.images``); None outside the package, and None for the
    package itself (``import hires_nst`` for its ``__version__``: its ``__init__`` loads api only on use)."""
    parts = name.split(".")
    if parts[0] != "hires_nst":
        return None
    for end in range(len(parts), 1, -1):
        if (candidate := ".".join(parts[1:end])) in modules:
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, named relative to the package (``engine.render``)."""
    modules = _modules()
    graph = {}
    for name, tree in modules.items():
        targets = {_resolve(n, modules) for n in _imports(tree)}
        graph[name] = {t for t in targets if t is not None and t != name}
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
    assert len(graph) > 30 and "config.settings" in graph and "engine.render" in graph
    assert "engine.render" in graph["engine.pyramid"] | graph["cli.main"]  # dotted imports are followed
    assert find_cycle(graph) == []


def test_config_depends_on_nothing_that_runs_the_network() -> None:
    graph, modules = import_graph(), _modules()
    config = {name for name in graph if name.split(".")[0] == "config"}
    reached, todo = set(), sorted(config)
    while todo:
        for target in graph[todo.pop()] - reached:
            reached.add(target)
            todo.append(target)
    assert {"config.catalog", "config.settings", "config.schedule"} <= config
    assert "config.catalog" in reached and not reached & {
        "model.backbones", "model.features", "runtime.placement", "model.weights", "engine.render"}
    for name in reached | config:
        libraries = {n.split(".")[0] for n in _imports(modules[name])}
        assert not libraries & set(ENGINE_LIBRARIES), f"config reaches {name}, which imports torch"


def test_every_module_imports_in_a_fresh_interpreter_and_config_leaves_torch_out() -> None:
    names = sorted(name for name in _modules() if name not in ("__init__", "__main__"))
    code = ("import sys; import hires_nst.config.settings; assert 'torch' not in sys.modules, 'config imported torch'; "
            + "; ".join(f"import hires_nst.{n}" for n in names) + "; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# The folders from the top down: a module may import from its own folder and from folders below it,
# never from one above it or from a sibling at its level (model and io). The package's __init__
# (``stylize``) and __main__ sit above everything, then api; errors and events below everything.
LAYERS = (("__init__", "__main__"), ("api",), ("cli",), ("batch", "web"), ("engine",), ("runtime",),
          ("model", "io"), ("core",), ("config",), ("errors", "events"))
RANK = {room: len(LAYERS) - level for level, rooms in enumerate(LAYERS) for room in rooms}


def room(module: str) -> str:
    """The folder of ``config.settings`` (``config``), or the top-level module itself (``api``)."""
    return module.split(".")[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up the layers or across to a sibling folder, as ``a -> b``."""
    found = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            here, there = room(source), room(target)
            if here != there and RANK[there] >= RANK[here]:
                found.append(f"{source} -> {target}")
    return found


def test_upward_imports_finds_an_import_up_or_across_and_accepts_one_down() -> None:
    graph = {"core.losses": {"config.catalog", "errors"}, "config.settings": {"core.color"},
             "io.images": {"model.weights"}, "cli.main": {"engine.render"}}
    assert upward_imports(graph) == ["config.settings -> core.color", "io.images -> model.weights"]


def test_every_module_sits_in_a_known_layer() -> None:
    assert {room(m) for m in import_graph()} <= set(RANK)


def test_imports_only_go_down_the_layers() -> None:
    assert upward_imports(import_graph()) == []
