"""Our operations' copy of an int4 language IR is written with its new weights in a file, not in memory
(ops/spill.py, for the first load's peak: docs/export.md), and holds the same bytes as one made in memory."""

from __future__ import annotations

import re

import numpy as np

from mvlm_magic.ops import copies
from mvlm_magic.ops.spill import Spill
from mvlm_magic.runtime.device import core
from mvlm_magic.runtime.memory import mapped_ranges, resident_bytes, shed


def test_spilled_arrays_are_read_back_from_the_file_on_64_byte_boundaries(tmp_path):
    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 256, (33, 70), dtype=np.uint8), rng.standard_normal(5).astype(np.float32),
              rng.standard_normal((4, 3)).astype(np.float16)]
    with Spill(tmp_path / "weights.spill") as spill:
        spilled = [spill(array) for array in arrays]
    for array, back in zip(arrays, spilled):
        assert back.dtype == array.dtype and np.array_equal(back, array)
        assert back.offset % 64 == 0 and isinstance(back, np.memmap)
    assert mapped_ranges([spill.path]) and resident_bytes([spill.path]) > 0
    shed([spill.path])  # pages handed back ...
    assert resident_bytes([spill.path]) == 0
    assert all(np.array_equal(back, array) for array, back in zip(arrays, spilled))  # ... come back from the file


def test_the_copy_written_through_a_spill_file_holds_the_bytes_of_one_made_in_memory(exported, tmp_path):
    folder = exported("v2", "int4")
    model = core().read_model(folder / "language.xml")
    assert copies.rewrite_language(model)  # in memory
    (tmp_path / "memory").mkdir()
    (tmp_path / "spilled").mkdir()
    in_memory = copies.save_copy(model, tmp_path / "memory" / f"language.int4-v{copies.FORMAT}.xml")
    spilled = copies.int4_language_model(folder, tmp_path / "spilled")
    assert spilled.with_suffix(".bin").read_bytes() == in_memory.with_suffix(".bin").read_bytes()
    assert generic(spilled.read_bytes()) == generic(in_memory.read_bytes())
    left = sorted(path.name for path in (tmp_path / "spilled").iterdir())
    assert left == sorted([spilled.name, spilled.with_suffix(".bin").name])  # no spill file left behind


def generic(xml: bytes) -> bytes:
    """An IR's text without the numbers OpenVINO gives unnamed nodes (Constant_11152): they count the nodes made
    before in this process, so they differ from one process to another and between two copies made in one."""
    return re.sub(rb'(name="[A-Za-z]+_)[0-9]+"', rb'\1N"', xml)
