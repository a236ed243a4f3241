"""Free TCP ports for the servers a test starts: runs of consecutive ports, chosen outside the
kernel's ephemeral range.

A server given metrics port P puts its embedded workers' and extra server processes' metrics on
P+1, P+2, ... A port the kernel picked for `bind(0)` is free, but its neighbours need not be, and
it lies in the ephemeral range, where every outgoing connection meanwhile takes a local port: a
client socket could take it before the server binds. Outside that range only listeners take
ports.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20_000
HIGHEST = 65_535


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections (Linux's default where it does not
    say)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))  # taken on any IPv4 address counts as taken
        except OSError:
            return False
    return True


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports that are free now, outside the ephemeral range:
    below it, or above it where it starts too low to leave room (inside it only where it spans
    nearly every port)."""
    low, high = _ephemeral_range()
    # The first ports that leave `count` of them all below the range, or all above it.
    firsts = range(LOWEST, low - count + 1)
    if not firsts:
        firsts = range(max(LOWEST, high + 1), HIGHEST - count + 2)
    if not firsts:  # the range spans nearly every port: take any, as bind(0) would
        firsts = range(LOWEST, HIGHEST - count + 2)
    pick = random.Random()  # its own: tests that seed the global generator must not repeat ports
    for _ in range(200):
        first = pick.choice(firsts)
        if all(_is_free(port) for port in range(first, first + count)):
            return first
    raise RuntimeError(f"found no {count} consecutive free ports in 200 tries")
