"""Compiling our operations (src/*.cpp, one compiler call, one library per OpenVINO version, compiler and
instruction set) into the cache folder, and registering the library with our OpenVINO core.

Our own shipped source, nothing downloaded: the system's C++ compiler against the openvino wheel's headers.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import openvino as ov

from ..runtime.device import core
from ..store import default_cache_dir
from .cpu import COMPILER_FLAGS, instruction_set

SOURCES = Path(__file__).resolve().parent / "src"  # headers declare, .cpp files define, extension.cpp registers


@dataclass(frozen=True)
class Build:
    """The compiled library, or None and why not."""

    library: Path | None
    why_not: str | None = None


@lru_cache(maxsize=1)
def extension() -> Build:
    """Our operations compiled (once per process) and registered with our OpenVINO core; `library` is None
    (`why_not` says why) when they cannot be built or loaded."""
    try:
        built = compile_library()
        if built.library is not None:
            core().add_extension(str(built.library))
        return built
    except (OSError, RuntimeError) as error:  # an unwritable cache, a library OpenVINO refuses
        return Build(None, f"our operations could not be built or loaded: {error}")


def compile_library() -> Build:
    """Compile the operations into the cache folder unless they are there already."""
    isa = instruction_set()
    if platform.system() != "Linux" or platform.machine() != "x86_64" or isa is None:
        return Build(None, "needs an x86-64 Linux CPU with AVX2, FMA and F16C")
    package = Path(ov.__file__).parent
    libs = package / "libs"
    openvino_lib, tbb_lib = sorted(libs.glob("libopenvino.so.*")), sorted(libs.glob("libtbb.so.*"))
    if not (openvino_lib and tbb_lib and (package / "include").is_dir()):
        return Build(None, f"the openvino package at {package} has no headers or libraries to build against")
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler or not shutil.which(compiler):
        return Build(None, "no C++ compiler found (install g++ or set CXX)")
    sources = b"".join(path.read_bytes() for path in sorted(SOURCES.glob("*.[ch]pp")))
    key = hashlib.sha256(sources + ov.get_version().encode() + compiler.encode()).hexdigest()[:16]
    folder = default_cache_dir() / "ops"
    library = folder / f"mvlm_ops-{isa}-{key}.so"
    if library.is_file():
        return Build(library)
    folder.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkstemp(dir=folder, prefix=".building-", suffix=".so")[1])
    command = [compiler, "-O3", *COMPILER_FLAGS[isa], "-std=c++17", "-shared", "-fPIC",
               "-I", str(package / "include"), *map(str, sorted(SOURCES.glob("*.cpp"))), "-L", str(libs),
               f"-l:{openvino_lib[0].name}", f"-l:{tbb_lib[0].name}", f"-Wl,-rpath,{libs}", "-o", str(partial)]
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
        failure = f"the C++ compiler failed: {done.stderr.strip()[-500:]}" if done.returncode else None
    except (OSError, subprocess.TimeoutExpired) as error:
        failure = f"the C++ compiler failed to run: {error}"
    if failure:
        partial.unlink(missing_ok=True)
        return Build(None, failure)
    os.replace(partial, library)  # atomic: a half-written library is never loaded
    return Build(library)
