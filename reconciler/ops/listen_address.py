"""`--listen` addresses: HOST:PORT where HOST is an IP address, a host name, or the name of a
network interface (`docker0:9816`: that interface's IPv4 address, looked up when the daemon
starts). `parse` is pure (the CLI's argument type); `resolve` asks the kernel (the daemon,
just before it binds)."""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import socket
import struct

DEFAULT_HOST = "127.0.0.1"
_SIOCGIFADDR = 0x8915  # Linux: an interface's (first) IPv4 address
_IFNAMSIZ = 16


class ListenError(OSError):
    """A --listen value that cannot be parsed or resolved (an interface without an IPv4
    address, a name that is nothing here); the message says why."""


def parse(text: str) -> tuple[str, int] | None:
    """`HOST:PORT`, `[V6]:PORT`, `:PORT` (loopback), or `off`/`none`/`` (None: no endpoint)."""
    if text in ("", "none", "off"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ListenError(f"expected HOST:PORT (or INTERFACE:PORT), not {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise ListenError(f"expected HOST:PORT (or INTERFACE:PORT), not {text!r}") from None
    if not 1 <= number <= 65535:
        raise ListenError(f"port {number} in {text!r} is not in 1..65535")
    if host.startswith("[") != host.endswith("]"):
        raise ListenError(f"unbalanced brackets in {text!r}")
    host = host.strip("[]")
    if any(c.isspace() for c in host) or ("/" in host):
        raise ListenError(f"{host!r} in {text!r} is not an address, a host name or an interface")
    return (host or DEFAULT_HOST, number)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def interfaces() -> set[str]:
    """The names of this network namespace's interfaces."""
    try:
        return {name for _, name in socket.if_nameindex()}
    except OSError:
        return set()


def interface_ipv4(name: str) -> str:
    """The IPv4 address of interface `name` (ListenError when it has none)."""
    if len(name.encode()) >= _IFNAMSIZ:
        raise ListenError(f"interface name {name!r} is longer than {_IFNAMSIZ - 1} bytes")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("256s", name.encode()[: _IFNAMSIZ - 1])
        try:
            reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENXIO):
                raise ListenError(
                    f"interface {name} has no IPv4 address (is it up? `ip -4 addr show {name}`)"
                ) from None
            raise
    return socket.inet_ntoa(reply[20:24])


def resolve(address: tuple[str, int]) -> tuple[str, int]:
    """The address to bind: an IP address as given; an interface's name as its IPv4 address;
    anything else as a host name (the bind resolves it; a name that resolves nowhere raises
    ListenError naming all three readings)."""
    host, port = address
    if is_ip(host):
        return address
    if host in interfaces():
        return (interface_ipv4(host), port)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ListenError(
            f"{host!r} is neither an IP address, nor a network interface here "
            f"({', '.join(sorted(interfaces())) or 'none found'}), nor a host name that resolves"
        ) from None
    return address
