// Int4MatMul (int4_matmul.hpp): the int4 weights' dot products, one token's and a prompt's.
//
// Why: on CPUs without VNNI, OpenVINO decompresses int4 weights to f32 before multiplying and reads memory well
// below its bandwidth. Here the activations are quantized to int8 (weight_matmul.cpp) and multiplied with the
// int4 weights in integer arithmetic (AVX2 vpmaddubsw; on CPUs with AVX-512 VNNI vpdpbusd, int4_avx512.hpp),
// which keeps up with memory. Figures: docs/benchmarks.md ("Figures behind the operations' design").

#include "int4_matmul.hpp"

#include <vector>

#if MVLM_AVX512
#include "int4_avx512.hpp"
#endif

namespace mvlm {

// 64 weights (32 bytes, stored as value + 8) -> two blocks of 32 unsigned bytes: inputs 0-31, then 32-63.
static inline void unpack_64(const uint8_t* bytes, __m256i& first, __m256i& second) {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes));
    first = _mm256_and_si256(packed, _mm256_set1_epi8(0x0F));
    second = _mm256_and_si256(_mm256_srli_epi16(packed, 4), _mm256_set1_epi8(0x0F));
}

// y[r] = sum over K of dequantized weight row r * x, for ROWS rows of one panel of `rows` rows (`weight` points
// at the first one's unit 0) against one x row. Each x block is loaded once for all rows; the rows' sums are
// independent chains. `ahead`: how far ahead to ask for weights (the hardware prefetcher stops at 4 KB pages).
template <int ROWS>
static void dot_rows(const uint8_t* weight, size_t rows, const uint16_t* scale, const int8_t* xv, const float* xscale,
                     const float* xoffset, size_t K, size_t G, size_t ahead, float* y) {
    const __m256i ones = _mm256_set1_epi16(1);
    const size_t groups = K / G, chunks_per_group = G / 64;
    __m256 acc[ROWS];
    float offset[ROWS];
    for (int r = 0; r < ROWS; ++r) acc[r] = _mm256_setzero_ps(), offset[r] = 0.f;
    for (size_t g = 0; g < groups; ++g) {
        __m256 group_acc[ROWS];
        for (int r = 0; r < ROWS; ++r) group_acc[r] = _mm256_setzero_ps();
        float group_offset = 0.f;
        for (size_t c = g * chunks_per_group; c < (g + 1) * chunks_per_group; ++c) {  // 64 inputs: 2 x blocks
            const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xv + c * 64));
            const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xv + c * 64 + BLOCK));
            const __m256 s0 = _mm256_set1_ps(xscale[2 * c]), s1 = _mm256_set1_ps(xscale[2 * c + 1]);
            group_offset += xoffset[2 * c] + xoffset[2 * c + 1];
            for (int r = 0; r < ROWS; ++r) {
                const uint8_t* here = weight + (c * rows + r) * UNIT;
                if (r % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(here + ahead), _MM_HINT_T0);
                __m256i w0, w1;
                unpack_64(here, w0, w1);
                const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w0, v0), ones);  // 8 x i32
                const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(w1, v1), ones);
                group_acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), s0, group_acc[r]);
                group_acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), s1, group_acc[r]);
            }
        }
        for (int r = 0; r < ROWS; ++r) {
            const float ws = _cvtsh_ss(scale[r * groups + g]);
            acc[r] = _mm256_fmadd_ps(group_acc[r], _mm256_set1_ps(ws), acc[r]);
            offset[r] += ws * group_offset;
        }
    }
    for (int r = 0; r < ROWS; ++r) y[r] = hsum(acc[r]) - offset[r];
}

// Prompts (many x rows): one weight row, already unpacked to bytes, against XR x rows at a time.
template <int XR>
static void dot_unpacked(const uint8_t* w, const uint16_t* scale, const Quantized& x, const float* group_offsets,
                         size_t m, size_t K, size_t G, float* y, size_t y_stride) {
    const __m256i ones = _mm256_set1_epi16(1);
    const size_t groups = K / G, blocks_per_group = G / BLOCK, blocks = K / BLOCK;
    const int8_t* xv = x.values.data() + m * K;
    const float* xscale = x.scale.data() + m * blocks;
    const float* xoffset = group_offsets + m * groups;
    __m256 acc[XR];
    float offset[XR];
    for (int i = 0; i < XR; ++i) acc[i] = _mm256_setzero_ps(), offset[i] = 0.f;
    for (size_t g = 0; g < groups; ++g) {
        __m256 group_acc[XR];
        for (int i = 0; i < XR; ++i) group_acc[i] = _mm256_setzero_ps();
        for (size_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
            const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * BLOCK));
            for (int i = 0; i < XR; ++i) {
                const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xv + i * K + b * BLOCK));
                const __m256i products = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, v), ones);
                group_acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(products), _mm256_set1_ps(xscale[i * blocks + b]),
                                               group_acc[i]);
            }
        }
        const float group_scale = _cvtsh_ss(scale[g]);
        const __m256 ws = _mm256_set1_ps(group_scale);
        for (int i = 0; i < XR; ++i) {
            acc[i] = _mm256_fmadd_ps(group_acc[i], ws, acc[i]);
            offset[i] += group_scale * xoffset[i * groups + g];
        }
    }
    for (int i = 0; i < XR; ++i) y[i * y_stride] = hsum(acc[i]) - offset[i];
}

// Weight row n as K unsigned bytes (value + 8) in input order.
static void unpack_row(const uint8_t* w, size_t n, size_t K, size_t N, uint8_t* bytes) {
    for (size_t c = 0; c < K / 64; ++c) {
        __m256i w0, w1;
        unpack_64(unit_at(w, n, c, K / 2, N), w0, w1);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(bytes + c * 64), w0);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(bytes + c * 64 + BLOCK), w1);
    }
}

// A prompt with AVX2: unpack a chunk of weight rows once, then run every x row against it, 4 x rows at a time.
static void prompt_avx2(const Quantized& q, const uint8_t* w, const uint16_t* s, size_t M, size_t K, size_t N,
                        size_t G, float* y) {
    const size_t groups = K / G, blocks = K / BLOCK;
    std::vector<float> group_offsets(M * groups, 0.f);  // the offsets summed per weight group
    for (size_t i = 0; i < M * blocks; ++i)
        group_offsets[i / blocks * groups + i % blocks / (G / BLOCK)] += q.offset[i];
    constexpr size_t CHUNK = 16;
    ov::parallel_for((N + CHUNK - 1) / CHUNK, [&](size_t chunk) {
        thread_local Buffer<uint8_t> unpacked;
        const size_t first = chunk * CHUNK, rows = std::min(N, first + CHUNK) - first;
        unpacked.resize(rows * K);
        for (size_t r = 0; r < rows; ++r) unpack_row(w, first + r, K, N, &unpacked[r * K]);
        const float* offsets = group_offsets.data();
        size_t m = 0;
        for (; m + 4 <= M; m += 4)
            for (size_t r = 0, n = first; r < rows; ++r, ++n)
                dot_unpacked<4>(&unpacked[r * K], s + n * groups, q, offsets, m, K, G, y + m * N + n, N);
        for (; m < M; ++m)
            for (size_t r = 0, n = first; r < rows; ++r, ++n)
                dot_unpacked<1>(&unpacked[r * K], s + n * groups, q, offsets, m, K, G, y + m * N + n, N);
    });
}

bool Int4MatMul::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    const ov::Tensor &x = inputs[0], &weight = inputs[1], &scale = inputs[2];
    const size_t K = x.get_shape().back(), M = x.get_size() / K, N = weight.get_shape()[0];
    const size_t groups = scale.get_shape()[1] / 2, G = K / groups;
    const Quantized& q = quantize_input(x, N, outputs[0]);
    const uint8_t* w = static_cast<const uint8_t*>(weight.data());
    const uint16_t* s = static_cast<const uint16_t*>(scale.data());
    float* y = outputs[0].data<float>();
    if (M == 1) {  // one token: stream the weights once, a panel at a time
        const int8_t* xv = q.values.data();
        const float *xscale = q.scale.data(), *xoffset = q.offset.data();
        for_each_panel(N, [&](size_t n, size_t rows) {
            const uint8_t* panel = w + n * K / 2;
            if (rows == PANEL) {
#if MVLM_AVX512
                avx512::dot_panel(panel, s + n * groups, xv, xscale, xoffset, K, G, y + n);
#else
                dot_rows<4>(panel, rows, s + n * groups, xv, xscale, xoffset, K, G, PANEL * K / 2, y + n);
#endif
                return;
            }
            for (size_t r = 0; r < rows; ++r)  // a last panel of fewer rows
                dot_rows<1>(panel + r * UNIT, rows, s + (n + r) * groups, xv, xscale, xoffset, K, G, 0, y + n + r);
        });
        return true;
    }
#if MVLM_AVX512
    avx512::prompt(q, M, K, N, G, y, [&](size_t n, uint8_t* bytes, float* group_scale, float& zero) {
        unpack_row(w, n, K, N, bytes);
        for (size_t g = 0; g < groups; ++g) group_scale[g] = _cvtsh_ss(s[n * groups + g]);
        zero = 1.f;  // the stored + 8: x's offsets hold the 8 already
    });
#else
    prompt_avx2(q, w, s, M, K, N, G, y);
#endif
    return true;
}

}  // namespace mvlm
