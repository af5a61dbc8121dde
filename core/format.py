"""Values as people read them (shared by the CLI and the pages), and as every
database backend stores them."""

from __future__ import annotations

import math
from typing import Any, Optional


def jsonable(value: Any) -> Any:
    """Plain JSON that SQLite and PostgreSQL both take: numpy/torch scalars to Python,
    NaN/inf to None (PostgreSQL's json rejects them), NUL characters dropped from text
    (PostgreSQL rejects them), tuples to lists, anything else to its text."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return value.replace("\x00", "")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def human_bytes(n: Any) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def human_count(n: Any) -> str:
    if n is None:
        return "-"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def human_seconds(s: Optional[float]) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def inert_markdown(text: Any) -> str:
    """Text (a model's reply, an event, a sample) to render as Markdown that makes the
    browser fetch nothing: image syntax ("![alt](url)", "![alt][ref]") is shown as
    text, not loaded, so a reply cannot make the page call another host. (Streamlit
    does not render raw HTML in Markdown; links load only when clicked.)"""
    return str(text).replace("![", "!\\[")
