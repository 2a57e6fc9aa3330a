// KVAttention (kv_attention.hpp): the cache's writes, and attention over it a few query rows at a time.
//
// Why: OpenVINO's fused attention with a cache (ScaledDotProductAttentionWithKVCache) spends far longer per
// layer and token than the work itself takes, more as a conversation grows (docs/benchmarks.md, "Figures
// behind the operations' design").

#include "kv_attention.hpp"

#include <cmath>
#include <vector>

namespace mvlm {

// e^x for 8 floats (Cephes' polynomial, ~1e-7 relative); exactly 0 below -87 (masked scores are -inf).
static inline __m256 exp8(__m256 x) {
    const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-87.f), _CMP_GT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.f)), _mm256_set1_ps(88.f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // x - n ln2, ln2 in two parts for precision
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
    const __m256i power = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(power)), keep);
}

// Vectors of 8 columns a one-row values pass keeps: all 16 of the AVX2 registers would spill; with AVX-512
// there are 32 (a head of 128 in one pass).
#if defined(__AVX512F__)
constexpr size_t WIDE_VECTORS = 16;
#else
constexpr size_t WIDE_VECTORS = 8;
#endif

void KVCache::reserve(size_t positions) {
    if (positions <= capacity) return;
    // Room for 64-127 positions more, not twice as many: a server holds a row per conversation, and doubling
    // kept up to twice their keys and values (copying a row every 64 tokens costs little next to a step).
    const size_t grown = (positions + 127) / 64 * 64;
    Buffer<uint16_t> k(heads * grown * dim), v(heads * grown * dim);
    for (size_t h = 0; filled && h < heads; ++h) {
        std::copy_n(&keys[h * capacity * dim], filled * dim, &k[h * grown * dim]);
        std::copy_n(&values[h * capacity * dim], filled * dim, &v[h * grown * dim]);
    }
    keys.swap(k), values.swap(v), capacity = grown;
}

static void to_f16(const float* x, uint16_t* y, size_t n) {
    for (size_t i = 0; i < n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
}

// n rounded up to whole vectors of 8 floats.
static inline size_t padded(size_t n) { return (n + 7) / 8 * 8; }

static inline __m256 load_f16(const uint16_t* x) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
}

// R consecutive query rows of one head against keys/values 0..L-1 of its kv head: each key and value is
// loaded once for the R rows. `mask[r]` is row r's mask (L bytes); `work` holds R * (L rounded up to 8) floats.
template <int R>
static void attend(const float* q, const uint16_t* keys, const uint16_t* values, const uint8_t* const* mask,
                   size_t L, size_t D, float scale, float* out, float* work) {
    size_t end = 0;  // keys past the last one any of the rows may see are skipped (half of a causal prompt)
    for (int r = 0; r < R; ++r)
        for (size_t p = L; p > end; --p)
            if (mask[r][p - 1]) {
                end = p;
                break;
            }
    const size_t stride = padded(L);  // work's row length
    for (size_t p = 0; p < end; ++p) {  // scores = scale * q . k, -inf where masked
        // Ask for the keys a few rows ahead and for the values now: the values pass below then reads them from
        // the cache, not in column strips from memory.
        for (size_t line = 0; line < D * 2; line += 64) {
            _mm_prefetch(reinterpret_cast<const char*>(keys + (p + 8) * D) + line, _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(values + p * D) + line, _MM_HINT_T1);
        }
        __m256 acc[R][2];
        for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        size_t d = 0;
        for (; d + 16 <= D; d += 16) {  // two chains per row: the FMA latency is not waited on
            const __m256 k0 = load_f16(keys + p * D + d), k1 = load_f16(keys + p * D + d + 8);
            for (int r = 0; r < R; ++r) {
                acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * D + d), k0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * D + d + 8), k1, acc[r][1]);
            }
        }
        if (d < D) {
            const __m256 k0 = load_f16(keys + p * D + d);
            for (int r = 0; r < R; ++r) acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * D + d), k0, acc[r][0]);
        }
        for (int r = 0; r < R; ++r)
            work[r * stride + p] = mask[r][p] ? scale * hsum(_mm256_add_ps(acc[r][0], acc[r][1])) : -INFINITY;
    }
    const size_t vectors_end = padded(end);  // exp8 runs on whole vectors: pad with -inf (weight 0)
    for (int r = 0; r < R; ++r) {
        float* w = work + r * stride;
        for (size_t p = end; p < vectors_end; ++p) w[p] = -INFINITY;
        float top = -INFINITY;
        for (size_t p = 0; p < end; ++p) top = std::max(top, w[p]);
        if (top == -INFINITY) top = 0.f;  // a row that may see nothing gets zeros
        __m256 total = _mm256_setzero_ps();
        for (size_t p = 0; p < vectors_end; p += 8) {
            const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(w + p), _mm256_set1_ps(top)));
            _mm256_storeu_ps(w + p, e);
            total = _mm256_add_ps(total, e);
        }
        const float sum = hsum(total), inverse = sum > 0.f ? 1.f / sum : 0.f;
        for (size_t p = 0; p < end; ++p) w[p] *= inverse;
    }
    // out = weights . values, COLS columns at a time: each pass reads every value row once (a token's query
    // takes the widest passes the registers hold: 8 passes of 16 columns made decode L2-bound).
    constexpr size_t VECTORS = R > 1 ? 2 : WIDE_VECTORS, COLS = 8 * VECTORS;
    for (size_t d = 0; d < D; d += COLS) {
        const size_t vectors = std::min(COLS, D - d) / 8;
        __m256 acc[R][VECTORS];
        for (int r = 0; r < R; ++r)
            for (size_t c = 0; c < VECTORS; ++c) acc[r][c] = _mm256_setzero_ps();
        for (size_t p = 0; p < end; ++p) {
            __m256 weight[R];
            for (int r = 0; r < R; ++r) weight[r] = _mm256_broadcast_ss(work + r * stride + p);
            for (size_t c = 0; c < vectors; ++c) {
                const __m256 v = load_f16(values + p * D + d + 8 * c);
                for (int r = 0; r < R; ++r) acc[r][c] = _mm256_fmadd_ps(weight[r], v, acc[r][c]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (size_t c = 0; c < vectors; ++c) _mm256_storeu_ps(out + r * D + d + 8 * c, acc[r][c]);
    }
}

void KVAttention::validate_and_infer_types() {
    const auto q = get_input_partial_shape(0);
    NODE_VALIDATION_CHECK(this, q.rank().compatible(4), "q (B, H, T, D)");
    set_output_type(0, ov::element::f32, q);
}

std::shared_ptr<ov::Node> KVAttention::clone_with_new_inputs(const ov::OutputVector& args) const {
    auto clone = std::make_shared<KVAttention>(args);
    clone->rows_ = rows_;
    return clone;
}

// One past the last position `mask` (L bytes) lets its query see; 0 if none.
static size_t seen(const uint8_t* mask, size_t L) {
    for (size_t p = L; p > 0; --p)
        if (mask[p - 1]) return p;
    return 0;
}

// Batch row b's cache row (OpenVINO's CPU plugin hands i64 inputs over as i32).
static size_t cache_row(const ov::Tensor& rows, size_t b) {
    const int64_t row = rows.get_element_type() == ov::element::i64 ? rows.data<const int64_t>()[b]
                                                                     : rows.data<const int32_t>()[b];
    OPENVINO_ASSERT(row >= 0, "KVAttention: cache row ", row, " for batch row ", b);
    return static_cast<size_t>(row);
}

bool KVAttention::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    const ov::Tensor &q = inputs[0], &k = inputs[1], &v = inputs[2], &mask = inputs[3];
    const ov::Shape qs = q.get_shape(), ms = mask.get_shape();
    const size_t B = qs[0], H = qs[1], T = qs[2], D = qs[3], KV = k.get_shape()[1], L = ms[3];
    OPENVINO_ASSERT(L >= T && H % KV == 0 && D % 8 == 0, "KVAttention: mask length ", L, " for ", T,
                    " new positions, ", H, " heads, ", KV, " kv heads, head size ", D);
    const uint8_t* masks = static_cast<const uint8_t*>(mask.data());
    auto mask_row = [&](size_t b, size_t t) { return masks + ((ms[0] == 1 ? 0 : b) * ms[2] + (ms[2] == 1 ? 0 : t)) * L; };
    std::vector<KVCache>& caches = *rows_;
    std::vector<size_t> row(B), length(B);
    for (size_t b = 0; b < B; ++b) {
        row[b] = inputs.size() > 5 ? cache_row(inputs[5], b) : b;
        length[b] = seen(mask_row(b, T - 1), L);
        OPENVINO_ASSERT(length[b] >= T, "KVAttention: batch row ", b, " sees ", length[b], " positions, fewer than its ",
                        T, " new ones");
        for (size_t c = 0; c < b; ++c)
            OPENVINO_ASSERT(row[c] != row[b], "KVAttention: batch rows ", c, " and ", b, " both write cache row ", row[b]);
    }
    for (size_t b = 0; b < B; ++b) {
        if (row[b] >= caches.size()) caches.resize(row[b] + 1);
        KVCache& cache = caches[row[b]];
        const size_t P = length[b] - T;
        if (cache.heads != KV || cache.dim != D) {  // a new shape starts the row again
            OPENVINO_ASSERT(P == 0, "KVAttention: a new cache shape needs a prompt from position 0, not ", P);
            cache = KVCache{KV, D};
        }
        OPENVINO_ASSERT(P <= cache.filled, "KVAttention: the mask says ", P, " positions come before these, but ",
                        cache.filled, " are cached in row ", row[b]);
        cache.reserve(length[b]);
        cache.filled = length[b];
    }
    const float *qs_ = q.data<const float>(), *ks_ = k.data<const float>(), *vs_ = v.data<const float>();
    auto write = [&](size_t bh) {  // batch row b's new keys and values of kv head h into its cache row
        const size_t b = bh / KV, h = bh % KV, P = length[b] - T;
        KVCache& cache = caches[row[b]];
        to_f16(ks_ + bh * T * D, &cache.keys[cache.offset(h, P)], T * D);
        to_f16(vs_ + bh * T * D, &cache.values[cache.offset(h, P)], T * D);
    };
    outputs[0].set_shape(qs);
    float* out = outputs[0].data<float>();
    const float scale = *inputs[4].data<const float>();
    constexpr size_t ROWS = 4;
    auto attend_rows = [&](size_t b, size_t h, size_t t) {  // query rows t.. (up to ROWS) of head h, batch row b
        const size_t rows = std::min(ROWS, T - t), kv = h / (H / KV), Lb = length[b];
        const KVCache& cache = caches[row[b]];
        thread_local Buffer<float> work;
        work.resize(ROWS * padded(Lb));
        const uint8_t* row_mask[ROWS];
        for (size_t r = 0; r < rows; ++r) row_mask[r] = mask_row(b, t + r);
        const float* here = qs_ + ((b * H + h) * T + t) * D;
        const uint16_t* keys = &cache.keys[cache.offset(kv, 0)];
        const uint16_t* values = &cache.values[cache.offset(kv, 0)];
        float* there = out + ((b * H + h) * T + t) * D;
        if (rows == ROWS)
            attend<ROWS>(here, keys, values, row_mask, Lb, D, scale, there, work.data());
        else
            for (size_t r = 0; r < rows; ++r)
                attend<1>(here + r * D, keys, values, row_mask + r, Lb, D, scale, there + r * D, work.data());
    };
    if (T == 1) {  // a decode step: a kv head's write and its heads' attention in one item, one parallel region
        ov::parallel_for(B * KV, [&](size_t bh) {
            write(bh);
            const size_t group = H / KV, first = bh % KV * group;
            for (size_t h = first; h < first + group; ++h) attend_rows(bh / KV, h, 0);
        });
    } else {  // a prompt: every write first, then blocks of query rows (a causal prompt's later rows see more)
        const size_t blocks = (T + ROWS - 1) / ROWS;
        ov::parallel_for(B * KV, write);
        ov::parallel_for(B * H * blocks, [&](size_t item) {
            attend_rows(item / (H * blocks), item / blocks % H, item % blocks * ROWS);
        });
    }
    return true;
}

}  // namespace mvlm
