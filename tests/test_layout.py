"""The layout's contract: the public API is unchanged, and the import rule of the house holds.

Rule: a family imports the engine (``lawn.constraint``) or ``lawn.discovery`` when it needs them; the engine and
discovery never import a family (only the private leaf helpers such as ``lawn._checks``); ``lawn.harness`` imports
everything and nothing imports it; no import circles.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import lawn

SRC = Path(lawn.__file__).parent
# lawn.__all__ before the layout change (issue 11): every name stays importable from `lawn`, as the same object.
PUBLIC_BEFORE = [
    "EMAN", "EMATeacher", "HomogeneityReport", "LAWN", "NormConstraint", "ResidualBranch", "WRS",
    "center_filters_", "center_filters_after_step", "check_homogeneity", "convert_to_mimicnorm", "explain",
    "final_homogeneous_params", "mimicnorm_filters", "norms", "params_feeding_normalization",
    "project_onto_tangent", "retract", "scale_shift_invariant_penalty",
]  # fmt: skip
CORE = ("lawn.constraint", "lawn.discovery")
LEAVES = ("lawn._checks",)  # private helpers that import nothing of lawn: anyone may use them


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (type-only imports never run)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                todo.extend(child.orelse)
                continue
            todo.append(child)
    return out


def _imports() -> dict[str, set[str]]:
    """Module → the lawn modules it imports at run time (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lawn":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in files else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == "lawn")
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_every_public_name_of_before_the_move_is_still_exported() -> None:
    for name in PUBLIC_BEFORE:
        assert name in lawn.__all__, name
        assert getattr(lawn, name) is not None
    assert lawn.NormConstraint is importlib.import_module("lawn.constraint").NormConstraint
    assert lawn.final_homogeneous_params is importlib.import_module("lawn.discovery").final_homogeneous_params
    assert lawn.explain is importlib.import_module("lawn.discovery.explain").explain


def test_engine_and_discovery_import_no_family_and_nothing_imports_the_harness() -> None:
    graph = _imports()
    for module, deps in graph.items():
        if not _within(module, "lawn.harness"):
            assert not any(_within(d, "lawn.harness") for d in deps), f"{module} imports the harness: {deps}"
        if any(_within(module, core) for core in CORE):
            outside = {d for d in deps if not any(_within(d, core) for core in (*CORE, *LEAVES))}
            assert not outside, f"{module} (engine/discovery) imports {sorted(outside)}"


def test_no_import_circles() -> None:
    graph = _imports()
    # `import lawn` (the package) is the public API that re-exports everything; edges into it are not layering.
    graph = {m: {d for d in deps if d != "lawn"} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(dep) :] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_int_and_number_arguments_are_checked_by_one_helper() -> None:
    """``isinstance(x, bool) or not isinstance(x, int)`` and its cousins live in ``lawn._checks`` alone."""
    import re

    from lawn._checks import is_int, is_number

    assert is_int(3) and not is_int(True) and not is_int(3.0)
    assert is_number(3) and is_number(0.5) and not is_number(False) and not is_number("1")
    spelled_out = re.compile(r"isinstance\((\w+), bool\) or not isinstance\(\1, (int|\(int, float\)|int \| float)\)")
    spelled_out_too = re.compile(
        r"isinstance\((\w+), (int|\(int, float\)|int \| float)\) and not isinstance\(\1, bool\)"
    )
    reversed_order = re.compile(r"not isinstance\((\w+), (int|\(int, float\)|int \| float)\) or isinstance\(\1, bool\)")
    offenders = [
        f"{path.relative_to(SRC)}:{number}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "_checks.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if spelled_out.search(line) or spelled_out_too.search(line) or reversed_order.search(line)
    ]
    assert not offenders, offenders


def test_leaf_helpers_import_nothing_of_lawn() -> None:
    graph = _imports()
    for leaf in LEAVES:
        assert not [d for d in graph[leaf] if d.startswith("lawn")], graph[leaf]


def test_no_fast_path_imports_the_engine_not_even_for_type_hints() -> None:
    """The engine asks ``constraint/paths.py`` for the path and hands the fast paths plain data."""
    engine = "lawn.constraint.engine"
    for path in (SRC / "constraint").glob("*.py"):
        if path.stem in ("engine", "__init__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):  # every node: type-only imports count too
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert engine not in names, f"{path.name} imports {engine}"
