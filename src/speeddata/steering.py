"""Shared-port steering across receive loops: the kernel picks the loop by fingerprint.

With ``--workers N`` every engine binds its own socket to the shared port
(``SO_REUSEPORT``: one reuseport group of N sockets, the i-th bound being the group's
socket i) and the relay attaches a classic BPF program to the group
(``SO_ATTACH_REUSEPORT_CBPF``, socket(7)) that reads the 8-byte schema fingerprint after
the single-object marker (``C3 01``) and returns the index of the engine serving that
channel. Each datagram is thus queued on the socket of the one engine that can route it,
with its kernel receive time and drop accounting, and no datagram is handed from one
receive loop to another. A fingerprint of no channel (and anything shorter than the
fingerprint: a load past the end ends the program with 0) goes to engine 0, which counts
it as rejected, as a single loop would.

The program runs on the UDP payload (the kernel pulls the UDP header first:
``reuseport_select_sock``); ``BPF_LD|BPF_W|BPF_ABS`` loads 32 bits in network order.
"""

from __future__ import annotations

import ctypes
import socket
import struct

__all__ = ["MAX_ROUTES", "SteeringError", "attach", "program"]

SO_ATTACH_REUSEPORT_CBPF = 51  # asm-generic/socket.h (Linux 4.5)

# linux/filter.h, linux/bpf_common.h
BPF_LD_W_ABS = 0x20  # A = u32 at packet offset k (big-endian)
BPF_LD_MEM = 0x60  # A = M[k]
BPF_ST = 0x02  # M[k] = A
BPF_JEQ_K = 0x15  # pc += (A == k) ? jt : jf
BPF_RET_K = 0x06  # return k
BPF_MAXINSNS = 4096

_HEAD = 4  # instructions before the first route
_PER_ROUTE = 5
MAX_ROUTES = (BPF_MAXINSNS - _HEAD - 1) // _PER_ROUTE  # 818 fingerprints


class SteeringError(OSError):
    """The kernel refused the program (not Linux >= 4.5, or too many routes)."""


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def program(routes: dict[bytes, int]) -> list[tuple[int, int, int, int]]:
    """The cBPF program (code, jt, jf, k) sending each fingerprint to its socket index.

    ``routes``: 8-byte fingerprint -> index of the socket in the reuseport group.
    """
    if len(routes) > MAX_ROUTES:
        raise SteeringError(
            f"{len(routes)} fingerprints on the shared port: at most {MAX_ROUTES} can be steered"
        )
    ops = [
        (BPF_LD_W_ABS, 0, 0, 2),  # fingerprint bytes 0-3 (after C3 01)
        (BPF_ST, 0, 0, 0),
        (BPF_LD_W_ABS, 0, 0, 6),  # fingerprint bytes 4-7
        (BPF_ST, 0, 0, 1),
    ]
    for fingerprint, index in routes.items():
        if len(fingerprint) != 8:
            raise ValueError(f"a fingerprint is 8 bytes, not {len(fingerprint)}")
        high, low = struct.unpack(">II", fingerprint)
        ops += [
            (BPF_LD_MEM, 0, 0, 0),
            (BPF_JEQ_K, 0, 3, high),  # no: the next route
            (BPF_LD_MEM, 0, 0, 1),
            (BPF_JEQ_K, 0, 1, low),
            (BPF_RET_K, 0, 0, index),
        ]
    ops.append((BPF_RET_K, 0, 0, 0))  # no channel's fingerprint: engine 0 rejects it
    return ops


def attach(sock: socket.socket, routes: dict[bytes, int]) -> None:
    """Attach the steering program to the reuseport group of ``sock`` (replacing any)."""
    ops = program(routes)
    filters = (_SockFilter * len(ops))(*[_SockFilter(*op) for op in ops])
    fprog = _SockFprog(len(ops), filters)
    try:  # fprog points into ``filters``; the kernel copies the program during the call
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))
    except OSError as exc:
        raise SteeringError(exc.errno, f"SO_ATTACH_REUSEPORT_CBPF: {exc.strerror}") from exc
