"""The import structure of the repository's own packages (node, dicom_io, registration_core), read from the source:
no import cycle between modules (module- or function-level; ``if TYPE_CHECKING:`` imports excepted), and at most
20 imports of the project's own modules inside functions, each with a one-line ``# reason: ...`` comment (on the
line above or at the end of the import). The layer contracts themselves are import-linter's (pyproject.toml,
``lint-imports`` in scripts/test.sh)."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("node", "dicom_io", "registration_core")
MAX_FUNCTION_IMPORTS = 20


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    path: Path
    line: int
    in_function: bool
    reason: bool


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _has_reason(lines: list[str], lineno: int) -> bool:
    here = lines[lineno - 1]
    above = lines[lineno - 2].strip() if lineno >= 2 else ""
    return "# reason:" in here or above.startswith("# reason:")


def project_imports() -> list[Import]:
    """Every import of a project module by a project module (module- and function-level, not TYPE_CHECKING)."""
    modules = _modules()
    found = []
    for name, path in modules.items():
        source = path.read_text()
        lines = source.splitlines()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]

        def visit(node, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                func = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    if isinstance(child, ast.Import):
                        targets = [a.name for a in child.names]
                    else:
                        base = child.module or ""
                        if child.level:
                            parts = package.split(".")[:len(package.split(".")) - (child.level - 1)]
                            base = ".".join(parts + ([base] if base else []))
                        # "from pkg import mod" imports pkg.mod; "from mod import name" imports mod
                        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
                    for target in {_resolve(t, modules) for t in targets} - {None, name}:
                        found.append(Import(name, target, path, child.lineno, func, _has_reason(lines, child.lineno)))
                visit(child, func)

        visit(ast.parse(source), False)
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycle_between_project_modules():
    edges: dict[str, set[str]] = {}
    for imp in project_imports():
        edges.setdefault(imp.importer, set()).add(imp.imported)
    assert _cycles(edges) == []


def test_function_level_imports_are_few_and_give_a_reason():
    inside = [i for i in project_imports() if i.in_function]
    where = [f"{i.path.relative_to(ROOT)}:{i.line} imports {i.imported}" for i in inside]
    assert len(inside) <= MAX_FUNCTION_IMPORTS, "\n".join(where)
    assert [w for w, i in zip(where, inside) if not i.reason] == []


def test_the_checks_see_what_they_count():
    """The reader finds a known module-level and a known function-level import (a reader that finds nothing would
    pass the two tests above)."""
    imports = project_imports()
    assert any(i.importer == "node.work.worker" and i.imported == "node.work.steps" and not i.in_function
               for i in imports)
    assert any(i.importer == "node.work.steps" and i.imported.startswith("registration_core") and i.in_function
               and i.reason for i in imports)
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
