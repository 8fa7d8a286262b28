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
                                "tasks/demo/basemodels.py", "tasks/training/pretrained.py",
                                "tasks/curation/curate.py", "tasks/curation/vectors.py",
                                # the demo moves held-back landing files
                                "tasks/demo/run.py"},
    r"datetime\.now\(": {"tasks/core/clock.py"},
    r"fcntl\.flock\(": {"tasks/core/files.py"},
}


@pytest.mark.parametrize("pattern", sorted(HELPERS))
def test_one_helper_for_each_piece_of_shared_ground(pattern):
    users = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
             if re.search(pattern, p.read_text())}
    assert users <= HELPERS[pattern], (pattern, sorted(users - HELPERS[pattern]))


#: The demo's own package: the simulator, CLINC150, the tiny test base models, ``flywheel demo``.
DEMO = "tasks.demo"
#: Modules outside it that may name it: the command line lists its commands (by name, imported
#: only when one of them is run).
MAY_NAME_DEMO = {"tasks.cli"}


def _imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_production_module_imports_the_demo():
    """Production stages, DAGs and plugins run without the demo: its base models reach training
    through an entry point, its data through files, never through an import."""
    graph = import_graph(PACKAGE)
    production = {m for m in graph if not m.startswith(DEMO)} - MAY_NAME_DEMO
    assert len(production) > 30
    offenders = {m: sorted(t for t in graph[m] if t == DEMO or t.startswith(DEMO + "."))
                 for m in production}
    for folder in ("dags", "plugins"):
        for path in (ROOT / folder).rglob("*.py"):
            offenders[str(path.relative_to(ROOT))] = sorted(
                n for n in _imports_of(path) if n == DEMO or n.startswith(DEMO + "."))
    assert not {m: t for m, t in offenders.items() if t}, offenders


def test_the_layout_check_sees_a_demo_import(tmp_path):
    (tmp_path / "dag.py").write_text("def f():\n    from tasks.demo.simulate import simulate\n")
    assert "tasks.demo.simulate" in _imports_of(tmp_path / "dag.py")


def test_every_stage_has_its_room():
    """The stages are sub-packages named for what they do; nothing but the command line and the
    package marker sits loose in tasks/."""
    rooms = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert {"core", "ingest", "curation", "training", "evaluation", "registry", "serving",
            "reporting", "stack", "demo"} <= rooms
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "cli.py"]


def family_branches(package: Path, names: set[str]) -> list[str]:
    """``file:line`` of every comparison with a model family's name (``== "encoder"``, ``in
    ("causal_lm", ...)``) and every ``hasattr`` probe of a router's methods, outside training."""
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("tasks/training/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                values = {c.value for o in operands for c in ast.walk(o)
                          if isinstance(c, ast.Constant) and isinstance(c.value, str)}
                if values & names:
                    found.append(f"{relative}:{node.lineno}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id == "hasattr" and len(node.args) == 2
                  and isinstance(node.args[1], ast.Constant)
                  and node.args[1].value in {"route", "route_batch", "generate"}):
                found.append(f"{relative}:{node.lineno}")
    return found


def test_only_training_asks_which_family_a_model_is():
    """Evaluation, the gate, the registry, serving and the report take any model through
    tasks.families; only training builds each family its own way."""
    from tasks.families import FAMILIES

    assert family_branches(PACKAGE, set(FAMILIES)) == []


def test_the_family_check_sees_a_branch(tmp_path):
    package = tmp_path / "tasks"
    package.mkdir()
    (package / "bad.py").write_text(
        'def f(e):\n    if e["family"] == "encoder":\n        return 1\n'
        '    return hasattr(e, "route_batch")\n')
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert family_branches(package, {"encoder"}) == ["tasks/bad.py:2", "tasks/bad.py:4"]
    finally:
        ROOT = saved


def simulator_reads(package: Path) -> list[str]:
    """``file:line`` of every use of the simulator's folder (``paths.simulator``) or its gold
    files outside the demo: production code gets gold labels only when handed them."""
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("tasks/demo/") or relative == "tasks/core/config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr == "simulator") or (
                    isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and "truth-" in node.value):
                found.append(f"{relative}:{node.lineno}")
    return found


def test_no_production_module_reads_simulator_files():
    assert simulator_reads(PACKAGE) == []


def test_the_simulator_check_sees_a_read(tmp_path):
    package = tmp_path / "tasks"
    package.mkdir()
    (package / "bad.py").write_text('def f(paths):\n    return paths.simulator / "truth-x"\n')
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert simulator_reads(package) == ["tasks/bad.py:2", "tasks/bad.py:2"]
    finally:
        ROOT = saved
