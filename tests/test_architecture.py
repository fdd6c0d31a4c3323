"""The package's shape: imports only go down the layers (base -> vocabularies -> config -> engine -> sweeps ->
entry points; inside the engine its wings, recording -> training -> assembly -> inference), and no two modules import
each other, even through a function-level or TYPE_CHECKING import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dlzoo"

# Each module's layer: a module may import its own layer and the ones below, never above.
LAYERS = {
    "dlzoo": 0, "dlzoo.errors": 0, "dlzoo.registry": 0, "dlzoo.checks": 0, "dlzoo.paths": 0, "dlzoo.console": 0,
    "dlzoo.models": 1, "dlzoo.data": 1, "dlzoo.optim": 1, "dlzoo.pretrain": 1,
    "dlzoo.config": 2,
    "dlzoo.engine": 3,
    # The engine's wings are layers inside layer 3.
    "dlzoo.engine.recording": 3.1, "dlzoo.engine.training": 3.2, "dlzoo.engine.assembly": 3.3,
    "dlzoo.engine.inference": 3.4,
    "dlzoo.sweeps": 4,
    "dlzoo.train": 5, "dlzoo.cli": 5, "dlzoo.api": 5, "dlzoo.notebook": 5,
}  # fmt: skip
# The root package re-exports the Python API (dlzoo.train, ...) on first use, from inside its module __getattr__
# (PEP 562): `import dlzoo` itself runs nothing above the base layer. The one import that may go up.
LAZY_EXPORTS = {"dlzoo": {"dlzoo.api"}}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every dlzoo module `name` imports, wherever the import statement sits (top level, function, TYPE_CHECKING),
    plus the packages Python runs on the way (importing a.b.c runs a and a.b first)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from dlzoo.engine import distributed` names a module; `from dlzoo.models import build_model` does not.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            parts = target.split(".")
            # The packages on the way, except the importer's own: those are already running.
            found |= {".".join(parts[:i]) for i in range(1, len(parts))} - set(ancestors(name))
            found.add(target)
    return (found & known) - {name}


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def layer(name: str) -> float:
    while name not in LAYERS:
        name = name.rpartition(".")[0]
    return LAYERS[name]


GRAPH = {name: imports(name, path, set(modules())) for name, path in modules().items()}


def test_every_module_has_a_layer() -> None:
    for name in GRAPH:
        layer(name)  # raises KeyError for a module outside the map (a new top-level module must pick a layer)


def test_every_engine_module_sits_in_a_wing() -> None:
    # A module straight under engine/ would sit below every wing, outside the diagram the tree draws.
    loose = sorted(n for n in GRAPH if n.startswith("dlzoo.engine.") and layer(n) == LAYERS["dlzoo.engine"])
    assert not loose, f"engine modules outside a wing: {loose}"


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_only_go_down(name: str) -> None:
    # A package may gather its own modules (models/__init__.py builds from models/mlp.py).
    up = sorted(t for t in GRAPH[name] - LAZY_EXPORTS.get(name, set())
                if layer(t) > layer(name) and not t.startswith(name + "."))  # fmt: skip
    assert not up, f"{name} (layer {layer(name)}) imports a higher layer: {up}"


def test_no_import_cycles() -> None:
    """Depth-first search for a back edge. Every import counts (a package's __init__ importing its submodules
    too), except imports of the root package `dlzoo`, which holds only the version."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node] - {"dlzoo"}):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_the_checker_sees_a_function_level_cycle(tmp_path: Path) -> None:
    """The walk must find imports inside functions, where cycles used to hide."""
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from dlzoo.cli import main\n")
    assert "dlzoo.cli" in imports("dlzoo.errors", source, set(modules()))


def test_the_lazy_exports_import_only_inside_a_function() -> None:
    """A lazy export imported at module level would load torch and Hydra with `import dlzoo`."""
    for name, targets in LAZY_EXPORTS.items():
        tree = ast.parse(modules()[name].read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {f"{n.module}.{a.name}" if isinstance(n, ast.ImportFrom) else a.name for n in top for a in n.names}
        assert not names & targets, f"{name} imports {names & targets} at import time"


# Where Hydra's composed DictConfig may still be a parameter below the entry points: the run's boundary, which turns
# it into typed settings (dlzoo.config.schema.settings), and the validation checks that read it before that.
DICTCONFIG_BOUNDARY = {("dlzoo.engine.assembly.run", "run"), ("dlzoo.engine.inference", "apply_overrides")}
CHECKS = {"problems", "data_problems", "doubts"}


def dictconfig_parameters(path: Path) -> list[str]:
    """The functions of `path` that take a DictConfig (any parameter annotated with it)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            if any(a.annotation is not None and "DictConfig" in ast.unparse(a.annotation) for a in args):
                found.append(node.name)
    return found


def test_below_the_run_boundary_modules_take_typed_settings() -> None:
    """The engine and the vocabularies' builders (models, data, optim, pretrain) take the schema's dataclasses and
    plain values; only the boundary and the validation checks see OmegaConf's DictConfig."""
    below = ("dlzoo.engine", "dlzoo.models", "dlzoo.data", "dlzoo.optim", "dlzoo.pretrain")
    offenders = [
        f"{name}.{fn}"
        for name, path in modules().items()
        if name.startswith(below)
        for fn in dictconfig_parameters(path)
        if (name, fn) not in DICTCONFIG_BOUNDARY and fn not in CHECKS
    ]
    assert not offenders, f"these take a DictConfig below the run's boundary: {offenders}"


def test_the_boundary_checker_sees_a_dictconfig_parameter(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("def build(cfg: DictConfig, n: int) -> None: ...\ndef fine(cfg: TrainConfig) -> None: ...\n")
    assert dictconfig_parameters(source) == ["build"]
