"""Ours or OpenVINO's on a kind of CPU never measured: the choice logic on recorded timings, remembered per CPU,
and a real first load that times both paths of a real export once."""

from __future__ import annotations

import json

import pytest

from mvlm_magic import ops
from mvlm_magic.ops import cpu, measured
from mvlm_magic.store import read_manifest

# Two timing records (seconds, one 64-token prompt chunk and one decode step): one where ours win both, as on the
# CPUs of docs/benchmarks.md, and one where OpenVINO's matrix units win the prompt by more than ours win decoding,
# as they might on an AMX part (illustrative figures, not a measurement).
ZEN4 = {"openvino": {"prompt_s": 0.92, "step_s": 0.052}, "ours": {"prompt_s": 0.61, "step_s": 0.036}}
AMX = {"openvino": {"prompt_s": 0.20, "step_s": 0.040}, "ours": {"prompt_s": 0.90, "step_s": 0.030}}


def test_the_faster_path_for_one_answer_is_kept():
    assert measured.decide(ZEN4) is True
    assert measured.decide(AMX) is False  # 0.90 + 32 x 0.030 = 1.86 s against 0.20 + 32 x 0.040 = 1.48 s
    slow_prompt = {"openvino": {"prompt_s": 0.50, "step_s": 0.050}, "ours": {"prompt_s": 0.60, "step_s": 0.040}}
    assert measured.decide(slow_prompt) is True  # a slower prompt chunk, paid back within one answer


def test_a_choice_is_remembered_per_cpu_and_library(tmp_path, monkeypatch):
    monkeypatch.setattr(measured, "choices_file", lambda: tmp_path / "ops" / "choices.json")
    assert measured.remembered("cpu A") is None
    measured.remember("cpu A", True, ZEN4)
    measured.remember("cpu B", False, AMX)
    assert measured.remembered("cpu A") == {"ours": True, "timings": ZEN4}
    assert measured.remembered("cpu B")["ours"] is False
    assert "OpenVINO " in measured.cpu_key() and f"copies v{ops.copies.FORMAT}" in measured.cpu_key()
    (tmp_path / "ops" / "choices.json").write_text("{not json")
    assert measured.remembered("cpu A") is None  # a damaged file: timed again, never a crash
    measured.remember("cpu A", False, AMX)
    assert json.loads((tmp_path / "ops" / "choices.json").read_text())["cpu A"]["ours"] is False


def test_a_first_load_on_an_unmeasured_cpu_times_both_paths_once(exported, cache_dir, tmp_path, monkeypatch):
    if ops.run_why("on", "CPU", "auto"):
        pytest.skip("our operations cannot run on this CPU")
    folder = exported("v2", "int4")
    monkeypatch.setattr(measured, "choices_file", lambda: tmp_path / "choices.json")
    monkeypatch.setattr(cpu, "helps_here", lambda: None)  # as on an AVX-VNNI or AMX part
    assert ops.plan(read_manifest(folder)) == "ours or OpenVINO's: timed at first load"
    timed = []
    real = measured.time_language_model
    monkeypatch.setattr(measured, "time_language_model", lambda xml: timed.append(xml.name) or real(xml))
    choice = ops.select(folder, "auto", cache_dir=cache_dir)
    assert timed == ["language.xml", f"language.int4-v{ops.copies.FORMAT}.xml"]  # both paths, real IRs
    found = measured.remembered()
    for path in ("openvino", "ours"):  # (which of the two is longer on the tiny model is the machine's load's say)
        assert found["timings"][path]["step_s"] > 0 and found["timings"][path]["prompt_s"] > 0
    assert ("int4" in choice.ours) == found["ours"] == measured.decide(found["timings"])
    assert ops.plan(read_manifest(folder)) == ("ours" if found["ours"] else "OpenVINO's (timed faster on this CPU)")
    again = ops.select(folder, "auto", cache_dir=cache_dir)
    assert again == choice and len(timed) == 2  # remembered: not timed again
    measured.remember(measured.cpu_key(), False, AMX)
    slower = ops.select(folder, "auto", cache_dir=cache_dir)
    assert slower.ours == [] and slower.why == "OpenVINO's timed faster on this CPU"
    assert "int4" in ops.select(folder, "on", cache_dir=cache_dir).ours  # "on" still forces ours
