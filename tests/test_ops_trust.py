"""Our operations never load code another user could have put there: the compiled library and the IR copies holding
our operations come only from folders this user alone can change (a cache on a shared drive is refused with one
warning line and the private cache used); `cache_dir` reaches the library; interrupted compiles leave nothing.

Tests run as root, so "another user can write" is a folder of mode 0o777 (or 0o775 with someone else's group) and
"another user's" is a file or folder chowned to nobody (65534)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from mvlm_magic import ops
from mvlm_magic.loader import load_engine
from mvlm_magic.ops import build, copies, cpu
from mvlm_magic.store import writable_only_by_me

pytestmark = pytest.mark.skipif(not cpu.NEEDED_FLAGS <= cpu.cpu_flags(), reason="needs an AVX2 CPU")
NOBODY = 65534


@pytest.fixture(scope="module")
def library() -> Path:
    """Our compiled library (built once per session in the default cache), to copy instead of compiling again."""
    built = build.extension()
    assert built.library is not None, built.why_not
    return built.library


@pytest.fixture
def private(tmp_path, monkeypatch) -> Path:
    """The private cache's ops folder (under $XDG_CACHE_HOME), holding a copy of our library: the same name, so
    nothing is compiled."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    return tmp_path / "home-cache" / "mvlm_magic" / "ops"


def with_library(folder: Path, library: Path) -> Path:
    folder.mkdir(parents=True, mode=0o700, exist_ok=True)
    shutil.copy2(library, folder / library.name)
    return folder / library.name


@pytest.fixture(scope="module")
def planted_code(tmp_path_factory):
    """planted(path) -> a library at `path` whose loading writes a marker file (returned)."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    work = tmp_path_factory.mktemp("planted")
    marker = work / "planted-code-ran"
    source = work / "planted.c"
    source.write_text('#include <stdio.h>\n__attribute__((constructor)) static void planted(void) {\n'
                      f'    FILE* f = fopen("{marker}", "w"); if (f) fclose(f);\n}}\n')
    subprocess.run(["g++", "-x", "c", "-shared", "-fPIC", str(source), "-o", str(work / "planted.so")], check=True)

    def plant(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / "planted.so", path)
        return marker

    return plant


def shared_by_everyone(folder: Path, planted: Path) -> None:
    folder.chmod(0o777)


def shared_with_a_group(folder: Path, planted: Path) -> None:
    os.chown(folder, 0, NOBODY)
    folder.chmod(0o775)


def another_users_file(folder: Path, planted: Path) -> None:
    os.chown(planted, NOBODY, NOBODY)


def another_users_folder(folder: Path, planted: Path) -> None:
    os.chown(planted.parent, NOBODY, NOBODY)


@pytest.mark.parametrize("share", [shared_by_everyone, shared_with_a_group, another_users_file, another_users_folder])
def test_a_library_planted_in_a_shared_cache_is_never_loaded(share, library, private, planted_code, tmp_path,
                                                             monkeypatch):
    shared = tmp_path / "shared"
    marker = planted_code(shared / "ops" / library.name)  # the name the build loads, which anyone can compute
    share(shared, shared / "ops" / library.name)
    with_library(private, library)
    monkeypatch.setenv("MVLM_CACHE", str(shared))  # the teacher's setting
    with pytest.warns(UserWarning) as told:
        built = build.extension(shared)
    assert not marker.exists(), "the planted library ran"
    assert built.library == private / library.name, built.why_not
    [line] = [str(w.message) for w in told]
    assert "\n" not in line and f"not loaded from {shared / 'ops'}" in line and f"using {private}" in line
    assert shared.name in line.split(": ", 1)[1]  # says why: the shared folder or file others can change
    assert build.extension(shared) is built  # once per process and folder: no second warning


def test_an_engine_on_a_shared_cache_answers_with_the_private_library(exported, library, private, planted_code,
                                                                      tmp_path, picture):
    shared = tmp_path / "shared"
    marker = planted_code(shared / "ops" / library.name)
    shared.chmod(0o777)
    with_library(private, library)
    with pytest.warns(UserWarning, match="not loaded from"):
        engine = load_engine(exported("v2", "int4"), cache_dir=shared, ops="on")
    assert not marker.exists(), "the planted library ran"
    assert engine.ops == "int4"  # our operations, from the private folder
    assert engine.ask(picture, "What is this?", max_new_tokens=3).token_ids


def test_when_no_folder_is_private_our_operations_are_not_used(library, planted_code, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    marker = planted_code(shared / "ops" / library.name)
    shared.chmod(0o777)
    (tmp_path / "home-cache").mkdir(mode=0o777)
    (tmp_path / "home-cache").chmod(0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    with pytest.warns(UserWarning, match="OpenVINO's own operations run instead") as told:
        built = build.extension(shared)
    assert len(told) == 1 and built.library is None and "other users" in built.why_not
    assert not marker.exists()
    assert not (tmp_path / "home-cache" / "mvlm_magic").exists()  # nothing made in a folder we refuse


def test_cache_dir_is_where_the_library_is_loaded_from(exported, library, private, tmp_path, monkeypatch):
    """load_engine(cache_dir=...) (the CLI's --cache-dir, MvlmMagics.cache_dir) reaches the library's folder; the
    library the private cache holds already is copied there, not compiled again."""
    built_before = with_library(private, library)
    mine = tmp_path / "mine"
    compiled = []
    real = build.compile_library
    monkeypatch.setattr(build, "compile_library", lambda cache_dir=None: compiled.append(real(cache_dir)) or
                        compiled[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a private cache_dir: no warning
        engine = load_engine(exported("v2", "int4"), cache_dir=mine, ops="on")
    assert engine.ops == "int4"
    assert [built.library for built in compiled] == [mine / "ops" / library.name]
    assert (mine / "ops" / library.name).read_bytes() == built_before.read_bytes()
    assert sorted(p.name for p in (mine / "ops").iterdir()) == [library.name]


@pytest.fixture
def fast_compiler(library, tmp_path, monkeypatch) -> None:
    """A stand-in compiler ($CXX) writing our library to its output (the last argument): builds in no time."""
    script = tmp_path / "fake-c++"
    script.write_text(f'#!/bin/sh\nfor out; do :; done\ncp "{library}" "$out"\n')
    script.chmod(0o755)
    monkeypatch.setenv("CXX", str(script))


def test_the_library_is_compiled_into_cache_dir_and_interrupted_compiles_are_cleaned(fast_compiler, tmp_path,
                                                                                       monkeypatch):
    cache = tmp_path / "cache"
    (cache / "ops").mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # a process that has exited
    left = [cache / "ops" / f".building-{dead}-k1lled.so", cache / "ops" / f".building-{dead}-x.so"]
    running = cache / "ops" / ".building-1-still.so"  # pid 1 is alive: a compile in progress
    for path in (*left, running):
        path.write_bytes(b"half a library")
    monkeypatch.setenv("MVLM_CACHE", str(cache))
    built = build.compile_library()
    assert built.library is not None and built.library.parent == cache / "ops", built.why_not
    assert not any(path.exists() for path in left) and running.exists()
    assert sorted(p.name for p in (cache / "ops").iterdir()) == sorted([built.library.name, running.name])
    other = tmp_path / "other"
    assert build.compile_library(other).library.parent == other / "ops"  # cache_dir, not $MVLM_CACHE
    assert stat.S_IMODE((other / "ops").stat().st_mode) == 0o700  # made private


def test_copies_of_an_export_others_can_change_are_made_privately(exported, library, tmp_path):
    """The IR copies hold our operations: one beside an export in a shared folder is neither read nor written."""
    original = exported("v2", "int4")
    shared = tmp_path / "shared"
    folder = shutil.copytree(original, shared / original.name, ignore=shutil.ignore_patterns("*-v[0-9]*"))
    planted = folder / f"language.int4-v{copies.FORMAT}.xml"
    planted.write_text("<net/>")
    planted.with_suffix(".bin").write_bytes(b"")
    shared.chmod(0o777)
    mine = tmp_path / "mine"
    with_library(mine / "ops", library)
    language = ops.select(folder, "on", cache_dir=mine).language
    assert language.parent.parent == mine / "copies" and language.name == planted.name
    assert language.read_text() != planted.read_text()
    assert ops.select(folder, "on", cache_dir=mine).language == language  # found again
    assert writable_only_by_me(language) is None
    shared.chmod(0o755)  # private again: the copies beside the export
    assert ops.select(folder, "on", cache_dir=mine).language == planted
    planted.chmod(0o666)  # a copy others could change is written again
    assert copies.int4_language_model(folder) == planted and planted.read_text() != "<net/>"
    assert writable_only_by_me(planted) is None


def test_writable_only_by_me(tmp_path):
    mine = tmp_path / "mine"
    (mine / "deep").mkdir(parents=True)
    assert writable_only_by_me(mine / "deep") is None
    mine.chmod(0o777)
    assert "can be written by other users" in writable_only_by_me(mine / "deep")
    mine.chmod(0o755)
    os.chown(mine, 0, NOBODY)
    mine.chmod(0o775)
    assert f"can be written by group {NOBODY}" in writable_only_by_me(mine / "deep")
    mine.chmod(0o755)
    os.chown(mine / "deep", NOBODY, NOBODY)
    assert "belongs to another user" in writable_only_by_me(mine / "deep")
    sticky = tmp_path / "tmp"  # like /tmp: anyone may add entries, nobody may replace another's
    sticky.mkdir(mode=0o1777)
    sticky.chmod(0o1777)
    (sticky / "ours").mkdir()
    assert writable_only_by_me(sticky / "ours") is None
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    (shared / "lib.so").write_bytes(b"")
    (mine / "link.so").symlink_to(shared / "lib.so")  # a link of ours to where others write
    assert str(shared) in writable_only_by_me(mine / "link.so")
    assert "cannot be checked" in writable_only_by_me(tmp_path / "missing")
