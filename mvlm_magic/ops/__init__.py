"""Our own OpenVINO operations, for CPUs where OpenVINO's int4 matrix multiplication and attention are slow.

Without VNNI, OpenVINO decompresses NNCF's int4 weights to f32 before multiplying and reads memory well below
the machine's bandwidth; with AVX-512 VNNI it runs prompts in bf16 and decodes below memory speed; and its
fused attention with a cache costs more per layer and token than the work itself (figures:
docs/benchmarks.md, "Figures behind the operations' design"). Our Int4MatMul quantizes the activations to
int8 and multiplies in integer arithmetic (AVX2, or AVX-512 VNNI where the CPU has it), reading the weights as
one stream; Int8MatMul does the same for per-row int8 weights (an int4 export's head, an export's vision
model); KVAttention keeps the key/value cache itself.

How it is used (the engine calls `select` only):
1. `build.extension(cache_dir)` compiles src/*.cpp once per OpenVINO version and instruction set
   (`cpu.instruction_set()`) with the system's C++ compiler into the cache folder (the private one where other
   users could change it), and registers the library with OpenVINO.
2. `copies.copies(folder)` writes, once per export (beside it, or in a trusted cache's `copies/` where other
   users could change the export's folder): a copy of the language IR in which the symmetric int4
   MatMuls are replaced by Int4MatMul (the same weights in its order, `layout.panels`; the same scales; those
   reading one input, such as q/k/v, as one operation), the int8 head by Int8MatMul and each attention with its
   cache by KVAttention (`rewrite`, on the weights `patterns` recognises); and, for the AVX-512 build, a copy of
   the vision IR with Int8MatMul. A copy is the same for both builds.
3. The engine compiles the copies instead of vision.xml and language.xml where `cpu.helps_here()`. Without a
   compiler, on other CPUs, for f32 answers or fp16 / fp32 exports, everything stays as it was.

Modules: cpu (detection), build (compiler + registration), nodes (Python stand-ins), patterns (NNCF weights),
layout (weight order, .bin alignment), rewrite (graph rewrites), copies (derived IRs); src/ the C++.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MvlmError
from ..store import read_manifest

MODES = ("auto", "on", "off")


def select(folder: Path | str, mode: str = "auto", device: str = "CPU", precision: str = "auto",
           cache_dir: Path | str | None = None) -> tuple[Path, Path]:
    """The (vision, language) IRs an engine compiles: vision.xml and language.xml, or their copies with our
    operations. `mode` is "auto" (where they are faster: cpu.helps_here()), "on" (wherever they build) or "off".
    Only on CPU at the default precision (f32 answers must match the reference: no int8 activations); the
    language copy needs an int4 export, the vision one an int4 or int8 export and the AVX-512 build. The library
    is built in `cache_dir` (None: default_cache_dir()) or, where others could change that, the private cache."""
    if mode not in MODES:
        raise MvlmError(f"ops must be 'auto', 'on' or 'off', not {mode!r}.")
    folder = Path(folder)
    plain = folder / "vision.xml", folder / "language.xml"
    if mode == "off" or device != "CPU" or precision != "auto":
        return plain
    from ..runtime.memory import shed
    from . import build, copies, cpu

    if not (mode == "on" or cpu.helps_here()) or not has_compressed_weights(folder):
        return plain
    built = build.extension(cache_dir)
    if built.library is None:
        return plain
    try:  # copies the export's folder cannot hold safely go beside the library: a place only this user can change
        vision, language = copies.copies(folder, built.library.parent.parent / "copies")
    except OSError:  # a read-only cache: OpenVINO's own path
        return plain
    finally:  # making a copy read the original's weights, whose file OpenVINO keeps mapped
        shed([folder / "vision.bin", folder / "language.bin"])
    return vision or plain[0], language or plain[1]


def has_compressed_weights(folder: Path) -> bool:
    """Whether the export has int4 or int8 weights for our operations: fp16 and fp32 exports need no library."""
    manifest = read_manifest(folder) or {}
    compression = manifest.get("compression")
    return isinstance(compression, dict) and compression.get("mode") in ("int4", "int8")
