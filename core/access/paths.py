"""The server paths an app visitor may name.

A form's "path on this machine" (a data set file, a model folder, a tokenizer
corpus, a reward file, an lm-eval task folder) is used only when, with symlinks and
'..' resolved, it lies under an allowed root:

    the data home's uploads/          what the pages' upload boxes keep
    the app's assets/                 the shipped samples and lm-eval tasks
    LLMDEV_ALLOWED_PATHS              folders separated by ':' (fixed by whoever starts the app)
    or the list an admin saves on the Jobs page (when the variable is not set)

Anything else is refused with one message whether it exists or not (no way to
probe the server's files). The rules hold in a process that serves app visitors
(`serve_visitors()`, called by the pages) once sign-in is on, or once allowed roots
are set; the single-user app on loopback, the CLI and the workers may name any path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from storage.db import data_home

ENV = "LLMDEV_ALLOWED_PATHS"
SETTING = "allowed_paths"
ASSETS = Path(__file__).resolve().parents[2] / "assets"

_serving = False


def serve_visitors(on: bool = True) -> None:
    """This process serves app visitors (the Streamlit server): hold paths to the rules."""
    global _serving
    _serving = on


def uploads() -> Path:
    return data_home() / "uploads"


def extra_roots() -> list[str]:
    """The allowed roots beyond the built-in ones, as set (the variable wins)."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        return [p for p in raw.split(os.pathsep) if p.strip()]
    from core.config import get_setting

    return [str(p) for p in get_setting(SETTING, []) or []]


def roots() -> list[Path]:
    """Every folder an app visitor may name a path under (resolved)."""
    return [uploads().resolve(), ASSETS, *(Path(p).expanduser().resolve() for p in extra_roots())]


def confined() -> bool:
    """Whether paths are held to the allowed roots in this process now."""
    if not _serving:
        return False
    from core.access.accounts import sign_in_on

    return bool(os.environ.get(ENV, "").strip()) or sign_in_on() or bool(extra_roots())


def refusal(value: str) -> str:
    """The one message for a path outside the roots and for a missing one."""
    where = ", ".join(str(r) for r in roots())
    return (f"{value}: not found among the files this app may read (under {where}); "
            "upload the file on the page, or ask an admin to allow its folder")


def usable(value: str, want: Literal["file", "dir", "any"] = "file") -> Path:
    """The path `value` names, as a job will read it. In the app (see `confined`)
    it must lie under an allowed root and exist as `want`, else ValueError with
    `refusal`'s words; elsewhere it is returned as given (expanded), unchecked."""
    path = Path(value).expanduser()
    if not confined():
        return path
    real = Path(os.path.realpath(path))
    inside = any(real == root or real.is_relative_to(root) for root in roots())
    exists = {"file": real.is_file, "dir": real.is_dir, "any": real.exists}[want]()
    if not (inside and exists):
        raise ValueError(refusal(value))
    return real


def save_setting(folders: list[str], by) -> list[str]:
    """An admin's list of allowed roots (each an existing folder); returns it."""
    from core.access import accounts, audit
    from core.config import get_setting
    from storage.db import session
    from storage.tables import Setting

    accounts.require(by, "admin", "changing the allowed folders")
    if os.environ.get(ENV, "").strip():
        raise accounts.AccessError(f"the allowed folders are fixed by {ENV}: change it where the app is started")
    cleaned = []
    for folder in folders:
        folder = folder.strip()
        if not folder:
            continue
        path = Path(folder).expanduser()
        if not path.is_absolute() or not path.is_dir():
            raise accounts.AccessError(f"{folder}: give an existing folder as an absolute path")
        cleaned.append(str(path.resolve()))
    before = get_setting(SETTING, [])
    with session() as s:
        row = s.get(Setting, SETTING)
        if row is None:
            s.add(Setting(key=SETTING, value=cleaned))
        else:
            row.value = cleaned
    audit.record(by, "set allowed folders", "", f"{before or '(none)'} -> {cleaned or '(none)'}")
    return cleaned
