"""Our own OpenVINO operations, for CPUs where OpenVINO's int4 matrix multiplication and attention are slow.

Without VNNI, OpenVINO decompresses NNCF's int4 weights to f32 before multiplying and reads memory well below
the machine's bandwidth; with AVX-512 VNNI it runs prompts in bf16 and decodes below memory speed; and its
fused attention with a cache costs more per layer and token than the work itself (figures:
docs/benchmarks.md, "Figures behind the operations' design"). Our Int4MatMul quantizes the activations to
int8 and multiplies in integer arithmetic (AVX2, or AVX-512 VNNI where the CPU has it), reading the weights as
one stream; Int8MatMul does the same for per-row int8 weights (an int4 export's head, an export's vision
model); KVAttention keeps the key/value cache itself.

How it is used (the engine calls `select` only; `plan` says beforehand what it will decide, for listings):
1. `build.extension(cache_dir)` compiles src/*.cpp once per OpenVINO version and instruction set
   (`cpu.instruction_set()`) with the system's C++ compiler into the cache folder (the private one where other
   users could change it), and registers the library with OpenVINO.
2. `copies.copies(folder)` writes, once per export (beside it, or in a trusted cache's `copies/` where other
   users could change the export's folder): a copy of the language IR in which the symmetric int4
   MatMuls are replaced by Int4MatMul (the same weights and scales in its tiles of 32 rows, `layout.int4_tiles`;
   those reading one input, such as q/k/v, as one operation), the int8 head by Int8MatMul and each attention with
   its cache by KVAttention (a cache row per conversation: batched decoding) (`rewrite`, on the weights
   `patterns` recognises); and, for the AVX-512 build, a copy of the vision IR with Int8MatMul. A copy is the
   same for both builds.
3. The engine compiles the copies instead of vision.xml and language.xml where `cpu.helps_here()`, or, on a kind
   of CPU never measured, where `measured.faster` timed them faster at first load (remembered). Without a
   compiler, on other CPUs, for f32 answers or fp16 / fp32 exports, everything stays as it was.

Modules: cpu (detection), build (compiler + registration), nodes (Python stand-ins), patterns (NNCF weights),
layout (weight order, .bin alignment), rewrite (graph rewrites), copies (derived IRs), measured (ours or OpenVINO's
timed on CPUs never measured); src/ the C++.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import MvlmError
from ..store import read_manifest

MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Choice:
    """The IRs an engine compiles, and why OpenVINO's own operations run the language model where ours do not."""

    vision: Path
    language: Path
    why: str = ""  # "" when ours run the language model

    @property
    def ours(self) -> list[str]:
        """Which of our operations run: "int4" (the language model's), "int8 vision"."""
        return [name for name, xml, plain in (("int4", self.language, "language.xml"),
                                              ("int8 vision", self.vision, "vision.xml")) if xml.name != plain]


def select(folder: Path | str, mode: str = "auto", device: str = "CPU", precision: str = "auto",
           cache_dir: Path | str | None = None) -> Choice:
    """The (vision, language) IRs an engine compiles: vision.xml and language.xml, or their copies with our
    operations. `mode` is "auto" (where they are faster: cpu.helps_here(), or timed once by measured.faster on
    CPUs never measured), "on" (wherever they build) or "off".
    Only on CPU at the default precision (f32 answers must match the reference: no int8 activations); the
    language copy needs a symmetric int4 export, the vision one an int4 or int8 export and the AVX-512 build. The
    library is built in `cache_dir` (None: default_cache_dir()) or, where others could change that, the private
    cache."""
    if mode not in MODES:
        raise MvlmError(f"ops must be 'auto', 'on' or 'off', not {mode!r}.")
    folder = Path(folder)
    manifest = read_manifest(folder) or {}
    plain = Choice(folder / "vision.xml", folder / "language.xml")
    why = run_why(mode, device, precision) or export_why(manifest, vision_too=True)
    if why:
        return replace(plain, why=why)
    from ..runtime.memory import shed
    from . import build, copies, cpu, measured

    built = build.extension(cache_dir)
    if built.library is None:
        return replace(plain, why=built.why_not or "our operations could not be built")
    try:  # copies the export's folder cannot hold safely go beside the library: a place only this user can change
        vision, language = copies.copies(folder, built.library.parent.parent / "copies")
    except OSError:
        return replace(plain, why="no place only this user can change holds the copies with our operations")
    finally:  # making a copy read the original's weights, whose file OpenVINO keeps mapped
        shed([folder / "vision.bin", folder / "language.bin"])
    if language and mode == "auto" and cpu.helps_here() is None and not measured.faster(plain.language, language)[0]:
        return replace(plain, why="OpenVINO's timed faster on this CPU")
    return Choice(vision or plain.vision, language or plain.language,
                  "" if language else export_why(manifest) or "no int4 weights our operations read")


def plan(manifest: dict, mode: str = "auto", device: str = "CPU", precision: str = "auto") -> str:
    """What `select` will run for an export with this manifest, in words, without building anything: "ours",
    "ours for the picture, OpenVINO's for the text (why)" or "OpenVINO's (why)"."""
    from . import cpu, measured

    why = run_why(mode, device, precision)
    if why:
        return f"OpenVINO's ({why})"
    why = export_why(manifest)
    if not why and mode == "auto" and cpu.helps_here() is None:
        found = measured.remembered()
        if found is None:
            return "ours or OpenVINO's: timed at first load"
        if not found["ours"]:
            return "OpenVINO's (timed faster on this CPU)"
    if why and not export_why(manifest, vision_too=True):  # the vision copy runs ours all the same
        return f"ours for the picture, OpenVINO's for the text ({why})"
    return f"OpenVINO's ({why})" if why else "ours"


def run_why(mode: str, device: str, precision: str) -> str:
    """Why no export can run ours here, as asked: "" when ours may run."""
    from . import cpu

    if mode == "off":
        return "ops off"
    if device != "CPU":
        return f"ours run on the CPU, not {device}"
    if precision != "auto":
        return f"{precision} answers take the exact path"
    if cpu.instruction_set() is None:
        return "this CPU lacks AVX2, FMA or F16C"
    if mode == "auto" and cpu.helps_here() is False:
        return "as fast on this CPU"
    return ""


def export_why(manifest: dict, vision_too: bool = False) -> str:
    """Why this export's language model (and, with `vision_too`, its vision model) cannot run ours: "" when it
    can. Read from the manifest's record of the weights written (export/written.py)."""
    from . import cpu

    compression = manifest.get("compression") if isinstance(manifest.get("compression"), dict) else {}
    kind = compression.get("mode")
    if kind not in ("int4", "int8"):
        return f"{kind or 'unknown'} export: no compressed weights for ours"
    if vision_too and cpu.instruction_set() == "avx512":
        return ""  # the vision copy (int8) may run ours even where the language model cannot
    if kind == "int8":
        return "int8 export: ours run int4 language models"
    int4 = (compression.get("per_model") or {}).get("language", {}).get("int4")
    if not int4:  # an export written before the record: what was asked
        return "" if compression.get("sym", True) else "asymmetric int4"
    if not int4.get("sym", True):
        return "asymmetric int4"
    if all(int(group) % 64 for group in int4.get("groups", {})):
        return f"int4 groups of {'/'.join(int4['groups'])}: ours take multiples of 64"
    return ""
