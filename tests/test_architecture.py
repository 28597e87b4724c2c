"""The import direction ARCHITECTURE.md draws, held for every import in the package: at module level, inside
functions (lazy imports) and under TYPE_CHECKING alike, because each is a dependency a reader has to follow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each installed package lives in the tree (pyproject.toml's package-dir).
FOLDERS = {"edgepress": "edgepress", "edgepress.compress": "compress", "edgepress.export": "export",
           "edgepress.runtime": "runtime", "edgepress.models": "models"}
# Low to high: a module imports from its own layer and the layers below, never above.
LAYERS = (
    ("core", ("edgepress.core",)),
    ("runtime", ("edgepress.runtime",)),
    ("models", ("edgepress.models",)),
    ("io", ("edgepress.io",)),
    ("measure", ("edgepress.measure", "edgepress.targets")),
    ("stages", ("edgepress.stages", "edgepress.compress", "edgepress.export")),
    ("recipe", ("edgepress.recipe",)),
    ("report", ("edgepress.report",)),
    ("gating", ("edgepress.gating",)),
    ("running", ("edgepress.running",)),
    ("api and cli", ("edgepress.cli", "edgepress.__main__", "edgepress.api", "edgepress")),
)
# Algorithms under compress/ never reach back into a compress/ stage module: stages call them, not the other way.
# (export/export.py's export_onnx is how edgepress turns torch into ONNX; a latency search may call it, since
# export/ never imports compress/.)
ALGORITHM_FOLDERS = ("edgepress.compress.quant", "edgepress.compress.pruning", "edgepress.compress.training")


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """Every edgepress module `module` imports, resolved to the module (not the name inside it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES and name != module)
    return found


def _layer(module: str) -> int:
    best = max(((len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), default=None)
    assert best is not None, f"{module} belongs to no layer: add its folder to LAYERS and to ARCHITECTURE.md"
    return best[1]


def _is_stage_module(module: str) -> bool:
    package, _, _ = module.rpartition(".")
    return package in ("edgepress.compress", "edgepress.export") and MODULES[module].name != "__init__.py"


def test_every_module_has_a_layer():
    assert len(MODULES) > 80
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_flow_down(module):
    upward = [f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
              for target in sorted(_imports(module, MODULES[module])) if _layer(target) > _layer(module)]
    assert not upward, "; ".join(upward)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(ALGORITHM_FOLDERS)))
def test_algorithms_do_not_import_stages(module):
    stages = sorted(target for target in _imports(module, MODULES[module])
                    if _is_stage_module(target) and target.startswith("edgepress.compress."))
    assert not stages, f"{module} imports the stage modules {stages}: move what it needs beside it"


def test_no_import_circles():
    graph = {module: _imports(module, path) for module, path in MODULES.items()}
    # A package's __init__ importing its own submodules is how packages work, not a circle through other code.
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(target):] + [module, target])
                                     if target in trail else f"import circle through {module} -> {target}")
            if target not in state:
                visit(target, trail + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_export_never_imports_compress():
    for module in (m for m in MODULES if m.startswith("edgepress.export")):
        assert not [t for t in _imports(module, MODULES[module]) if t.startswith("edgepress.compress")], module


def test_stage_modules_are_named_after_their_kind():
    from edgepress.stages.registry import REGISTRY

    for kind, stage in REGISTRY.items():
        assert stage.run.__module__.rsplit(".", 1)[-1] == kind, f"stage {kind} lives in {stage.run.__module__}"
        assert _is_stage_module(stage.run.__module__)
    stage_files = {m.rsplit(".", 1)[-1] for m in MODULES if _is_stage_module(m)}
    assert stage_files == set(REGISTRY), f"modules beside the stages that are no stage: {stage_files - set(REGISTRY)}"
