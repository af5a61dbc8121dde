"""The CLI's `users` and `audit` commands (core/cli.py adds them to its parser).

    python -m core users add NAME --role admin|member|viewer    the password from a prompt, or one line of stdin
    python -m core users add EMAIL --role member --no-password  signs in through the identity provider only
    python -m core users list [--json]
    python -m core users set-role NAME ROLE
    python -m core users disable|enable NAME
    python -m core users reset-password NAME                     the new password as for add
    python -m core users delete NAME [--give-to OTHER] --yes     what NAME owned goes to OTHER (default: an admin)
    python -m core audit [--limit N] [--user NAME] [--json]

The CLI is the machine's owner: these act as "<unix user> (terminal)" in the audit trail.
A password is never a flag (it would show in the process list and the shell's history).
"""

from __future__ import annotations

import getpass
import json
import sys

from core.access import accounts, audit


def read_password(confirm: bool = True) -> str:
    """From a prompt (twice) on a terminal, else one line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Again: ") != first:
            raise accounts.AccessError("the two passwords differ: nothing changed")
        return first
    line = sys.stdin.readline()
    if not line:
        raise accounts.AccessError("no password on stdin: give it as one line (or run this on a terminal for a prompt)")
    return line.rstrip("\r\n")


def _table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    return "\n".join(["  ".join(c.upper().ljust(widths[c]) for c in columns)]
                     + ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows])


def users_add(args) -> int:
    first = not accounts.sign_in_on()
    row = accounts.add(args.name, None if args.no_password else read_password(), args.role, accounts.terminal())
    print(f"account {row.name} ({row.role}) added" + ("; sign-in is now on: the app asks every visitor to sign in" if first else ""))
    return 0


def users_list(args) -> int:
    rows = [accounts.account_dict(r) for r in accounts.list_accounts()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    view = [dict(r, disabled="yes" if r["disabled"] else "", last_seen=r["last_seen_at"] or "never") for r in rows]
    print(_table(view, ["id", "name", "role", "disabled", "last_seen"]))
    return 0


def users_set_role(args) -> int:
    row = accounts.set_role(args.name, args.role, accounts.terminal())
    print(f"{row.name} is now a {row.role}")
    return 0


def users_disable(args) -> int:
    row = accounts.set_disabled(args.name, args.verb == "disable", accounts.terminal())
    print(f"{row.name} is {'disabled: it cannot sign in, its sessions ended' if row.disabled else 'enabled'}")
    return 0


def users_reset_password(args) -> int:
    accounts.reset_password(args.name, read_password(), accounts.terminal())
    print(f"{args.name}: new password set; its sessions ended")
    return 0


def users_delete(args) -> int:
    if not args.yes:
        print(f"this deletes the account {args.name!r} (what it owns goes to another account): add --yes to confirm", file=sys.stderr)
        return 2
    heir = accounts.remove(args.name, accounts.terminal(), args.give_to)
    print(f"deleted {args.name}; what it owned now belongs to {heir}")
    return 0


def audit_list(args) -> int:
    rows = [audit.entry_dict(e) for e in audit.entries(args.limit, args.user)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    view = [dict(r, at=(r["at"] or "")[:19].replace("T", " "), ok="" if r["ok"] else "REFUSED") for r in rows]
    print(_table(view, ["at", "user", "action", "target", "ok", "detail"]))
    return 0


def add_commands(top) -> None:
    """The `users` and `audit` nouns on the CLI's top-level subparsers."""
    u = top.add_parser("users", help="accounts of the app: add, list, roles, disable, reset a password, delete")
    verbs = u.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("add", help="add an account (the first one must be an admin); the password from a prompt or stdin")
    c.add_argument("name")
    c.add_argument("--role", required=True, choices=accounts.ROLES)
    c.add_argument("--no-password", action="store_true",
                   help="it signs in only through the identity provider (the name is the e-mail it vouches for)")
    c.set_defaults(func=users_add)
    c = verbs.add_parser("list", help="every account with its role and when it was last seen")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=users_list)
    c = verbs.add_parser("set-role", help="change an account's role")
    c.add_argument("name")
    c.add_argument("role", choices=accounts.ROLES)
    c.set_defaults(func=users_set_role)
    for verb, text in (("disable", "stop an account from signing in (its sessions end)"), ("enable", "let it sign in again")):
        c = verbs.add_parser(verb, help=text)
        c.add_argument("name")
        c.set_defaults(func=users_disable)
    c = verbs.add_parser("reset-password", help="set a new password (from a prompt or stdin); its sessions end")
    c.add_argument("name")
    c.set_defaults(func=users_reset_password)
    c = verbs.add_parser("delete", help="delete an account; what it owned goes to another")
    c.add_argument("name")
    c.add_argument("--give-to", default="", help="the account that takes over its models, data sets, exports and jobs")
    c.add_argument("--yes", action="store_true", help="confirm")
    c.set_defaults(func=users_delete)
    c = top.add_parser("audit", help="who did what: submits, cancels, deletes, settings, sign-ins")
    c.add_argument("--limit", type=int, default=100)
    c.add_argument("--user", default="", help="only this user's entries")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=audit_list)
