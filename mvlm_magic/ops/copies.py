"""The derived IRs: copies of an export's vision and language IRs with our operations, written next to the
originals on first use (NAME.KIND-vFORMAT.xml) and found again after. Their graph holds our operations, so, like
the library, they are written and read only where this user alone can change them: next to the export when that
folder passes `store.writable_only_by_me`, else in a folder of their own in a trusted cache."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import openvino as ov

from ..runtime.device import core
from ..runtime.memory import shedding
from ..store import MANIFEST, private_cache_dir, writable_only_by_me
from .cpu import instruction_set
from .fold import fold_neighbours
from .layout import align_constants
from .rewrite import rewrite_int4_matmuls, rewrite_int8_matmuls, use_kv_attention
from .spill import Spill

FORMAT = 15  # part of the derived IR's name: bump when what the copy holds changes


def copies(folder: Path, elsewhere: Path | None = None) -> tuple[Path | None, Path | None]:
    """The export's (vision, language) copies with our operations, written on first use; None for either when
    there is nothing to rewrite. The vision copy (int8 MatMuls over 577 rows) only for the AVX-512 build, whose
    prompts beat OpenVINO's; on AVX2 they do not (docs/benchmarks.md). `elsewhere` (default: the private cache's
    `copies`) holds them when others could change the export's folder."""
    place = copies_folder(Path(folder), elsewhere or private_cache_dir() / "copies")
    vision = int8_vision_model(folder, place) if instruction_set() == "avx512" else None
    return vision, int4_language_model(folder, place)


def copies_folder(folder: Path, elsewhere: Path) -> Path:
    """The export's own folder where only this user can change it, else its folder in `elsewhere` (a trusted
    place), named by the export's folder, path and manifest: another export never finds these copies."""
    if writable_only_by_me(folder) is None:
        return folder
    identity = f"{os.path.realpath(folder)}\n{(folder / MANIFEST).read_text()}"
    place = elsewhere / f"{folder.name}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
    place.mkdir(parents=True, exist_ok=True, mode=0o700)
    return place


def found(derived: Path) -> bool:
    """A copy made before, which nobody else could have changed (else it is written again)."""
    return derived.is_file() and not (writable_only_by_me(derived) or writable_only_by_me(derived.with_suffix(".bin")))


def int4_language_model(folder: Path, place: Path | None = None) -> Path | None:
    """The export's language IR with Int4MatMul (and KVAttention), written in `place` (default: next to
    language.xml) on first use; None when the export has no symmetric int4 weights."""
    derived = Path(place or folder) / f"language.int4-v{FORMAT}.xml"
    if found(derived):
        return derived
    return _rewritten_copy(Path(folder) / "language.xml", derived, rewrite_language)


def rewrite_language(model: ov.Model, spill: Spill | None = None) -> bool:
    """The language IR's rewrite: its int4 MatMuls (false where none), then its attention, then the norms, gates
    and residual sums around the MatMuls folded into them."""
    if not rewrite_int4_matmuls(model, spill):
        return False
    use_kv_attention(model)
    fold_neighbours(model)
    return True


def int8_vision_model(folder: Path, place: Path | None = None) -> Path | None:
    """The export's vision IR with Int8MatMul (for prompts of 577 rows: AVX-512 builds only), written in `place`
    (default: next to vision.xml) on first use; None when its MatMuls have no per-row int8 weights (fp16 and
    fp32 exports)."""
    derived = Path(place or folder) / f"vision.int8-v{FORMAT}.xml"
    if found(derived):
        return derived
    return _rewritten_copy(Path(folder) / "vision.xml", derived, rewrite_int8_matmuls)


def _rewritten_copy(original: Path, derived: Path, rewrite) -> Path | None:
    """`original` rewritten by `rewrite(model, spill)` (false: nothing to rewrite, None) and saved as `derived`.
    Peak memory (docs/export.md): the original's weights are read through a map of its .bin and the new ones
    written to a file and mapped back (ops/spill.py); both maps' pages are handed back as they go."""
    with _writing(derived) as temporary:
        # every 0.2 s, not the runtime's 0.02 s: the same 0.68 GB peak on the 7B copy, less system time refaulting
        with Spill(temporary / "weights.spill") as spill, \
                shedding([original.with_suffix(".bin"), spill.path], every=0.2):
            model = core().read_model(original)
            if not rewrite(model, spill):
                return None
            _save(model, temporary, derived)
    return derived


def save_copy(model: ov.Model, derived: Path) -> Path:
    """Save a rewritten IR as `derived` (NAME.KIND-vFORMAT.xml) and remove the copies of earlier formats."""
    with _writing(derived) as temporary:
        _save(model, temporary, derived)
    return derived


@contextlib.contextmanager
def _writing(derived: Path) -> Iterator[Path]:
    """A temporary folder beside `derived` (on its drive, for the renames), removed after."""
    temporary = Path(tempfile.mkdtemp(dir=derived.parent, prefix=".copy-"))
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _save(model: ov.Model, temporary: Path, derived: Path) -> None:
    """Save `model` under temporary names, then rename: the .bin first, the .xml (what we look for) last; then
    remove the copies of earlier formats."""
    folder = derived.parent
    ov.save_model(model, temporary / derived.name, compress_to_fp16=False)
    align_constants(temporary / derived.name)
    os.replace(temporary / derived.with_suffix(".bin").name, derived.with_suffix(".bin"))
    os.replace(temporary / derived.name, derived)
    kind = derived.name.rsplit("-v", 1)[0]  # e.g. language.int4
    for stale in folder.glob(f"{kind}-v*"):  # copies made by earlier versions of this file
        if not stale.name.startswith(derived.stem + "."):
            stale.unlink(missing_ok=True)
