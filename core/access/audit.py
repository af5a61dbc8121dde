"""The audit trail: who submitted, cancelled or deleted what, changed a setting,
signed in or failed to, and which actions were refused.

    python -m core audit [--limit N] [--user NAME] [--json]

The Jobs page shows it too. Entries are stamped by the database's clock.
"""

from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import func, select

from storage.db import session
from storage.tables import AuditEntry


def record(actor: Any, action: str, target: str = "", detail: str = "", ok: bool = True) -> None:
    """One entry: `actor` (core.access.accounts.Actor) did `action` to `target`."""
    with session() as s:
        s.add(AuditEntry(actor=actor.name[:200], account_id=actor.account_id, action=action[:40],
                         target=target, detail=detail, ok=ok))


def entries(limit: int = 200, user: Optional[str] = None) -> list[AuditEntry]:
    """The newest entries first; `user`: only that account's (or name's)."""
    q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if user:
        q = q.where(func.lower(AuditEntry.actor) == user.strip().lower())
    with session() as s:
        return list(s.scalars(q).all())


def entry_dict(row: AuditEntry) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.created_at.isoformat() if row.created_at else None,
        "user": row.actor,
        "action": row.action,
        "target": row.target,
        "detail": row.detail,
        "ok": row.ok,
    }
