"""An export says exactly what it holds: the manifest's record, the label shown everywhere and the one note when
NNCF did not do what was asked, each checked against the constants of the IRs actually written; and which
operations answer from it (ours or OpenVINO's), and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import openvino as ov
import pytest

from mvlm_magic import ops
from mvlm_magic.export import export_model
from mvlm_magic.loader import LISTING_COLUMNS, cached_exports
from mvlm_magic.model.tiny import build_tiny_checkpoint
from mvlm_magic.runtime.engine import Engine
from mvlm_magic.store import read_manifest


def constants(xml) -> list:
    """The weight-sized Constants (rank >= 2) of an IR file, as written."""
    model = ov.Core().read_model(xml)
    return [op for op in model.get_ops() if op.get_type_name() == "Constant"
            and op.get_output_partial_shape(0).rank.get_length() >= 2]


def int4_groups(xml) -> Counter:
    """Group size -> how many int4 weights use it, straight from the IR: NNCF's grouped weights are (N, groups, G)."""
    return Counter(list(c.get_output_shape(0))[-1] for c in constants(xml)
                   if c.get_output_element_type(0).get_type_name() == "i4")


@pytest.fixture(scope="module")
def width_96(tmp_path_factory, cache_dir):
    """A checkpoint whose width, 96, is a multiple of neither 128 nor 64, exported int4 (asked: group 128)."""
    folder = build_tiny_checkpoint(tmp_path_factory.mktemp("w96") / "tiny-w96", hidden_size=96,
                                   intermediate_size=192, seed=3)
    notes, lines = [], []

    def progress(stage, fraction, message):
        lines.append((stage, message))
        if stage == "note":
            notes.append(message)

    export = export_model(folder, "int4-sym-g128-r1", cache_dir=cache_dir, progress=progress)
    return export, notes, folder, lines


def test_a_group_size_nncf_adjusted_is_recorded_labelled_and_said_once(width_96):
    export, notes, _, _ = width_96
    compression = export.manifest["compression"]
    groups = int4_groups(export.path / "language.xml")
    assert set(groups) == {64, 32}  # inputs of 192 take 64, of 96 take 32: never the 128 asked
    written = compression["per_model"]["language"]["int4"]
    assert {int(g): n for g, n in written["groups"].items()} == groups
    assert written["inputs"] == {"64": [192], "32": [96]} and written["sym"] is True
    assert compression["requested"] == "int4-sym-g128-r1"
    assert compression["label"] == "int4-sym-g64/32-r1"
    assert notes == [compression["note"]] and len(notes[0].splitlines()) == 1
    assert notes[0].startswith("int4-sym-g128-r1 asked;") and notes[0].endswith("written as int4-sym-g64/32-r1")
    assert f"{groups[32]} of {sum(groups.values())} int4 layers use group 32" in notes[0]
    engine = Engine(export.path, ops="off")
    assert "[int4-sym-g64/32-r1]" in engine.name
    (row,) = [row for row in cached_exports(export.path.parent) if row[0] == export.key]
    assert row[2] == "int4-sym-g64/32-r1"


def test_converting_says_which_layer_it_has_traced(width_96):
    """Issue 15: tracing a large model takes a while; the convert stage counts its transformer blocks."""
    converted = [message for stage, message in width_96[3] if stage == "convert"]
    assert "converting the vision model: layer 3 of 3 traced" in converted
    assert [m for m in converted if m.startswith("converting the language model: layer")] == [
        "converting the language model: layer 1 of 2 traced", "converting the language model: layer 2 of 2 traced"]


def test_the_record_counts_each_precision_as_written(exported, width_96):
    """Tensors and bytes per precision equal the IR's own weight constants; the fp16 export's are f16, not the f32
    they were before saving."""
    fp16 = exported("v2", "fp16")
    compression = read_manifest(fp16)["compression"]
    assert compression["label"] == "fp16" and compression["note"] is None
    language = compression["per_model"]["language"]
    matrices = [c for c in constants(fp16 / "language.xml") if c.get_output_partial_shape(0).rank.get_length() == 2]
    assert {c.get_output_element_type(0).get_type_name() for c in matrices} == {"f16"}
    assert language["weights"] == {"f16": {"tensors": len(matrices), "bytes": sum(c.get_byte_size() for c in matrices)}}
    assert len(matrices) == 7 * read_manifest(fp16)["model"]["num_hidden_layers"] + 1  # q k v o gate up down; head
    int4 = width_96[0].manifest["compression"]["per_model"]["language"]
    i4 = [c for c in constants(width_96[0].path / "language.xml")
          if c.get_output_element_type(0).get_type_name() == "i4"]
    assert int4["weights"]["i4"] == {"tensors": len(i4), "bytes": sum(c.get_byte_size() for c in i4)}
    assert int4["int8_layers"] == ["lm.lm_head"]  # the head NNCF keeps in int8, all else int4 at ratio 1


@pytest.fixture(scope="module")
def asymmetric(checkpoint, cache_dir):
    return export_model(checkpoint("v2"), "int4-g64-r1", cache_dir=cache_dir)


def test_our_operations_asked_for_an_asymmetric_export_say_why_openvinos_run(asymmetric):
    assert asymmetric.manifest["compression"]["label"] == "int4-g64-r1"  # as asked: no note
    assert asymmetric.manifest["compression"]["note"] is None
    assert asymmetric.manifest["compression"]["per_model"]["language"]["int4"]["sym"] is False
    engine = Engine(asymmetric.path, ops="on")
    why = ops.run_why("on", "CPU", "auto")
    if why:  # a CPU without AVX2: nothing of ours runs anywhere
        pytest.skip(why)
    assert engine.ops is None and engine.ops_why == "asymmetric int4"
    assert engine.name.endswith("asymmetric int4)"), engine.name
    assert ("our int8 vision operations" in engine.name) == engine.vision_ops
    picture = "ours for the picture, OpenVINO's for the text" if engine.vision_ops else "OpenVINO's"
    assert ops.plan(asymmetric.manifest, "on") == f"{picture} (asymmetric int4)"


def test_the_listing_names_the_operations_and_counts_their_copy_apart(exported, cache_dir, asymmetric):
    folder, int8 = exported("v2", "int4"), exported("v2", "int8")
    Engine(folder, ops="on")  # writes our operations' copy beside the export, when they build here
    rows = {row[0]: row for row in cached_exports(cache_dir)}
    assert LISTING_COLUMNS[3] == "operations here"
    symmetric = rows[folder.name]
    assert symmetric[3] == ops.plan(read_manifest(folder))
    # The language models OpenVINO's (asymmetric int4, int8); the picture ours where the vision copy runs.
    for export in (asymmetric.path, int8):
        picture = "ours for the picture, OpenVINO's for the text (" if Engine(export).vision_ops else "OpenVINO's ("
        assert rows[export.name][3].startswith(picture), (export.name, rows[export.name])
    copy = [f for f in folder.iterdir() if f.name.startswith(("language.int4-v", "vision.int8-v"))]
    own = sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f not in copy)
    assert symmetric[4].startswith(f"{own / 1e6:.1f} MB")
    if copy:
        copied = sum(f.stat().st_size for f in copy)
        assert symmetric[4] == f"{own / 1e6:.1f} MB + {copied / 1e6:.1f} MB operations copy"


def test_a_manifest_written_before_the_record_still_plans(exported):
    manifest = read_manifest(exported("v2", "int4"))
    old = {**manifest, "compression": {k: v for k, v in manifest["compression"].items() if k != "per_model"}}
    assert ops.export_why(old) == ""  # symmetric, as asked then
    assert ops.export_why(replace_sym(old, False)) == "asymmetric int4"
    assert ops.export_why({"compression": {"mode": "fp16"}}) == "fp16 export: no compressed weights for ours"


def replace_sym(manifest: dict, sym: bool) -> dict:
    return {**manifest, "compression": {**manifest["compression"], "sym": sym}}


def test_a_choice_names_the_operations_it_runs(tmp_path):
    plain = ops.Choice(tmp_path / "vision.xml", tmp_path / "language.xml", "ops off")
    assert plain.ours == []
    ours = replace(plain, language=tmp_path / "language.int4-v9.xml", why="")
    assert ours.ours == ["int4"]
    assert replace(ours, vision=tmp_path / "vision.int8-v9.xml").ours == ["int4", "int8 vision"]


def test_the_note_reaches_the_terminal_the_magic_and_the_panel(width_96, magic_shell, cache_dir, capsys):
    from mvlm_magic.widgets import LoadPanel
    from test_cli import mvlm

    checkpoint = width_96[2]
    made = mvlm("export", checkpoint, "--compression", "int4-sym-g64-r1", "--cache-dir", cache_dir)
    notes = [line for line in made.stderr.splitlines() if line.startswith("[note]")]
    assert made.returncode == 0 and notes == ["[note] int4-sym-g64-r1 asked; 12 of 14 int4 layers use group 32 "
                                              "(input size 96 is not a multiple of 64): written as int4-sym-g64/32-r1"]
    capsys.readouterr()
    magic_shell.run_line_magic("mvlm_load", f"{checkpoint} --compression int4-g64 --precision f32")  # asymmetric
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("[note]")] == [
        "[note] int4-g64-r1 asked; 12 of 14 int4 layers use group 32 (input size 96 is not a multiple of 64): "
        "written as int4-g64/32-r1"], out
    assert "[int4-g64/32-r1] on CPU with OpenVINO's operations is ready" in out

    def loader(model, progress, **options):  # plumbing: the panel's side of a real export's note
        progress("note", None, "int4 asked; 1 of 2 use group 64")
        raise RuntimeError("stop here")

    panel = LoadPanel(loader, models=[], default_model="m", devices=["CPU"])
    panel.load(blocking=False).wait(30)
    assert "int4 asked; 1 of 2 use group 64" in panel.note.value and "stop here" in panel.error.value
