"""The /etc files a networked task gets: hosts (its own name and address), hostname, and
resolv.conf (the host's resolvers).

A host whose /etc/resolv.conf names only a loopback stub (systemd-resolved's 127.0.0.53,
dnsmasq on 127.0.0.1) has resolvers a container cannot reach from its own network
namespace: then, as Docker and Podman do, systemd-resolved's list of upstream servers
(/run/systemd/resolve/resolv.conf) is used when it exists; loopback servers are dropped
either way, and with none left the file keeps only the search and options lines (a
warning says so) rather than naming a public resolver the host never chose.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

log = logging.getLogger(__name__)

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")


def hosts(hostname: str, address: str) -> str:
    return (
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"{address}\t{hostname}\n"
    )


def resolv_conf(host: Path = HOST_RESOLV_CONF, upstream: Path = RESOLVED_UPSTREAM) -> str:
    text = _read(host)
    if not _nameservers(text, keep_loopback=False) and _nameservers(text, keep_loopback=True):
        found = _read(upstream)
        if _nameservers(found, keep_loopback=False):
            text = found
    lines = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "nameserver" and (len(words) < 2 or _loopback(words[1])):
            continue
        if words and words[0] in ("nameserver", "search", "domain", "options"):
            lines.append(" ".join(words))
    if not any(line.startswith("nameserver") for line in lines):
        log.warning("the host's resolv.conf names no resolver a container can reach; containers get none")
    return "".join(f"{line}\n" for line in lines)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _nameservers(text: str, keep_loopback: bool) -> list[str]:
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and (keep_loopback or not _loopback(words[1])):
            found.append(words[1])
    return found


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False
