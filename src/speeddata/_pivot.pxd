# cython: language_level=3
"""C declarations of the pivot's compiled helpers (speeddata._pivot); declarations only."""

from speeddata.includes.system cimport off_t


cdef extern from "<fcntl.h>" nogil:
    # sync_file_range(2): start writeback of a file range without waiting for it (Linux).
    # Python.h defines _GNU_SOURCE before this header is included, which it needs.
    int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags)
    enum:
        SYNC_FILE_RANGE_WRITE
