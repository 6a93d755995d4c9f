"""The package's shape, as issue 18 left it: the public names are what ``__all__`` says,
no module imports another module's private names, and the modules' imports form no
circle (module-level ones; those under ``TYPE_CHECKING`` or inside a function are left
out: they run later, or never)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import coordinator
from tests.support import ROOT

PACKAGE = ROOT / "coordinator"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    is_package = MODULES[module].name == "__init__.py"
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(module: str, *, everywhere: bool = False) -> list[tuple[str, list[str]]]:
    """(imported module, names) for each import that runs when ``module`` is imported;
    ``everywhere``: also those under ``TYPE_CHECKING`` and inside functions."""
    found: list[tuple[str, list[str]]] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) \
                    and not everywhere:
                continue
            if everywhere and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef
                                         | ast.ClassDef | ast.With | ast.AsyncWith):
                visit(node.body)
            if isinstance(node, ast.Import):
                found.extend((a.name, []) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                found.append((resolve(module, node), [a.name for a in node.names]))
            elif isinstance(node, ast.If | ast.Try):
                for block in (node.body, node.orelse, *[h.body for h in getattr(
                        node, "handlers", [])], getattr(node, "finalbody", [])):
                    visit(block)

    visit(ast.parse(MODULES[module].read_text()).body)
    return found


def test_the_public_names_are_all_importable_and_listed_once() -> None:
    assert coordinator.__all__ == sorted(coordinator.__all__, key=lambda n: (n[0].islower(), n))\
        or sorted(coordinator.__all__) == sorted(set(coordinator.__all__))
    for name in coordinator.__all__:
        assert getattr(coordinator, name) is not None, name


def test_no_module_imports_another_modules_private_names() -> None:
    offences = []
    for module in MODULES:
        for source, names in imports(module, everywhere=True):
            if source.startswith("coordinator") and source != module:
                offences += [f"{module}: {source}.{n}" for n in names
                             if n.startswith("_") and n != "__version__"
                             and f"{source}.{n}" not in MODULES]
    assert offences == []


def test_the_modules_imports_form_no_circle() -> None:
    """Not even through imports for type checking or inside functions: a circle hidden
    that way is still two modules that cannot be understood one without the other."""
    graph = {m: {s if s in MODULES else s.rpartition(".")[0]
                 for s, _names in imports(m, everywhere=True) if s.startswith("coordinator")}
             | {f"{s}.{n}" for s, names in imports(m, everywhere=True) for n in names
                if f"{s}.{n}" in MODULES}
             for m in MODULES}
    # A package's __init__ importing its own modules is how packages work, not a circle.
    for m in graph:
        graph[m] = {d for d in graph[m] if d in MODULES and d != m
                    and not (MODULES[m].name == "__init__.py" and d.startswith(m + "."))}
    seen: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        seen[node] = 1
        for dep in sorted(graph[node]):
            if seen.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in seen:
                walk(dep, [*path, dep])
        seen[node] = 2

    for m in sorted(graph):
        if m not in seen:
            walk(m, [m])
    assert cycles == []


def test_every_module_imports_on_its_own() -> None:
    for module in MODULES:
        if "dashboard" in module or module.endswith((".metrics", ".client", "__main__")):
            continue  # optional extras: the lean install's test covers them
        importlib.import_module(module)


def test_coordinator_help_imports_nothing_that_talks_to_redis() -> None:
    """``coordinator --help`` (and a usage error) is answered from argparse alone: it took
    290-360 ms when it imported redis-py and the commands first (now about 20 ms)."""
    import subprocess
    import sys

    probe = ("import sys\nfrom coordinator.ops.arguments import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('redis', 'asyncio', 'coordinator.ops.cli') "
             "if m in sys.modules), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=True)
    assert "usage: coordinator" in done.stdout
    assert done.stderr.strip() == "[]"


REFLECTION = {"getattr", "hasattr", "setattr", "delattr"}


def private(name: str) -> bool:
    """A private name: a leading underscore, and not a dunder (``__module__`` and the like
    are the language's own, public to all)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_names_used(module: str) -> list[str]:
    """Where ``module`` touches another package's private names: a ``# noqa: SLF001``
    (ruff's check of ``obj._name``, silenced), an import of a private module or name from
    outside the package, a getattr-like call with a private name on something not
    ``self``/``cls``."""
    path = MODULES[module]
    text = path.read_text()
    found = [f"{module}:{n}: noqa SLF001" for n, line in enumerate(text.splitlines(), 1)
             if "SLF001" in line and "noqa" in line]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and not node.level \
                and not (node.module or "").startswith("coordinator"):
            source = node.module or ""
            names = [a.name for a in node.names]
            if any(private(p) for p in source.split(".")) or any(map(private, names)):
                found.append(f"{module}:{node.lineno}: from {source} import {names}")
        elif isinstance(node, ast.Import):
            found += [f"{module}:{node.lineno}: import {a.name}" for a in node.names
                      if not a.name.startswith("coordinator")
                      and any(private(p) for p in a.name.split("."))]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in REFLECTION and len(node.args) >= 2:
            owner, name = node.args[0], node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str) \
                    and private(name.value) \
                    and not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{module}:{node.lineno}: {node.func.id}(..., {name.value!r})")
    return found


def test_only_the_compatibility_package_touches_dependencies_private_names() -> None:
    """coordinator/_compat/ is the one place that reads or wraps a dependency's private
    names, each guarded by the versions it was tested with (issue 20)."""
    outside = [m for m in MODULES if not m.startswith("coordinator._compat")]
    offences = [o for m in outside for o in private_names_used(m)]
    assert offences == []
