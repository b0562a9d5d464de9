"""Refuse and record every network connection of a Python process (tests only).

Put this folder on ``PYTHONPATH`` with ``PRENORM_NETGUARD_LOG`` naming a file, and every
Python process started with that environment (a book build and the notebook kernels it
launches) imports it at start-up: it appends ``armed <pid> <argv>`` to ``LOG.armed``; a
connection to anything but the loopback interface or a Unix socket, and a name lookup of
anything but ``localhost``, is appended to ``LOG`` and refused with ``OSError``. The
log, not the error, is what a test checks: libraries may catch a refused connection and
fall back to a cache.
"""

import os
import socket
import sys

_LOG = os.environ.get("PRENORM_NETGUARD_LOG")
_LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}

if _LOG:
    with open(_LOG + ".armed", "a") as f:
        f.write(f"armed {os.getpid()} {' '.join(getattr(sys, 'orig_argv', sys.argv))[:200]}\n")

    def _refuse(what: str) -> None:
        with open(_LOG, "a") as f:
            f.write(f"{os.getpid()} {' '.join(sys.argv)[:120]}: {what}\n")
        raise OSError(f"network access refused by tests/netguard: {what}")

    _connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
    _getaddrinfo = socket.getaddrinfo

    def _remote(sock: socket.socket, address: object) -> bool:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        host = address[0] if isinstance(address, tuple) else address
        return host not in _LOCAL and not str(host).startswith("127.")

    def connect(self: socket.socket, address: object) -> None:
        if _remote(self, address):
            _refuse(f"connect {address!r}")
        return _connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        if _remote(self, address):
            _refuse(f"connect {address!r}")
        return _connect_ex(self, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in _LOCAL and not str(name).startswith("127."):
            _refuse(f"lookup {name!r}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
