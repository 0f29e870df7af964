"""Imports only point down: each package of src/isoprobe imports exactly the isoprobe packages its
`__init__` docstring names on its `Imports:` line, and the package graph has no cycle."""

from __future__ import annotations

import re

import pytest
from test_stage_deps import SRC, imported_modules

PACKAGES = sorted(p.name for p in (SRC / "isoprobe").iterdir() if (p / "__init__.py").is_file())


def declared(package: str) -> set[str]:
    """The packages named on the `Imports:` line of `package`'s docstring."""
    text = (SRC / "isoprobe" / package / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r"^Imports: (.*?)\.$", text, re.M | re.S)
    assert found, f"isoprobe.{package}: no 'Imports:' line in its docstring"
    return set(re.findall(r"`([a-z_]+)`", found.group(1)))


def actual(package: str) -> set[str]:
    """The other isoprobe packages that modules of `package` import (anywhere in a function too)."""
    out: set[str] = set()
    for f in (SRC / "isoprobe" / package).rglob("*.py"):
        out |= {m.split(".")[1] for m in imported_modules(f) if m.count(".") >= 1}
    return out & set(PACKAGES) - {package}


def test_there_are_packages_and_core_is_one():
    assert "core" in PACKAGES and len(PACKAGES) >= 5


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_what_its_docstring_says(package):
    assert actual(package) == declared(package) & set(PACKAGES) - {package}


def test_core_imports_no_other_package():
    assert actual("core") == set()


def test_the_package_graph_has_no_cycle():
    graph = {p: actual(p) for p in PACKAGES}
    done: set[str] = set()

    def visit(p: str, path: tuple[str, ...]) -> None:
        assert p not in path, f"import cycle: {' -> '.join((*path, p))}"
        if p not in done:
            for q in graph[p]:
                visit(q, (*path, p))
            done.add(p)

    for p in PACKAGES:
        visit(p, ())
