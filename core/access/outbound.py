"""The addresses the platform sends requests to on a user's word (a judge endpoint,
a Ray cluster), and how.

    check_url("http://169.254.169.254/latest/meta-data")  ->  ValueError (a cloud's metadata service)

Refused: anything but http(s), link-local addresses (169.254.0.0/16, fe80::/10,
where clouds answer with credentials), the known metadata hosts and addresses, and
unspecified or multicast ones; a name is refused when any of its addresses is.
Loopback and private networks stay allowed: a judge served on this machine, a Ray
cluster on the lab's network. `open_url` follows a redirect only to an allowed
address and drops the Authorization header when it leads to another host.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

METADATA_HOSTS = {"metadata.google.internal", "metadata", "metadata.azure.com", "instance-data", "instance-data.ec2.internal"}
METADATA_ADDRESSES = {ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")}


class Refused(ValueError):
    """An address the platform will not send a request to; the message says why."""


def _bad_address(ip: ipaddress._BaseAddress) -> Optional[str]:
    if isinstance(ip, ipaddress.IPv6Address):  # ::ffff:169.254.169.254 and kin reach the IPv4 address
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is None and ip in ipaddress.ip_network("64:ff9b::/96"):  # NAT64
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        why = _bad_address(inner) if inner is not None else None
        if why:
            return why
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata service"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified or ip.is_multicast:
        return "not a host's address"
    return None


def check_url(url: str, what: str = "the address") -> str:
    """`url` if the platform may send requests there, else Refused naming why."""
    parts = urllib.parse.urlsplit((url or "").strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused(f"{what} {url!r} is not an http(s) URL like http://127.0.0.1:8000")
    host = parts.hostname.rstrip(".").lower()
    if host in METADATA_HOSTS:
        raise Refused(f"{what} {url!r} names a cloud metadata service: requests there are refused")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        found = [literal]
    else:
        try:
            found = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in socket.getaddrinfo(host, parts.port or 80)}
        except (socket.gaierror, UnicodeError, ValueError):
            return url  # not resolvable now: the request itself will say so
    for ip in found:
        why = _bad_address(ip)
        if why:
            raise Refused(f"{what} {url!r} leads to {ip}, {why}: requests there are refused")
    return url


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an allowed address; drop Authorization when it leads
    to another host (urllib would forward it anywhere)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl, "a redirect")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc.lower() != urllib.parse.urlsplit(req.full_url).netloc.lower():
            for name in list(new.headers):
                if name.lower() == "authorization":
                    del new.headers[name]
            new.unredirected_hdrs.pop("Authorization", None)
        return new


_opener = urllib.request.build_opener(_Redirects)


def open_url(request: urllib.request.Request | str, timeout: float):
    """urllib's urlopen with the checks above (the first address too)."""
    url = request.full_url if isinstance(request, urllib.request.Request) else request
    check_url(url)
    return _opener.open(request, timeout=timeout)
