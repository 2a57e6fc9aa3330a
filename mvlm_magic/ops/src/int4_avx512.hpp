// Int4MatMul's and Int8MatMul's AVX-512 VNNI paths, included by int4_matmul.cpp and int8_matmul.cpp only in the
// AVX-512 build (MVLM_AVX512: compiled with -mavx512vnni -mavx512bw); the weight layout is common.hpp's.
//
// Why: with VNNI one instruction (vpdpbusd) multiplies 64 unsigned bytes by 64 signed ones and adds each 4 into
// an int32 lane, where AVX2 needs three. OpenVINO has its own int8 path on these CPUs, but runs prompts through
// bf16 and decodes below memory speed (docs/benchmarks.md, "Figures behind the operations' design").
//
// Both read their weights in tiles of 32 rows (layout.int4_tiles, layout.int8_tiles), one row per int32 lane of two
// vectors, x rows broadcast: a token and a prompt alike, with no unpacking per call.

#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.hpp"

namespace mvlm {
namespace avx512 {

// How far ahead to ask for a token's weights: a stream of weights reads at memory speed from 2-3 KB on
// (measured: docs/benchmarks.md).
constexpr size_t AHEAD = 3072;

// A tile of 32 weight rows is two vectors of 16 lanes, a row per int32 lane (faster than vectors of 16 blocks of one
// row: measured, docs/benchmarks.md).
constexpr size_t LANES = 16, VECTORS = 2, TILE_ROWS = LANES * VECTORS;

// Int8MatMul: MR x rows against one tile of 32 int8 weight rows in tile order (layout.int8_tiles): per step of 4
// inputs two 64-byte loads, made unsigned (xor 0x80: weight + 128) for vpdpbusd; a lane sums one x block (8
// steps) in int32, then it is scaled. Per row of the tile: `scale` and `zero`; per x row: `xscale` per block and
// `xoffset` (8 * scale * sum of the values, over all blocks). `ahead`: how far ahead to ask for the weights (a
// token streams them; a prompt's tile is in the cache).
template <int MR>
static void int8_tile(const int8_t* w, const float* scale, const float* zero, const int8_t* x, const float* xscale,
                      const float* xoffset, size_t K, float* y, size_t y_stride, size_t ahead) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    const size_t blocks = K / BLOCK;
    __m512 acc[VECTORS][MR];
    for (size_t v = 0; v < VECTORS; ++v)
        for (int i = 0; i < MR; ++i) acc[v][i] = _mm512_setzero_ps();
    for (size_t b = 0; b < blocks; ++b) {
        __m512i sums[VECTORS][MR];
        for (size_t v = 0; v < VECTORS; ++v)
            for (int i = 0; i < MR; ++i) sums[v][i] = _mm512_setzero_si512();
        const int8_t* wb = w + b * 8 * VECTORS * 64;
        const int8_t* xb = x + b * BLOCK;
#pragma GCC unroll 8
        for (int step = 0; step < 8; ++step) {  // (a fixed count, unrolled: the sums stay in registers)
            __m512i wv[VECTORS];
            for (size_t v = 0; v < VECTORS; ++v) {
                const int8_t* here = wb + (step * VECTORS + v) * 64;
                if (ahead) _mm_prefetch(reinterpret_cast<const char*>(here + ahead), _MM_HINT_T0);
                wv[v] = _mm512_xor_si512(_mm512_load_si512(here), flip);
            }
            for (int i = 0; i < MR; ++i) {
                int four;
                std::memcpy(&four, xb + i * K + step * 4, 4);
                const __m512i broadcast = _mm512_set1_epi32(four);
                for (size_t v = 0; v < VECTORS; ++v) sums[v][i] = _mm512_dpbusd_epi32(sums[v][i], wv[v], broadcast);
            }
        }
        for (int i = 0; i < MR; ++i) {
            const __m512 xs = _mm512_set1_ps(xscale[i * blocks + b]);
            for (size_t v = 0; v < VECTORS; ++v)
                acc[v][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[v][i]), xs, acc[v][i]);
        }
    }
    __m512 shift[VECTORS];  // each row's zero point + the 128 the xor added to every weight
    for (size_t v = 0; v < VECTORS; ++v)
        shift[v] = _mm512_add_ps(_mm512_loadu_ps(zero + v * LANES), _mm512_set1_ps(128.f));
    for (int i = 0; i < MR; ++i) {
        const __m512 offset = _mm512_set1_ps(xoffset[i] / 8.f);  // (x offsets are 8 * scale * sum)
        for (size_t v = 0; v < VECTORS; ++v) {  // scale * (w . x - (zero + 128) * sum of x)
            const __m512 centred = _mm512_fnmadd_ps(shift[v], offset, acc[v][i]);
            _mm512_storeu_ps(y + i * y_stride + v * LANES, _mm512_mul_ps(_mm512_loadu_ps(scale + v * LANES), centred));
        }
    }
}

// Int4MatMul: MR x rows against one tile of 32 int4 weight rows in tile order (layout.int4_tiles): per step of 4
// inputs one 64-byte load, whose low nibbles are rows 0-15 and high nibbles rows 16-31, each lane 4 inputs of one
// row. A lane sums one x block (8 steps) in int32, then it is scaled. `scale`: the tile's f16 scales (groups, 32);
// `xoffset`: per x row and group, 8 * scale * sum of the values (what the stored + 8 adds). `ahead`: how far
// ahead to ask for the weights (a token streams them from memory; a prompt's tile is in the cache already).
template <int MR>
static void int4_tile(const uint8_t* w, const uint16_t* scale, const int8_t* x, const float* xscale,
                      const float* xoffset, size_t K, size_t G, float* y, size_t y_stride, size_t ahead) {
    const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
    const size_t blocks = K / BLOCK, groups = K / G, blocks_per_group = G / BLOCK;
    __m512 acc[VECTORS][MR];
    for (size_t v = 0; v < VECTORS; ++v)
        for (int i = 0; i < MR; ++i) acc[v][i] = _mm512_setzero_ps();
    for (size_t g = 0; g < groups; ++g) {
        // the group's sum before its weight scale: - offset + each block's int32 sums times its x scale, so that
        // the scale costs one multiply-add a group, not one a block (fewer float operations beside the vpdpbusd)
        __m512 group[VECTORS][MR];
        for (int i = 0; i < MR; ++i) {
            const __m512 offset = _mm512_set1_ps(-xoffset[i * groups + g]);
            for (size_t v = 0; v < VECTORS; ++v) group[v][i] = offset;
        }
        for (size_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
            __m512i sums[VECTORS][MR];
            for (size_t v = 0; v < VECTORS; ++v)
                for (int i = 0; i < MR; ++i) sums[v][i] = _mm512_setzero_si512();
            const uint8_t* wb = w + b * 8 * 64;
            const int8_t* xb = x + b * BLOCK;
            if (ahead) _mm_prefetch(reinterpret_cast<const char*>(wb + ahead), _MM_HINT_T0);
#pragma GCC unroll 8
            for (int step = 0; step < 8; ++step) {  // (a fixed count, unrolled: the sums stay in registers)
                if (ahead && step % 2 == 1) _mm_prefetch(reinterpret_cast<const char*>(wb + step * 64 + ahead), _MM_HINT_T0);
                const __m512i packed = _mm512_loadu_si512(wb + step * 64);
                const __m512i wv[VECTORS] = {_mm512_and_si512(packed, low_nibbles),
                                             _mm512_and_si512(_mm512_srli_epi16(packed, 4), low_nibbles)};
                for (int i = 0; i < MR; ++i) {
                    int four;
                    std::memcpy(&four, xb + i * K + step * 4, 4);
                    const __m512i broadcast = _mm512_set1_epi32(four);
                    for (size_t v = 0; v < VECTORS; ++v) sums[v][i] = _mm512_dpbusd_epi32(sums[v][i], wv[v], broadcast);
                }
            }
            for (int i = 0; i < MR; ++i) {
                const __m512 xs = _mm512_set1_ps(xscale[i * blocks + b]);
                for (size_t v = 0; v < VECTORS; ++v)
                    group[v][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[v][i]), xs, group[v][i]);
            }
        }
        for (size_t v = 0; v < VECTORS; ++v) {
            const __m512 ws = _mm512_cvtph_ps(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(scale + (g * VECTORS + v) * LANES)));
            for (int i = 0; i < MR; ++i) acc[v][i] = _mm512_fmadd_ps(group[v][i], ws, acc[v][i]);
        }
    }
    for (int i = 0; i < MR; ++i)
        for (size_t v = 0; v < VECTORS; ++v) _mm512_storeu_ps(y + i * y_stride + v * LANES, acc[v][i]);
}

// Int4MatMul's rows of x (M, K) against N weight rows in tiles: each tile once, MR x rows at a time against it.
[[maybe_unused]]  // (int8_matmul.cpp uses only the int8 one, int4_matmul.cpp only the int4 one)
static void int4_tiles(const int8_t* x, const float* xscale, const float* xoffset, size_t M, size_t K, size_t N,
                       size_t G, const uint8_t* w, const uint16_t* scale, float* y) {
    const size_t groups = K / G, tile_bytes = TILE_ROWS * K / 2, blocks = K / BLOCK;
    parallel_shares(N / TILE_ROWS, [&](size_t t) {
        const uint8_t* wt = w + t * tile_bytes;
        const uint16_t* st = scale + t * groups * TILE_ROWS;
        by_rows<4>(M, [&](auto rows, size_t m) {
            int4_tile<decltype(rows)::value>(wt, st, x + m * K, xscale + m * blocks, xoffset + m * groups, K, G,
                                             y + m * N + t * TILE_ROWS, N, M == 1 ? AHEAD : 0);
        });
    });
}

// Int8MatMul's rows of x (M, K) against N weight rows in tiles (`zero`: zero point - 128, `scale`: per row), each
// tile once, MR x rows at a time against it; `xoffset` per x row (see int8_tile).
[[maybe_unused]]
static void int8_tiles(const int8_t* x, const float* xscale, const float* xoffset, size_t M, size_t K, size_t N,
                       const int8_t* w, const float* zero, const float* scale, float* y) {
    const size_t blocks = K / BLOCK;
    parallel_shares(N / TILE_ROWS, [&](size_t t) {
        by_rows<4>(M, [&](auto rows, size_t m) {
            int8_tile<decltype(rows)::value>(w + t * TILE_ROWS * K, scale + t * TILE_ROWS, zero + t * TILE_ROWS,
                                             x + m * K, xscale + m * blocks, xoffset + m, K,
                                             y + m * N + t * TILE_ROWS, N, M == 1 ? AHEAD : 0);
        });
    });
}

}  // namespace avx512
}  // namespace mvlm
