// Int4MatMul's AVX-512 VNNI paths (int4_matmul.cpp includes this file when it is built with -mavx512vnni).
//
// Why: with VNNI one instruction (vpdpbusd) multiplies 64 unsigned bytes by 64 signed ones and adds each 4 into
// an int32 lane, where AVX2 needs three. OpenVINO 2026.4 has its own int8 path on these CPUs, but runs prompts
// through bf16 (brgemm_avx512_bf16) and decodes ~0.6x slower than memory allows (docs/benchmarks.md).
//
// One token (M = 1) streams the packed weights as they are in the IR (64 inputs per 32 bytes, see
// int4_matmul.cpp), 128 inputs per load. Prompts unpack a chunk of weight rows once into "lane order" and
// quantize x into the same order: in each run of 512 inputs (16 blocks of 32), vector s (0..7) holds bytes
// 4s..4s+3 of every block, lane j = block j. So a lane adds up one block over 8 vpdpbusd in int32 and is
// scaled once, instead of converting and scaling after every instruction.

#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace mvlm {
namespace avx512 {

constexpr size_t RUN = 512;  // inputs per run of lane order: 16 lanes x 32 (one block each)

// One 512-input run from natural order to lane order (both are runs of bytes): a 16 x 8 transpose of dwords.
static inline void to_lane_order(const uint8_t* in, uint8_t* out) {
    for (size_t j = 0; j < 16; ++j)
        for (size_t s = 0; s < 8; ++s) std::memcpy(out + s * 64 + 4 * j, in + j * 32 + 4 * s, 4);
}

// One token: y[r] for ROWS weight rows (packed as in the IR) against one x row in "pair order": per 128 inputs
// the blocks 0, 2 (what the low nibbles of a 64-byte load meet) then 1, 3 (the high nibbles), with each block's
// scale repeated over its 8 lanes in `lane_scale` (32 floats per 128 inputs). Groups of G (a multiple of 128).
template <int ROWS>
static void dot_rows(const uint8_t* weight, const uint16_t* scale, const int8_t* xv, const float* lane_scale,
                     const float* xoffset, size_t K, size_t G, size_t prefetch, float* y) {
    const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
    const size_t groups = K / G, steps_per_group = G / 128;
    __m512 acc[ROWS];
    float offset[ROWS];
    for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_ps(), offset[r] = 0.f;
    for (size_t g = 0; g < groups; ++g) {
        __m512 group_acc[ROWS];
        for (int r = 0; r < ROWS; ++r) group_acc[r] = _mm512_setzero_ps();
        float group_offset = 0.f;
        for (size_t c = g * steps_per_group; c < (g + 1) * steps_per_group; ++c) {  // 128 inputs
            const __m512i x0 = _mm512_loadu_si512(xv + c * 128), x1 = _mm512_loadu_si512(xv + c * 128 + 64);
            const __m512 s0 = _mm512_loadu_ps(lane_scale + c * 32), s1 = _mm512_loadu_ps(lane_scale + c * 32 + 16);
            for (int b = 0; b < 4; ++b) group_offset += xoffset[4 * c + b];
            for (int r = 0; r < ROWS; ++r) {
                const uint8_t* here = weight + r * K / 2 + c * 64;
                _mm_prefetch(reinterpret_cast<const char*>(here + prefetch), _MM_HINT_T0);
                const __m512i packed = _mm512_loadu_si512(here);
                const __m512i w0 = _mm512_and_si512(packed, low_nibbles);
                const __m512i w1 = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low_nibbles);
                const __m512i p0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, x0);  // 16 x i32
                const __m512i p1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w1, x1);
                group_acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), s0, group_acc[r]);
                group_acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), s1, group_acc[r]);
            }
        }
        for (int r = 0; r < ROWS; ++r) {
            const float ws = _cvtsh_ss(scale[r * groups + g]);
            acc[r] = _mm512_fmadd_ps(group_acc[r], _mm512_set1_ps(ws), acc[r]);
            offset[r] += ws * group_offset;
        }
    }
    for (int r = 0; r < ROWS; ++r) y[r] = _mm512_reduce_add_ps(acc[r]) - offset[r];
}

// x (K int8 values, scales per block of 32) -> pair order for dot_rows: values (K) and lane scales (K / 4).
static void to_pair_order(const int8_t* values, const float* scale, size_t K, int8_t* out, float* lane_scale) {
    static constexpr int order[4] = {0, 2, 1, 3};
    for (size_t c = 0; c < K / 128; ++c)
        for (int i = 0; i < 4; ++i) {
            const size_t block = 4 * c + order[i];
            std::memcpy(out + c * 128 + i * 32, values + block * 32, 32);
            for (int lane = 0; lane < 8; ++lane) lane_scale[c * 32 + i * 8 + lane] = scale[block];
        }
}

// Prompts: WR weight rows against XR x rows, both in lane order (rows of K bytes; K a multiple of 512).
// Per row and block: `wscale` the weight's scale (f32), `xscale` x's, `xoffset` what the +8 of the stored
// nibbles adds (8 * scale * sum of the block's values). y[i * y_stride + r] = row r . x row i.
template <int WR, int XR>
static void tile(const uint8_t* w, const float* wscale, const int8_t* x, const float* xscale, const float* xoffset,
                 size_t K, float* y, size_t y_stride) {
    const size_t blocks = K / 32;
    __m512 acc[WR][XR];
    for (int r = 0; r < WR; ++r)
        for (int i = 0; i < XR; ++i) acc[r][i] = _mm512_setzero_ps();
    for (size_t run = 0; run < K / RUN; ++run) {
        __m512i sums[WR][XR];
        for (int r = 0; r < WR; ++r)
            for (int i = 0; i < XR; ++i) sums[r][i] = _mm512_setzero_si512();
        for (size_t s = 0; s < 8; ++s) {
            __m512i xs[XR];
            for (int i = 0; i < XR; ++i) xs[i] = _mm512_loadu_si512(x + i * K + run * RUN + s * 64);
            for (int r = 0; r < WR; ++r) {
                const __m512i ws = _mm512_loadu_si512(w + r * K + run * RUN + s * 64);
                for (int i = 0; i < XR; ++i) sums[r][i] = _mm512_dpbusd_epi32(sums[r][i], ws, xs[i]);
            }
        }
        for (int i = 0; i < XR; ++i) {  // (sum * x scale - offset) * weight scale, lane by lane (block by block)
            const __m512 xsc = _mm512_loadu_ps(xscale + i * blocks + run * 16);
            const __m512 xoff = _mm512_loadu_ps(xoffset + i * blocks + run * 16);
            for (int r = 0; r < WR; ++r) {
                const __m512 block = _mm512_fmsub_ps(_mm512_cvtepi32_ps(sums[r][i]), xsc, xoff);
                acc[r][i] = _mm512_fmadd_ps(block, _mm512_loadu_ps(wscale + r * blocks + run * 16), acc[r][i]);
            }
        }
    }
    for (int r = 0; r < WR; ++r)
        for (int i = 0; i < XR; ++i) y[i * y_stride + r] = _mm512_reduce_add_ps(acc[r][i]);
}

}  // namespace avx512
}  // namespace mvlm
