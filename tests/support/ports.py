"""Free TCP ports for the servers a test starts: runs of consecutive ports, chosen below the
kernel's ephemeral range.

A server given metrics port P puts its embedded workers' and extra server processes' metrics on
P+1, P+2, ... A port the kernel picked for `bind(0)` is free, but its neighbours need not be, and
it lies in the ephemeral range, where every outgoing connection meanwhile takes a local port: a
client socket could take it before the server binds. Below that range only listeners take ports.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20_000


def _ephemeral_start() -> int:
    """The first port the kernel hands to outgoing connections (32768 where it does not say)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))  # taken on any IPv4 address counts as taken
        except OSError:
            return False
    return True


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports that are free now, below the ephemeral range."""
    highest = _ephemeral_start() - count
    if highest <= LOWEST:
        raise RuntimeError(f"no room for {count} ports below the ephemeral range")
    pick = random.Random()  # its own: tests that seed the global generator must not repeat ports
    for _ in range(200):
        first = pick.randrange(LOWEST, highest)
        if all(_is_free(port) for port in range(first, first + count)):
            return first
    raise RuntimeError(f"found no {count} consecutive free ports in 200 tries")
