import numpy as np

_Bytes = bytes | bytearray | memoryview | np.ndarray

def pwrite_all(fd: int, data: _Bytes, offset: int) -> None: ...
def pwrite_many(
    fd: int,
    buffers: list[_Bytes],
    offsets: list[int],
    writeback_from: int = -1,
    writeback_bytes: int = 0,
    each: bool = False,
) -> int: ...
def start_writeback(fd: int, offset: int, nbytes: int) -> int: ...
def shuffle(
    data: _Bytes, itemsize: int, out: bytearray | memoryview | np.ndarray | None = None
) -> bytes | memoryview: ...
