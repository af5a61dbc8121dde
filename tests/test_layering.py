"""DESIGN.md layering: pages/, Home.py -> ui -> core -> storage. core and storage
never import streamlit; storage never imports torch; nothing below imports above.
Inside core the stages keep to their own: training and evaluation do not reach
into each other, and no module takes another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names taken from it) for every absolute import in a file, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def imported_roots(path: Path) -> set[str]:
    return {module.split(".")[0] for module, _ in imports(path)}


def files(package: str) -> list[Path]:
    found = sorted((ROOT / package).rglob("*.py"))
    assert found, f"no Python files under {package}/"
    return found


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.fast
def test_core_and_storage_never_import_streamlit():
    offenders = [rel(p) for pkg in ("core", "storage") for p in files(pkg) if "streamlit" in imported_roots(p)]
    assert offenders == []


@pytest.mark.fast
def test_storage_never_imports_torch_or_core():
    offenders = [rel(p) for p in files("storage") if imported_roots(p) & {"torch", "core", "ui", "transformers"}]
    assert offenders == []


@pytest.mark.fast
def test_core_never_imports_ui_or_pages():
    offenders = [rel(p) for p in files("core") if imported_roots(p) & {"ui", "pages"}]
    assert offenders == []


@pytest.mark.fast
def test_ui_is_used_only_by_pages():
    users = [rel(p) for pkg in ("core", "storage", "ui") for p in files(pkg) if "ui" in imported_roots(p) and pkg != "ui"]
    assert users == []


@pytest.mark.fast
def test_training_and_evaluation_keep_to_their_own():
    """Evaluation reads training runs only through what training shares
    (core.training.common); training never imports evaluation."""
    offenders = []
    for path in files("core/training"):
        offenders += [f"{rel(path)} -> {m}" for m, _ in imports(path) if m.startswith("core.evaluation")]
    for path in files("core/evaluation"):
        offenders += [f"{rel(path)} -> {m}" for m, _ in imports(path) if m.startswith("core.training") and m != "core.training.common"]
    assert offenders == []


@pytest.mark.fast
def test_the_job_machinery_never_imports_the_kinds_that_run_on_it():
    """core/jobs (submit, queue, run on Ray) stands below the stages that define
    kinds: it reaches the registries, never training, evaluation, export or serving."""
    kinds = ("core.training", "core.evaluation", "core.export.onnx", "core.export.merge", "core.export.triton_repo",
             "core.serving", "core.models.create", "core.models.importer", "core.data.importer")
    offenders = [f"{rel(p)} -> {m}" for p in files("core/jobs") for m, _ in imports(p) if m.startswith(kinds)]
    assert offenders == []


@pytest.mark.fast
def test_no_module_takes_another_modules_private_names():
    offenders = []
    for pkg in ("core", "ui", "pages"):
        for path in files(pkg):
            for module, names in imports(path):
                if module.split(".")[0] in ("core", "ui", "storage"):
                    offenders += [f"{rel(path)}: {module}.{n}" for n in names if n.startswith("_")]
    assert offenders == []


@pytest.mark.fast
def test_the_stages_are_folders():
    stages = {p.name for p in (ROOT / "core").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert {"jobs", "models", "data", "training", "evaluation", "export", "inference"} <= stages


@pytest.mark.fast
def test_the_checker_sees_imports():
    # guard against a checker that passes because it parses nothing
    assert "streamlit" in imported_roots(ROOT / "Home.py")
    assert "storage" in imported_roots(ROOT / "core" / "jobs" / "lifecycle.py")
    assert ("core.training.common", ["run_checkpoints"]) in imports(ROOT / "core" / "evaluation" / "common.py")


def unnamed_actions(source: str) -> list[str]:
    """Calls of core's actions that do not say who acts (no `by=`); ui.forms' own
    helpers (forms.submit) pass it themselves."""
    actions = {"submit", "cancel", "delete", "rename", "resume", "set_address", "save_rubric", "save_setting"}
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in actions):
            continue
        helper = isinstance(node.func.value, ast.Name) and node.func.value.id == "forms"
        if not helper and not any(k.arg == "by" for k in node.keywords):
            found.append(f"{node.lineno} {ast.unparse(node.func)}")
    return found


@pytest.mark.fast
def test_the_pages_act_as_the_signed_in_visitor():
    """Every action a page takes through core names who takes it (`by=`): a call
    without it would act as the machine's owner (core/access/accounts.py)."""
    offenders = [f"{rel(path)}:{line}" for path in [*files("ui"), *files("pages"), ROOT / "Home.py"]
                 for line in unnamed_actions(path.read_text())]
    assert offenders == []
    assert unnamed_actions("jobs.cancel(3)\nmodels.delete(1, by=me)\nforms.submit(f)") == ["1 jobs.cancel"]


@pytest.mark.fast
def test_ruff_finds_nothing():
    """The linter (pyproject.toml's [tool.ruff]: pyflakes, syntax, bugbear) passes on the whole tree."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (requirements-dev.txt pins it; scripts/test.sh installs it)")
    done = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
