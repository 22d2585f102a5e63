"""speeddata.steering: the kernel hands each shared-port datagram to the socket of the
engine serving its fingerprint (real sockets in a reuseport group on 127.0.0.1)."""

from __future__ import annotations

import socket

import pytest

from speeddata import steering


def group(n: int) -> list[socket.socket]:
    socks = []
    port = 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        port = s.getsockname()[1]
        s.settimeout(2)
        socks.append(s)
    return socks


def test_datagrams_go_to_their_fingerprints_socket():
    socks = group(3)
    fp_a, fp_b, fp_c = b"\x11" * 8, bytes(range(8)), b"\xff\x00" * 4
    try:
        steering.attach(socks[0], {fp_a: 2, fp_b: 1, fp_c: 0})
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            sent = {
                0: [b"\xc3\x01" + fp_c + b"c", b"\xc3\x01" + b"\x22" * 8 + b"?", b"\xc3\x01"],
                1: [b"\xc3\x01" + fp_b + b"b%d" % i for i in range(20)],
                2: [b"\xc3\x01" + fp_a + b"a%d" % i for i in range(20)],
            }
            for i in range(20):  # interleaved: each datagram is steered on its own
                for index in (2, 1):
                    tx.sendto(sent[index][i], socks[0].getsockname())
            for d in sent[0]:
                tx.sendto(d, socks[0].getsockname())
        for index, datagrams in sent.items():
            got = [socks[index].recv(100) for _ in datagrams]
            assert got == datagrams
        for s in socks:  # nothing else arrived anywhere
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(100)
    finally:
        for s in socks:
            s.close()


def test_program_limits():
    ops = steering.program({b"\x00" * 8: 1})
    assert len(ops) == 4 + 5 + 1 and ops[-1] == (steering.BPF_RET_K, 0, 0, 0)
    routes = {i.to_bytes(8, "big"): 1 for i in range(steering.MAX_ROUTES)}
    assert len(steering.program(routes)) <= steering.BPF_MAXINSNS
    routes[b"\xff" * 8] = 1
    with pytest.raises(steering.SteeringError, match="at most 818"):
        steering.program(routes)
    with pytest.raises(ValueError, match="8 bytes"):
        steering.program({b"short": 0})


def test_refused_program_is_a_steering_error():
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:  # no reuseport group
        with pytest.raises(steering.SteeringError, match="SO_ATTACH_REUSEPORT_CBPF"):
            steering.attach(s, {})
