"""The layout of ``tasks/``: no import circles, and one helper for each piece of shared ground."""

from __future__ import annotations

import ast
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tasks"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at the top or inside a function (a lazy
    import closes a circle as surely as a top-level one, only later)."""
    modules = {module_name(p): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    base = f"{parent}.{base}" if base else parent
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def test_graph_sees_lazy_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.b import g\n")
    (package / "b.py").write_text("from pkg import a\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        graph = import_graph(package)
    finally:
        ROOT = saved
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    with pytest.raises(CycleError):
        tuple(TopologicalSorter(graph).static_order())


def test_tasks_has_no_import_circle():
    graph = import_graph(PACKAGE)
    assert len(graph) > 30  # the walk found the package
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        pytest.fail(f"import circle in tasks/: {' -> '.join(error.args[1])}")


HELPERS = {
    # a temporary file renamed over its target: tasks/core/files.py alone
    r"os\.(replace|rename)\(": {"tasks/core/files.py",
                                # whole folders published in one rename (not a file write)
                                "tasks/basemodels.py", "tasks/pretrained.py",
                                "tasks/curate.py", "tasks/vectors.py",
                                # the demo moves held-back landing files
                                "tasks/demo.py"},
    r"datetime\.now\(": {"tasks/core/clock.py"},
    r"fcntl\.flock\(": {"tasks/core/files.py"},
}


@pytest.mark.parametrize("pattern", sorted(HELPERS))
def test_one_helper_for_each_piece_of_shared_ground(pattern):
    users = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
             if re.search(pattern, p.read_text())}
    assert users <= HELPERS[pattern], (pattern, sorted(users - HELPERS[pattern]))
