"""Addresses, for every floor of core and for ui: nothing here imports a stage."""

from __future__ import annotations

import ipaddress
from typing import Optional


def loopback(address: Optional[str]) -> bool:
    """Whether a server bound to `address` is reachable from this machine only
    ("localhost", 127.0.0.0/8, ::1 with or without brackets). None or "" is every
    interface (Streamlit's default), so not loopback."""
    if not address:
        return False
    address = address.strip()
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False
