"""Accounts, roles, sign-in and who may do what.

    python -m core users add NAME --role admin     (the password from a prompt, or one line of stdin)
    python -m core users list [--json]
    python -m core users set-role NAME ROLE | disable NAME | enable NAME | reset-password NAME | delete NAME

Sign-in is on as soon as one account exists; the first account is an admin and
takes over everything made before it (owner None). With no account the app is
single-user and listens on loopback only (app.py refuses anything else).

Roles, each able to do what the one before can:
    viewer   reads everything: models, data sets, runs, results, the audit trail
    member   runs jobs and services; changes and deletes what they own
    admin    everything: anyone's objects, settings (Ray address, allowed paths)

Passwords are hashed with argon2id (argon2-cffi); a session is a random token whose
SHA-256 alone is stored, valid for LLMDEV_SESSION_HOURS (default 12) or until
sign-out. After 3 failed sign-ins under one name (known or not) each further try
waits twice as long as the last (2 s, 4 s, ... at most 5 minutes).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

from sqlalchemy import delete, func, select, update

from core.access import audit
from storage.db import clock, database_url, session
from storage.tables import Account, Dataset, Export, Job, Model, Rubric, SignInFailure, SignInSession

ROLES = ("viewer", "member", "admin")
OWNED = (Model, Dataset, Export, Job, Rubric)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")
MIN_PASSWORD = 8
FREE_FAILURES = 3
MAX_WAIT_S = 300.0
SEEN_EVERY_S = 60.0  # last_seen_at is written at most this often per session
CACHE_S = 5.0  # a session checked this recently is not looked up again (a live panel polls every second)


class AccessError(ValueError):
    """An account operation that cannot be done; the message says why."""


class Denied(AccessError):
    """The caller may not do this: the message says who may."""


@dataclass(frozen=True)
class Actor:
    """Who asks: an account signed in to the app, the app's single user (no account
    exists yet), or the machine's owner at a terminal (the CLI, a worker).
    `in_app`: paths and user code are held to the app's rules (core/access/paths.py)."""

    name: str
    role: str = "admin"
    account_id: Optional[int] = None
    in_app: bool = False

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def terminal() -> Actor:
    """The machine's owner: whoever runs the CLI already holds the database and a shell."""
    try:
        user = getpass.getuser()
    except Exception:  # no name for this uid (a container)
        user = f"uid {os.getuid()}"
    return Actor(f"{user} (terminal)")


SINGLE_USER = Actor("the app's user (no accounts)", "admin", None, in_app=True)


def session_hours() -> float:
    raw = os.environ.get("LLMDEV_SESSION_HOURS", "").strip()
    try:
        hours = float(raw) if raw else 12.0
    except ValueError:
        raise ValueError(f"LLMDEV_SESSION_HOURS={raw!r}: expected a number of hours") from None
    if hours <= 0:
        raise ValueError(f"LLMDEV_SESSION_HOURS={raw!r}: must be more than 0")
    return hours


# --- what a caller may do ---------------------------------------------------------------


def require(actor: Actor, role: str, doing: str) -> None:
    """Raise Denied unless `actor` has `role` or more."""
    if not actor.may(role):
        raise Denied(f"{doing} needs the {role} role; you are signed in as a {actor.role}")


def may_change(actor: Actor, owner_id: Optional[int]) -> bool:
    """An admin changes anything; a member what they own."""
    return actor.role == "admin" or (actor.role == "member" and owner_id is not None and owner_id == actor.account_id)


def require_change(actor: Actor, owner_id: Optional[int], what: str, verb: str) -> None:
    """Raise Denied (and write it to the audit trail) unless `actor` may change
    `what` ("model 3 'tiny'")."""
    if may_change(actor, owner_id):
        return
    why = (f"{what} belongs to {owner_name(owner_id)}: only its owner or an admin may {verb} it"
           if actor.may("member") else f"a {actor.role} may not {verb} anything")
    audit.record(actor, verb, what, why, ok=False)
    raise Denied(why)


def owner_for(actor: Actor) -> Optional[int]:
    """Who owns what `actor` makes: their account; for the machine's owner or the
    single user, the first admin (None while there is no account)."""
    return actor.account_id if actor.account_id is not None else first_admin_id()


def first_admin_id() -> Optional[int]:
    with session() as s:
        return s.scalar(select(Account.id).where(Account.role == "admin", Account.disabled.is_(False)).order_by(Account.id).limit(1))


_names: dict[tuple[str, int], str] = {}  # (database, account id) -> name: names never change


def owner_name(owner_id: Optional[int]) -> str:
    """An owner's account name, for pages and tables."""
    if owner_id is None:
        return "nobody (made before the first account)"
    key = (database_url(), owner_id)
    if key not in _names:
        with session() as s:
            name = s.scalar(select(Account.name).where(Account.id == owner_id))
        if name is None:
            return f"account {owner_id} (deleted)"
        _names[key] = name
    return _names[key]


def owner_of(owner_id: Optional[int]) -> Optional[str]:
    """An object's owner for a JSON record: the account's name, or None (no owner yet)."""
    return None if owner_id is None else owner_name(owner_id)


def owner_names() -> dict[int, str]:
    """Every account's name by id (one query for a table of objects)."""
    with session() as s:
        found = dict(s.execute(select(Account.id, Account.name)).all())
    url = database_url()
    _names.update({(url, i): n for i, n in found.items()})
    return found


# --- accounts ----------------------------------------------------------------------------


def sign_in_on() -> bool:
    """Sign-in is on as soon as one account exists."""
    with session() as s:
        return s.scalar(select(Account.id).limit(1)) is not None


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME.match(name):
        raise AccessError(f"{name!r} is not a usable account name: up to 100 letters, digits, '.', '_', '@', '+' or '-', "
                          "starting with a letter or digit")
    return name


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise AccessError(f"role {role!r}: one of {', '.join(ROLES)}")
    return role


def _check_password(password: str) -> str:
    if len(password or "") < MIN_PASSWORD:
        raise AccessError(f"the password must have at least {MIN_PASSWORD} characters")
    return password


def get(name: str) -> Account:
    with session() as s:
        row = s.scalars(select(Account).where(func.lower(Account.name) == (name or "").strip().lower())).first()
    if row is None:
        raise AccessError(f"there is no account {name!r} (see: python -m core users list)")
    return row


def list_accounts() -> list[Account]:
    with session() as s:
        return list(s.scalars(select(Account).order_by(Account.id)).all())


def account_dict(row: Account) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "role": row.role,
        "disabled": row.disabled,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "last_seen_at": row.last_seen_at.isoformat() if row.last_seen_at else None,
    }


def add(name: str, password: Optional[str], role: str, by: Actor) -> Account:
    """A new account. The first one must be an admin: it takes over everything made
    before accounts existed. `password` None: it signs in only through an identity
    provider (its stored hash is of a random secret nobody knows)."""
    name, role = _check_name(name), _check_role(role)
    password = secrets.token_urlsafe(32) if password is None else _check_password(password)
    digest = _hasher().hash(password)
    with session() as s:
        first = s.scalar(select(Account.id).limit(1)) is None
        if first and role != "admin":
            raise AccessError("the first account must be an admin (--role admin): it manages the others")
        if s.scalars(select(Account.id).where(func.lower(Account.name) == name.lower())).first() is not None:
            raise AccessError(f"an account named {name!r} already exists")
        row = Account(name=name, password_hash=digest, role=role, disabled=False)
        s.add(row)
        s.flush()
        if first:
            for table in OWNED:  # what was made while the app had no accounts
                s.execute(update(table).where(table.owner_id.is_(None)).values(owner_id=row.id))
    audit.record(by, "add account", name, f"role {role}" + (" (the first: owns everything made before)" if first else ""))
    return row


def _active_admins(s, other_than: Optional[int] = None) -> int:
    q = select(func.count(Account.id)).where(Account.role == "admin", Account.disabled.is_(False))
    if other_than is not None:
        q = q.where(Account.id != other_than)
    return s.scalar(q) or 0


def set_role(name: str, role: str, by: Actor) -> Account:
    role = _check_role(role)
    row = get(name)
    with session() as s:
        if row.role == "admin" and role != "admin" and not _active_admins(s, other_than=row.id):
            raise AccessError(f"{row.name} is the last admin: make another admin first")
        s.execute(update(Account).where(Account.id == row.id).values(role=role))
    _forget_sessions()
    audit.record(by, "set role", row.name, f"{row.role} -> {role}")
    return get(row.name)


def set_disabled(name: str, disabled: bool, by: Actor) -> Account:
    """A disabled account cannot sign in; its sessions end."""
    row = get(name)
    with session() as s:
        if disabled and row.role == "admin" and not _active_admins(s, other_than=row.id):
            raise AccessError(f"{row.name} is the last admin: make another admin first")
        s.execute(update(Account).where(Account.id == row.id).values(disabled=disabled))
        if disabled:
            s.execute(delete(SignInSession).where(SignInSession.account_id == row.id))
    _forget_sessions()
    audit.record(by, "disable account" if disabled else "enable account", row.name)
    return get(row.name)


def reset_password(name: str, password: str, by: Actor) -> None:
    """A new password; the account's sessions end."""
    row = get(name)
    digest = _hasher().hash(_check_password(password))
    with session() as s:
        s.execute(update(Account).where(Account.id == row.id).values(password_hash=digest))
        s.execute(delete(SignInSession).where(SignInSession.account_id == row.id))
    _forget_sessions()
    audit.record(by, "reset password", row.name)


def remove(name: str, by: Actor, give_to: str = "") -> str:
    """Delete an account; what it owned goes to `give_to` (default: the first other
    active admin). Returns the new owner's name."""
    row = get(name)
    with session() as s:
        if row.role == "admin" and not _active_admins(s, other_than=row.id):
            raise AccessError(f"{row.name} is the last admin: make another admin first")
    heir = get(give_to) if give_to else None
    if heir is None:
        with session() as s:
            heir = s.scalars(select(Account).where(Account.role == "admin", Account.disabled.is_(False), Account.id != row.id)
                             .order_by(Account.id)).first()
    if heir is None or heir.id == row.id:
        raise AccessError(f"give {row.name}'s objects to another account")
    with session() as s:
        for table in OWNED:
            s.execute(update(table).where(table.owner_id == row.id).values(owner_id=heir.id))
        s.execute(delete(SignInSession).where(SignInSession.account_id == row.id))
        s.execute(delete(Account).where(Account.id == row.id))
    _names.pop((database_url(), row.id), None)
    _forget_sessions()
    audit.record(by, "delete account", row.name, f"what it owned now belongs to {heir.name}")
    return heir.name


# --- sign-in ----------------------------------------------------------------------------


class SignInRefused(AccessError):
    """A sign-in that did not work: wrong name or password, a disabled account, too many tries."""


def wait_after(failures: int) -> float:
    """Seconds the next try under a name waits after `failures` failed ones in a row."""
    if failures < FREE_FAILURES:
        return 0.0
    return min(MAX_WAIT_S, 2.0 ** (failures - FREE_FAILURES + 1))


_DUMMY: list[str] = []  # a hash to verify against when the name is unknown (the same time either way)


_signing_in = threading.Lock()
"""One sign-in at a time in a process: tries sent all at once each wait their turn and
see the failures before them (else each of N parallel tries would pass the count)."""


def sign_in(name: str, password: str) -> str:
    """A new session's token for `name`, or SignInRefused saying why (the same words
    for an unknown name and a wrong password)."""
    with _signing_in:
        return _sign_in(name, password)


def _sign_in(name: str, password: str) -> str:
    key = (name or "").strip().lower()[:100]
    who = Actor((name or "").strip()[:100] or "(no name)", "viewer")
    with session() as s:
        now = clock(s)
        failed = s.get(SignInFailure, key)
        if failed is not None and failed.count >= FREE_FAILURES:
            left = wait_after(failed.count) - (now - failed.last_at).total_seconds()
            if left > 0:
                audit.record(who, "sign in", "", f"refused: {failed.count} failed tries, {left:.0f} s to wait", ok=False)
                raise SignInRefused(f"Too many failed sign-ins as {name.strip()!r}: try again in {left:.0f} s.")
        row = s.scalars(select(Account).where(func.lower(Account.name) == key)).first()
    from argon2.exceptions import VerificationError, InvalidHashError

    hasher = _hasher()
    if not _DUMMY:
        _DUMMY.append(hasher.hash(secrets.token_hex(16)))
    try:
        hasher.verify(row.password_hash if row is not None else _DUMMY[0], password or "")
        good = row is not None
    except (VerificationError, InvalidHashError):
        good = False
    if not good:
        with session() as s:
            now = clock(s)
            failed = s.get(SignInFailure, key)
            if failed is None:
                s.add(SignInFailure(name=key, count=1, last_at=now))
            else:
                failed.count, failed.last_at = failed.count + 1, now
        audit.record(who, "sign in", "", "wrong name or password", ok=False)
        raise SignInRefused("Wrong name or password.")
    return _start_session(row, key)


def sign_in_external(name: str, how: str) -> str:
    """A new session's token for the account named `name` (the e-mail an identity
    provider vouched for: ui/access.py, Streamlit's st.login), or SignInRefused when
    there is no such account or it is disabled. The provider checked the password."""
    key = (name or "").strip().lower()[:100]
    with session() as s:
        row = s.scalars(select(Account).where(func.lower(Account.name) == key)).first()
    if row is None:
        audit.record(Actor(key or "(no name)", "viewer"), "sign in", "", f"{how}: no account of that name", ok=False)
        raise SignInRefused(f"{how} says you are {name!r}, but there is no account of that name here: ask an admin "
                            f"(python -m core users add {name} --role member --no-password).")
    return _start_session(row, key, how)


def _start_session(row: Account, key: str, how: str = "") -> str:
    if row.disabled:
        audit.record(Actor(row.name, row.role, row.id), "sign in", "", "the account is disabled", ok=False)
        raise SignInRefused("This account is disabled: ask an admin.")
    token = secrets.token_urlsafe(32)
    with session() as s:
        now = clock(s)
        s.execute(delete(SignInFailure).where(SignInFailure.name == key))
        s.add(SignInSession(token_hash=_digest(token), account_id=row.id, created_at=now,
                            expires_at=now + timedelta(hours=session_hours()), last_seen_at=now))
        s.execute(update(Account).where(Account.id == row.id).values(last_seen_at=now))
    audit.record(Actor(row.name, row.role, row.id), "sign in", "", how)
    return token


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_checked: dict[tuple[str, str], tuple[float, Optional[Actor]]] = {}  # (database, token digest) -> (when, who)
_checked_lock = threading.Lock()


def _forget_sessions() -> None:
    with _checked_lock:
        _checked.clear()


def actor_for(token: Optional[str]) -> Optional[Actor]:
    """The app visitor a session token stands for, or None (no token, unknown,
    expired, signed out, or the account disabled)."""
    if not isinstance(token, str) or not token or len(token) > 200:
        return None
    digest = _digest(token)
    key = (database_url(), digest)
    with _checked_lock:
        hit = _checked.get(key)
    if hit is not None and time.monotonic() - hit[0] < CACHE_S:
        return hit[1]
    found: Optional[Actor] = None
    with session() as s:
        now = clock(s)
        row = s.execute(
            select(SignInSession, Account).join(Account, Account.id == SignInSession.account_id)
            .where(SignInSession.token_hash == digest)
        ).first()
        if row is not None:
            sess, account = row
            if sess.expires_at > now and not account.disabled:
                found = Actor(account.name, account.role, account.id, in_app=True)
                if sess.last_seen_at is None or (now - sess.last_seen_at).total_seconds() > SEEN_EVERY_S:
                    s.execute(update(SignInSession).where(SignInSession.id == sess.id).values(last_seen_at=now))
                    s.execute(update(Account).where(Account.id == account.id).values(last_seen_at=now))
            elif sess.expires_at <= now:
                s.execute(delete(SignInSession).where(SignInSession.id == sess.id))
    with _checked_lock:
        if len(_checked) > 10_000:
            _checked.clear()
        _checked[key] = (time.monotonic(), found)
    return found


def sign_out(token: Optional[str]) -> None:
    """End the session of `token` (the account's other sessions go on)."""
    if not token:
        return
    actor = actor_for(token)
    with session() as s:
        s.execute(delete(SignInSession).where(SignInSession.token_hash == _digest(token)))
    _forget_sessions()
    if actor is not None:
        audit.record(actor, "sign out")
