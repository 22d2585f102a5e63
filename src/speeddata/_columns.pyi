import numpy as np

from .schema import Schema

def verify_blocks(
    segment: bytes | bytearray | memoryview,
    offset: np.ndarray,
    size: np.ndarray,
    n_records: np.ndarray,
    header_size: int,
    sync: bytes,
) -> tuple[int, np.ndarray, np.ndarray]: ...

class BlockDecoder:
    schema: Schema
    names: list[str]
    fixed_layout: bool
    contiguous: bool
    n_rows: int
    capacity: int
    threads: int
    n_groups: int
    def __init__(
        self,
        schema: Schema | dict | str,
        names: list[str] | None = None,
        contiguous: bool = True,
        threads: int | None = None,
    ) -> None: ...
    slab: np.ndarray | None
    def reserve(
        self, n_rows: int, heap_bytes: int = 0, out: np.ndarray | None = None
    ) -> None: ...
    def decode(
        self,
        buffer: bytes | bytearray | memoryview,
        start: np.ndarray,
        size: np.ndarray,
        count: np.ndarray,
    ) -> int: ...
    def records(self) -> np.ndarray | None: ...
    def finish(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]: ...

def default_threads() -> int: ...
def _get_simd_level() -> int: ...
def _set_simd_level(level: int) -> int: ...
def _set_tile_bytes(n_bytes: int) -> int: ...

def string_dtype() -> np.dtype: ...
def materialize(
    heap: np.ndarray, start: np.ndarray, length: np.ndarray, is_string: bool
) -> np.ndarray: ...

SLAB_MIN_BYTES: int
SLAB_ALIGN: int
SLAB_POOL_BYTES: int

def _aligned_empty(n_bytes: int) -> np.ndarray: ...
def release_slabs() -> int: ...
def slab_pool() -> tuple[int, int]: ...
