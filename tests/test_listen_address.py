"""`--listen` values: parsing (pure) and an interface name bound as its IPv4 address (the
loopback interface `lo`, so no Docker and no docker0 are needed)."""

from __future__ import annotations

import argparse
import re
import socket
import urllib.request

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from reconciler.cli.parser import build_parser, listen
from reconciler.ops import listen_address
from reconciler.ops.http import serve
from tests.conftest import free_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9816", ("127.0.0.1", 9816)),
        ("docker0:9816", ("docker0", 9816)),
        ("lo:1", ("lo", 1)),
        (":9816", ("127.0.0.1", 9816)),
        ("[::1]:9816", ("::1", 9816)),
        ("localhost:65535", ("localhost", 65535)),
        ("off", None),
        ("none", None),
        ("", None),
    ],
)
def test_parse(text: str, expected: tuple[str, int] | None) -> None:
    assert listen_address.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("docker0", "expected HOST:PORT (or INTERFACE:PORT)"),
        ("docker0:http", "expected HOST:PORT"),
        ("docker0:0", "not in 1..65535"),
        ("docker0:70000", "not in 1..65535"),
        ("[::1:9816", "unbalanced brackets"),
        ("eth 0:9816", "not an address, a host name or an interface"),
    ],
)
def test_parse_refuses_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(listen_address.ListenError, match=re.escape(says)):
        listen_address.parse(text)
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(says)):
        listen(text)


@given(st.from_regex(r"[a-z][a-z0-9_.-]{0,14}", fullmatch=True), st.integers(1, 65535))
def test_parse_round_trips_names_and_ports(host: str, port: int) -> None:
    assert listen_address.parse(f"{host}:{port}") == (host, port)


def test_run_takes_interface_names_and_keeps_loopback_by_default() -> None:
    args = build_parser().parse_args(
        ["run", "--listen", "127.0.0.1:9816", "--listen", "docker0:9816"]
    )
    assert args.listen == [("127.0.0.1", 9816), ("docker0", 9816)]
    assert build_parser().parse_args(["run"]).listen is None  # the built-in 127.0.0.1:9816


def test_resolve_ip_names_and_unknowns() -> None:
    assert listen_address.resolve(("10.1.2.3", 80)) == ("10.1.2.3", 80)  # as given, not looked up
    assert listen_address.resolve(("::1", 80)) == ("::1", 80)
    assert listen_address.resolve(("lo", 80)) == ("127.0.0.1", 80)
    with pytest.raises(listen_address.ListenError, match="neither an IP address, nor a network"):
        listen_address.resolve(("no-such-if0.invalid", 80))
    with pytest.raises(listen_address.ListenError, match="longer than 15 bytes"):
        listen_address.interface_ipv4("x" * 16)


def test_interface_without_ipv4_is_a_clear_error() -> None:
    """An interface with no IPv4 address (here: one that does not exist, which the kernel
    answers the same way) says so and how to look."""
    with pytest.raises(listen_address.ListenError, match=r"has no IPv4 address .*ip -4 addr"):
        listen_address.interface_ipv4("nosuchif9")


def test_binds_on_the_loopback_interface_by_name() -> None:
    """`--listen lo:PORT` serves on 127.0.0.1:PORT: the path the daemon takes (parse, resolve
    at start, serve)."""
    port = free_port()
    parsed = listen(f"lo:{port}")
    assert parsed == ("lo", port)
    address = listen_address.resolve(parsed)
    assert address == ("127.0.0.1", port)
    server = serve(address, CollectorRegistry(), lambda: (True, "ok"), lambda: (True, "ok"))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
        with socket.socket() as other, pytest.raises(OSError):  # taken: it is bound there
            other.bind(("127.0.0.1", port))
    finally:
        server.shutdown()
