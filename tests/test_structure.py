"""The code's shape: no import cycle between files or between packages.

The layers themselves (which package may import which) are the import-linter contract in
`.importlinter`, run by `make test` before the tests. These catch what a layers contract
does not: a cycle between two files of one package, and a cycle among top-level modules.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp
import pytest

import tidegate


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("tidegate")


def strongly_connected(nodes, edges_of) -> list[list[str]]:
    """Groups of more than one node that reach each other (Tarjan), i.e. the cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges_of(node):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return groups


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(edges, edges.__getitem__) == [["a", "b", "c"]]
    assert strongly_connected({"a": set(), "b": {"a"}}, {"a": set(), "b": {"a"}}.__getitem__) == []


def test_no_import_cycle_between_files(graph):
    # Imports inside functions count: deferring an import hides a cycle, it does not remove it.
    cycles = strongly_connected(graph.modules, graph.find_modules_directly_imported_by)
    assert cycles == [], cycles


def test_no_import_cycle_between_packages(graph):
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        edges.setdefault(package(module), set())
        for imported in graph.find_modules_directly_imported_by(module):
            if package(imported) != package(module):
                edges[package(module)].add(package(imported))
    cycles = strongly_connected(edges, edges.__getitem__)
    assert cycles == [], cycles


# Recorded events that change nothing any access decision depends on.
RECORDED_WITHOUT_ACCESS_CHANGE = {
    "tidegate/web/auth.py": "signing in and out",
    "tidegate/web/audit.py": "exporting the audit log",
    "tidegate/credentials/failures.py": "observing a burst of failed authentications",
    "tidegate/api/audit.py": "exporting the audit log",
    "tidegate/orgs/retention.py": "purging audit events past their retention",
    "tidegate/notifications/webhooks.py": "webhook settings: no access decision reads them",
    "tidegate/notifications/audit_stream.py": "the audit stream's settings: no access decision reads them",
    "tidegate/credentials/leaks.py": "a leak report (the revocation it makes bumps on its own)",
}


def functions_calling(tree: ast.AST, name: str) -> set[str]:
    found = set()
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name:
                    found.add(function.name)
    return found


def test_every_recorded_change_invalidates_access_explicitly():
    """Recording an event no longer bumps the access epoch as a side effect: each change
    does it by name (orgs.epoch). A function that records a change and does not bump is a
    change whose effect on access caches would be missed."""
    root = Path(tidegate.__file__).parent
    missing = []
    for path in sorted(root.rglob("*.py")):
        relative = str(path.relative_to(root.parent))
        if relative in RECORDED_WITHOUT_ACCESS_CHANGE:
            continue
        tree = ast.parse(path.read_text())
        for function in functions_calling(tree, "record") - functions_calling(tree, "bump_access_epoch"):
            missing.append(f"{relative}:{function}")
    assert missing == []


def test_the_scan_sees_a_record_without_a_bump():
    tree = ast.parse(
        "def change(s):\n    record(s, None, 'x', org_id='o')\n\ndef ok(s):\n    record(s)\n    bump_access_epoch(s, 'o')\n"
    )
    assert functions_calling(tree, "record") - functions_calling(tree, "bump_access_epoch") == {"change"}


TESTS = Path(__file__).resolve().parent


def test_tests_import_the_suites_conftest_by_package():
    """`from conftest import ...` finds whichever conftest module xdist's worker imported first
    (tests/faults has one too): a module that passes alone fails in the full run."""
    offenders = [
        str(path.relative_to(TESTS.parent))
        for path in TESTS.rglob("*.py")
        if re.search(r"^\s*(from conftest import|import conftest\b)", path.read_text(), re.MULTILINE)
    ]
    assert not offenders, f"import from tests.conftest instead: {offenders}"
