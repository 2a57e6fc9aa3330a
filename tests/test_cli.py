"""`mvlm` in a terminal: the installed console script, run as a user would."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shapes_picture

MVLM = str(Path(sys.executable).with_name("mvlm"))


def mvlm(*args, timeout=300):
    return subprocess.run([MVLM, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def picture_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "shapes.png"
    shapes_picture().save(path)
    return path


def test_export_ask_list_delete(checkpoint, picture_file, tmp_path):
    cache = tmp_path / "cache"
    exported = mvlm("export", checkpoint("v1"), "--compression", "int4", "--group-size", "32", "--cache-dir", cache)
    assert exported.returncode == 0, exported.stderr
    folder = Path(exported.stdout.strip())
    assert (folder / "manifest.json").is_file() and "int4-sym-g32-r0.9" in folder.name

    asked = mvlm("ask", picture_file, "What colour is the circle?", "--model", checkpoint("v1"),
                 "--compression", "int4", "--group-size", "32", "--cache-dir", cache, "--max-new-tokens", "6",
                 "--stats")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip()  # the streamed answer
    assert "tokens/s" in asked.stderr and "first token" in asked.stderr
    assert "[convert" not in asked.stderr and "cached export" in asked.stderr  # the export above was reused
    shown = mvlm("ask", picture_file, "What colour is the circle?", "--model", checkpoint("v1"),
                 "--compression", "int4", "--group-size", "32", "--cache-dir", cache, "--max-new-tokens", "3",
                 "--show-tokens")
    lines = shown.stdout.strip().splitlines()
    assert shown.returncode == 0 and len(lines) == 4 and all(" | " in line for line in lines[1:]), shown.stdout

    listed = mvlm("list", "--cache-dir", cache)
    assert folder.name in listed.stdout and "MB" in listed.stdout
    deleted = mvlm("delete", folder.name, "--cache-dir", cache)
    assert deleted.returncode == 0 and not folder.exists()


@pytest.mark.parametrize("args,message", [
    (["ask", "/no/such/picture.png", "What is this?"], "does not exist"),
    (["ask", "{picture}", "  ", "--model", "{model}"], "question is empty"),
    (["export", "/no/such/folder"], "neither a folder nor a Hugging Face id"),
    (["export", "{model}", "--compression", "int4", "--ratio", "2"], "ratio must be in"),
    (["ask", "{picture}", "Hi?", "--model", "{model}", "--device", "TPU", "--compression", "fp16"], "unknown device"),
    (["delete", "nothing-here"], "no cached export"),
    (["ask", "{picture}", "caf\udce9?", "--model", "{model}"], "not valid Unicode"),  # b"caf\xe9?": Latin-1
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, checkpoint, picture_file, tmp_path):
    fill = {"picture": picture_file, "model": checkpoint("v2")}
    run = mvlm(*[a.format(**fill) for a in args], "--cache-dir", tmp_path / "cache")
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mvlm: ") and message.lower() in lines[0].lower(), run.stderr


def test_help_lists_the_commands():
    run = mvlm("--help")
    assert run.returncode == 0
    for command in ("export", "ask", "list", "delete", "demo", "serve"):
        assert command in run.stdout
    assert shutil.which(MVLM)
