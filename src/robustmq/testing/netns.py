"""A second "host" for tests: a network namespace joined to this one by a veth pair.

Security behaviour that depends on where a client comes from (anonymous
access from loopback only, address bans, per-address ACL rules) cannot be
tested from 127.0.0.1.  L{RemoteHost} creates a network namespace and a
veth pair with a private /30 (C{10.211.x.y}): the node listens on the host
side (L{RemoteHost.hostAddress}) and clients run inside the namespace
(L{RemoteHost.run}, L{RemoteHost.popen}), so the node sees them arrive
from L{RemoteHost.peerAddress}, a real off-loopback address.  Traffic
never leaves the machine.

Creating namespaces needs root (CAP_NET_ADMIN); L{unavailable} says why it
cannot be done here, for a clear C{skip}.  Always L{RemoteHost.cleanup}
(the namespace and both veth ends are removed).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

#: The private block the test /30s are taken from.
BLOCK = ipaddress.ip_network("10.211.0.0/16")

_counter = 0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be created here (not root, no C{ip}), or None."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"rmqprobe{os.getpid()}"
    try:
        result = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return f"ip netns add failed: {e}"
    if result.returncode != 0:
        return f"ip netns add failed: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _usedNetworks() -> list[Any]:
    out = _ip("-o", "-4", "addr", "show").stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return nets


class RemoteHost:
    """A namespace with one veth link to this host (see module).

    @ivar hostAddress: this side's address (listen here).
    @ivar peerAddress: the namespace's address (clients come from here).
    """

    def __init__(self) -> None:
        global _counter
        _counter += 1
        tag = f"{os.getpid() % 100000}{_counter}"
        self.name = f"rmqns{tag}"
        self.hostLink = f"rmqh{tag}"[:15]
        self.peerLink = f"rmqp{tag}"[:15]
        self.hostAddress = ""
        self.peerAddress = ""
        self._created = False

    def create(self) -> RemoteHost:
        """Create the namespace and the link; raises C{RuntimeError} naming the failing step."""
        used = _usedNetworks()
        subnets = list(BLOCK.subnets(new_prefix=30))
        for _ in range(100):
            net = random.choice(subnets)
            if not any(net.overlaps(u) for u in used):
                break
        else:
            raise RuntimeError("no free /30 in 10.211.0.0/16")
        host, peer = list(net.hosts())
        self.hostAddress, self.peerAddress = str(host), str(peer)
        steps = [
            ("netns", "add", self.name),
            ("link", "add", self.hostLink, "type", "veth", "peer", "name", self.peerLink),
            ("link", "set", self.peerLink, "netns", self.name),
            ("addr", "add", f"{host}/30", "dev", self.hostLink),
            ("link", "set", self.hostLink, "up"),
            ("-n", self.name, "addr", "add", f"{peer}/30", "dev", self.peerLink),
            ("-n", self.name, "link", "set", self.peerLink, "up"),
            ("-n", self.name, "link", "set", "lo", "up"),
        ]
        self._created = True
        for step in steps:
            result = _ip(*step, check=False)
            if result.returncode != 0:
                self.cleanup()
                raise RuntimeError(f"ip {' '.join(step)}: {result.stderr.strip()}")
        return self

    def command(self, args: Sequence[str]) -> list[str]:
        """C{args} as a command run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """C{subprocess.run} inside the namespace (pass C{timeout}: it is bounded)."""
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self.command(args), **kwargs)

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """C{subprocess.Popen} inside the namespace."""
        return subprocess.Popen(self.command(args), **kwargs)

    def python(
        self, code: str, timeout: float = 60, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run C{code} with this interpreter inside the namespace; output captured as text."""
        return self.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def cleanup(self) -> None:
        """Remove the link (both ends) and the namespace; safe to call twice."""
        if not self._created:
            return
        self._created = False
        _ip("link", "del", self.hostLink, check=False)
        _ip("netns", "del", self.name, check=False)

    def __enter__(self) -> RemoteHost:
        return self.create()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


__all__ = ["BLOCK", "RemoteHost", "unavailable"]
