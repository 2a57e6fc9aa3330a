"""Weights made while rewriting an IR, written to a file as they are made and read back through a map of it.

A rewrite makes the whole language model's weights again (repacked for our operations). Held in memory they
counted once more on top of the original's mapped pages: the first load of the 7B int4 export peaked at 11.2 GB
(docs/export.md). Written here they are file pages instead, which `runtime.memory.shed` hands back like the
original's, and the new Constants share that memory (OpenVINO copies nothing until the copy is saved)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Spill:
    """An append-only file of arrays; `spill(array)` writes one and returns it mapped from the file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = open(self.path, "wb")
        self._end = 0

    def __call__(self, array: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(array)
        if array.size == 0:  # nothing to map
            return array
        offset = -(-self._end // 64) * 64  # each array on a 64-byte boundary, as numpy's own allocations
        self._file.seek(offset)
        self._file.write(array.reshape(-1).view(np.uint8))
        self._file.flush()  # the map reads the file, not this object's buffer
        self._end = offset + array.nbytes
        # writable (OpenVINO shares only writable arrays) and shared: a page handed back is read again from the file
        return np.memmap(self.path, dtype=array.dtype, mode="r+", offset=offset, shape=array.shape)

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()  # the maps stay valid
