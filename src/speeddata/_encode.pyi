from collections.abc import Sequence

import numpy as np

def encode_columns(
    program: np.ndarray,
    columns: Sequence[np.ndarray | None],
    prefix: bytes = b"",
) -> tuple[np.ndarray, np.ndarray]: ...
def record_size_bound(program: np.ndarray) -> int: ...
