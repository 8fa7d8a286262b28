"""The distribution: a name of its own on PyPI, and the dependencies it declares are the pins
`make setup` installs."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pins(lines: list[str]) -> set[str]:
    out = set()
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            out.add(line.lower())
    return out


def test_declared_dependencies_are_the_pinned_requirements() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # PyPI's "flywheel" is an unrelated DynamoDB library: a requirement on it installs a stranger
    assert project["name"] not in {"flywheel", "tasks"}
    declared = pins(project["dependencies"]) | pins(
        [d for extra in project["optional-dependencies"].values() for d in extra])
    assert declared == pins((ROOT / "requirements.txt").read_text().splitlines())


def test_a_served_model_requires_real_installed_packages_only() -> None:
    from importlib.metadata import version

    from tasks.serving.router import _requirements

    requirements = _requirements()
    for requirement in requirements:
        name, _, pinned = requirement.partition("==")
        assert pinned == version(name), requirement
    names = {r.split("==")[0].lower() for r in requirements}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert project not in names and "flywheel" not in names
