"""Compiling our operations (src/*.cpp, one compiler call, one library per OpenVINO version, compiler and
instruction set) into the cache folder, and registering the library with our OpenVINO core.

Our own shipped source, nothing downloaded: the system's C++ compiler against the openvino wheel's headers. A
library is loaded only from a folder that this user alone can change (`store.writable_only_by_me`): a cache on a
shared drive is refused with one warning line, and the library built in the user's private cache instead.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import openvino as ov

from ..runtime.device import core
from ..store import default_cache_dir, pid_alive, private_cache_dir, writable_only_by_me
from .cpu import COMPILER_FLAGS, instruction_set

SOURCES = Path(__file__).resolve().parent / "src"  # headers declare, .cpp files define, extension.cpp registers


@dataclass(frozen=True)
class Build:
    """The compiled library, or None and why not."""

    library: Path | None
    why_not: str | None = None


def extension(cache_dir: Path | str | None = None) -> Build:
    """Our operations compiled into `cache_dir` (None: `default_cache_dir()`), or into the private cache where
    others could change that one, and registered with our OpenVINO core; `library` is None (`why_not` says why)
    when they cannot be built or loaded."""
    return _extension(Path(cache_dir or default_cache_dir()).expanduser().absolute())


@cache
def _extension(cache_dir: Path) -> Build:  # once per process and cache folder
    try:
        built = compile_library(cache_dir)
        if built.library is not None:
            register(built.library)
        return built
    except (OSError, RuntimeError) as error:  # an unwritable cache, a library OpenVINO refuses
        return Build(None, f"our operations could not be built or loaded: {error}")


_registered: set[str] = set()


def register(library: Path) -> None:
    """Add the library to our one OpenVINO core, once: a library of the same name (the same sources, OpenVINO,
    compiler and instruction set) built in another cache folder defines the same operations."""
    if library.name not in _registered:
        core().add_extension(str(library))
        _registered.add(library.name)


def compile_library(cache_dir: Path | str | None = None) -> Build:
    """The library in `<cache_dir>/ops`, compiled there unless it is there already; in the private cache's `ops`
    instead (one warning line) where another user could change the first."""
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
    try:
        library = trusted_place(Path(cache_dir or default_cache_dir()) / "ops" / f"mvlm_ops-{isa}-{key}.so")
    except Untrusted as refused:
        return Build(None, f"our operations are not loaded from a folder other users can change: {refused}")
    if library.is_file():
        return Build(library)
    built_before = private_cache_dir() / "ops" / library.name
    if built_before != library and built_before.is_file() and writable_only_by_me(built_before) is None:
        return build_library(library, copying(built_before))  # the same library: a copy, not 20 s of compiling
    command = [compiler, "-O3", *COMPILER_FLAGS[isa], "-std=c++17", "-shared", "-fPIC",
               "-I", str(package / "include"), *map(str, sorted(SOURCES.glob("*.cpp"))), "-L", str(libs),
               f"-l:{openvino_lib[0].name}", f"-l:{tbb_lib[0].name}", f"-Wl,-rpath,{libs}", "-o"]
    return build_library(library, compiling(command))


class Untrusted(OSError):
    """No folder that only this user can change to build our operations in."""


def trusted_place(library: Path) -> Path:
    """`library` (a path in the chosen cache), or the same name in the private cache where another user could
    change its folder or file (a planted library would run its code here); raises Untrusted when neither will do."""
    why = untrusted_folder(library.parent) or (writable_only_by_me(library) if library.exists() else None)
    if why is None:
        return library
    private = private_cache_dir() / "ops"
    why_private = untrusted_folder(private)
    if why_private:
        tell(f"our operations are not loaded from {library.parent}: {why}; nor from {private}: {why_private}; "
             "OpenVINO's own operations run instead.")
        raise Untrusted(f"{why}; {why_private}")
    tell(f"our operations are not loaded from {library.parent}: {why}; using {private} instead.")
    if (private / library.name).exists() and writable_only_by_me(private / library.name):
        (private / library.name).unlink()  # our own folder: a file others could change is rebuilt, not loaded
    return private / library.name


def untrusted_folder(folder: Path) -> str | None:
    """Why another user could change `folder`, else None (it is created, 0o700, where missing and what is above
    it passes: we create nothing in a folder we would refuse)."""
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    why = writable_only_by_me(existing)
    if why is None and existing != folder:
        try:
            for missing in reversed([p for p in (folder, *folder.parents) if not p.exists()]):
                missing.mkdir(mode=0o700, exist_ok=True)
        except OSError as error:  # a read-only cache: the private one may do
            return f"{folder} cannot be created ({error.strerror})"
        why = writable_only_by_me(folder)
    return why


def tell(message: str) -> None:
    """One line on stderr through `warnings` (filterable, shown once in a kernel), without a source line."""
    warnings.warn_explicit(message, UserWarning, "mvlm_magic", 0)


BUILDING = ".building-"  # a library being compiled: .building-<pid>-<random>.so, renamed when complete


def build_library(library: Path, write: Callable[[Path], str | None]) -> Build:
    """`write` the library into a temporary file beside `library` (it returns why it failed, or None), then rename
    it into place."""
    folder = library.parent
    remove_stale_builds(folder)
    handle, name = tempfile.mkstemp(dir=folder, prefix=f"{BUILDING}{os.getpid()}-", suffix=".so")
    os.close(handle)
    partial = Path(name)
    failure = write(partial)
    if failure:
        partial.unlink(missing_ok=True)
        return Build(None, failure)
    os.replace(partial, library)  # atomic: a half-written library is never loaded
    return Build(library)


def compiling(command: list[str]) -> Callable[[Path], str | None]:
    """Run the compiler (`command` ends with "-o") into the file it is given."""
    def write(partial: Path) -> str | None:
        try:
            done = subprocess.run([*command, str(partial)], check=False, capture_output=True, text=True, timeout=300)
            return f"the C++ compiler failed: {done.stderr.strip()[-500:]}" if done.returncode else None
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"the C++ compiler failed to run: {error}"
    return write


def copying(source: Path) -> Callable[[Path], str | None]:
    """Copy a library built before (in a folder only this user can change) into the file it is given."""
    def write(partial: Path) -> None:
        shutil.copy2(source, partial)
    return write


def remove_stale_builds(folder: Path) -> None:
    """Remove what compiles killed midway left behind (their process is gone), as the store does for exports."""
    for partial in folder.glob(f"{BUILDING}*.so"):
        pid = partial.name[len(BUILDING):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            partial.unlink(missing_ok=True)
