// Int8MatMul (int8_matmul.hpp): per-row int8 weights' dot products, for one token and for many rows, from tiles of
// 32 rows as Int4MatMul's (AVX-512 VNNI: int4_avx512.hpp).

#include "int8_matmul.hpp"
#include "read_ahead.hpp"

#if MVLM_AVX512
#include "int4_avx512.hpp"
#endif

namespace mvlm {

// With AVX2 (layout.int8_tiles), per step of 4 inputs a tile is 128 bytes = four loads of 32 (rows 0-7, 8-15, 16-23,
// 24-31), 4 inputs per lane. Signed * signed through vpmaddubsw's unsigned * signed: |w| * (x with w's sign), 2
// products a 16-bit half-lane (at most 2 * 128 * 127 < 32768), then vpmaddwd makes them one int32 per lane, summed
// over a block of 8 steps and scaled. Per row of the tile: `scale` and `zero`; per x row: `xscale` per block,
// `xoffset` (8 * scale * sum, over all blocks).

// Each lane's 4 weights (`w`, and `magnitude` = |w|) times the 4 x bytes broadcast, summed in int32.
static inline __m256i signed_dot4(__m256i w, __m256i magnitude, __m256i broadcast) {
    const __m256i pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(broadcast, w));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

// 8 rows' outputs from their sums `acc` (w . x over the x scales): scale * (w . x - zero * sum of x), where the x
// row's `xoffset` is 8 * its scale * sum.
static inline __m256 unzeroed(__m256 acc, const float* scale, const float* zero, float xoffset) {
    const __m256 centred = _mm256_fnmadd_ps(_mm256_loadu_ps(zero), _mm256_set1_ps(xoffset / 8.f), acc);
    return _mm256_mul_ps(_mm256_loadu_ps(scale), centred);
}

// One x row (a token) against one tile: the tile's bytes read once, in order, asked for `ahead` bytes ahead.
[[maybe_unused]]  // (the AVX-512 build has its own)
static void int8_tile_avx2(const int8_t* w, const float* scale, const float* zero, const int8_t* x,
                           const float* xscale, float xoffset, size_t K, float* y, size_t ahead) {
    const size_t blocks = K / BLOCK;
    __m256 acc[4];  // weight rows 0-7, 8-15, 16-23, 24-31
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (size_t b = 0; b < blocks; ++b) {
        __m256i sums[4];  // 32-bit
        for (auto& sum : sums) sum = _mm256_setzero_si256();
        const int8_t* wb = w + b * 8 * 128;
        for (int step = 0; step < 8; ++step) {
            const __m256i broadcast = broadcast4(x + b * BLOCK + step * 4);
            for (int j = 0; j < 4; ++j) {
                const int8_t* here = wb + step * 128 + 32 * j;
                if (j % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(here + ahead), _MM_HINT_T0);
                const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(here));
                const __m256i magnitude = _mm256_sign_epi8(wv, wv);  // |w| (-128 stays 0x80: 128 unsigned)
                sums[j] = _mm256_add_epi32(sums[j], signed_dot4(wv, magnitude, broadcast));
            }
        }
        const __m256 xs = _mm256_set1_ps(xscale[b]);
        for (int j = 0; j < 4; ++j) acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[j]), xs, acc[j]);
    }
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(y + 8 * j, unzeroed(acc[j], scale + 8 * j, zero + 8 * j, xoffset));
}

// MR x rows (a prompt's, or a batch's) against one tile, in two halves (rows 0-15, then 16-31), so that each weight
// made unsigned serves four rows within the 16 ymm registers: 1.3-1.5x the throughput of whole tiles two rows at a
// time (measured: docs/benchmarks.md). The tile stays in the cache between the passes.
template <int MR>
static void int8_half_tiles_avx2(const int8_t* w, const float* scale, const float* zero, const int8_t* x,
                                 const float* xscale, const float* xoffset, size_t K, float* y, size_t y_stride) {
    const size_t blocks = K / BLOCK;
    for (int half = 0; half < 2; ++half) {
        alignas(32) float acc[MR][2][8] = {};  // per x row: weight rows 0-7, 8-15 (or 16-23, 24-31)
        for (size_t b = 0; b < blocks; ++b) {
            __m256i sums[MR][2];  // 32-bit
            for (auto& row : sums)
                for (auto& sum : row) sum = _mm256_setzero_si256();
            const int8_t* wb = w + b * 8 * 128 + half * 64;
#pragma GCC unroll 8
            for (int step = 0; step < 8; ++step) {
                __m256i wv[2], magnitude[2];
                for (int j = 0; j < 2; ++j) {
                    wv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + step * 128 + 32 * j));
                    magnitude[j] = _mm256_sign_epi8(wv[j], wv[j]);
                }
                for (int i = 0; i < MR; ++i) {
                    const __m256i broadcast = broadcast4(x + i * K + b * BLOCK + step * 4);
                    for (int j = 0; j < 2; ++j) {
                        sums[i][j] = _mm256_add_epi32(sums[i][j], signed_dot4(wv[j], magnitude[j], broadcast));
                        keep_in_register(sums[i][j]);
                    }
                }
            }
            for (int i = 0; i < MR; ++i) {
                const __m256 xs = _mm256_set1_ps(xscale[i * blocks + b]);
                for (int j = 0; j < 2; ++j)
                    _mm256_store_ps(acc[i][j],
                                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[i][j]), xs, _mm256_load_ps(acc[i][j])));
            }
        }
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < 2; ++j) {
                const size_t row = 16 * half + 8 * j;
                _mm256_storeu_ps(y + i * y_stride + row,
                                 unzeroed(_mm256_load_ps(acc[i][j]), scale + row, zero + row, xoffset[i]));
            }
    }
}

bool Int8MatMul::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    const size_t N = inputs[1].get_shape()[0];
    const Quantized& q = quantized_input(inputs, N, outputs[0]);
    const size_t K = q.K, M = q.rows;
    OPENVINO_ASSERT(N % TILE == 0 && inputs[1].get_shape()[1] == K, "Int8MatMul: ", N, " weight rows (whole tiles of 32) of ",
                    inputs[1].get_shape()[1], " inputs, for x rows of ", K);
    const int8_t* w = static_cast<const int8_t*>(inputs[1].data());
    const float* zero = inputs[2].data<const float>();
    const float* scale = inputs[3].data<const float>();
    float* y = outputs[0].data<float>();
    const float* offsets = group_offsets(q, K);
    const Weights weights{w, N / TILE, TILE * K};
    if (M == 1) token_matmul_starts(weights);
#if MVLM_AVX512
    avx512::int8_tiles(q.values.data(), q.scale.data(), offsets, M, K, N, w, zero, scale, y);
#else
    const size_t blocks = K / BLOCK;
    parallel_shares(N / TILE, [&](size_t t) {
        const int8_t* wt = w + t * TILE * K;
        if (M == 1)
            return int8_tile_avx2(wt, scale + t * TILE, zero + t * TILE, q.values.data(), q.scale.data(), offsets[0], K,
                                  y + t * TILE, TILE_AHEAD);
        by_rows<4>(M, [&](auto rows, size_t m) {  // four rows per pass; the tile stays in the cache for the next
            int8_half_tiles_avx2<decltype(rows)::value>(wt, scale + t * TILE, zero + t * TILE, q.values.data() + m * K,
                                                        q.scale.data() + m * blocks, offsets + m, K,
                                                        y + m * N + t * TILE, N);
        });
    });
#endif
    if (M == 1) token_matmul_ends(weights);
    add_folded(inputs, outputs[0]);
    return true;
}

}  // namespace mvlm
