"""The package's import graph: sub-packages in layers, each importing only the layers below it.

utils (checkpoints, resume, speed, outputs) < archs, data, losses, metrics (independent of each other)
< models < engine < evaluation < cli (the installed commands);
the root modules (``erl_plugin``, ``registry``, ``train``, ``test``) sit on top. Lazy imports inside
functions count too: they are how cycles hide.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "erl_plugin"
LAYERS = {
    "utils": 0,
    "archs": 1,
    "data": 1,
    "losses": 1,
    "metrics": 1,
    "models": 2,
    "engine": 3,
    "evaluation": 4,
    "cli": 5,
}
ROOT_LAYER = 6


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``erl_plugin`` module ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "erl_plugin")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "erl_plugin":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / f"{candidate.replace('.', '/')}.py").exists() or (
                    PACKAGE.parent / candidate.replace(".", "/") / "__init__.py"
                ).exists()
                found.add(candidate if is_module else node.module)
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 and parts[1] in LAYERS else ROOT_LAYER


GRAPH = {_module_name(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_sub_package_has_a_layer():
    sub_packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert sub_packages == set(LAYERS)
    assert {name for name in GRAPH if name.count(".") == 1 and name.split(".")[1] not in LAYERS} == {
        "erl_plugin.registry",
        "erl_plugin.train",
        "erl_plugin.test",
    }


@pytest.mark.parametrize("module", sorted(name for name in GRAPH if _layer(name) < ROOT_LAYER))
def test_imports_stay_in_the_sub_package_or_go_down(module):
    own = module.split(".")[1]
    for imported in GRAPH[module]:
        parts = imported.split(".")
        if len(parts) > 1 and parts[1] == own:
            continue
        assert _layer(imported) < _layer(module), f"{module} imports {imported}, which is not below it"


def test_no_import_cycles():
    def visit(module: str, trail: tuple[str, ...]) -> None:
        assert module not in trail, " -> ".join((*trail[trail.index(module) :], module))
        for imported in GRAPH.get(module, ()):
            if imported != "erl_plugin" and not imported.startswith(f"{module}."):
                visit(imported, (*trail, module))

    for module in GRAPH:
        visit(module, ())


def test_the_package_holds_no_development_tool_and_never_imports_one():
    """The study runner, the benchmark and the GPU check live in ``erl_dev`` (the checkout's, not shipped)."""
    assert not [name for name in GRAPH if name.rsplit(".", 1)[-1] in {"study", "benchmark", "gpu_check"}]
    importing = [str(path) for path in PACKAGE.rglob("*.py") if "erl_dev" in path.read_text()]
    assert not importing
