"""What an export will need (memory, disk) and what this machine has: said before anything heavy, refused when it
cannot fit, instead of the kernel being killed minutes later.

The figures come from the measured exports in docs/export.md: the peak is a fixed part (Python, torch, OpenVINO,
NNCF) plus a share of the largest IR's 16-bit weights (the language model's): the exporter holds one IR at a time.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import MvlmError
from ..model.checkpoint import Progress, read_weight_shapes

GB = 1e9
BASE_BYTES = 1.0 * GB  # interpreter, torch, transformers, OpenVINO and NNCF loaded, no weights (measured ~0.9 GB)
# Peak above the base, per byte of the language model's weights as stored in 16 bits (docs/export.md). 16-bit and
# smaller exports read the mapped checkpoint and hand its pages back, so what stays is the compressed language IR
# until it is saved (int4 ~0.28, int8 ~0.5, fp16 1.0 of the bf16 bytes) plus NNCF's work on one weight: MobileVLM
# V2 1.7B int4 peaked at 1.54 GB. fp32 exports build an fp32 copy of the whole model (of all weights, not only the
# language model's): 9.74 GB for 1.7B.
PEAK_PER_WEIGHT_BYTE = {"fp32": 3.0, "fp16": 1.1, "int8": 0.55, "int4": 0.35}
# Bytes on disk per weight parameter (int4: group scales, the int8 head and the int8 vision model: 1.7B -> 1.07 GB)
DISK_PER_PARAMETER = {"fp32": 4.0, "fp16": 2.0, "int8": 1.05, "int4": 0.7}
VISION_PREFIX = "model.vision_tower."


@dataclass(frozen=True)
class Budget:
    memory: float  # bytes of peak memory the export needs
    disk: float  # bytes the export folder will take
    available_memory: float | None  # None: not known on this system
    free_disk: float

    def describe(self) -> str:
        have = (f"{self.available_memory / GB:.1f} GB of memory available" if self.available_memory is not None
                else "unknown free memory")
        return (f"this export needs about {self.memory / GB:.1f} GB of memory and {self.disk / GB:.1f} GB of disk; "
                f"you have {have} and {self.free_disk / GB:.1f} GB of free disk")


def estimate(folder: Path, mode: str, cache_dir: Path) -> Budget:
    """The export's needs from the checkpoint's weight shapes (header reads only), against what is free now."""
    language = everything = 0
    for key, shape in read_weight_shapes(folder).items():
        count = 1
        for dim in shape:
            count *= dim
        everything += count
        if not key.startswith(VISION_PREFIX) and not key.startswith("model.mm_projector."):
            language += count
    memory = BASE_BYTES + PEAK_PER_WEIGHT_BYTE[mode] * 2 * language
    if mode == "fp32":
        memory = BASE_BYTES + PEAK_PER_WEIGHT_BYTE[mode] * 2 * everything
    disk = DISK_PER_PARAMETER[mode] * everything
    probe = Path(cache_dir)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the cache folder may not exist yet
    return Budget(memory, disk, available_memory(), shutil.disk_usage(probe).free)


def available_memory() -> float | None:
    """MemAvailable from /proc/meminfo (what the kernel can give without swapping); None where there is none."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(folder: Path, config, compression, cache_dir: Path, progress: Progress) -> Budget:
    """Say what the export needs; raise MvlmError (one line) when memory or disk cannot hold it."""
    budget = estimate(Path(folder), compression.mode, Path(cache_dir))
    progress("convert", None, budget.describe())
    if budget.free_disk < budget.disk:
        raise MvlmError(f"{budget.describe()}: free disk space in {cache_dir} or choose another --cache-dir.")
    if budget.available_memory is not None and budget.available_memory < budget.memory:
        smaller = " or a smaller model" if compression.mode != "fp32" else " or a 16-bit or smaller compression"
        raise MvlmError(f"{budget.describe()}: close other programs (or kernels){smaller}, then export again.")
    return budget
