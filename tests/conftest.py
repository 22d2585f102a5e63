"""Shared fixtures. Network rule: everything here talks to 127.0.0.1 only, multicast
always on interface 127.0.0.1 with TTL 1, and every port is chosen by the kernel so
test runs never collide."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

SCHEMAS = Path(__file__).resolve().parents[1] / "src" / "speeddata" / "schemas"


@pytest.fixture
def schemas_dir() -> Path:
    return SCHEMAS


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_group() -> str:
    """A multicast group in the administratively scoped 239.255/16 range, per test."""
    return f"239.255.{random.randint(0, 255)}.{random.randint(1, 254)}"


@pytest.fixture
def udp_port() -> int:
    return free_udp_port()


@pytest.fixture
def group() -> str:
    return random_group()
