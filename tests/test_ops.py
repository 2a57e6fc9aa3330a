"""Our OpenVINO operations (mvlm_magic.ops): exact against their definitions, found in real exports,
used by the engine, and answers as good as OpenVINO's own int4 path."""

from __future__ import annotations

import ctypes
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import replace
from xml.etree import ElementTree

import numpy as np
import openvino as ov
import pytest
from openvino import opset13

from mvlm_magic import ops
from mvlm_magic.errors import MvlmError
from mvlm_magic.ops import build, copies, cpu, fold, layout, nodes, patterns, rewrite
from mvlm_magic.runtime.device import core

pytestmark = pytest.mark.skipif(not cpu.NEEDED_FLAGS <= cpu.cpu_flags(), reason="needs an AVX2 CPU")


def nncf_int4_weight(n: int, k: int, group: int, rng) -> tuple[ov.Output, np.ndarray, np.ndarray]:
    """W (N, K) in NNCF's symmetric int4 layout: i4 constant -> f16 -> * scale -> (N, K) -> f32, with its int4 values
    and scales. group == k gives NNCF's one-scale-per-row form (no Reshape)."""
    q = rng.integers(-8, 8, (n, k)).astype(np.int8)
    scales = (rng.random((n, k // group)) * 0.05 + 0.001).astype(np.float16)
    if group == k:
        unscaled = opset13.convert(opset13.constant(q, ov.Type.i4), ov.Type.f16)
        weight = opset13.multiply(unscaled, opset13.constant(scales))
    else:
        grouped = opset13.convert(opset13.constant(q.reshape(n, k // group, group), ov.Type.i4), ov.Type.f16)
        weight = opset13.reshape(opset13.multiply(grouped, opset13.constant(scales[:, :, None])), [n, k], False)
    return opset13.convert(weight, ov.Type.f32).output(0), q, scales.astype(np.float32)


def nncf_int4_model(n: int, k: int, group: int, rng) -> tuple[ov.Model, np.ndarray, np.ndarray]:
    """x (M, K) @ W.T with W in NNCF's symmetric int4 layout (nncf_int4_weight)."""
    x = opset13.parameter([-1, k], ov.Type.f32, name="x")
    weight, q, scales = nncf_int4_weight(n, k, group, rng)
    return ov.Model([opset13.matmul(x, weight, False, True)], [x]), q, scales


def nncf_int8_head(x, n: int, k: int, rng) -> tuple[ov.Output, np.ndarray, np.ndarray, np.ndarray]:
    """x @ W.T with W in NNCF's asymmetric per-row int8 layout (an int4 export's head)."""
    q = rng.integers(0, 256, (n, k)).astype(np.uint8)
    zero = rng.integers(100, 156, (n, 1)).astype(np.uint8)
    scale = (rng.random((n, 1)) * 0.01 + 0.001).astype(np.float16)
    centred = opset13.subtract(opset13.convert(opset13.constant(q), ov.Type.f16),
                               opset13.convert(opset13.constant(zero), ov.Type.f16))
    weight = opset13.convert(opset13.multiply(centred, opset13.constant(scale)), ov.Type.f32)
    return opset13.matmul(x, weight, False, True).output(0), q, zero, scale


def rounded_x(x: np.ndarray) -> np.ndarray:
    """x as the operations see it: rounded to int8 per block of 32, scale max|x| / 127."""
    m, k = x.shape
    blocks = x.reshape(m, k // 32, 32)
    amax = np.abs(blocks).max(-1, keepdims=True)
    inverse = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    return (np.rint(blocks * inverse) * (amax / np.float32(127))).reshape(m, k).astype(np.float64)


def by_definition(x: np.ndarray, q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    weights = q.astype(np.float64) * np.repeat(scales, q.shape[1] // scales.shape[1], axis=1)
    return rounded_x(x) @ weights.T


# K a multiple of 512 takes the AVX-512 prompt path (lane order), groups of 128 its one-token path
@pytest.mark.parametrize("n, k, group", [(70, 256, 128), (36, 128, 64), (9, 192, 192), (64, 384, 128),
                                         (21, 1024, 128), (9, 512, 64), (6, 1024, 1024)])
def test_int4_matmul_equals_its_definition(n, k, group, tmp_path):
    assert build.extension().library is not None, build.extension().why_not
    rng = np.random.default_rng(n + k)
    model, q, scales = nncf_int4_model(n, k, group, rng)
    plain = core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert rewrite.rewrite_int4_matmuls(model) == 1
    ov.save_model(model, tmp_path / "m.xml", compress_to_fp16=False)
    ours = core().compile_model(tmp_path / "m.xml", "CPU", {"INFERENCE_NUM_THREADS": 2})
    for m in (1, 5, 6, 7):  # one token (streamed weights); prompts, 4 rows at a time and then 1, 2 or 3
        x = rng.standard_normal((m, k)).astype(np.float32)
        x[0, :32] = 0  # an all-zero block
        y = ours(x)[0]
        assert y.shape == (m, n)
        scale = np.abs(y).max()
        np.testing.assert_allclose(y, by_definition(x, q, scales), atol=2e-5 * scale)
        assert np.abs(y - plain(x)[0]).max() < 0.02 * scale  # OpenVINO's own f32 path: int8 activations only


def test_a_layers_norm_gate_and_residual_sum_fold_into_the_operations(tmp_path):
    """fold.py: the RMS norm before gate and up, the SiLU gate before down and the residual sum after it, computed
    inside the operations, give what the graph's own nodes gave."""
    assert build.extension().library is not None, build.extension().why_not
    rng = np.random.default_rng(5)
    k, inner, eps = 256, 512, 1e-5
    h = opset13.parameter([1, -1, k], ov.Type.f32, name="h")
    gamma = (rng.random(k) + 0.5).astype(np.float32)
    mean = opset13.reduce_mean(opset13.power(h, opset13.constant(np.float32(2))), opset13.constant([-1]), True)
    root = opset13.sqrt(opset13.add(mean, opset13.constant(np.float32(eps))))
    normed = opset13.multiply(opset13.constant(gamma), opset13.multiply(h, opset13.divide(np.float32(1), root)))
    (wg, qg, sg), (wu, qu, su), (wd, qd, sd) = (nncf_int4_weight(n, m, 128, rng)
                                                for n, m in ((inner, k), (inner, k), (k, inner)))
    gate, up = (opset13.matmul(normed, w, False, True) for w in (wg, wu))
    down = opset13.matmul(opset13.multiply(opset13.swish(gate), up), wd, False, True)
    model = ov.Model([opset13.add(h, down)], [h])
    plain = core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    unfolded = model.clone()
    assert rewrite.rewrite_int4_matmuls(unfolded) == 3 and rewrite.rewrite_int4_matmuls(model) == 3
    assert fold.fold_neighbours(model) == 3  # the norm, the gate, the sum
    types = {op.get_type_name() for op in model.get_ordered_ops()}
    assert not {"Power", "Swish", "Multiply", "Add", "VariadicSplit"} & types
    compiled = []
    for name, graph in (("unfolded", unfolded), ("folded", model)):
        ov.save_model(graph, tmp_path / f"{name}.xml", compress_to_fp16=False)
        compiled.append(core().compile_model(tmp_path / f"{name}.xml", "CPU", {"INFERENCE_NUM_THREADS": 2}))
    for t in (1, 5):  # a token and a prompt
        x = (rng.standard_normal((1, t, k)) * 3).astype(np.float32)
        before, ours = (model(x)[0][0] for model in compiled)
        n = (x[0] * (1 / np.sqrt((x[0] ** 2).mean(-1, keepdims=True) + eps)) * gamma).astype(np.float32)
        g, u = by_definition(n, qg, sg), by_definition(n, qu, su)
        expected = x[0] + by_definition((g / (1 + np.exp(-g)) * u).astype(np.float32), qd, sd)
        scale = np.abs(expected - x[0]).max()  # of what the MatMuls add
        np.testing.assert_allclose(ours, expected, atol=2e-3 * scale)
        np.testing.assert_allclose(ours, before, atol=2e-3 * scale)
        assert np.abs(ours - plain(x)[0][0]).max() < 0.03 * scale  # OpenVINO's own f32 path


@pytest.mark.skipif(cpu.instruction_set() != "avx512", reason="the AVX2 build is the one the tests above run")
def test_the_avx2_build_passes_the_same_checks():
    """On an AVX-512 CPU the tests above run the AVX-512 build; the AVX2 one (CPUs without VNNI) in a process of
    its own, since one OpenVINO core cannot hold both."""
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "equals_its_definition or one_input or split_among_threads or asks_for or fold_into"],
                         env={**os.environ, "MVLM_OPS_ISA": "avx2"},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:]
    assert " passed" in run.stdout and " skipped" not in run.stdout


def test_the_operations_run_where_they_are_faster(monkeypatch):
    avx2 = {"avx2", "fma", "f16c"}
    avx512 = avx2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
    monkeypatch.delenv("MVLM_OPS_ISA", raising=False)
    monkeypatch.delenv("MVLM_KERNEL_ISA", raising=False)
    # (flags, build, used by "auto"): AVX-VNNI without AVX-512 (OpenVINO's int8 path) and AMX (OpenVINO's matrix
    # units) were never measured: None, timed at first load (test_measured.py)
    for flags, isa, helps in ((avx2, "avx2", True), (avx512, "avx512", True), (avx2 | {"avx_vnni"}, "avx2", None),
                              (avx512 | {"amx_int8"}, "avx512", None), ({"sse4_2"}, None, False)):
        monkeypatch.setattr(cpu, "cpu_flags", lambda flags=flags: set(flags))
        assert (cpu.instruction_set(), cpu.helps_here()) == (isa, helps), flags
    monkeypatch.setattr(cpu, "cpu_flags", lambda: avx512)
    monkeypatch.setenv("MVLM_OPS_ISA", "avx2")
    assert cpu.instruction_set() == "avx2"
    monkeypatch.delenv("MVLM_OPS_ISA")
    monkeypatch.setenv("MVLM_KERNEL_ISA", "avx2")  # its earlier name, still honoured
    assert cpu.instruction_set() == "avx2"


def test_int8_tiles_put_each_weight_where_the_operations_read_it():
    """layout.int8_tiles: tile t, step s, vector v, lane l holds inputs 4s..4s+3 of row 32t + 16v + l, 4 bytes each
    (the byte order int8_tile and int8_tile_avx2 load)."""
    values = np.random.default_rng(0).integers(-128, 128, (64, 96)).astype(np.int8)
    tiled = layout.int8_tiles(values).reshape(-1)
    for row, inp in [(0, 0), (5, 7), (16, 4), (31, 95), (33, 1), (63, 50)]:
        tile, r = divmod(row, 32)
        vector, lane = divmod(r, 16)
        step, byte = divmod(inp, 4)
        assert tiled[tile * 32 * 96 + (step * 2 + vector) * 64 + lane * 4 + byte] == values[row, inp]


def test_groups_smaller_than_64_stay_with_openvino():
    model, *_ = nncf_int4_model(16, 128, 32, np.random.default_rng(1))
    assert rewrite.rewrite_int4_matmuls(model) == 0
    assert [op.get_type_name() for op in model.get_ordered_ops()].count("MatMul") == 1


def test_matmuls_of_one_input_become_one_operation(tmp_path):
    rng = np.random.default_rng(5)
    k = 128
    x = opset13.parameter([-1, k], ov.Type.f32, name="x")
    weights = []
    outputs = []
    for n in (32, 48, 36):  # like q, k, v (different widths, one input)
        model, q, scales = nncf_int4_model(n, k, 64, rng)
        matmul = [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"][0]
        outputs.append(opset13.matmul(x, matmul.input_value(1), False, True).output(0))
        weights.append((q, scales))
    model = ov.Model([opset13.relu(o) for o in outputs], [x])
    assert rewrite.rewrite_int4_matmuls(model) == 3
    assert [op.get_type_name() for op in model.get_ordered_ops()].count("Int4MatMul") == 1
    ov.save_model(model, tmp_path / "m.xml", compress_to_fp16=False)
    ours = core().compile_model(tmp_path / "m.xml", "CPU", {"INFERENCE_NUM_THREADS": 2})
    for m in (1, 6):
        xs = rng.standard_normal((m, k)).astype(np.float32)
        for y, (q, scales) in zip(ours(xs).values(), weights):
            expected = np.maximum(by_definition(xs, q, scales), 0)
            np.testing.assert_allclose(y, expected, atol=2e-5 * np.abs(expected).max())


@pytest.mark.parametrize("k", [256, 1024])  # 1024: the AVX-512 prompt path (lane order), as the vision model's
def test_int8_head_equals_its_definition(k, tmp_path):
    rng = np.random.default_rng(3)
    model, *_ = nncf_int4_model(40, k, 128, rng)
    head, q, zero, scale = nncf_int8_head(model.get_parameters()[0].output(0), 37, k, rng)
    model.add_results([opset13.result(head)])
    plain = core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert rewrite.rewrite_int4_matmuls(model) == 1
    assert sorted(op.get_type_name() for op in model.get_ordered_ops() if "MatMul" in op.get_type_name()) == \
        ["Int4MatMul", "Int8MatMul"]
    ov.save_model(model, tmp_path / "m.xml", compress_to_fp16=False)
    ours = core().compile_model(tmp_path / "m.xml", "CPU", {"INFERENCE_NUM_THREADS": 2})
    weights = (q.astype(np.float64) - zero) * scale.astype(np.float64)
    for m in (1, 5, 6, 7):  # a token; prompts, 4 rows at a time and then 1, 2 or 3
        x = rng.standard_normal((m, k)).astype(np.float32)
        y = ours(x)[1]
        np.testing.assert_allclose(y, rounded_x(x) @ weights.T, atol=2e-5 * np.abs(y).max())
        assert np.abs(y - plain(x)[1]).max() < 0.02 * np.abs(y).max()


def test_the_split_among_threads_changes_no_output(tmp_path):
    """Each weight tile (int4) or group of panels (int8) is one thread's work, from the front of its own share or the
    back of another's (src/common.hpp `parallel_shares`): shares of every size give bit-identical outputs."""
    assert build.extension().library is not None, build.extension().why_not
    rng = np.random.default_rng(7)
    model, *_ = nncf_int4_model(224, 512, 64, rng)  # 7 tiles of 32 rows
    head, *_ = nncf_int8_head(model.get_parameters()[0].output(0), 150, 512, rng)  # 38 panels, 10 groups
    model.add_results([opset13.result(head)])
    assert rewrite.rewrite_int4_matmuls(model) == 1
    ov.save_model(model, tmp_path / "m.xml", compress_to_fp16=False)
    xs = [rng.standard_normal((m, 512)).astype(np.float32) for m in (1, 3)]
    outputs = {}
    for threads in (1, 2, 3, 5):
        compiled = core().compile_model(tmp_path / "m.xml", "CPU", {"INFERENCE_NUM_THREADS": threads})
        outputs[threads] = [y for x in xs for y in compiled(x).values()]
    for threads in (2, 3, 5):
        for alone, split in zip(outputs[1], outputs[threads]):
            np.testing.assert_array_equal(alone, split, err_msg=f"{threads} threads")


def test_a_token_asks_for_the_next_weights_ahead_without_changing_its_output(tmp_path):
    """From a model's second token on, as one of its MatMuls ends, the pool's other thread asks for the first
    bytes of each share of the MatMul that followed it (src/read_ahead.cpp): bytes are asked for on two threads,
    none on one or with it turned off, and the outputs are bit-identical to one thread's."""
    assert build.extension().library is not None, build.extension().why_not
    # the copy OpenVINO loaded (an engine of another cache folder may have registered its own first), and any other
    loaded = {line.split()[-1] for line in open("/proc/self/maps") if "/mvlm_ops-" in line}
    libraries = [ctypes.CDLL(path) for path in sorted(loaded)]
    for library in libraries:
        library.mvlm_read_ahead_bytes.restype = ctypes.c_uint64

    def asked() -> int:
        return sum(library.mvlm_read_ahead_bytes() for library in libraries)

    def switch(on: int) -> None:  # (off: profile_step.py --compare-read-ahead)
        for library in libraries:
            library.mvlm_read_ahead(on)

    rng = np.random.default_rng(8)
    model, *_ = nncf_int4_model(256, 512, 64, rng)
    head, *_ = nncf_int8_head(model.get_parameters()[0].output(0), 160, 512, rng)
    model.add_results([opset13.result(head)])
    assert rewrite.rewrite_int4_matmuls(model) == 1
    ov.save_model(model, tmp_path / "m.xml", compress_to_fp16=False)
    tokens = [rng.standard_normal((1, 512)).astype(np.float32) for _ in range(6)]

    def settled() -> int:  # the count once no read ahead is running (they are tasks of the pool: asynchronous)
        count, deadline = asked(), time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if asked() == count:
                return count
            count = asked()
        return count

    outputs, bytes_asked = {}, {}
    for threads in (1, 2):
        request = core().compile_model(tmp_path / "m.xml", "CPU", {"INFERENCE_NUM_THREADS": threads}) \
            .create_infer_request()
        before = settled()
        outputs[threads] = [[y.copy() for y in request.infer(x).values()] for x in tokens]
        bytes_asked[threads] = settled() - before
    assert bytes_asked[1] == 0
    assert bytes_asked[2] > 0
    switch(0)
    try:
        before = settled()
        outputs["2, off"] = [[y.copy() for y in request.infer(x).values()] for x in tokens]
        assert settled() == before
    finally:
        switch(1)
    for threads in (2, "2, off"):
        for token, (alone, split) in enumerate(zip(outputs[1], outputs[threads])):
            for a, b in zip(alone, split):
                np.testing.assert_array_equal(a, b, err_msg=f"token {token}, {threads} threads")


def attention_model(heads: int, kv_heads: int, head: int, tmp_path) -> ov.CompiledModel:
    """KVAttention alone: q (1, H, T, D), k and v (1, KV, T, D), mask (1, 1, T, P+T) -> (1, H, T, D)."""
    q = opset13.parameter([1, heads, -1, head], ov.Type.f32)
    k, v = (opset13.parameter([1, kv_heads, -1, head], ov.Type.f32) for _ in range(2))
    mask = opset13.parameter([1, 1, -1, -1], ov.Type.boolean)
    scale = opset13.constant(np.float32(head ** -0.5))
    node = nodes.KVAttention([q.output(0), k.output(0), v.output(0), mask.output(0), scale.output(0)])
    ov.save_model(ov.Model([node], [q, k, v, mask]), tmp_path / "attention.xml")
    return core().compile_model(tmp_path / "attention.xml", "CPU", {"INFERENCE_NUM_THREADS": 2})


def cached(x):
    """x (..., D) as KVAttention keeps it: int8 with a scale per group of 32 values (16 or 8 where D needs)."""
    group = next(g for g in (32, 16, 8) if x.shape[-1] % g == 0)
    groups = x.reshape(*x.shape[:-1], -1, group).astype(np.float32)
    amax = np.abs(groups).max(-1, keepdims=True)
    inverse = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.rint(groups * inverse)  # nearest even, as the vectors round
    return (q * (amax / np.float32(127))).reshape(x.shape)


@pytest.mark.parametrize("heads, kv_heads, head", [(4, 4, 16), (4, 2, 24), (2, 1, 128)])
def test_kv_attention_equals_its_definition(heads, kv_heads, head, tmp_path):
    assert build.extension().library is not None, build.extension().why_not
    attention = attention_model(heads, kv_heads, head, tmp_path).create_infer_request()
    rng = np.random.default_rng(head)
    keys = np.zeros((kv_heads, 0, head))  # what the cache should hold: every position's key, as int8 and its scale
    values = np.zeros((kv_heads, 0, head))
    # a prompt, tokens, a prompt continuing them, a rewind to position 5 (an earlier turn), a key masked out, a
    # long prompt (the row grows many times over) and a token after it
    steps = ((0, 7, None), (7, 1, None), (8, 1, None), (9, 6, None), (5, 2, None), (7, 5, 3), (12, 2040, None),
             (2052, 1, None))
    for past, new, hidden in steps:
        q = rng.standard_normal((1, heads, new, head)).astype(np.float32)
        k, v = (rng.standard_normal((1, kv_heads, new, head)).astype(np.float32) for _ in range(2))
        mask = np.tril(np.ones((new, past + new), bool), past)  # causal
        if hidden is not None:
            mask[:, hidden] = False
        out = attention.infer([q, k, v, mask[None, None]])[0]
        keys = np.concatenate([keys[:, :past], cached(k[0])], axis=1)
        values = np.concatenate([values[:, :past], cached(v[0])], axis=1)
        group = heads // kv_heads
        scores = np.einsum("htd,hpd->htp", q[0], np.repeat(keys, group, axis=0)) / np.sqrt(head)
        scores = np.where(mask, scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        expected = np.einsum("htp,hpd->htd", weights / weights.sum(-1, keepdims=True), np.repeat(values, group, 0))
        np.testing.assert_allclose(out[0], expected, atol=2e-6 * np.abs(expected).max() + 1e-6)
    with pytest.raises(RuntimeError, match="2053 are cached"):  # positions that were never computed
        attention.infer([q[:, :, :1], k[:, :, :1], v[:, :, :1], np.ones((1, 1, 1, 2060), bool)])


def rotate_half(x, cos, sin):
    """LLaMA's rotary embedding, as the export traces it: x (H, T, D), cos and sin (T, D)."""
    half = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[..., half:], x[..., :half]], axis=-1) * sin


def test_kv_attention_rotates_q_and_k_itself_as_the_graph_did(tmp_path):
    """Given cos and sin (inputs 7 and 8), the operation applies the rotary embedding the rewrite took out of the
    graph: its answers equal those of q and k rotated beforehand, for a prompt and the tokens after it."""
    assert build.extension().library is not None, build.extension().why_not
    heads, kv_heads, head = 4, 2, 32
    q = opset13.parameter([1, heads, -1, head], ov.Type.f32)
    k, v = (opset13.parameter([1, kv_heads, -1, head], ov.Type.f32) for _ in range(2))
    mask = opset13.parameter([1, 1, -1, -1], ov.Type.boolean)
    rows, sources = (opset13.parameter([1], ov.Type.i64) for _ in range(2))
    cos, sin = (opset13.parameter([1, -1, head], ov.Type.f32) for _ in range(2))
    scale = opset13.constant(np.float32(head ** -0.5))
    inputs = [q, k, v, mask, scale, rows, sources]
    models = []
    for extra in ([], [cos, sin]):
        node = nodes.KVAttention([x.output(0) for x in inputs + extra])
        parameters = [x for x in inputs + extra if x is not scale]
        ov.save_model(ov.Model([node], parameters), tmp_path / f"attention{len(extra)}.xml")
        models.append(core().compile_model(tmp_path / f"attention{len(extra)}.xml", "CPU").create_infer_request())
    plain, rotating = models
    rng = np.random.default_rng(3)
    for past, new in ((0, 9), (9, 1), (10, 1), (11, 4)):
        positions = np.arange(past, past + new)[:, None] * (10000.0 ** (-np.arange(0, head, 2) / head))[None]
        angles = np.concatenate([positions, positions], axis=-1).astype(np.float32)  # (T, D)
        c, s = np.cos(angles), np.sin(angles)
        qs = rng.standard_normal((1, heads, new, head)).astype(np.float32)
        ks, vs = (rng.standard_normal((1, kv_heads, new, head)).astype(np.float32) for _ in range(2))
        masks = np.tril(np.ones((new, past + new), bool), past)[None, None]
        row = [np.array([0]), np.array([-1])]
        expected = plain.infer([rotate_half(qs, c, s), rotate_half(ks, c, s), vs, masks, *row])[0]
        actual = rotating.infer([qs, ks, vs, masks, *row, c[None], s[None]])[0]
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_kv_attention_starts_a_row_from_the_start_of_another(tmp_path):
    """A conversation about a picture another row holds copies that row's first positions (input 6) instead of
    computing them: what it answers equals a row that computed them itself."""
    assert build.extension().library is not None, build.extension().why_not
    heads, head = 2, 32
    q = opset13.parameter([1, heads, -1, head], ov.Type.f32)
    k, v = (opset13.parameter([1, heads, -1, head], ov.Type.f32) for _ in range(2))
    mask = opset13.parameter([1, 1, -1, -1], ov.Type.boolean)
    rows, sources = (opset13.parameter([1], ov.Type.i64) for _ in range(2))
    node = nodes.KVAttention([x.output(0) for x in (q, k, v, mask, opset13.constant(np.float32(head ** -0.5)), rows,
                                                     sources)])
    ov.save_model(ov.Model([node], [q, k, v, mask, rows, sources]), tmp_path / "attention.xml")
    compiled = core().compile_model(tmp_path / "attention.xml", "CPU", {"INFERENCE_NUM_THREADS": 2})
    attention = compiled.create_infer_request()
    rng = np.random.default_rng(3)
    qkv = [rng.standard_normal((1, heads, 9, head)).astype(np.float32) for _ in range(3)]

    def call(row, source, start, end):  # positions start..end-1 of qkv into `row`
        causal = np.tril(np.ones((end - start, end), bool), start)[None, None]
        return attention.infer([*(x[:, :, start:end] for x in qkv), causal, [row], [source]])[0].copy()

    call(0, -1, 0, 6)  # row 0: a picture's prompt, 6 positions
    copied = call(1, 0, 4, 9)  # row 1 starts from row 0's first 4, then its own 5
    call(2, -1, 0, 4)
    computed = call(2, -1, 4, 9)  # row 2 computes all 9 itself
    np.testing.assert_array_equal(copied, computed)
    with pytest.raises(RuntimeError, match="which holds 6"):  # more positions than the source row has
        call(3, 0, 7, 9)


def test_the_language_model_of_an_int4_export_is_rewritten_once(exported):
    # reading the copy needs the operations registered
    assert build.extension().library is not None, build.extension().why_not
    folder = exported("v2", "int4-sym-g64-r1")  # every layer int4 (the preset keeps the most sensitive ones int8)
    original = core().read_model(folder / "language.xml")
    int4_matmuls = sum(patterns.int4_weight(op) is not None for op in original.get_ordered_ops())
    assert int4_matmuls >= 7 * 2  # q, k, v, o, gate, up, down of each layer
    for old in folder.glob("language.int4-v*"):
        old.unlink()
    (folder / "language.int4-v0.xml").write_text("<net/>")  # a copy left by an earlier version
    derived = copies.int4_language_model(folder)
    assert derived == folder / f"language.int4-v{copies.FORMAT}.xml" and derived.with_suffix(".bin").is_file()
    assert not (folder / "language.int4-v0.xml").exists()
    model = core().read_model(derived)
    layers = int4_matmuls // 7  # q, k, v fused; o; gate, up fused; down
    types = [op.get_type_name() for op in model.get_ordered_ops()]
    assert types.count("Int4MatMul") == 4 * layers
    assert types.count("Int8MatMul") <= 1  # the head, if int8
    vocab = model.output("logits").get_partial_shape()[-1].get_length()
    head_split = types.count("Int8MatMul") and vocab % 32 != 0  # the rows up to a whole tile, split off
    assert types.count("VariadicSplit") == layers + head_split  # q, k, v's (down reads gate and up whole)
    # each layer's norms, SiLU gate and residual sums folded into the operations around them (fold.py)
    assert not {"Power", "ReduceMean", "Sqrt", "Swish"} & set(types)
    layer = [("k_proj+q_proj+v_proj", ["norm"]), ("o_proj", ["add"]), ("gate_proj+up_proj", ["norm"]),
             ("down_proj", ["gated", "add"])]
    assert folded_attributes(derived) == layer * layers + [("lm_head", ["norm"])]
    assert not any(patterns.int4_weight(op) for op in model.get_ordered_ops())
    assert types.count("KVAttention") == layers and "ScaledDotProductAttention" not in types
    # the rotary embedding of q and k moved into it (inputs 7 and 8): no Sin/Cos products left around it
    attentions = [op for op in model.get_ordered_ops() if op.get_type_name() == "KVAttention"]
    assert all(op.get_input_size() == 9 for op in attentions)
    live = {op.get_name() for op in model.get_ordered_ops()}  # what the results depend on
    [cos] = [op for op in model.get_ordered_ops() if op.get_type_name() == "Cos"]
    readers = [target.get_node() for target in cos.output(0).get_target_inputs()]
    assert {node.get_type_name() for node in readers if node.get_name() in live} == {"KVAttention"}
    assert not model.get_variables() and not model.get_sinks()  # the operation keeps the cache
    assert "beam_idx" in {name for p in model.get_parameters() for name in p.output(0).get_names()}  # still fed
    offsets = [int(data.get("offset")) for data in ElementTree.parse(derived).iter("data") if data.get("offset")]
    assert offsets and not any(offset % 64 for offset in offsets)  # every constant on a cache line of its own
    assert copies.int4_language_model(folder) == derived  # cached
    assert not list(folder.glob(".copy-*"))  # written under a temporary name, renamed into place
    assert copies.int4_language_model(exported("v2", "int8")) is None  # nothing to rewrite


def folded_attributes(xml) -> list[tuple[str, list[str]]]:
    """Per Int4MatMul / Int8MatMul of an IR, in order: the projections it computes and what is folded into it."""
    found = []
    for layer in ElementTree.parse(xml).iter("layer"):
        if layer.get("type") in ("Int4MatMul", "Int8MatMul"):
            names = sorted(set(re.findall(r"\w+_proj|lm_head", layer.get("name"))))
            found.append(("+".join(names), [k for k, v in layer.find("data").attrib.items() if v == "true"]))
    return found


def test_the_vision_model_of_an_int4_export_gets_a_copy_with_our_int8_operation(exported):
    assert build.extension().library is not None, build.extension().why_not
    folder = exported("v2", "int4")
    original = core().read_model(folder / "vision.xml")
    int8 = sum(patterns.int8_weight(op) is not None for op in original.get_ordered_ops())
    layers = sum("q_proj" in op.get_friendly_name() for op in original.get_ordered_ops()
                 if op.get_type_name() == "MatMul")
    assert layers >= 2 and int8 >= 6 * layers  # q, k, v, out, fc1, fc2 of each layer, the projector's
    derived = copies.int8_vision_model(folder)
    assert derived == folder / f"vision.int8-v{copies.FORMAT}.xml"
    types = [op.get_type_name() for op in core().read_model(derived).get_ordered_ops()]
    assert types.count("Int8MatMul") == int8 - 2 * layers and "MatMul" not in types  # q, k, v as one
    assert copies.int8_vision_model(exported("v2", "fp16")) is None  # no int8 weights


def test_engine_answers_with_our_operations_within_the_int4_drift_bound(exported, torch_model):
    import torch

    from mvlm_magic.runtime.engine import Engine
    from mvlm_magic.runtime.preprocess import preprocess_image
    from mvlm_magic.runtime.tokenizer import build_conversation, tokenize_with_image
    from test_fidelity import DRIFT_BOUND, IMAGES, QUESTIONS

    eng = Engine(exported("v2", "int4"), ops="on")
    assert eng.ops == "int4" and "on CPU with our int4" in eng.name
    assert eng.vision_ops == (cpu.instruction_set() == "avx512")  # the int8 vision copy: AVX-512 only
    assert not eng.kv.request.query_state()  # the keys and values are kept by our attention operation
    plain = Engine(exported("v2", "int4"), ops="off")
    assert plain.ops is None
    assert Engine(exported("v2", "int4"), precision="f32", ops="on").ops is None  # f32 answers: exact path
    model = torch_model("v2")
    for image in list(IMAGES.values())[:3]:
        ids = tokenize_with_image(eng.tokenizer, build_conversation([(QUESTIONS[0], None)], with_image=True))
        expected = model.last_logits(ids, torch.from_numpy(preprocess_image(image))).numpy()
        actual = eng.prompt_logits(ids, eng.encode_image(image))
        drift = np.abs(actual - expected).max() / (expected.max() - expected.min())
        assert drift < DRIFT_BOUND["int4"], drift
    answer = eng.new_chat(IMAGES["wide RGB"]).ask(QUESTIONS[0], max_new_tokens=12, ignore_eos=True).result()
    assert len(answer.token_ids) == 12 and answer.timings.decode_tokens_per_s > 0


def test_with_our_operations_a_conversation_rebuilt_from_its_history_answers_the_same(exported):
    from conftest import shapes_picture
    from mvlm_magic.runtime.engine import Engine

    eng = Engine(exported("v2", "int4"), ops="on")
    assert eng.ops == "int4"
    chat = eng.new_chat(shapes_picture(seed=21))
    first = chat.ask("What is this?", max_new_tokens=6, ignore_eos=True).result()
    follow_up = chat.ask("And the colours?", max_new_tokens=8, ignore_eos=True).result()  # continues the cache
    assert follow_up.timings.prefill_tokens < 144
    again = eng.new_chat(shapes_picture(seed=21))
    assert again.ask("What is this?", max_new_tokens=6, ignore_eos=True).result().token_ids == first.token_ids
    eng.new_chat(shapes_picture(seed=22)).ask("Describe it.", max_new_tokens=3).result()  # rewinds the cache
    rebuilt = again.ask("And the colours?", max_new_tokens=8, ignore_eos=True).result()  # from its history
    assert rebuilt.timings.prefill_tokens > 144 and rebuilt.token_ids == follow_up.token_ids


def test_without_a_compiler_the_engine_uses_openvino_alone(exported, monkeypatch, tmp_path, picture):
    from mvlm_magic.runtime.engine import Engine

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("MVLM_CACHE", str(tmp_path / "cache"))
    built = build.compile_library()
    assert built.library is None and "compiler" in built.why_not
    assert not list((tmp_path / "cache" / "ops").glob("*.so"))
    monkeypatch.setattr(build, "extension", lambda cache_dir=None: build.Build(None, "no compiler"))
    eng = Engine(exported("v2", "int4"), ops="on")
    assert eng.ops is None and eng.name.endswith("with OpenVINO's operations (no compiler)"), eng.name
    assert eng.ask(picture, "What is this?", max_new_tokens=4).token_ids
    with pytest.raises(Exception, match="ops must be"):
        Engine(exported("v2", "int4"), ops="fast")
    with pytest.raises(Exception, match="ops must be"):  # the argument's earlier name, still accepted
        Engine(exported("v2", "int4"), kernels="fast")


def test_select_keeps_the_plain_irs_where_our_operations_are_not_used(exported):
    folder = exported("v2", "int4")
    plain = ops.Choice(folder / "vision.xml", folder / "language.xml")
    assert ops.select(folder, "off") == replace(plain, why="ops off")
    assert ops.select(folder, "on", precision="f32") == replace(plain, why="f32 answers take the exact path")
    assert ops.select(folder, "on", device="GPU") == replace(plain, why="ours run on the CPU, not GPU")
    with pytest.raises(MvlmError, match="ops must be"):
        ops.select(folder, "fast")


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_builds_the_library_from_the_same_sources(tmp_path):
    """src/CMakeLists.txt (developer builds) configures, lists every source for clangd and builds the library this
    CPU runs, which OpenVINO loads (in a process of its own: one core registers our operations once)."""
    def run(*command):
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])

    run("cmake", "-S", str(build.SOURCES), "-B", str(tmp_path), f"-DMVLM_OPS_ISA={cpu.instruction_set()}",
        f"-DPython3_EXECUTABLE={sys.executable}")
    commands = json.loads((tmp_path / "compile_commands.json").read_text())
    assert {os.path.basename(command["file"]) for command in commands} == {p.name for p in build.SOURCES.glob("*.cpp")}
    run("cmake", "--build", str(tmp_path), "-j2")
    run(sys.executable, "-c", "import sys, openvino; openvino.Core().add_extension(sys.argv[1])",
        str(tmp_path / "libmvlm_ops.so"))


def test_the_wheel_ships_every_source_of_our_operations():
    package = build.SOURCES.parents[1]  # mvlm_magic/
    pyproject = tomllib.loads((package.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["mvlm_magic"]
    for path in build.SOURCES.iterdir():
        name = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), f"{name} is left out of the wheel"
