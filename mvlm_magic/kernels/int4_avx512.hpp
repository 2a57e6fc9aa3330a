// Int4MatMul's and Int8MatMul's AVX-512 VNNI paths (int4_matmul.cpp includes this file when it is built with
// -mavx512vnni; its helpers and the weight layout are defined there).
//
// Why: with VNNI one instruction (vpdpbusd) multiplies 64 unsigned bytes by 64 signed ones and adds each 4 into
// an int32 lane, where AVX2 needs three. OpenVINO 2026.4 has its own int8 path on these CPUs, but runs prompts
// through bf16 (brgemm_avx512_bf16) and decodes at ~0.6x of memory speed (docs/benchmarks.md).
//
// One token streams a panel (4 rows) at a time: a 64-byte load holds one unit of two rows, so the 32 x values
// it meets are the same for both halves of the vector and their scale is one number.
// Prompts unpack each chunk of weight rows once into "lane order" and quantize x into the same order: in each
// run of 512 inputs (16 blocks of 32), vector s (0..7) holds bytes 4s..4s+3 of every block, lane j = block j.
// So a lane adds up one block over 8 vpdpbusd in int32 and is scaled once.

#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace mvlm {
namespace avx512 {

constexpr size_t RUN = 512;  // inputs per run of lane order: 16 lanes x 32 (one block each)
// How far ahead to ask for a token's weights: measured on Zen 5 (a standalone stream of panels): 0 B 33 GB/s,
// 1 KB 39, 2-3 KB 46-48 of the ~48 GB/s two cores read.
constexpr size_t AHEAD = 3072;

// (low 8 lanes, high 8 lanes) summed: the two rows of a vector.
static inline void sum_halves(__m512 v, float& low, float& high) {
    low = hsum(_mm512_castps512_ps256(v));
    high = hsum(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));  // (AVX-512F only: no DQ)
}

// Two scalars as a vector: a for the low 8 lanes, b for the high 8.
static inline __m512 halves(float a, float b) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_set1_ps(a)), _mm256_castps_pd(_mm256_set1_ps(b)), 1));
}

// y[0..3] for one full panel of int4 weights against one x row (natural order). Groups of G (a multiple of 64).
static void dot_panel(const uint8_t* panel, const uint16_t* scale, const int8_t* xv, const float* xscale,
                      const float* xoffset, size_t K, size_t G, float* y) {
    const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
    const size_t groups = K / G, chunks_per_group = G / 64;
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};  // rows 0 | 1, rows 2 | 3
    float offset[PANEL] = {};
    for (size_t g = 0; g < groups; ++g) {
        __m512 group_acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        float group_offset = 0.f;
        for (size_t c = g * chunks_per_group; c < (g + 1) * chunks_per_group; ++c) {  // 64 inputs: 2 x blocks
            const __m512i x0 = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xv + c * 64)));
            const __m512i x1 = _mm512_broadcast_i64x4(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xv + c * 64 + BLOCK)));
            const __m512 s0 = _mm512_set1_ps(xscale[2 * c]), s1 = _mm512_set1_ps(xscale[2 * c + 1]);
            group_offset += xoffset[2 * c] + xoffset[2 * c + 1];
            for (int pair = 0; pair < 2; ++pair) {
                const uint8_t* here = panel + c * PANEL * UNIT + pair * 2 * UNIT;
                _mm_prefetch(reinterpret_cast<const char*>(here + AHEAD), _MM_HINT_T0);
                const __m512i packed = _mm512_loadu_si512(here);
                const __m512i w0 = _mm512_and_si512(packed, low_nibbles);
                const __m512i w1 = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low_nibbles);
                const __m512i p0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, x0);  // 16 x i32
                const __m512i p1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w1, x1);
                group_acc[pair] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), s0, group_acc[pair]);
                group_acc[pair] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), s1, group_acc[pair]);
            }
        }
        float ws[PANEL];
        for (size_t r = 0; r < PANEL; ++r) {
            ws[r] = _cvtsh_ss(scale[r * groups + g]);
            offset[r] += ws[r] * group_offset;
        }
        acc[0] = _mm512_fmadd_ps(group_acc[0], halves(ws[0], ws[1]), acc[0]);
        acc[1] = _mm512_fmadd_ps(group_acc[1], halves(ws[2], ws[3]), acc[1]);
    }
    sum_halves(acc[0], y[0], y[1]);
    sum_halves(acc[1], y[2], y[3]);
    for (size_t r = 0; r < PANEL; ++r) y[r] -= offset[r];
}

// sums[0..3] for one full panel of the int8 head, as dot_rows_int8: vpdpbusd takes unsigned bytes, so each
// block multiplies weight + 128 (the weight xor 0x80) and starts from -128 * the sum of its x values.
static void dot_panel_int8(const int8_t* panel, const int8_t* xv, const float* xscale, size_t K, float* sums) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    for (size_t b = 0; b < K / BLOCK; ++b) {
        const __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xv + b * BLOCK)));
        const __m512 s = _mm512_set1_ps(xscale[b]);
        const __m512i start = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, x));
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

// One 512-input run from natural order to lane order (both are runs of bytes): a 16 x 8 transpose of dwords.
// (Faster than vpgatherdd on Zen 5: 10 vs 38 ns a run.)
static inline void to_lane_order(const void* natural, void* lanes) {
    const uint8_t* in = static_cast<const uint8_t*>(natural);
    uint8_t* out = static_cast<uint8_t*>(lanes);
    for (size_t j = 0; j < 16; ++j)
        for (size_t s = 0; s < 8; ++s) std::memcpy(out + s * 64 + 4 * j, in + j * 32 + 4 * s, 4);
}

// Prompts: WR weight rows against XR x rows, both in lane order (rows of K bytes; K a multiple of 512).
// Per row and block: `wscale` the weight's scale (f32), `xscale` x's, `xoffset` what the +8 of the stored
// nibbles adds (8 * scale * sum of the block's values). y[i * y_stride + r] = row r . x row i.
template <int WR, int XR>
static void tile(const uint8_t* w, const float* wscale, const int8_t* x, const float* xscale, const float* xoffset,
                 size_t K, float* y, size_t y_stride) {
    const size_t blocks = K / BLOCK;
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

// A prompt (M x rows): x in lane order, then per chunk of 16 weight rows: unpack them into lane order (with each
// block's weight scale), and run tiles of 4 weight rows x 3 x rows over it.
static void prompt(const Quantized& q, const uint8_t* w, const uint16_t* s, size_t M, size_t K, size_t N, size_t G,
                   float* y) {
    constexpr size_t CHUNK = 16;
    constexpr int WR = 4, XR = 3;
    const size_t groups = K / G, blocks = K / BLOCK;
    thread_local Buffer<int8_t> lanes;
    lanes.resize(M * K);
    int8_t* x = lanes.data();
    ov::parallel_for(M, [&](size_t m) {
        for (size_t run = 0; run < K; run += RUN) to_lane_order(&q.values[m * K + run], x + m * K + run);
    });
    const float *xs = q.scale.data(), *xo = q.offset.data();
    ov::parallel_for((N + CHUNK - 1) / CHUNK, [&](size_t chunk) {
        thread_local Buffer<uint8_t> unpacked, natural;
        thread_local Buffer<float> wscale;
        const size_t first = chunk * CHUNK, rows = std::min(N, first + CHUNK) - first;
        unpacked.resize(rows * K), natural.resize(K), wscale.resize(rows * blocks);
        for (size_t r = 0; r < rows; ++r) {
            for (size_t c = 0; c < K / 64; ++c) {
                __m256i w0, w1;
                unpack_64(unit_at(w, first + r, c, K / 2, N), w0, w1);
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(&natural[c * 64]), w0);
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(&natural[c * 64 + BLOCK]), w1);
            }
            for (size_t run = 0; run < K; run += RUN) to_lane_order(&natural[run], &unpacked[r * K + run]);
            for (size_t g = 0; g < groups; ++g)
                std::fill_n(&wscale[r * blocks + g * G / BLOCK], G / BLOCK, _cvtsh_ss(s[(first + r) * groups + g]));
        }
        for (size_t m = 0; m < M;) {
            const size_t xr = M - m >= XR ? XR : 1;
            for (size_t r = 0; r < rows;) {
                const size_t wr = rows - r >= WR ? WR : 1;
                const uint8_t* wrow = &unpacked[r * K];
                const float *wsr = &wscale[r * blocks], *xsm = xs + m * blocks, *xom = xo + m * blocks;
                float* out = y + m * N + first + r;
                if (wr == WR && xr == XR) tile<WR, XR>(wrow, wsr, x + m * K, xsm, xom, K, out, N);
                else if (wr == WR) tile<WR, 1>(wrow, wsr, x + m * K, xsm, xom, K, out, N);
                else if (xr == XR) tile<1, XR>(wrow, wsr, x + m * K, xsm, xom, K, out, N);
                else tile<1, 1>(wrow, wsr, x + m * K, xsm, xom, K, out, N);
                r += wr;
            }
            m += xr;
        }
    });
}

}  // namespace avx512
}  // namespace mvlm
