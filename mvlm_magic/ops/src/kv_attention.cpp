// KVAttention (kv_attention.hpp): the cache's writes, and attention over it a few query rows at a time.
//
// Why: OpenVINO's fused attention with a cache (ScaledDotProductAttentionWithKVCache) spends far longer per
// layer and token than the work itself takes, more as a conversation grows (docs/benchmarks.md, "Figures
// behind the operations' design").

#include "kv_attention.hpp"
#include "read_ahead.hpp"

#include <cmath>
#include <utility>
#include <vector>

namespace mvlm {

// Vectors of 8 columns a one-row values pass keeps: all 16 of the AVX2 registers would spill; with AVX-512
// there are 32 (a head of 128 in one pass).
#if defined(__AVX512F__)
constexpr size_t WIDE_VECTORS = 16;
#else
constexpr size_t WIDE_VECTORS = 8;
#endif

// Positions 0..positions-1 of every head of `from` into `to` (the same shape; capacities may differ).
static void copy_positions(const KVCache& from, KVCache& to, size_t positions) {
    const size_t values = positions * from.dim, scales = values / from.group();
    for (size_t h = 0; positions && h < from.heads; ++h) {
        std::copy_n(&from.keys[from.offset(h, 0)], values, &to.keys[to.offset(h, 0)]);
        std::copy_n(&from.values[from.offset(h, 0)], values, &to.values[to.offset(h, 0)]);
        std::copy_n(&from.key_scales[from.scale_offset(h, 0)], scales, &to.key_scales[to.scale_offset(h, 0)]);
        std::copy_n(&from.value_scales[from.scale_offset(h, 0)], scales, &to.value_scales[to.scale_offset(h, 0)]);
    }
}

void KVCache::reserve(size_t positions) {
    if (positions <= capacity) return;
    // Up to a multiple of 64 positions, not twice as many: a server holds a row per conversation, and doubling
    // kept up to twice their keys and values (copying a row every 64 tokens costs little next to a step).
    KVCache grown{heads, dim, (positions + 63) / 64 * 64, filled};
    const size_t values = heads * grown.capacity * dim, scales = values / group();
    grown.keys.resize(values), grown.values.resize(values);
    grown.key_scales.resize(scales), grown.value_scales.resize(scales);
    copy_positions(*this, grown, filled);
    *this = std::move(grown);
}

// `to` holds the first `positions` of `from` (of the same shape), and nothing after them.
static void copy_start(const KVCache& from, KVCache& to, size_t positions) {
    to = KVCache{from.heads, from.dim};
    to.reserve(positions);
    copy_positions(from, to, positions);
    to.filled = positions;
}

// n values (a multiple of G) to int8, a scale per G: scale = max |x| / 127, values = x / scale rounded to
// nearest even. Keys and values in 8 bits read half the bytes of f16: a decode step reads every cached position.
static void quantize(const float* x, int8_t* y, float* scales, size_t n, size_t G) {
    const __m256 no_sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (size_t g = 0; g < n / G; ++g) {
        const float* xg = x + g * G;
        __m256 top = _mm256_setzero_ps();
        for (size_t i = 0; i < G; i += 8) top = _mm256_max_ps(top, _mm256_and_ps(_mm256_loadu_ps(xg + i), no_sign));
        const float amax = hmax(top);
        const __m256 inverse = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
        for (size_t i = 0; i < G; i += 8) {
            const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + i), inverse));
            const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            _mm_storel_epi64(reinterpret_cast<__m128i*>(y + g * G + i), _mm_packs_epi16(words, words));
        }
        scales[g] = amax / 127.f;
    }
}

// n rounded up to whole vectors of 8 floats.
static inline size_t padded(size_t n) { return (n + 7) / 8 * 8; }

// 8 int8 as 8 floats.
static inline __m256 load_i8(const int8_t* x) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x))));
}

// One kv head's cache: int8 keys and values (L, D) and their scales (L, D / G).
struct HeadCache {
    const int8_t *keys, *values;
    const float *key_scales, *value_scales;
};

// out[:, d : d + 8V] of R query rows = their weights (`work`, rows `stride` apart) . values 0..end-1. V is known
// when compiling, so the R * V sums stay in registers (with a count known only at run time they lived in memory:
// a load and a store per multiply-add).
template <int R, size_t G, size_t V>
static void weigh_values(const float* work, size_t stride, const HeadCache& cache, size_t end, size_t D, size_t d,
                         float* out) {
    const size_t groups = D / G;
    __m256 acc[R][V];
    for (int r = 0; r < R; ++r)
        for (size_t c = 0; c < V; ++c) acc[r][c] = _mm256_setzero_ps();
    for (size_t p = 0; p < end; ++p) {
        __m256 weight[R], scaled[R];  // a row's weight of position p, times the scale of the group at hand
        for (int r = 0; r < R; ++r) weight[r] = _mm256_broadcast_ss(work + r * stride + p);
#pragma GCC unroll 16
        for (size_t c = 0; c < V; ++c) {
            const size_t column = d + 8 * c;
            if (c == 0 || column % G == 0) {
                const __m256 value_scale = _mm256_set1_ps(cache.value_scales[p * groups + column / G]);
                for (int r = 0; r < R; ++r) scaled[r] = _mm256_mul_ps(weight[r], value_scale);
            }
            const __m256 v = load_i8(cache.values + p * D + column);
            for (int r = 0; r < R; ++r) acc[r][c] = _mm256_fmadd_ps(scaled[r], v, acc[r][c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (size_t c = 0; c < V; ++c) _mm256_storeu_ps(out + r * D + d + 8 * c, acc[r][c]);
}

// Positions a one-row scores pass takes at once: each needs two vectors of sums (16 of the 16 AVX2 registers).
constexpr size_t POSITIONS = WIDE_VECTORS == 16 ? 8 : 4;

// The sums of each of POSITIONS vectors, in one vector (element j: the sum of a[j]).
static inline __m256 sums_of(const __m256* a) {
    // hadd pairs neighbours within each 128-bit half; after two rounds, half h of element j's vector sits in
    // element j of half h (for 4 vectors; the other 4 in a second vector), and the halves are added at the end
    const __m256 s0123 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    if constexpr (POSITIONS == 4)
        return _mm256_castps128_ps256(_mm_add_ps(_mm256_castps256_ps128(s0123), _mm256_extractf128_ps(s0123, 1)));
    const __m256 s4567 = _mm256_hadd_ps(_mm256_hadd_ps(a[4 % POSITIONS], a[5 % POSITIONS]),
                                        _mm256_hadd_ps(a[6 % POSITIONS], a[7 % POSITIONS]));
    return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

// work[p0 .. p0 + POSITIONS) = scale * q . key p (-inf where `mask` says no), for one query row.
template <size_t G>
static void few_scores(const float* q, const HeadCache& cache, const uint8_t* mask, size_t p0, size_t D, float scale,
                       float* work) {
    const size_t groups = D / G;
    __m256 acc[POSITIONS];
    for (size_t j = 0; j < POSITIONS; ++j) acc[j] = _mm256_setzero_ps();
    for (size_t g = 0; g < groups; ++g) {
        __m256 part[POSITIONS];
        for (size_t j = 0; j < POSITIONS; ++j) part[j] = _mm256_setzero_ps();
#pragma GCC unroll 4
        for (size_t i = g * G; i < g * G + G; i += 8) {
            const __m256 qi = _mm256_loadu_ps(q + i);
            for (size_t j = 0; j < POSITIONS; ++j)
                part[j] = _mm256_fmadd_ps(qi, load_i8(cache.keys + (p0 + j) * D + i), part[j]);
        }
        for (size_t j = 0; j < POSITIONS; ++j)
            acc[j] = _mm256_fmadd_ps(part[j], _mm256_set1_ps(cache.key_scales[(p0 + j) * groups + g]), acc[j]);
    }
    const __m256 scores = _mm256_mul_ps(sums_of(acc), _mm256_set1_ps(scale));
    for (size_t j = 0; j < POSITIONS; ++j) work[p0 + j] = mask[p0 + j] ? scores[j] : -INFINITY;
}

// R consecutive query rows of one head against keys/values 0..L-1 of its kv head (groups of G values per scale):
// each key and value is loaded once for the R rows. `mask[r]` is row r's mask (L bytes); `work` holds
// R * (L rounded up to 8) floats.
template <int R, size_t G>
static void attend(const float* q, const HeadCache& cache, const uint8_t* const* mask, size_t L, size_t D,
                   float scale, float* out, float* work) {
    const int8_t *keys = cache.keys, *values = cache.values;
    const size_t groups = D / G;
    size_t end = 0;  // keys past the last one any of the rows may see are skipped (half of a causal prompt)
    for (int r = 0; r < R; ++r)
        for (size_t p = L; p > end; --p)
            if (mask[r][p - 1]) {
                end = p;
                break;
            }
    const size_t stride = padded(L);  // work's row length
    size_t p = 0;
    if constexpr (R == 1)  // a token's query: 8 (or 4) positions a pass, their sums added up together
        for (; p + POSITIONS <= end; p += POSITIONS) few_scores<G>(q, cache, mask[0], p, D, scale, work);
    for (; p < end; ++p) {  // scores = scale * q . k, -inf where masked
        // Ask for the keys a few rows ahead and for the values now: the values pass below then reads them from
        // the cache, not in column strips from memory.
        for (size_t line = 0; line < D; line += 64) {
            _mm_prefetch(reinterpret_cast<const char*>(keys + (p + 8) * D) + line, _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(values + p * D) + line, _MM_HINT_T1);
        }
        __m256 acc[R];  // (indexed by compile-time numbers only: an index known at run time puts it in memory)
        for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
        for (size_t g = 0; g < groups; ++g) {  // q . k = sum over groups of scale * (q . int8 values)
            __m256 part[R];
            for (int r = 0; r < R; ++r) part[r] = _mm256_setzero_ps();
#pragma GCC unroll 4
            for (size_t i = g * G; i < g * G + G; i += 8) {
                const __m256 k = load_i8(keys + p * D + i);
                for (int r = 0; r < R; ++r) part[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * D + i), k, part[r]);
            }
            const __m256 key_scale = _mm256_set1_ps(cache.key_scales[p * groups + g]);
            for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(part[r], key_scale, acc[r]);
        }
        for (int r = 0; r < R; ++r)
            work[r * stride + p] = mask[r][p] ? scale * hsum(acc[r]) : -INFINITY;
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
    // out = weights . values, 8 * VECTORS columns at a time: each pass reads every value row once (a token's
    // query takes the widest passes the registers hold: 8 passes of 16 columns made decode L2-bound).
    constexpr size_t VECTORS = R > 1 ? 2 : WIDE_VECTORS;
    size_t d = 0;
    for (; d + 8 * VECTORS <= D; d += 8 * VECTORS) weigh_values<R, G, VECTORS>(work, stride, cache, end, D, d, out);
    for (; d < D; d += 8) weigh_values<R, G, 1>(work, stride, cache, end, D, d, out);
}

// attend<R, G> for a cache's group size G (32, 16 or 8).
template <int R>
static auto attend_for(size_t G) {
    return G == 32 ? attend<R, 32> : G == 16 ? attend<R, 16> : attend<R, 8>;
}

// y = x * cos + rotate_half(x) * sin for T positions of one head (T, D), rotate_half(x) = (-x[D/2:], x[:D/2]).
static void rotate_half(const float* x, float* y, const float* cos, const float* sin, size_t T, size_t D) {
    const size_t half = D / 2;
    for (size_t t = 0; t < T; ++t, x += D, y += D, cos += D, sin += D) {
        for (size_t i = 0; i < half; ++i) y[i] = x[i] * cos[i] - x[i + half] * sin[i];
        for (size_t i = half; i < D; ++i) y[i] = x[i] * cos[i] + x[i - half] * sin[i];
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

// Element b of a row input, `rows` or `from` (OpenVINO's CPU plugin hands i64 inputs over as i32).
static int64_t row_input(const ov::Tensor& rows, size_t b) {
    return rows.get_element_type() == ov::element::i64 ? rows.data<const int64_t>()[b] : rows.data<const int32_t>()[b];
}

// Batch row b's cache row.
static size_t cache_row(const ov::Tensor& rows, size_t b) {
    const int64_t row = row_input(rows, b);
    OPENVINO_ASSERT(row >= 0, "KVAttention: cache row ", row, " for batch row ", b);
    return static_cast<size_t>(row);
}

bool KVAttention::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    stop_reading_ahead();
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
        const size_t P = length[b] - T;
        if (inputs.size() > 6 && P > 0) {  // positions 0..P-1 copied from another row first
            const int64_t from = row_input(inputs[6], b);
            if (from >= 0 && static_cast<size_t>(from) != row[b]) {
                OPENVINO_ASSERT(static_cast<size_t>(from) < caches.size() && caches[from].filled >= P &&
                                    caches[from].heads == KV && caches[from].dim == D,
                                "KVAttention: row ", row[b], " starts from ", P, " positions of row ", from,
                                ", which holds ", static_cast<size_t>(from) < caches.size() ? caches[from].filled : 0);
                copy_start(caches[from], caches[row[b]], P);
            }
        }
        KVCache& cache = caches[row[b]];
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
    if (inputs.size() > 8) {  // rotary position embedding first (header: inputs 7 and 8)
        const ov::Shape cs = inputs[7].get_shape();
        OPENVINO_ASSERT(cs.size() == 3 && (cs[0] == B || cs[0] == 1) && cs[1] == T && cs[2] == D && D % 2 == 0,
                        "KVAttention: cos/sin of shape ", cs, " for ", B, " rows of ", T, " positions of head size ", D);
        // kept between calls, so that a token allocates nothing and a prompt maps no fresh pages per layer
        thread_local Buffer<float> kept_q, kept_k;
        Buffer<float>&q_rotated = kept_q, &k_rotated = kept_k;  // (lambdas on other threads must see these)
        q_rotated.resize(B * H * T * D);
        k_rotated.resize(B * KV * T * D);
        const float *cos = inputs[7].data<const float>(), *sin = inputs[8].data<const float>();
        auto rotate = [&](size_t item) {  // items 0..B*H-1: q's (b, head); then k's (b, kv head)
            const bool is_q = item < B * H;
            const size_t i = is_q ? item : item - B * H, heads = is_q ? H : KV;
            const size_t angles = (cs[0] == 1 ? 0 : i / heads) * T * D;
            rotate_half((is_q ? qs_ : ks_) + i * T * D, (is_q ? q_rotated : k_rotated).data() + i * T * D,
                        cos + angles, sin + angles, T, D);
        };
        if (T == 1)  // a few thousand values: not worth waking the other threads
            for (size_t item = 0; item < B * (H + KV); ++item) rotate(item);
        else
            ov::parallel_for(B * (H + KV), rotate);
        qs_ = q_rotated.data();
        ks_ = k_rotated.data();
    }
    auto write = [&](size_t bh) {  // batch row b's new keys and values of kv head h into its cache row
        const size_t b = bh / KV, h = bh % KV, P = length[b] - T;
        KVCache& cache = caches[row[b]];
        const size_t G = cache.group();
        quantize(ks_ + bh * T * D, &cache.keys[cache.offset(h, P)], &cache.key_scales[cache.scale_offset(h, P)], T * D, G);
        quantize(vs_ + bh * T * D, &cache.values[cache.offset(h, P)], &cache.value_scales[cache.scale_offset(h, P)],
                 T * D, G);
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
        const HeadCache head{&cache.keys[cache.offset(kv, 0)], &cache.values[cache.offset(kv, 0)],
                             &cache.key_scales[cache.scale_offset(kv, 0)], &cache.value_scales[cache.scale_offset(kv, 0)]};
        float* there = out + ((b * H + h) * T + t) * D;
        if (rows == ROWS)
            attend_for<ROWS>(cache.group())(here, head, row_mask, Lb, D, scale, there, work.data());
        else
            for (size_t r = 0; r < rows; ++r)
                attend_for<1>(cache.group())(here + r * D, head, row_mask + r, Lb, D, scale, there + r * D, work.data());
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
