"""Secrets out of anything shown: one helper for every page, error and log line.

    mask("could not connect to postgresql://llm:s3cret@db/llm")  ->  "... postgresql://llm:***@db/llm"

What it hides: the password of any URL with credentials (scheme://user:password@host),
`password=...` in a connection string, a bearer token, and the values of this
process's secret settings (DATABASE_URL's password, any variable whose name says
KEY, TOKEN, SECRET or PASSWORD) wherever they appear.
"""

from __future__ import annotations

import os
import re

HIDDEN = "***"
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(?P<secret>[^@\s/]+)(?P<tail>@)")
_PAIRS = re.compile(r"(?P<head>\b(?:password|passwd|pwd|api[_-]?key|token|secret)\s*[=:]\s*['\"]?)(?P<secret>[^\s'\",;&]+)", re.I)
_BEARER = re.compile(r"(?P<head>\bBearer\s+)(?P<secret>[A-Za-z0-9._~+/=-]{6,})")
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD", re.I)
MIN_SECRET = 6  # shorter values ("1", "yes") would mask ordinary words


def _known_secrets() -> list[str]:
    """The secret values this process holds (longest first)."""
    found = set()
    for name, value in os.environ.items():
        if _SECRET_NAME.search(name) and len(value) >= MIN_SECRET:
            found.add(value)
    url = os.environ.get("DATABASE_URL", "")
    m = _URL_PASSWORD.search(url)
    if m and len(m.group("secret")) >= 3:
        found.add(m.group("secret"))
    return sorted(found, key=len, reverse=True)


def mask(text: object) -> str:
    """`text` (any object: str() of it) with every secret it holds replaced by ***."""
    out = str(text)
    for value in _known_secrets():
        out = out.replace(value, HIDDEN)
    for pattern in (_URL_PASSWORD, _PAIRS, _BEARER):
        out = pattern.sub(lambda m: m.group("head") + HIDDEN + (m.groupdict().get("tail") or ""), out)
    return out


def one_line(text: object, limit: int = 200) -> str:
    """A remote party's words (an error body), masked, as one short line: never a page of it."""
    line = " ".join(mask(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
