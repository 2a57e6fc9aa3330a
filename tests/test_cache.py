"""The export cache under faults: deletes stay inside it, concurrent exports keep what was published, damaged
exports are found and made again, an unwritable cache is said at once (docs/cache.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mvlm_magic import store
from mvlm_magic.cli import main as mvlm_main
from mvlm_magic.errors import MvlmError
from mvlm_magic.loader import load_engine
from mvlm_magic.notebook.load import list_cache
from mvlm_magic.runtime.engine import Engine
from mvlm_magic.store import MANIFEST, delete_export, list_exports

MVLM = str(Path(sys.executable).with_name("mvlm"))


def one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, message
    return message


@pytest.fixture
def cached_copy(exported, tmp_path):
    """A copy of the session's v2 fp32 export in a fresh cache, under its own key (safe to damage)."""
    original = exported("v2", "fp32")
    return shutil.copytree(original, tmp_path / "cache" / original.name)


# --- point 3: delete only exports inside the cache, by key ------------------------------------------------------


def test_delete_never_leaves_the_cache(cached_copy, tmp_path):
    cache = cached_copy.parent
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / MANIFEST).write_text(json.dumps({"model_id": "mine"}))
    (cache / "sub").mkdir()
    (cache / "sub" / "deeper").mkdir()
    (cache / "sub" / "deeper" / MANIFEST).write_text("{}")

    run = subprocess.run([MVLM, "delete", str(outside), "--cache-dir", str(cache)], capture_output=True, text=True)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "no cached export" in run.stderr and cached_copy.name in run.stderr  # the keys one can delete
    for target in (outside, f"../{outside.name}", "sub/deeper", "..", ".", ""):
        with pytest.raises(MvlmError, match="no cached export"):
            delete_export(target, cache)
    assert (outside / MANIFEST).is_file() and (cache / "sub" / "deeper" / MANIFEST).is_file()
    assert cached_copy.is_dir()
    assert delete_export(cached_copy.name, cache) == cached_copy and not cached_copy.exists()


# --- point 4: two exports of the same model at once ---------------------------------------------------------------

EXPORT = textwrap.dedent("""
    import sys
    from mvlm_magic.export import export_model
    print(export_model(sys.argv[1], "fp32", cache_dir=sys.argv[2]).path)
""")


def test_two_exports_at_once_keep_the_published_export_whole(checkpoint, tmp_path):
    model, cache = checkpoint("v2"), tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runs = [subprocess.Popen([sys.executable, "-c", EXPORT, str(model), str(cache)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    first_seen, reads, missing = None, 0, []
    while any(run.poll() is None for run in runs):
        exports = list_exports(cache) if cache.is_dir() else []
        if exports:
            folder = exports[0].path
            first_seen = first_seen or os.stat(folder).st_ino
            try:  # a reader: the export it found is whole, every file it lists is there
                for name in exports[0].manifest["files"].values():
                    (folder / name).read_bytes()
                    (folder / name).with_suffix(".bin").read_bytes()
                reads += 1
            except OSError as error:
                missing.append(str(error))
        time.sleep(0.01)
    outputs = [run.communicate() for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert first_seen and reads and missing == []
    (final,) = list_exports(cache)
    assert {out.strip() for out, _ in outputs} == {str(final.path)}
    assert os.stat(final.path).st_ino == first_seen  # the export first published was never replaced
    store.verify_export(final.path)
    assert Engine(final.path, precision="f32").ask(None, "Hi?", max_new_tokens=2).timings.new_tokens >= 1


# --- point 5: damaged exports -----------------------------------------------------------------------------------


def test_a_damaged_export_is_one_line_and_is_exported_again(cached_copy, checkpoint, picture):
    with open(cached_copy / "language.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(MvlmError) as caught:
        Engine(cached_copy, precision="f32")
    assert "language.bin" in one_line(caught.value) and "damaged" in str(caught.value)

    messages = []
    engine = load_engine(checkpoint("v2"), "fp32", precision="f32", cache_dir=cached_copy.parent,
                         progress=lambda stage, fraction, message: messages.append((stage, message)))
    assert not engine.was_cached and any("damaged" in message for _, message in messages), messages
    assert engine.folder == cached_copy and store.verify_export(cached_copy)["model_id"]
    assert engine.ask(picture, "What is this?", max_new_tokens=3).timings.new_tokens >= 1


def test_a_damaged_export_whose_source_is_gone_says_how_to_delete_it(cached_copy):
    (cached_copy / "tokenizer.model").write_bytes(b"not a tokenizer")
    with pytest.raises(MvlmError) as caught:
        load_engine(cached_copy, "fp32", precision="f32")
    assert "tokenizer.model" in one_line(caught.value) and f"mvlm delete {cached_copy.name}" in str(caught.value)


def test_a_manifest_missing_fields_is_listed_as_damaged(cached_copy, capsys):
    manifest = json.loads((cached_copy / MANIFEST).read_text())
    del manifest["compression"]
    (cached_copy / MANIFEST).write_text(json.dumps(manifest))
    odd = cached_copy.parent / "odd"
    odd.mkdir()
    (odd / MANIFEST).write_text("[1, 2]")

    (listed,) = [e for e in list_exports(cached_copy.parent) if e.key == cached_copy.name]
    assert "compression" in listed.problem and "damaged" in str(listed)
    assert mvlm_main(["list", "--cache-dir", str(cached_copy.parent)]) == 0
    list_cache(str(cached_copy.parent))
    out = capsys.readouterr().out
    assert out.count("damaged") == 4 and cached_copy.name in out and "odd" in out  # two lines each
    with pytest.raises(MvlmError) as caught:
        Engine(cached_copy)
    assert "compression" in one_line(caught.value)
    assert delete_export("odd", cached_copy.parent) == odd  # what is listed can be deleted


# --- point 9: an unwritable cache ---------------------------------------------------------------------------------


def test_an_unwritable_cache_is_one_line_before_any_work(checkpoint, tmp_path):
    # We run as root, where chmod 0o555 stops no write; a cache folder under a regular file can be created by no
    # one, root included, so it is the unwritable cache here (the check tries a real write, not os.access).
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    stages, started = [], time.perf_counter()
    with pytest.raises(MvlmError) as caught:
        load_engine(checkpoint("v2"), "fp32", cache_dir=blocker / "cache",
                    progress=lambda stage, fraction, message: stages.append(stage))
    assert "not writable" in one_line(caught.value) and str(blocker / "cache") in str(caught.value)
    assert time.perf_counter() - started < 5 and not {"load", "convert"} & set(stages), stages
    assert blocker.read_text() == ""
