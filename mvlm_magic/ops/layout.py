"""Where our operations' weights lie: int4 and int8 weights in tiles of 32 rows (the orders the C++ operations read),
and the constants of a saved IR moved to 64-byte boundaries of its .bin."""

from __future__ import annotations

import os
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

TILE = 32  # int4 weight rows per tile: two vectors of 16 lanes, a row per lane (src/int4_matmul.hpp)


def int4_tiles(values: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Int4MatMul's weights from (N, K) values + 8 (0..15) and (N, groups) f16 scales, N a multiple of TILE:
    tile t (rows 32t..32t+31), step s (inputs 4s..4s+3), 64 bytes: byte 4l + b holds input 4s + b of row 32t + l in
    its low nibble and of row 32t + 16 + l in its high one; the scales as (N/32, groups, 32). Shapes (N, K/2) and
    (N, 2 groups) bytes. A tile is one stream that one load and two masks turn into two vectors of 16 rows x 4
    inputs, the operands of vpdpbusd (or vpmaddubsw) against 4 inputs of x broadcast: no unpacking per call."""
    n, k = values.shape
    assert n % TILE == 0 and k % 4 == 0, (n, k)
    v = values.reshape(n // TILE, 2, 16, k // 4, 4).transpose(0, 3, 2, 4, 1)  # (tile, step, lane, input, half)
    packed = (v[..., 0] | (v[..., 1] << 4)).astype(np.uint8)
    tiled_scales = scales.reshape(n // TILE, TILE, -1).transpose(0, 2, 1)  # (tile, group, row)
    return packed.reshape(n, k // 2), np.ascontiguousarray(tiled_scales).view(np.uint8).reshape(n, -1)


def int8_tiles(values: np.ndarray) -> np.ndarray:
    """Int8MatMul's weights from (N, K) int8 values, N a multiple of TILE: tile t (rows 32t..32t+31), step s (inputs
    4s..4s+3), 128 bytes: two vectors of 64, whose 4 bytes at lane l are inputs 4s..4s+3 of row 32t + 16v + l (v: the
    vector). Shape (N, K). One load is the operand of vpdpbusd (AVX2: two of vpmaddubsw) against 4 inputs of x
    broadcast, the order of the int4 tiles with a byte where they have a nibble: one token and many rows read the
    same stream, and nothing is re-laid out per call."""
    n, k = values.shape
    assert n % TILE == 0 and k % 4 == 0, (n, k)
    v = values.reshape(n // TILE, 2, 16, k // 4, 4).transpose(0, 3, 1, 2, 4)  # (tile, step, vector, lane, input)
    return np.ascontiguousarray(v).reshape(n, k)


def align_constants(xml: Path, alignment: int = 64) -> None:
    """Rewrite a saved IR so that every constant starts on a 64-byte boundary of its .bin (OpenVINO packs them
    back to back). OpenVINO maps the file, so our operations read their weights in place: from an odd address
    every 64-byte load straddles two cache lines (measured: the weights sat at 13 mod 64)."""
    tree = ElementTree.parse(xml)
    data = [layer.find("data") for layer in tree.getroot().iter("layer") if layer.get("type") == "Const"]
    data = [d for d in data if d is not None and d.get("offset") is not None]
    spans = sorted({(int(d.get("offset")), int(d.get("size"))) for d in data})  # equal constants share one span
    moved, cursor = {}, 0
    with open(xml.with_suffix(".bin"), "rb") as old, open(xml.with_suffix(".aligned"), "wb") as new:
        for offset, size in spans:
            cursor = -(-cursor // alignment) * alignment
            new.seek(cursor)
            old.seek(offset)
            new.write(old.read(size))
            moved[offset, size] = cursor
            cursor += size
    for d in data:
        d.set("offset", str(moved[int(d.get("offset")), int(d.get("size"))]))
    os.replace(xml.with_suffix(".aligned"), xml.with_suffix(".bin"))
    tree.write(xml)
