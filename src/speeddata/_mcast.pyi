import numpy as np

SLOT: int
MAX_BATCH: int

class BatchReceiver:
    batch: int
    slab: np.ndarray
    length: np.ndarray
    source: np.ndarray
    n_truncated: int
    def __init__(self, batch: int = 64) -> None: ...
    def recv(self, fd: int) -> int: ...
