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
    for command in ("export", "ask", "list", "delete", "demo", "serve", "handout"):
        assert command in run.stdout
    assert shutil.which(MVLM)


def test_handout_leaves_the_widgets_out_and_keeps_their_saved_copies(tmp_path):

    import nbformat

    from mvlm_magic.handout import WIDGET_STATE, WIDGET_VIEW
    from mvlm_magic.widgets import AskPanel

    panel = AskPanel(image=shapes_picture())  # no model: its copy shows the picture, no question asked yet
    live = {kind: data for kind, data in panel._repr_mimebundle_().items() if kind != "text/plain"}
    copy = panel.saved_copy.bundle()
    copy["text/markdown"] = copy["text/markdown"].splitlines(keepends=True)  # as Jupyter saves text: lines
    notebook = nbformat.v4.new_notebook(metadata={"widgets": {WIDGET_STATE: {"state": {}, "version_major": 2}}})
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# A lesson"),
        nbformat.v4.new_code_cell("print('before'); display(panel)", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="before\n"),
            nbformat.v4.new_output("display_data", data=live),
            nbformat.v4.new_output("display_data", data=copy)]),
        nbformat.v4.new_code_cell("IntSlider()", execution_count=3, outputs=[
            nbformat.v4.new_output("execute_result", execution_count=3,
                                   data={WIDGET_VIEW: {"model_id": "0123", "version_major": 2, "version_minor": 0},
                                         "text/plain": "IntSlider(value=0)"})])]
    path = tmp_path / "lesson.ipynb"
    path.write_text(nbformat.writes(notebook))
    before = path.read_bytes()

    run = mvlm("handout", path)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "lesson.handout.ipynb"
    assert run.stdout.strip() == (f"{out}: 1 widget replaced by its saved copy; 1 other widget left out "
                                  "(no saved copy)")
    assert path.read_bytes() == before  # the teacher's own notebook is untouched
    handed = nbformat.read(out, as_version=4)
    nbformat.validate(handed)
    outputs = handed.cells[1].outputs
    assert [o.output_type for o in outputs] == ["stream", "display_data"] and outputs[0].text == "before\n"
    # The copy without its style rule, which would now hide the print above it: shown as it is, trusted or not.
    markdown = outputs[1].data["text/markdown"]
    assert markdown.startswith('<div class="mvlm-copy-') and "<style>" not in markdown
    assert "no question asked yet" in markdown and "<img" in markdown
    assert handed.cells[2].outputs == [] and "widgets" not in handed.metadata

    assert out.stat().st_mode & 0o777 == path.stat().st_mode & 0o777  # as readable as the notebook

    plain = tmp_path / "class" / "plain.ipynb"
    elsewhere = mvlm("handout", tmp_path / "lesson.handout.ipynb", "-o", plain)
    assert elsewhere.returncode == 0 and plain.is_file(), elsewhere.stderr
    assert elsewhere.stdout.strip() == f"{plain}: no widget outputs in it, written as it is"


@pytest.mark.parametrize("args,message", [
    (["/no/such/lesson.ipynb"], "no notebook at"),
    (["{picture}"], "cannot read"),
    (["{notebook}", "-o", "{notebook}"], "would replace"),
    (["{text}"], "not a notebook"),
])
def test_handout_of_what_is_no_notebook_is_one_line_and_exit_code_2(args, message, picture_file, tmp_path):
    import json

    (tmp_path / "lesson.ipynb").write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "cells": [],
                                                      "metadata": {}}))
    (tmp_path / "notes.json").write_text('{"cells": []}')
    fill = {"picture": picture_file, "notebook": tmp_path / "lesson.ipynb", "text": tmp_path / "notes.json"}
    run = mvlm("handout", *[a.format(**fill) for a in args])
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and message in lines[0], run.stderr
