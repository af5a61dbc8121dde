"""DESIGN.md layering: pages/, Home.py -> ui -> core -> storage. core and storage
never import streamlit; storage never imports torch; nothing below imports above."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def files(package: str) -> list[Path]:
    found = sorted((ROOT / package).rglob("*.py"))
    assert found, f"no Python files under {package}/"
    return found


def test_core_and_storage_never_import_streamlit():
    offenders = [str(p.relative_to(ROOT)) for pkg in ("core", "storage") for p in files(pkg) if "streamlit" in imported_roots(p)]
    assert offenders == []


def test_storage_never_imports_torch_or_core():
    offenders = [str(p.relative_to(ROOT)) for p in files("storage") if imported_roots(p) & {"torch", "core", "ui", "transformers"}]
    assert offenders == []


def test_core_never_imports_ui_or_pages():
    offenders = [str(p.relative_to(ROOT)) for p in files("core") if imported_roots(p) & {"ui", "pages"}]
    assert offenders == []


def test_ui_is_used_only_by_pages():
    users = [str(p.relative_to(ROOT)) for pkg in ("core", "storage", "ui") for p in files(pkg) if "ui" in imported_roots(p) and pkg != "ui"]
    assert users == []


def test_the_checker_sees_imports():
    # guard against a checker that passes because it parses nothing
    assert "streamlit" in imported_roots(ROOT / "Home.py")
    assert "storage" in imported_roots(ROOT / "core" / "jobs.py")
