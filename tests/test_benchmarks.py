"""A tiny-shape smoke run of the benchmark script: every step runs and the report is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The scripts' shared folder, as on a benchmark machine: the tiny checkpoint, and each of its exports made
    once (~25 s each in a fresh process), by the first smoke run that asks for it."""
    return tmp_path_factory.mktemp("bench-work")


def test_benchmark_smoke_run(tmp_path, work):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(RUN), "--tiny", "--rounds", "1", "--new-tokens", "8",
                          "--compressions", "int8", "int4-sym-g32-r1", "--skip-llamacpp",
                          "--variant", "int8 KV_CACHE_PRECISION=f32", "--work", str(work),
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((out / "benchmarks.json").read_text())
    assert {"ours int8", "ours int4-sym-g32-r1", "ours int8 KV_CACHE_PRECISION=f32", "notebook design INT4",
            "torch fp32"} <= set(report["medians"])  # + genai where installed
    for row in report["medians"].values():
        assert row["decode_tps"] > 0 and row["ttft_ms"] > 0 and row["peak_rss_mb"] > 0
    assert report["exports"]["int8"]["seconds"] > 0 and not report["exports"]["int8"]["cached"]  # (the first run)
    for name in ("ours int8", "ours int4-sym-g32-r1"):  # the first token once the picture was prepared, and after
        assert report["medians"][name]["warm_ttft_ms"] > 0 and report["medians"][name]["follow_up_ttft_ms"] > 0
        assert report["medians"][name]["warm_prefill_tokens"] < 144  # the question, not the picture
    assert "| ours int8 |" in (out / "benchmarks.md").read_text()
    assert "warm first token ms" in (out / "benchmarks.md").read_text()
    assert (out / "benchmarks.png").stat().st_size > 1000


def test_many_pictures_smoke_run(tmp_path, work):
    script = RUN.parent / "many_pictures.py"
    run = subprocess.run([sys.executable, str(script), "--tiny", "--n", "1", "3", "--new-tokens", "4",
                          "--compression", "int8", "--work", str(work), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "many_pictures.json").read_text())
    assert [row["n"] for row in report["rows"]] == [1, 3]
    assert all(row["single_s"] > 0 and row["many_s"] > 0 for row in report["rows"]) and "family" in report["cpu"]


def test_serve_load_smoke_run(tmp_path, work):
    script = RUN.parent / "serve_load.py"
    run = subprocess.run([sys.executable, str(script), "--tiny", "--clients", "3", "--new-tokens", "6",
                          "--compression", "int8", "--work", str(work), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "serve_load.json").read_text())
    assert report["alone"]["clients"] == 1 and report["together"]["clients"] == 3
    assert report["together"]["failed"] == 0 and report["together"]["tokens"] > 0, report
    assert report["ratios"]["tokens_per_s"] > 0 and "family" in report["cpu"]


def test_quality_smoke_run(tmp_path):
    """benchmarks/quality.py's every step on the tiny checkpoint; its fp32 export, teacher-forced one token at a
    time through the runtime, chooses what the torch reference chooses at every position."""
    out = tmp_path / "quality.json"
    run = subprocess.run([sys.executable, str(RUN.parent / "quality.py"), "--tiny", "--presets", "fp32", "int8",
                          "--no-llamacpp", "--precision", "f32", "--work", str(tmp_path / "work"), "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {row["format"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["fp32 (OpenVINO)"]["top1_agreement"] == 1.0 and rows["fp32 (OpenVINO)"]["mean_kl"] < 1e-4
    assert rows["int8 (OpenVINO)"]["positions"] == 4 * 47 and 0 < rows["int8 (OpenVINO)"]["perplexity"]
    assert rows["int8 (OpenVINO)"]["bits_per_weight"] > 8  # the weights and their scales


def test_profile_step_smoke_run(exported):
    """benchmarks/profile_step.py on the tiny int4 export: its batched steps run and, where `perf` can sample,
    the samples are summed by what ran."""
    script = RUN.parent / "profile_step.py"
    run = subprocess.run([sys.executable, str(script), "--export", str(exported("v2", "int4")), "--rows", "2",
                          "--context", "8", "--seconds", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "2 row(s), context 8-" in run.stdout and "family" in run.stdout
    assert "step times only" in run.stdout or "ms of thread time a step" in run.stdout, run.stdout
