"""The package's import graph: no cycles, nothing importing from a layer above it.

Every import counts, including those inside functions and under ``TYPE_CHECKING``:
an import deferred to keep ``--help`` fast is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rsscgeo"

# Layers from the bottom up; a module may import only from its own layer or below.
# Within the scene package the order is stricter (see SCENE_ORDER).
LAYERS = [
    {
        "errors",
        "_buffers",
        "colors",
        "yamlfile",
        "outputs",
        "stopping",
        "cachedir",
        "progress",
        "qgis_plugin",
    },
    {"networks", "data", "sources", "stac", "rasterfile", "_torchgeo", "exemplars"},
    {"modelfile"},
    {"inits", "predict", "backends", "taxonomy", "hierarchy", "scene", "training"},
    {"adapt", "experiments"},
    {"cli"},
]
# The scene package bottom-up: options and geometry; reading and inference; the
# per-chunk task; the plan; where tasks run and what is written; the orchestration.
SCENE_ORDER = [
    {"options", "grid", "lock", "staging"},
    {"inference", "reader"},
    {"legend", "tasks", "journal"},
    {"plan", "style", "preview"},
    {"engine", "writers", "areas", "patches"},
    {"suggest"},
    {"classify", "results", "change"},
    {"report"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in names:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target not in (name, "rsscgeo"):
                targets.add(target)
    return targets


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, trail = stack.pop()
        for target in graph[node]:
            if target == start:
                return [*trail, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*trail, target]))
    return None


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    cycles = {tuple(c) for m in graph if (c := _cycle_from(m, graph))}
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in sorted(cycles))


def _rank(name: str, order: list[set[str]]) -> int:
    for rank, layer in enumerate(order):
        if name in layer:
            return rank
    raise AssertionError(f"{name} has no layer in tests/test_layering.py; add it")


def test_nothing_imports_from_a_layer_above(graph: dict[str, set[str]]) -> None:
    upward = []
    for module, targets in graph.items():
        if module == "rsscgeo":
            continue  # the public API re-exports from everywhere, lazily
        top = module.split(".")[1]
        for target in targets:
            if _rank(target.split(".")[1], LAYERS) > _rank(top, LAYERS):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports from a higher layer: " + ", ".join(sorted(upward))


def test_scene_modules_import_downward_only(graph: dict[str, set[str]]) -> None:
    upward = []
    for module, targets in graph.items():
        if not module.startswith("rsscgeo.scene."):
            continue
        rank = _rank(module.rsplit(".", 1)[1], SCENE_ORDER)
        for target in targets:
            # Modules of one step do not import each other either.
            if target.startswith("rsscgeo.scene.") and (
                _rank(target.rsplit(".", 1)[1], SCENE_ORDER) >= rank
            ):
                upward.append(f"{module} -> {target}")
    assert not upward, "scene modules importing upward: " + ", ".join(sorted(upward))
