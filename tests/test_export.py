"""Export: three IRs with named ports, a stateful language model, NNCF compression, an atomic cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import openvino as ov
import pytest

from mvlm_magic.errors import MvlmError
from mvlm_magic.export import INT4_PRESET, Compression, export_model
from mvlm_magic.loader import load_engine
from mvlm_magic.store import EXPORT_FORMAT, TMP_PREFIX, delete_export, list_exports


def test_export_writes_three_irs_with_named_ports(exported):
    folder = exported("v2", "fp32")
    core = ov.Core()
    vision = core.read_model(folder / "vision.xml")
    assert vision.input(0).get_any_name() == "pixel_values"
    assert list(vision.output(0).get_partial_shape().to_shape()) == [1, 144, 64]
    embeddings = core.read_model(folder / "text_embeddings.xml")
    assert embeddings.input(0).get_any_name() == "input_ids"
    language = core.read_model(folder / "language.xml")
    assert {p.get_any_name() for p in language.inputs} == {"inputs_embeds", "attention_mask", "position_ids",
                                                           "beam_idx"}
    assert [p.get_any_name() for p in language.outputs] == ["logits"]
    assert len(language.get_sinks()) == 2 * 2  # key and value state for each of the 2 layers: KV lives in state
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"]["num_image_tokens"] == 144 and manifest["model"]["version"] == "v2"
    assert manifest["format"] == EXPORT_FORMAT == 2
    assert manifest["compression"]["mode"] == "fp32" and manifest["versions"]["openvino"].startswith("2026.4")
    for name in ("tokenizer.model", "tokenizer_config.json"):
        assert (folder / name).is_file()


def test_state_reads_go_through_beam_idx_so_attention_fuses(exported):
    """Every KV state is read through Gather(beam_idx): the pattern OpenVINO's CPU plugin fuses into its
    stateful attention (decomposed attention copies the whole cache for every decoded token)."""
    language = ov.Core().read_model(exported("v2", "fp32") / "language.xml")
    reads = [op for op in language.get_ordered_ops() if op.get_type_name() == "ReadValue"]
    assert len(reads) == 2 * 2
    for read in reads:
        (consumer,) = [t.get_node() for t in read.output(0).get_target_inputs()]
        assert consumer.get_type_name() == "Gather"
        assert consumer.input(1).get_source_output().get_node().get_friendly_name() == "beam_idx"


def test_logits_come_from_the_last_position_only(engine, picture):
    eng = engine("v2", "fp32", "f32")
    ids = eng.new_chat(picture).prompt_ids("What is this?")
    logits = eng.prompt_logits(ids, eng.encode_image(picture))
    assert logits.shape == (eng.manifest["model"]["vocab_size"],)
    assert eng.kv.request.get_tensor("logits").shape[1] == 1


def test_second_export_of_the_same_key_is_the_cache(checkpoint, exported, cache_dir):
    first = exported("v2", "fp32")
    stages = []
    again = export_model(checkpoint("v2"), "fp32", cache_dir=cache_dir, progress=lambda s, f, m: stages.append(s))
    assert again.path == first and "convert" not in stages and "load" not in stages


@pytest.mark.parametrize("compression", ["int8", "int4"])
def test_compressed_exports_are_smaller_and_say_what_they_did(exported, compression):
    fp32 = exported("v1", "fp32")
    small = exported("v1", compression)
    assert (small / "language.bin").stat().st_size < 0.5 * (fp32 / "language.bin").stat().st_size
    manifest = json.loads((small / "manifest.json").read_text())
    weights = manifest["compression"]["per_model"]["language"]["weights"]
    assert "u8" in weights or "i8" in weights
    if compression == "int4":
        assert "i4" in weights  # symmetric int4 in groups of 64, the most sensitive layers int8
        assert manifest["compression"]["requested"] == "int4-sym-g64-r0.9"
        # what was written (test_manifest.py): whole layers of a 2-layer model come no closer to 90 % than 85 %
        assert manifest["compression"]["label"] == "int4-sym-g64-r0.85"


def test_compression_options_are_checked():
    with pytest.raises(MvlmError, match="unknown compression 'int3'"):
        Compression.parse("int3")
    with pytest.raises(MvlmError, match="ratio must be in"):
        Compression.parse("int4", ratio=1.5)
    assert Compression.parse("int4", 64, 1.0).label == "int4-sym-g64-r1"
    with pytest.raises(MvlmError, match="cannot read compression 'int4-x9'"):
        Compression.parse("int4-x9")
    with pytest.raises(MvlmError, match="only int4 takes options"):
        Compression.parse("int8-sym")


def test_compression_labels_round_trip():
    for label in ("int4-g128-r0.8", "int4-sym-g128-r1", "int4-sym-g64-r0.9", "int4-g-1-r1", "int8", "fp16"):
        assert Compression.parse(label).label == label
    assert Compression.parse("int4") == Compression.parse(INT4_PRESET) == Compression("int4", 64, 0.9, True)
    assert Compression.parse("int4-sym") == Compression("int4", 128, 1.0, True)
    assert Compression.parse("int4-g64").label == "int4-g64-r1"  # a label's missing parts: asym, ratio 1
    assert Compression.parse("int4-sym-g64", group_size=32).label == "int4-sym-g32-r1"  # arguments win



IMPORT_EXPORT_MODULES = textwrap.dedent("""
    import sys
    import mvlm_magic.export.compress
    from mvlm_magic.export.compress import Compression
    Compression.parse("int4")  # what the loader, the magics and the CLI do
    compress_only = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "nncf"))
    import mvlm_magic.export, mvlm_magic.export.convert, mvlm_magic.export.manifest
    everything = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "nncf"))
    print("heavy:", compress_only, everything)
""")


def test_importing_the_exporter_imports_no_torch_nncf_or_transformers():
    """The runtime parses compression labels with export.compress: torch, transformers and NNCF load only when an
    export runs."""
    out = subprocess.run([sys.executable, "-c", IMPORT_EXPORT_MODULES], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "heavy: [] []" in out.stdout, out.stdout
    import mvlm_magic.export.compress as compress_module  # the package attribute is the module, not the function

    assert compress_module.Compression is Compression


def test_list_and_delete_cached_exports(checkpoint, tmp_path):
    cache = tmp_path / "cache"
    made = export_model(checkpoint("v2"), "fp16", cache_dir=cache)
    listed = list_exports(cache)
    assert [e.key for e in listed] == [made.key] and listed[0].size_bytes > 0
    assert made.key in str(listed[0])
    delete_export(made.key, cache)
    assert list_exports(cache) == []
    with pytest.raises(MvlmError, match="no cached export"):
        delete_export(made.key, cache)


KILLED_EXPORT = textwrap.dedent("""
    import os, signal, sys
    from mvlm_magic.export import export_model

    def progress(stage, fraction, message):
        if message.startswith("saving language"):
            os.kill(os.getpid(), signal.SIGKILL)  # die with two IRs already written

    export_model(sys.argv[1], "fp16", cache_dir=sys.argv[2], progress=progress)
""")


def test_an_export_killed_midway_leaves_nothing_that_loads(checkpoint, tmp_path, picture):
    model = shutil.copytree(checkpoint("v2"), tmp_path / "model")
    cache = tmp_path / "cache"
    run = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(model), str(cache)], capture_output=True)
    assert run.returncode == -9
    leftovers = list(cache.iterdir())
    assert leftovers and all(p.name.startswith(TMP_PREFIX) for p in leftovers)
    assert list_exports(cache) == []

    stages = []
    engine = load_engine(model, "fp16", cache_dir=cache, progress=lambda s, f, m: stages.append(s))
    assert "convert" in stages and not engine.was_cached
    assert [p.name for p in cache.iterdir()] == [list_exports(cache)[0].key]  # the stale temp folder is gone
    answer = engine.ask(picture, "What is in the picture?", max_new_tokens=4)
    assert answer.timings.new_tokens >= 1


# --- a broken checkpoint is refused before anything is converted --------------------------------------------


def edit_config(**changes):
    def edit(folder):
        config = json.loads((folder / "config.json").read_text())
        for key, value in changes.items():
            if key.startswith("vision_"):
                config["vision_config"][key[len("vision_"):]] = value
            else:
                config[key] = value
        (folder / "config.json").write_text(json.dumps(config))
    return edit


def reshape_a_weight(folder):
    import torch

    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["model.layers.1.mlp.down_proj.weight"] = state["model.layers.1.mlp.down_proj.weight"][:, :-1].clone()
    torch.save(state, folder / "pytorch_model.bin")


# damage -> what the one line names
BROKEN_CHECKPOINTS = {
    "no tokenizer.model": (lambda folder: (folder / "tokenizer.model").unlink(), "tokenizer.model"),
    "garbage tokenizer.model": (lambda folder: (folder / "tokenizer.model").write_bytes(b"\x00garbage" * 64),
                                "not a SentencePiece model"),
    "tokenizer_config.json not JSON": (lambda folder: (folder / "tokenizer_config.json").write_text("{legacy: no"),
                                       "tokenizer_config.json is not valid JSON"),
    "tokenizer_config.json a list": (lambda folder: (folder / "tokenizer_config.json").write_text("[1, 2]"),
                                     "tokenizer_config.json is not a JSON object"),
    "hidden_size a string": (edit_config(hidden_size="64"), "'hidden_size' must be a positive integer, not '64'"),
    "hidden_size negative": (edit_config(hidden_size=-64), "'hidden_size' must be a positive integer, not -64"),
    "heads do not divide the width": (edit_config(num_attention_heads=5), "num_attention_heads (5)"),
    "rms_norm_eps a string": (edit_config(rms_norm_eps="small"), "'rms_norm_eps' must be a positive number"),
    "context length a string": (edit_config(max_sequence_length="long"), "'max_sequence_length'"),
    "image size not a multiple of the patch": (edit_config(vision_image_size=330), "image_size (330)"),
    "vocabulary smaller than the tokenizer's": (edit_config(vocab_size=100), "vocab_size (100)"),
    "a weight of the wrong shape": (reshape_a_weight, "model.layers.1.mlp.down_proj.weight"),
}


@pytest.mark.parametrize("damage", BROKEN_CHECKPOINTS)
def test_a_broken_checkpoint_is_refused_before_anything_is_converted(checkpoint, tmp_path, damage):
    break_it, named = BROKEN_CHECKPOINTS[damage]
    model = shutil.copytree(checkpoint("v2"), tmp_path / "model")
    break_it(model)
    cache, stages = tmp_path / "cache", []
    with pytest.raises(MvlmError) as err:
        export_model(model, "fp32", cache_dir=cache, progress=lambda stage, fraction, message: stages.append(stage))
    message = str(err.value)
    assert named in message and "\n" not in message and len(message) < 300, message
    assert not {"convert", "compress", "save"} & set(stages), stages  # found before any conversion
    assert not cache.exists() or not any(cache.iterdir())  # no export, no temp folder


# --- 16-bit exports trace the checkpoint's own (mapped) weights: every stored format, the same answers ---------------


def test_the_mapped_model_holds_the_checkpoints_own_pages(checkpoint):
    """MobileVLM.mapped copies no weight: each Linear weight is a bf16 view of the memory-mapped weight file."""
    import torch

    from mvlm_magic.model.checkpoint import read_state_dict, weight_files
    from mvlm_magic.model.mobilevlm import MobileVLM
    from mvlm_magic.runtime.memory import mapped_ranges

    folder = checkpoint("v2")
    model = MobileVLM.mapped(folder)
    ranges = mapped_ranges(weight_files(folder))
    assert ranges
    weight = model.language_model.model.layers[1].mlp.down_proj.weight
    assert weight.dtype == torch.bfloat16 and not weight.is_meta
    assert any(start <= weight.data_ptr() < end for start, end in ranges)
    assert torch.equal(weight, read_state_dict(folder)["model.layers.1.mlp.down_proj.weight"])
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())


@pytest.mark.parametrize("weights_format", ["safetensors", "sharded-bin"])
def test_16bit_exports_of_each_stored_format_answer_as_the_torch_reference(tmp_path, torch_model, weights_format):
    """bf16 weights stored as the real checkpoints are (one safetensors file; pytorch_model-0000k-of-0000n.bin shards
    with their index), exported fp16 from the mapped tensors: the same greedy tokens as the fp32 torch reference."""
    from conftest import shapes_picture
    from mvlm_magic.model.tiny import build_tiny_checkpoint
    from mvlm_magic.runtime.engine import Engine
    from test_fidelity import NEW_TOKENS, reference_tokens

    folder = build_tiny_checkpoint(tmp_path / weights_format, projector_type="ldpnetv2", seed=7,
                                   weights_format=weights_format)
    export = export_model(folder, "fp16", cache_dir=tmp_path / "cache")
    assert export.manifest["compression"]["per_model"]["language"]["weights"].get("bf16") is None  # stored as f16
    engine = Engine(export.path, precision="f32")
    for seed in (1, 2):
        image = shapes_picture(seed=seed)
        answer = engine.new_chat(image).ask("What colour is the circle?", max_new_tokens=NEW_TOKENS).result()
        assert answer.token_ids == reference_tokens(torch_model("v2"), engine.tokenizer, image,
                                                    [("What colour is the circle?", None)])


def test_an_export_that_cannot_fit_is_refused_before_anything_heavy(checkpoint, tmp_path, monkeypatch):
    from mvlm_magic.export import budget

    monkeypatch.setattr(budget, "available_memory", lambda: 0.2e9)
    stages, cache = [], tmp_path / "cache"
    with pytest.raises(MvlmError) as err:
        export_model(checkpoint("v2"), "int8", cache_dir=cache, progress=lambda s, f, m: stages.append(m))
    message = str(err.value)
    assert message.startswith("this export needs about") and "0.2 GB of memory available" in message, message
    assert "\n" not in message and "close other programs" in message
    assert not [m for m in stages if m.startswith("converting")] and not any(cache.iterdir())
    assert budget.estimate(checkpoint("v2"), "int4", tmp_path).memory < 2e9  # the tiny model's estimate is the base


RUNTIME_ONLY = textwrap.dedent("""
    import sys
    class NoHeavyImports:  # a runtime-only install: torch, transformers and NNCF are not there
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "nncf"):
                raise ImportError(f"No module named {name!r}")
    sys.meta_path.insert(0, NoHeavyImports())
    from mvlm_magic.loader import load_engine
    engine = load_engine(sys.argv[1])
    answer = engine.ask(sys.argv[2], "What is in the picture?", max_new_tokens=4)
    print("tokens:", answer.timings.new_tokens, "cached:", engine.was_cached)
""")


def test_mvlm_export_out_writes_a_folder_a_runtime_only_install_answers_from(checkpoint, tmp_path, picture):
    import os
    import stat

    from mvlm_magic.cli import main

    out = tmp_path / "class" / "tiny-model"
    out.parent.mkdir()
    assert main(["export", str(checkpoint("v2")), "--compression", "fp16", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out)]) == 0
    assert main(["export", str(checkpoint("v2")), "--compression", "fp16", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out)]) == 2  # an existing folder is not overwritten
    for path in [*out.iterdir(), out]:  # read-only media
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    picture_path = tmp_path / "p.png"
    picture.save(picture_path)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "home-cache"), "MVLM_CACHE": str(tmp_path / "empty")}
    try:
        run = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, str(out), str(picture_path)], capture_output=True,
                             text=True, timeout=180, env=env)
    finally:
        out.chmod(0o755)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "tokens: 4 cached: True" in run.stdout, run.stdout


def test_compression_reports_each_weight_as_it_goes(checkpoint, capsys):
    """The language model's compression takes minutes on a real checkpoint: it reports as it goes, on stdout too."""
    from mvlm_magic.export.compress import compress
    from mvlm_magic.export.convert import convert_language_model, sixteen_bit
    from mvlm_magic.model.mobilevlm import MobileVLM

    vlm = MobileVLM.mapped(checkpoint("v2"))
    with sixteen_bit(vlm):
        ov_model = convert_language_model(vlm)
    compress(ov_model, "language", Compression.parse("int4"), on_weight=lambda done, total: print(done, total))
    seen = [tuple(map(int, line.split())) for line in capsys.readouterr().out.splitlines()]
    assert len(seen) == 2 * 7 + 1  # q, k, v, o, gate, up, down of 2 layers, and the head
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] == seen[-1][1]
