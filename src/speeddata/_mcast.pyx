# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled multicast receive for the live server: one ``recvmmsg`` into a slab.

``BatchReceiver(batch)`` allocates at construction a slab of ``batch`` slots of
``SLOT`` bytes (a numpy array, so the column decoder and numpy read the datagrams where
the kernel put them), and per slot the datagram's length and sender address. ``recv(fd)``
fills up to ``batch`` slots without blocking, with the GIL released, and returns how
many: no Python object per datagram. See docs/server.md.
"""

from libc.stdint cimport uint8_t, uint32_t
from cpython.mem cimport PyMem_Calloc, PyMem_Free

from speeddata.includes.system cimport (
    EAGAIN,
    EINTR,
    MSG_DONTWAIT,
    MSG_TRUNC,
    errno,
    iovec,
    mmsghdr,
    recvmmsg,
    sockaddr_in,
)

import os

import numpy as np

__all__ = ["BatchReceiver", "SLOT", "MAX_BATCH"]

cdef enum:
    C_SLOT = 65536          # more than any UDP/IPv4 payload (65507 bytes)
    C_MAX_BATCH = 1024      # UIO_MAXIOV

SLOT = C_SLOT
MAX_BATCH = C_MAX_BATCH


cdef extern from "<arpa/inet.h>" nogil:
    uint32_t ntohl(uint32_t netlong)


cdef class BatchReceiver:
    """Receive up to ``batch`` datagrams per call into ``slab`` (``batch`` x ``SLOT``).

    After ``n = recv(fd)``: slot ``i < n`` holds ``length[i]`` bytes from IPv4 address
    ``source[i]`` (host byte order); ``length[i]`` is 0 for a datagram the slot could not
    hold whole (MSG_TRUNC), counted in ``n_truncated``.
    """

    cdef readonly int batch
    cdef readonly object slab
    cdef readonly object length
    cdef readonly object source
    cdef readonly unsigned long long n_truncated
    cdef mmsghdr* msgs
    cdef iovec* iov
    cdef sockaddr_in* names
    cdef uint8_t[:, ::1] slab_v
    cdef uint32_t[::1] length_v
    cdef uint32_t[::1] source_v

    def __cinit__(self, int batch=64):
        if not 1 <= batch <= C_MAX_BATCH:
            raise ValueError(f"batch must be from 1 to {C_MAX_BATCH}, not {batch}")
        self.batch = batch
        self.msgs = <mmsghdr*>PyMem_Calloc(batch, sizeof(mmsghdr))
        self.iov = <iovec*>PyMem_Calloc(batch, sizeof(iovec))
        self.names = <sockaddr_in*>PyMem_Calloc(batch, sizeof(sockaddr_in))
        if self.msgs == NULL or self.iov == NULL or self.names == NULL:
            raise MemoryError()
        self.slab = np.zeros((batch, C_SLOT), np.uint8)
        self.length = np.zeros(batch, np.uint32)
        self.source = np.zeros(batch, np.uint32)
        self.slab_v = self.slab
        self.length_v = self.length
        self.source_v = self.source
        cdef int i
        for i in range(batch):
            self.iov[i].iov_base = &self.slab_v[i, 0]
            self.iov[i].iov_len = C_SLOT
            self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1
            self.msgs[i].msg_hdr.msg_name = &self.names[i]

    def __dealloc__(self):
        PyMem_Free(self.msgs)
        PyMem_Free(self.iov)
        PyMem_Free(self.names)

    def recv(self, int fd):
        """Datagrams received now (0 when none is waiting); OSError on a socket error."""
        cdef int i, n, err = 0
        with nogil:
            # recvmsg(2): msg_namelen is value-result (the kernel writes the address
            # length back); msg_len and msg_flags are outputs only
            for i in range(self.batch):
                self.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
            while True:
                n = recvmmsg(fd, self.msgs, self.batch, MSG_DONTWAIT, NULL)
                if n >= 0:
                    break
                err = errno
                if err != EINTR:  # recvmmsg(2): retried when a signal interrupted it
                    break
            if n > 0:
                for i in range(n):
                    self.source_v[i] = ntohl(self.names[i].sin_addr.s_addr)
                    if self.msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                        self.length_v[i] = 0
                        self.n_truncated += 1
                    else:
                        self.length_v[i] = self.msgs[i].msg_len
        if n < 0:
            if err == EAGAIN:  # == EWOULDBLOCK on Linux
                return 0
            raise OSError(err, os.strerror(err))
        return n
