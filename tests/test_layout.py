"""The package's import graph, read from the source with ``ast``: no cycles, no module that only
re-exports, and no import that goes through a module which does not define the name.

How the graph is built:

- a node is a module of ``templatefix``; a package is its ``__init__`` (``templatefix.patch`` is
  ``templatefix/patch/__init__.py``);
- every ``import`` and ``from ... import`` anywhere in a module counts, lazy imports inside
  functions and ``if TYPE_CHECKING:`` blocks included; relative imports are resolved;
- ``import a.b.c`` is an edge to ``a.b.c``; ``from a.b import c`` is an edge to ``a.b.c`` when
  ``c`` is a submodule, otherwise to ``a.b`` (a module, or a package's ``__init__``);
- Python runs a package's ``__init__`` before any of its submodules, but that implicit step is not
  an edge: only what a module writes counts. So a submodule importing from its own package's
  ``__init__`` *is* an edge, and since a face imports its submodules, that is a cycle (code inside
  a package imports the module that defines a name, never its own package's face).

What is checked:

- (a) the graph has no cycle (the first one found is named);
- (b) no module other than a package ``__init__`` (a package's face may re-export) only
  re-exports: its body, apart from the docstring, imports and ``__all__``, defines or does
  nothing;
- (c) a ``from M import name`` inside the package, where ``M`` is a module (not a package face)
  and ``name`` is not a submodule, takes a name that ``M`` defines, not one ``M`` itself imports;
  and no module imports from the face ``templatefix/__init__`` (the face is for users).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import templatefix

PACKAGE_DIR = Path(templatefix.__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


@cache
def tree(name: str) -> ast.Module:
    path = modules()[name]
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module name a ``from ... import`` reads from."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package(importer) else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports(importer: str) -> list[tuple[str, str | None, ast.stmt]]:
    """``(target module, imported name or None, node)`` for every import of a package module.

    ``name`` is ``None`` when the target module is imported as a whole.
    """
    known = modules()
    found: list[tuple[str, str | None, ast.stmt]] = []
    for node in ast.walk(tree(importer)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                targets = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
                target = next((t for t in targets if t in known), None)
                if target is not None:
                    found.append((target, None, node))
        elif isinstance(node, ast.ImportFrom):
            source = resolve(importer, node)
            if source not in known:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in known:
                    found.append((submodule, None, node))
                else:
                    found.append((source, alias.name, node))
    return found


@cache
def graph() -> dict[str, set[str]]:
    return {name: {target for target, _, _ in imports(name) if target != name} for name in modules()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``edges`` as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other (Tarjan), each of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return sorted(groups)


def bound_names(statements: list[ast.stmt]) -> set[str]:
    """Names a module binds at top level by something other than an import."""
    names: set[str] = set()
    for statement in statements:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(statement.name)
        elif isinstance(statement, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.For | ast.With):
            targets = (
                statement.targets
                if isinstance(statement, ast.Assign)
                else [item.optional_vars for item in statement.items if item.optional_vars]
                if isinstance(statement, ast.With)
                else [statement.target]
            )
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        if isinstance(statement, ast.If | ast.Try | ast.With | ast.For | ast.While):
            for block in ("body", "orelse", "finalbody"):
                names |= bound_names(getattr(statement, block, []))
            for handler in getattr(statement, "handlers", []):
                names |= bound_names(handler.body)
    return names


@cache
def defined(name: str) -> frozenset[str]:
    return frozenset(bound_names(tree(name).body))


def only_reexports(name: str) -> bool:
    """The module's body, apart from docstring, imports and ``__all__``, is empty."""
    body = tree(name).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    rest = [
        statement
        for statement in body
        if not isinstance(statement, ast.Import | ast.ImportFrom)
        and not (
            isinstance(statement, ast.Assign | ast.AnnAssign | ast.AugAssign)
            and bound_names([statement]) == {"__all__"}
        )
    ]
    return not rest


def module_aliases(importer: str) -> dict[str, str]:
    """Names bound to a whole package module: ``from a import b [as c]`` (``b`` a submodule) and
    ``import a.b as c``."""
    known = modules()
    aliases: dict[str, str] = {}
    for node in ast.walk(tree(importer)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in known:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = resolve(importer, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
    return aliases


def indirect_imports() -> list[str]:
    """Every name taken from a module that does not define it (see the module docstring)."""
    found = []
    for importer in modules():
        for target, name, node in imports(importer):
            where = f"{importer}:{node.lineno}"
            if name is None or name == "*" or name in defined(target):
                continue
            if not is_package(target):
                found.append(f"{where} imports {name} from {target}, which does not define it")
            elif target == PACKAGE or importer.startswith(target + "."):
                found.append(f"{where} imports {name} through the face {target} of its own package")
        aliases = module_aliases(importer)
        for node in ast.walk(tree(importer)):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)):
                continue
            target, attribute = aliases.get(node.value.id), node.attr
            if target is None or is_package(target) or attribute in defined(target):
                continue
            if f"{target}.{attribute}" not in modules():
                found.append(f"{importer}:{node.lineno} uses {node.value.id}.{attribute}, not from {target}")
    return found


def test_the_graph_sees_lazy_relative_and_submodule_imports(tmp_path):
    """The reader itself: a lazy import inside a function and ``from pkg import submodule`` are
    edges, and a cycle through them is found."""
    known = modules()
    assert "templatefix.patch.api" in known and "templatefix" in known
    assert is_package("templatefix.patch") and not is_package("templatefix.patch.api")
    node = ast.parse("from . import api").body[0]
    assert resolve("templatefix.patch.label", node) == "templatefix.patch"
    assert resolve("templatefix.patch", node) == "templatefix.patch"
    node = ast.parse("from ..jinja import markers").body[0]
    assert resolve("templatefix.patch.label", node) == "templatefix.jinja"
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert strongly_connected({"a": {"b"}, "b": {"a", "c"}, "c": set()}) == [["a", "b"]]
    assert bound_names(ast.parse("if x:\n    A = 1\nelse:\n    def f(): pass\nimport os").body) == {"A", "f"}
    assert "__main__" not in defined("templatefix.errors")
    assert "TemplatefixError" in defined("templatefix.errors")


def test_no_import_cycles():
    cycle = find_cycle(graph())
    groups = strongly_connected(graph())
    assert cycle is None, (
        "import cycle: "
        + " -> ".join(cycle)
        + "".join(f"\n  modules importing each other: {', '.join(group)}" for group in groups)
    )


def test_no_module_only_reexports():
    faces = [name for name in modules() if not is_package(name) and only_reexports(name)]
    assert faces == [], f"modules that only re-export (import from the defining module): {faces}"


def test_code_imports_names_from_the_module_defining_them():
    found = indirect_imports()
    assert found == [], "imports through a module that does not define the name:\n" + "\n".join(found)


def _test_module_imports(path: Path) -> list[str]:
    """Top-level names of the modules a test file imports that are other test files."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return [name for name in names if name.split(".")[0].startswith(("test_", "conftest"))]


def test_test_files_share_code_only_through_support():
    """A test file that imports another test file collects only when pytest has already put that
    file's folder on ``sys.path``: run alone (as CI's engine stage runs ``tests/io/test_pr_flow.py``)
    it fails to import. Shared test code lives in ``tests/support/``."""
    tests_dir = Path(__file__).resolve().parent
    offenders = {
        path.relative_to(tests_dir).as_posix(): imported
        for path in sorted(tests_dir.rglob("*.py"))
        if (imported := _test_module_imports(path))
    }
    assert offenders == {}


def test_the_test_import_check_sees_an_import_of_a_test_file(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text("import os\nfrom test_patch_cli import TINY\nfrom support.fakes import TINY\n")
    assert _test_module_imports(sample) == ["test_patch_cli"]
