"""The import graph of the package: imports flow one way (docs/architecture.md).

Every ``import`` in src/mobilenets is read with ``ast``, function-level ones included (an import
moved into a function still runs); only imports under ``if TYPE_CHECKING:`` are skipped, as
they never run. A module may import its own layer or a lower one, never a higher one, and no
group of modules may import each other in a circle.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mobilenets"

# Top-level module or package of mobilenets -> its layer; lower layers know nothing of higher
# ones. One layer per package: a package is one job. Keep in step with docs/architecture.md.
LAYERS: dict[str, int] = {
    "__init__": 0,
    "errors": 0,
    "io": 0,
    "layers": 1,
    "data": 1,
    "plots": 1,
    "models": 2,
    "int8": 3,
    "runs": 3,
    "train": 4,
    "interop": 4,
    "analysis": 5,
    "deploy": 6,
    "evaluation": 7,
    "latency": 7,
    "quant": 7,
    "cli": 8,
    "__main__": 8,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit(module: str) -> str:
    """``mobilenets.data.sources`` -> ``data``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(path: Path) -> set[str]:
    """The mobilenets modules ``path`` imports when it runs."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from mobilenets import data` imports the module mobilenets.data
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if (SRC / candidate.replace(".", "/")).with_suffix(".py").exists() or (
                    SRC / candidate.replace(".", "/")
                ).is_dir():
                    found.add(candidate)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m == "mobilenets" or m.startswith("mobilenets.")}


GRAPH = {module_name(p): runtime_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    missing = sorted({unit(m) for m in GRAPH} - set(LAYERS))
    assert not missing, f"add {missing} to LAYERS here and to docs/architecture.md"


def test_no_upward_import():
    upward = [
        f"{source} (layer {LAYERS[unit(source)]}) imports {target} (layer {LAYERS[unit(target)]})"
        for source, targets in GRAPH.items()
        for target in sorted(targets)
        if LAYERS.get(unit(target), 0) > LAYERS.get(unit(source), 0)
    ]
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := dfs(start)):
            return cycle
    return None


def test_no_cycle_between_parts():
    """Between the parts of the package (``models``, ``data``, ``train`` ...)."""
    units: dict[str, set[str]] = {}
    for source, targets in GRAPH.items():
        units.setdefault(unit(source), set()).update(
            unit(t) for t in targets if unit(t) not in (unit(source), "__init__")
        )
    cycle = find_cycle(units)
    assert cycle is None, " -> ".join(cycle)


def test_no_cycle_between_modules():
    """Inside each part too; a package importing its own submodules in ``__init__`` is the one
    allowed direction (a submodule must not import its package back)."""
    graph = {m: {t for t in ts if t != "mobilenets"} for m, ts in GRAPH.items()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"b"}}, ["b", "b"]),
    ],
)
def test_find_cycle_finds_cycles(graph, expected):
    assert find_cycle(graph) == expected


def test_upward_and_function_level_imports_are_seen(tmp_path, monkeypatch):
    """The parser sees an import hidden in a function, and skips TYPE_CHECKING blocks."""
    module = PACKAGE / "layers.py"
    assert "mobilenets.errors" in runtime_imports(module)
    hidden = tmp_path / "src" / "mobilenets" / "layers.py"
    hidden.parent.mkdir(parents=True)
    hidden.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from mobilenets.cli import main\n"
        "def f():\n    from mobilenets.train.loop import train\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "src")
    assert runtime_imports(hidden) == {"mobilenets.train.loop"}


def test_cli_help_imports_no_heavy_library():
    """``mobilenets --help``/``--version`` build the whole parser: it must not pull in torch,
    onnx, onnxruntime, matplotlib or rich (each command imports what it needs when it runs)."""
    code = (
        "import sys; from mobilenets.cli import build_parser; build_parser(); "
        "heavy = {'torch', 'numpy', 'onnx', 'onnxruntime', 'matplotlib', 'rich', 'sklearn'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


BASE = {"__init__.py", "__main__.py", "errors.py", "io.py", "layers.py", "plots.py", "runs.py"}


def test_the_package_root_holds_only_the_base():
    """Every job is a package (``models/``, ``train/``, ``deploy/`` ...); the root keeps the
    modules everything shares."""
    modules = {p.name for p in PACKAGE.glob("*.py")}
    assert modules == BASE, f"move {sorted(modules - BASE)} into the package of its job"


def test_a_moved_module_imports_from_its_old_path_with_one_warning():
    """For one release each old path warns once, pointing at the import, and its names are the
    new modules' (one process, every old path imported there twice)."""
    code = """
import importlib, warnings, mobilenets
for old, homes in mobilenets.MOVED.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(f"import {old} as module; import {old}")
    moved = [w for w in caught if issubclass(w.category, DeprecationWarning)
             and str(w.message).startswith(old + " is now")]
    assert len(moved) == 1 and moved[0].filename == "<string>", (old, caught)
    module = importlib.import_module(old)
    news = [importlib.import_module(h) for h in homes]
    names = [n for new in news for n in vars(new) if not n.startswith("_")]
    assert names, old
    for name in names:
        home = next(new for new in news if hasattr(new, name))
        assert getattr(module, name) is getattr(home, name), (old, name)
print(len(mobilenets.MOVED))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 30


MAX_MODULE_LINES = 600


def test_no_module_is_over_600_lines():
    """A module longer than this holds more than one idea: split it along its ideas."""
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules (lines): {long}"


MAX_FUNCTION_LINES = 80


def test_no_function_is_over_80_lines():
    """A function longer than this does several things: name them as functions of their own."""
    long = {
        f"{p.relative_to(PACKAGE)}:{node.lineno} {node.name}": node.end_lineno - node.lineno + 1
        for p in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert not long, f"split these functions (lines): {long}"
