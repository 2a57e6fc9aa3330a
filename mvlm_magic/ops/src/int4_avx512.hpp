// Int4MatMul's and Int8MatMul's AVX-512 VNNI paths, included by int4_matmul.cpp and int8_matmul.cpp only in the
// AVX-512 build (MVLM_AVX512: compiled with -mavx512vnni -mavx512bw); the weight layout is common.hpp's.
//
// Why: with VNNI one instruction (vpdpbusd) multiplies 64 unsigned bytes by 64 signed ones and adds each 4 into
// an int32 lane, where AVX2 needs three. OpenVINO has its own int8 path on these CPUs, but runs prompts through
// bf16 and decodes below memory speed (docs/benchmarks.md, "Figures behind the operations' design").
//
// Int4MatMul reads its weights in tiles of 32 rows (`int4_tile`, layout.int4_tiles): a token and a prompt alike,
// with no unpacking per call. Int8MatMul's int8 head streams a panel (4 rows) at a time for a token; its prompts
// unpack each tile of 32 weight rows once into the same tile order (see `tile`).

#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.hpp"

namespace mvlm {
namespace avx512 {

// How far ahead to ask for a token's weights: the stream of panels reads at memory speed from 2-3 KB on
// (measured: docs/benchmarks.md).
constexpr size_t AHEAD = 3072;

// (low 8 lanes, high 8 lanes) summed: the two rows of a vector.
static inline void sum_halves(__m512 v, float& low, float& high) {
    low = hsum(_mm512_castps512_ps256(v));
    high = hsum(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));  // (AVX-512F only: no DQ)
}

// Two scalars as a vector: a for the low 8 lanes, b for the high 8.
static inline __m512 halves(float a, float b) {
    return _mm512_castpd_ps(
        _mm512_insertf64x4(_mm512_castps_pd(_mm512_set1_ps(a)), _mm256_castps_pd(_mm256_set1_ps(b)), 1));
}

// sums[0..3] for one full panel of the int8 head, as dot_rows_int8: vpdpbusd takes unsigned bytes, so each
// block multiplies weight + 128 (the weight xor 0x80) and starts from -128 * the sum of its x values.
[[maybe_unused]]  // (int8_matmul.cpp uses only the int8 one, int4_matmul.cpp only the int4 one)
static void dot_panel_int8(const int8_t* panel, const int8_t* xv, const float* xscale, size_t K, float* sums) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    for (size_t b = 0; b < K / BLOCK; ++b) {
        const __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xv + b * BLOCK)));
        const __m512 s = _mm512_set1_ps(xscale[b]);
        const __m512i start =
            _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, x));
        for (int pair = 0; pair < 2; ++pair) {
            const int8_t* here = panel + b * PANEL * UNIT + pair * 2 * UNIT;
            _mm_prefetch(reinterpret_cast<const char*>(here + AHEAD), _MM_HINT_T0);
            const __m512i shifted = _mm512_xor_si512(_mm512_loadu_si512(here), flip);  // weight + 128
            const __m512i products = _mm512_dpbusd_epi32(start, shifted, x);
            acc[pair] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(products), s, acc[pair]);
        }
    }
    sum_halves(acc[0], sums[0], sums[1]);
    sum_halves(acc[1], sums[2], sums[3]);
}

// Prompts run tiles of 32 weight rows (two vectors, one row per int32 lane) x MR x rows. Weight rows are
// unpacked once per call into "tile order": per step of 4 inputs, 2 vectors of 16 rows x 4 bytes; each x row's 4
// bytes of a step are broadcast to all lanes. A lane adds up one x block (8 steps) in int32, then it is scaled:
// faster than vectors of 16 blocks of one row (measured: docs/benchmarks.md).
constexpr size_t LANES = 16, VECTORS = 2, TILE_ROWS = LANES * VECTORS;

// r[i] = 16 dwords of row i  ->  r[j] = dword j of rows 0..15.
static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[4 + i], 0x88);
        t[4 + i] = _mm512_shuffle_i32x4(r[i], r[4 + i], 0xDD);
        t[8 + i] = _mm512_shuffle_i32x4(r[8 + i], r[12 + i], 0x88);
        t[12 + i] = _mm512_shuffle_i32x4(r[8 + i], r[12 + i], 0xDD);
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0x88);
        r[8 + i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0xDD);
        r[4 + i] = _mm512_shuffle_i32x4(t[4 + i], t[12 + i], 0x88);
        r[12 + i] = _mm512_shuffle_i32x4(t[4 + i], t[12 + i], 0xDD);
    }
}

// MR x rows (int8, natural order) against one tile of unpacked weights (`rows` of its 32 are real):
// y[i * y_stride + r] = sum over groups of (sum over its blocks of weight scale * x scale * (w . x) in int32)
// - weight scale * zero * the group's offset. Per group and row: `wscale`, `wzero` (scale * zero point / 8);
// per x row: `xscale` per block, `xoffset` per group (8 * scale * sum of the values, over the group's blocks).
template <int MR>
static void tile(const uint8_t* w, const float* wscale, const float* wzero, const int8_t* x, const float* xscale,
                 const float* xoffset, size_t K, size_t G, float* y, size_t y_stride, size_t rows) {
    const size_t blocks = K / BLOCK, groups = K / G, blocks_per_group = G / BLOCK;
    __m512 acc[VECTORS][MR];
    for (size_t v = 0; v < VECTORS; ++v)
        for (int i = 0; i < MR; ++i) acc[v][i] = _mm512_setzero_ps();
    for (size_t g = 0; g < groups; ++g) {
        __m512 ws[VECTORS];
        for (size_t v = 0; v < VECTORS; ++v) ws[v] = _mm512_load_ps(wscale + (g * VECTORS + v) * LANES);
        for (size_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
            __m512i sums[VECTORS][MR];
            for (size_t v = 0; v < VECTORS; ++v)
                for (int i = 0; i < MR; ++i) sums[v][i] = _mm512_setzero_si512();
            const uint8_t* wb = w + b * 8 * VECTORS * 64;
            const int8_t* xb = x + b * BLOCK;
#pragma GCC unroll 8
            for (int step = 0; step < 8; ++step) {  // (a fixed count, unrolled: the sums stay in registers)
                __m512i wv[VECTORS];
                for (size_t v = 0; v < VECTORS; ++v) wv[v] = _mm512_load_si512(wb + (step * VECTORS + v) * 64);
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
                    acc[v][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[v][i]), _mm512_mul_ps(ws[v], xs), acc[v][i]);
            }
        }
        for (int i = 0; i < MR; ++i) {
            const __m512 offset = _mm512_set1_ps(xoffset[i * groups + g]);
            for (size_t v = 0; v < VECTORS; ++v)
                acc[v][i] = _mm512_fnmadd_ps(_mm512_load_ps(wzero + (g * VECTORS + v) * LANES), offset, acc[v][i]);
        }
    }
    for (size_t v = 0; v < VECTORS && v * LANES < rows; ++v) {
        const __mmask16 real = static_cast<__mmask16>((1u << std::min(LANES, rows - v * LANES)) - 1);
        for (int i = 0; i < MR; ++i) _mm512_mask_storeu_ps(y + i * y_stride + v * LANES, real, acc[v][i]);
    }
}

// A prompt (M x rows) against N weight rows, a tile of 32 at a time: `unpack(n, bytes, scales, zero)` writes
// weight row n as K unsigned bytes in natural order, its scale per group of G, and its zero point / 8.
template <class Unpack>
static void prompt(const Quantized& q, size_t M, size_t K, size_t N, size_t G, float* y, const Unpack& unpack) {
    const size_t blocks = K / BLOCK, groups = K / G;
    thread_local Buffer<float> kept;  // per x row and weight group: the blocks' offsets summed
    kept.assign(M * groups, 0.f);
    float* offsets = kept.data();  // (the lambda runs on other threads too: this thread's buffer)
    for (size_t i = 0; i < M * blocks; ++i) offsets[i / blocks * groups + i % blocks / (G / BLOCK)] += q.offset[i];
    ov::parallel_for((N + TILE_ROWS - 1) / TILE_ROWS, [&](size_t t) {
        thread_local Buffer<uint8_t> natural, tiled;
        thread_local Buffer<float> scales, wscale, wzero;
        const size_t first = t * TILE_ROWS, rows = std::min(TILE_ROWS, N - first);
        natural.resize(TILE_ROWS * K), tiled.resize(TILE_ROWS * K), scales.resize(groups);
        std::fill(natural.begin() + rows * K, natural.end(), 0);  // a last tile's missing rows
        wscale.assign(groups * TILE_ROWS, 0.f), wzero.assign(groups * TILE_ROWS, 0.f);
        for (size_t r = 0; r < rows; ++r) {
            float zero = 0.f;
            unpack(first + r, &natural[r * K], scales.data(), zero);
            for (size_t g = 0; g < groups; ++g) {  // (group, vector, lane)
                wscale[g * TILE_ROWS + r] = scales[g];
                wzero[g * TILE_ROWS + r] = scales[g] * zero;
            }
        }
        for (size_t v = 0; v < VECTORS; ++v)  // 16 rows x 16 steps at a time into tile order
            for (size_t c = 0; c < K / 64; ++c) {
                __m512i part[16];
                for (size_t r = 0; r < LANES; ++r) part[r] = _mm512_load_si512(&natural[(v * LANES + r) * K + c * 64]);
                transpose16(part);
                for (size_t j = 0; j < 16; ++j) _mm512_store_si512(&tiled[((c * 16 + j) * VECTORS + v) * 64], part[j]);
            }
        const uint8_t* w = tiled.data();
        const float *xs = q.scale.data(), *xo = offsets;
        for (size_t m = 0; m < M;) {
            const size_t mr = std::min<size_t>(4, M - m);
            const int8_t* xm = &q.values[m * K];
            float* out = y + m * N + first;
            const float *wsm = wscale.data(), *wzm = wzero.data(), *xsm = xs + m * blocks, *xom = xo + m * groups;
            switch (mr) {
                case 4: tile<4>(w, wsm, wzm, xm, xsm, xom, K, G, out, N, rows); break;
                case 3: tile<3>(w, wsm, wzm, xm, xsm, xom, K, G, out, N, rows); break;
                case 2: tile<2>(w, wsm, wzm, xm, xsm, xom, K, G, out, N, rows); break;
                default: tile<1>(w, wsm, wzm, xm, xsm, xom, K, G, out, N, rows);
            }
            m += mr;
        }
    });
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
        __m512 ws[VECTORS];
        for (size_t v = 0; v < VECTORS; ++v)
            ws[v] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scale + (g * VECTORS + v) * LANES)));
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
                    acc[v][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[v][i]), _mm512_mul_ps(ws[v], xs), acc[v][i]);
            }
        }
        for (int i = 0; i < MR; ++i) {
            const __m512 offset = _mm512_set1_ps(xoffset[i * groups + g]);
            for (size_t v = 0; v < VECTORS; ++v) acc[v][i] = _mm512_fnmadd_ps(ws[v], offset, acc[v][i]);
        }
    }
    for (int i = 0; i < MR; ++i)
        for (size_t v = 0; v < VECTORS; ++v) _mm512_storeu_ps(y + i * y_stride + v * LANES, acc[v][i]);
}

// Int4MatMul's rows of x (M, K) against N weight rows in tiles: each tile once, MR x rows at a time against it.
static void int4_tiles(const int8_t* x, const float* xscale, const float* xoffset, size_t M, size_t K, size_t N,
                       size_t G, const uint8_t* w, const uint16_t* scale, float* y) {
    const size_t groups = K / G, tile_bytes = TILE_ROWS * K / 2, blocks = K / BLOCK;
    parallel_shares(N / TILE_ROWS, [&](size_t t) {
        const uint8_t* wt = w + t * tile_bytes;
        const uint16_t* st = scale + t * groups * TILE_ROWS;
        const size_t ahead = M == 1 ? AHEAD : 0;
        for (size_t m = 0; m < M;) {
            const size_t mr = std::min<size_t>(4, M - m);
            const int8_t* xm = x + m * K;
            const float *xs = xscale + m * blocks, *xo = xoffset + m * groups;
            float* out = y + m * N + t * TILE_ROWS;
            switch (mr) {
                case 4: int4_tile<4>(wt, st, xm, xs, xo, K, G, out, N, ahead); break;
                case 3: int4_tile<3>(wt, st, xm, xs, xo, K, G, out, N, ahead); break;
                case 2: int4_tile<2>(wt, st, xm, xs, xo, K, G, out, N, ahead); break;
                default: int4_tile<1>(wt, st, xm, xs, xo, K, G, out, N, ahead);
            }
            m += mr;
        }
    });
}

}  // namespace avx512
}  // namespace mvlm
