// Int4MatMul (int4_matmul.hpp): the int4 weights' dot products, a token's and a prompt's, from tiles of 32 rows.
//
// Why: on CPUs without VNNI, OpenVINO decompresses int4 weights to f32 before multiplying and reads memory well
// below its bandwidth. Here the activations are quantized to int8 (weight_matmul.cpp) and multiplied with the
// int4 weights in integer arithmetic (AVX2 vpmaddubsw; on CPUs with AVX-512 VNNI vpdpbusd, int4_avx512.hpp),
// which keeps up with memory. The weights lie in tiles (layout.int4_tiles): a lane of a vector is a row, so the
// same stream serves one token and a batch of rows (batched decoding, prompts) with no unpacking per call.
// Figures: docs/benchmarks.md ("Figures behind the operations' design").

#include "int4_matmul.hpp"
#include "read_ahead.hpp"

#if MVLM_AVX512
#include "int4_avx512.hpp"
#endif

namespace mvlm {

// With AVX2, per step of 4 inputs a tile is 64 bytes = two loads of 32, whose low nibbles are rows 0-7 | 8-15 and
// high nibbles rows 16-23 | 24-31, 4 inputs per lane. vpmaddubsw against the 4 x bytes broadcast gives each 16-bit
// half-lane 2 products summed (at most 2 * 15 * 127), added up in 16 bits over a block of 8 steps (at most
// 8 * 3810 < 32768: no overflow), then vpmaddwd makes them one int32 per lane: exactly the integer sums of one
// vpmaddwd per step, in fewer instructions. A group's blocks are summed (times their x scales) before its weight
// scale, which then costs one multiply-add a group. Each 16-bit sum's adds stay in order (keep_in_register): GCC
// otherwise re-associates a block's eight into a tree whose partial sums spill to the stack, 1.2-1.3x slower.

// A step's 32 bytes as 8 rows x 4 inputs: their low nibbles, or their high ones, as bytes 0..15.
static inline __m256i low4(__m256i packed) { return _mm256_and_si256(packed, _mm256_set1_epi8(0x0F)); }
static inline __m256i high4(__m256i packed) { return low4(_mm256_srli_epi16(packed, 4)); }

// A block's 16-bit sums (two products a half-lane) as one float a lane: a row's sum over the block.
static inline __m256 block_sums(__m256i sums) {
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(sums, _mm256_set1_epi16(1)));
}

// One x row (a token) against one tile: the tile's bytes read once, in order, asked for `ahead` bytes ahead.
[[maybe_unused]]  // (the AVX-512 build has its own)
static void int4_tile_avx2(const uint8_t* w, const uint16_t* scale, const int8_t* x, const float* xscale,
                           const float* xoffset, size_t K, size_t G, float* y, size_t ahead) {
    const size_t groups = K / G, blocks_per_group = G / BLOCK;
    __m256 acc[4];  // weight rows 0-7, 8-15, 16-23, 24-31
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (size_t g = 0; g < groups; ++g) {
        __m256 group[4];
        for (auto& sum : group) sum = _mm256_set1_ps(-xoffset[g]);
        for (size_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
            __m256i sums[4];  // 16-bit
            for (auto& sum : sums) sum = _mm256_setzero_si256();
            const uint8_t* wb = w + b * 8 * 64;
#pragma GCC unroll 8
            for (int step = 0; step < 8; ++step) {
                _mm_prefetch(reinterpret_cast<const char*>(wb + step * 64 + ahead), _MM_HINT_T0);
                const __m256i p0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + step * 64));
                const __m256i p1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + step * 64 + 32));
                const __m256i wv[4] = {low4(p0), low4(p1), high4(p0), high4(p1)};
                const __m256i broadcast = broadcast4(x + b * BLOCK + step * 4);
                for (int j = 0; j < 4; ++j) {
                    sums[j] = _mm256_add_epi16(sums[j], _mm256_maddubs_epi16(wv[j], broadcast));
                    keep_in_register(sums[j]);
                }
            }
            const __m256 xs = _mm256_set1_ps(xscale[b]);
            for (int j = 0; j < 4; ++j)
                group[j] = _mm256_fmadd_ps(block_sums(sums[j]), xs, group[j]);
        }
        for (int j = 0; j < 4; ++j)
            acc[j] = _mm256_fmadd_ps(group[j], scales8(scale + g * TILE + 8 * j), acc[j]);
    }
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(y + 8 * j, acc[j]);
}

// MR x rows (a prompt's, or a batch's) against one tile, in two halves: the first 32 bytes of each step (rows 0-7
// and 16-23), then the other 32 (rows 8-15 and 24-31). Half a tile at a time leaves registers for four x rows'
// sums (16 ymm registers), so each unpacked weight serves four rows: 1.3x the throughput of whole tiles two rows
// at a time (measured: docs/benchmarks.md). The tile stays in the cache between the passes.
template <int MR>
static void int4_half_tiles_avx2(const uint8_t* w, const uint16_t* scale, const int8_t* x, const float* xscale,
                                 const float* xoffset, size_t K, size_t G, float* y, size_t y_stride) {
    const size_t blocks = K / BLOCK, groups = K / G, blocks_per_group = G / BLOCK;
    for (int half = 0; half < 2; ++half) {
        alignas(32) float acc[MR][2][8] = {};  // per x row: weight rows 0-7 | 8-15, 16-23 | 24-31 (by half)
        for (size_t g = 0; g < groups; ++g) {
            alignas(32) float group[MR][2][8];
            for (int i = 0; i < MR; ++i)
                for (int j = 0; j < 2; ++j) _mm256_store_ps(group[i][j], _mm256_set1_ps(-xoffset[i * groups + g]));
            for (size_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
                __m256i sums[MR][2];  // 16-bit
                for (auto& row : sums)
                    for (auto& sum : row) sum = _mm256_setzero_si256();
                const uint8_t* wb = w + b * 8 * 64 + half * 32;
#pragma GCC unroll 8
                for (int step = 0; step < 8; ++step) {
                    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + step * 64));
                    const __m256i wv[2] = {low4(packed), high4(packed)};
                    for (int i = 0; i < MR; ++i) {
                        const __m256i broadcast = broadcast4(x + i * K + b * BLOCK + step * 4);
                        for (int j = 0; j < 2; ++j) {
                            sums[i][j] = _mm256_add_epi16(sums[i][j], _mm256_maddubs_epi16(wv[j], broadcast));
                            keep_in_register(sums[i][j]);
                        }
                    }
                }
                for (int i = 0; i < MR; ++i) {
                    const __m256 xs = _mm256_set1_ps(xscale[i * blocks + b]);
                    for (int j = 0; j < 2; ++j) {
                        const __m256 sum = block_sums(sums[i][j]);
                        _mm256_store_ps(group[i][j], _mm256_fmadd_ps(sum, xs, _mm256_load_ps(group[i][j])));
                    }
                }
            }
            for (int j = 0; j < 2; ++j) {
                const __m256 ws = scales8(scale + g * TILE + 16 * j + 8 * half);
                for (int i = 0; i < MR; ++i)
                    _mm256_store_ps(acc[i][j],
                                    _mm256_fmadd_ps(_mm256_load_ps(group[i][j]), ws, _mm256_load_ps(acc[i][j])));
            }
        }
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < 2; ++j)
                _mm256_storeu_ps(y + i * y_stride + 16 * j + 8 * half, _mm256_load_ps(acc[i][j]));
    }
}

bool Int4MatMul::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    const ov::Tensor &weight = inputs[1], &scale = inputs[2];
    const size_t N = weight.get_shape()[0];
    const Quantized& q = quantized_input(inputs, N, outputs[0]);
    const size_t K = q.K, M = q.rows, groups = scale.get_shape()[1] / 2, G = K / groups, blocks = K / BLOCK;
    OPENVINO_ASSERT(N % TILE == 0 && G % 64 == 0 && weight.get_shape()[1] * 2 == K, "Int4MatMul: ", N,
                    " weight rows (whole tiles of 32) of ", weight.get_shape()[1] * 2, " inputs, groups of ", G,
                    ", for x rows of ", K);
    const uint8_t* w = static_cast<const uint8_t*>(weight.data());
    const uint16_t* s = static_cast<const uint16_t*>(scale.data());
    float* y = outputs[0].data<float>();
    const float* offsets = group_offsets(q, G);
    const Weights weights{w, N / TILE, TILE * K / 2};
    if (M == 1) token_matmul_starts(weights);
#if MVLM_AVX512
    avx512::int4_tiles(q.values.data(), q.scale.data(), offsets, M, K, N, G, w, s, y);
#else
    parallel_shares(N / TILE, [&](size_t t) {
        const uint8_t* wt = w + t * TILE * K / 2;
        const uint16_t* st = s + t * groups * TILE;
        if (M == 1)
            return int4_tile_avx2(wt, st, q.values.data(), q.scale.data(), offsets, K, G, y + t * TILE, TILE_AHEAD);
        by_rows<4>(M, [&](auto rows, size_t m) {  // four rows per pass; the tile stays in the cache for the next
            int4_half_tiles_avx2<decltype(rows)::value>(wt, st, q.values.data() + m * K, q.scale.data() + m * blocks,
                                                        offsets + m * groups, K, G, y + m * N + t * TILE, N);
        });
    });
#endif
    if (M == 1) token_matmul_ends(weights);
    add_folded(inputs, outputs[0]);
    return true;
}

}  // namespace mvlm
