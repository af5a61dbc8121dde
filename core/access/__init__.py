"""Who may do what (DESIGN.md, "Trust").

    accounts   accounts, roles, sign-in and its sessions, the caller (`Actor`) and what it may do
    audit      the trail of who did what
    paths      the server paths an app visitor may name (allowed roots)
    sandbox    a user's code (a reward file, an lm-eval task) in a confined process
    outbound   the addresses the app may send requests to (a judge, a Ray cluster)
    masking    secrets (passwords in URLs, API keys) masked in anything shown

Three kinds of caller: the machine's owner (the CLI, a worker) may do anything
and names any path; an app visitor is an account with a role, confined to the
allowed roots; user code and API clients are untrusted input.
"""
