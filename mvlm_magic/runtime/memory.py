"""Hand back the pages of weight files that OpenVINO has copied and no longer reads.

OpenVINO maps an IR's .bin file into memory and, on the CPU, copies the weights into its own layout:
the vision model while it compiles, the language model on its first inference. The mapped file pages stay
resident afterwards although nothing reads them again, so the weights counted twice (docs/benchmarks.md,
"weights no longer counted twice"). `madvise(MADV_DONTNEED)` drops them from this process; the file and the page
cache are untouched, so a page that is read again simply comes back. Doing it while the copy runs (`shedding`)
keeps the peak low too, not only the steady state.

Linux only (elsewhere these are no-ops).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

MADV_DONTNEED = 4


@lru_cache(maxsize=1)
def _madvise():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise


def mapped_ranges(paths: Iterable[Path | str]) -> list[tuple[int, int]]:
    """(start, end) addresses of this process's mappings of the given files."""
    if not sys.platform.startswith("linux"):
        return []
    names = {str(Path(p).resolve()) for p in paths}
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].rstrip("\n") in names:
                start, end = (int(v, 16) for v in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


def shed(paths: Iterable[Path | str]) -> int:
    """Drop the resident pages of the files' mappings; returns the bytes of address space advised."""
    ranges = mapped_ranges(paths)
    if ranges:
        madvise = _madvise()
        for start, end in ranges:
            madvise(start, end - start, MADV_DONTNEED)
    return sum(end - start for start, end in ranges)


@contextlib.contextmanager
def shedding(paths: Iterable[Path | str], every: float = 0.02) -> Iterator[None]:
    """Shed the files' pages every `every` seconds while the body runs (a copy into OpenVINO's own
    layout reads each page once), and once more at the end."""
    paths = list(paths)
    if not sys.platform.startswith("linux"):
        yield
        return
    done = threading.Event()

    def loop():
        while not done.wait(every):
            shed(paths)

    thread = threading.Thread(target=loop, name="mvlm-shed-weights", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        shed(paths)


def resident_bytes(paths: Iterable[Path | str]) -> int:
    """How much of the files' mappings is resident in this process (from /proc/self/smaps)."""
    ranges = set(mapped_ranges(paths))
    if not ranges:
        return 0
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            field, _, rest = line.partition(" ")
            if not field.endswith(":"):  # a mapping's first line: "start-end perms offset dev inode [path]"
                inside = tuple(int(v, 16) for v in field.split("-")) in ranges
            elif inside and field == "Rss:":
                total += int(rest.split()[0]) * 1024
    return total
