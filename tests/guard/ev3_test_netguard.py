"""Network guard for the test suite: a socket connect (or UDP send) to anything but a loopback address, the
local host name ``localhost`` or a unix socket raises :class:`NetworkGuardError` at once, with no attempt made.

Active in the pytest process (installed by ``tests/conftest.py``) and in every Python subprocess the tests start
(``python -m ev3``, ``snakemake`` and its jobs): ``conftest.py`` puts this directory on ``PYTHONPATH``, so
``sitecustomize.py`` here installs it at interpreter start-up. Host names other than ``localhost`` are refused
too (resolving them would need DNS). The error is a ``RuntimeError``, not an ``OSError``, so code that retries
or swallows connection errors cannot hide it.
"""

from __future__ import annotations

import ipaddress
import socket

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class NetworkGuardError(RuntimeError):
    """A test (or a process a test started) tried to reach the network."""


def is_local(family, address) -> bool:
    """Whether ``address`` of socket ``family`` stays on this machine (loopback, unspecified, unix, netlink…)."""
    if family not in (socket.AF_INET, socket.AF_INET6):
        return True  # AF_UNIX, AF_NETLINK, …: not the network
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).split("%")[0]  # IPv6 scope id
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # another host name
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _check(sock, address, what: str) -> None:
    if not is_local(sock.family, address):
        raise NetworkGuardError(
            f"network access blocked in tests: {what} to {address!r} (only loopback and unix sockets; tests/guard)"
        )


def install() -> None:
    """Patch ``socket.socket`` (idempotent)."""
    cls = socket.socket
    if getattr(cls, "_ev3_network_guard", False):
        return
    connect, connect_ex, sendto, sendmsg = cls.connect, cls.connect_ex, cls.sendto, cls.sendmsg

    def guarded_connect(self, address):
        _check(self, address, "connect")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        _check(self, address, "connect")
        return connect_ex(self, address)

    def guarded_sendto(self, data, *args):
        if args:
            _check(self, args[-1], "sendto")
        return sendto(self, data, *args)

    def guarded_sendmsg(self, buffers, *args):
        if len(args) >= 3 and args[2] is not None:
            _check(self, args[2], "sendmsg")
        return sendmsg(self, buffers, *args)

    cls.connect, cls.connect_ex, cls.sendto, cls.sendmsg = guarded_connect, guarded_connect_ex, guarded_sendto, guarded_sendmsg
    cls._ev3_network_guard = True
