"""Weight formats side by side on a real tiny checkpoint: each format exported (or found cached), asked, measured."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from contextlib import redirect_stdout

import pytest

from conftest import DisplayRecorder, shapes_picture
from mvlm_magic.compare import COLUMNS, compare_formats, text_table
from mvlm_magic.store import export_bytes


@pytest.fixture(scope="module")
def rows(checkpoint, exported, cache_dir):
    for compression in ("fp32", "int8", "int4"):
        exported("v2", compression)  # shared with the other tests: each tiny export is made once
    return compare_formats(checkpoint("v2"), ["int4", "int8", "fp32"], shapes_picture(seed=9), "What is this?",
                           cache_dir=cache_dir, max_new_tokens=12)


def test_rows_go_from_the_most_precise_and_sizes_follow_the_format(rows):
    assert [row.label for row in rows] == ["fp32", "int8", "int4-sym-g64-r0.9"]
    assert rows[2].written == "int4-sym-g64-r0.85"  # what the export holds: 11 of 14 layers int4 (test_manifest)
    assert all(not row.error and row.answer and row.load_s > 0 and row.first_token_ms > 0 for row in rows)
    fp32, int8, int4 = rows
    assert fp32.export_mb > int8.export_mb > int4.export_mb  # honest: our operations' copy is counted apart
    assert fp32.copy_mb == 0


def test_agreement_names_the_first_token_where_a_format_parts(rows):
    reference = rows[0]
    assert reference.same_answer is None
    for row in rows[1:]:
        assert row.same_answer == (row.token_ids == reference.token_ids)
        if not row.same_answer:
            i = row.first_difference
            assert row.token_ids[:i] == reference.token_ids[:i]
            assert i == min(len(row.token_ids), len(reference.token_ids)) or row.token_ids[i] != reference.token_ids[i]
    table = text_table(rows)
    assert table.splitlines()[0].split("  ")[0] == COLUMNS[0] and "reference" in table and " MB" in table


def test_peak_memory_is_measured_on_linux(rows):
    assert all(row.peak_mb is not None and row.peak_mb >= 0 for row in rows)


def test_export_sizes_split_our_copies_from_the_export(tmp_path):
    (tmp_path / "manifest.json").write_text('{"sizes": {"language.bin": 100}}')  # 32 bytes
    (tmp_path / "language.bin").write_bytes(b"x" * 100)
    (tmp_path / "language.int4-v9.bin").write_bytes(b"x" * 40)
    (tmp_path / "vision.int8-v9.xml").write_bytes(b"x" * 2)
    assert export_bytes(tmp_path) == (132, 42)


def test_the_magic_and_the_terminal_show_the_table(checkpoint, cache_dir, magic_shell, tmp_path, monkeypatch):
    from mvlm_magic.notebook import compare, output_mode

    magic_shell.user_ns["img"] = shapes_picture(seed=10)
    out = io.StringIO()  # a plain shell prints the table
    with redirect_stdout(out):
        magic_shell.run_cell("%mvlm_compare int8 fp32 --image img --max-new-tokens 4 --question 'What colour?'")
    printed = out.getvalue()
    assert "Q: What colour?\n" in printed and "fp32" in printed and "int8" in printed and "reference" in printed
    display = DisplayRecorder()
    monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.DISPLAY)
    monkeypatch.setattr(compare, "display", display)
    magic_shell.run_cell("%%mvlm_compare int8 fp32 --image img --max-new-tokens 4\nWhat colour is it?")
    table = display.shown[0].children[1].value  # the table filled in as the formats were asked
    assert table.count("<tr>") == 3 and "reference" in table
    markdown = display.updates[-1]["text/markdown"]  # then the static copy a saved notebook keeps
    assert markdown.startswith("**Q:** What colour is it") and markdown.count("\n| ") == 3
    picture = tmp_path / "picture.png"
    shapes_picture(seed=10).save(picture)
    cli = subprocess.run([sys.executable, "-m", "mvlm_magic.cli", "compare", "int8", "fp32", "--image", str(picture),
                          "--model", str(checkpoint("v2")), "--cache-dir", str(cache_dir), "--max-new-tokens", "4"],
                         capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    assert "same answer" in cli.stdout or "parts at token" in cli.stdout


def test_a_format_the_comparison_exports_is_measured_without_the_exports_leftovers(checkpoint, tmp_path):
    """In a fresh process (as `mvlm compare` is), a format exported by the comparison itself: what the export leaves
    resident (torch, its heap: hundreds of MB) is not the format's memory; the tiny model answers in tens of MB."""
    picture = tmp_path / "picture.png"
    shapes_picture(seed=11).save(picture)
    cli = subprocess.run([sys.executable, "-m", "mvlm_magic.cli", "compare", "int8", "--image", str(picture),
                          "--model", str(checkpoint("v2")), "--cache-dir", str(tmp_path / "cache"),
                          "--max-new-tokens", "4"], capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    [row] = [line for line in cli.stdout.splitlines() if line.startswith("int8 ")]
    cells = dict(zip(COLUMNS, re.split(r"\s{2,}", row)))
    assert cells["load"].endswith("(exported)"), cells
    assert cells["peak memory"].endswith(" MB") and float(cells["peak memory"][:-3]) < 150, cells
