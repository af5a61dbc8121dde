"""The data set registry (import and validation arrive with fine-tuning)."""

from __future__ import annotations

from sqlalchemy import func, select

from storage.db import session
from storage.tables import Dataset


def count() -> int:
    with session() as s:
        return s.scalar(select(func.count()).select_from(Dataset)) or 0
