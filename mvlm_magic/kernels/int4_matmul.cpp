// Int4MatMul: y = x @ dequantize(W).T for NNCF's symmetric int4 weights, as one OpenVINO operation
// (and Int8MatMul, the same for the per-row int8 head of an int4 export; at the end of the file).
//
// Why: on CPUs without VNNI, OpenVINO 2026.4 decompresses int4 weights to f32 before multiplying
// (FullyConnectedCompressed, brgemm_avx2_f32) and reads memory at ~45-60% of its bandwidth, so decoding one
// token takes about twice what reading the weights takes. Here the activations are quantized to int8 (one
// scale per 32 values, as llama.cpp's Q8_0) and multiplied with the int4 weights in integer arithmetic
// (AVX2 vpmaddubsw; on CPUs with AVX-512 VNNI vpdpbusd, int4_avx512.hpp), which keeps up with memory.
// Measurements: docs/benchmarks.md.
//
// Inputs (the weight constants are NNCF's own bytes, never requantized):
//   0  x       f32 (..., K)
//   1  weight  u8  (N, K/2)    two int4 values per byte, each stored as value + 8 (0..15); per 64 inputs,
//                               32 bytes (a "unit"): byte i holds input i in its low nibble and input 32 + i in
//                               its high one, so that one load and two masks give 64 weights in order. Rows in
//                               panels of 4, interleaved by units (see unit_at): a token reads one stream.
//   2  scale   u8  (N, 2K/G)   one f16 scale per group of G consecutive inputs (G a multiple of 64), as its two
//                               bytes: the CPU plugin hands f16 and u16 inputs over as f32 / i32, twice the bytes
// Output: f32 (..., N).
//
// Build: mvlm_magic/runtime/kernels.py (one g++ call against the openvino wheel's headers).

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#define OV_THREAD OV_THREAD_TBB
#include "openvino/core/parallel.hpp"
#include "openvino/op/op.hpp"
#include "simd.hpp"

namespace mvlm {

constexpr size_t BLOCK = 32;  // activation values per int8 scale
constexpr size_t PANEL = 4;   // weight rows interleaved by 32-byte units
constexpr size_t UNIT = 32;

// Where unit c (32 bytes) of weight row n is, for rows of `row_bytes` in panels of 4: panel p holds rows
// 4p..4p+3 as unit 0 of each row, then unit 1 of each, ...; a last panel of fewer rows the same way.
// (runtime/kernels.py's `panels` writes this order.)
static inline const uint8_t* unit_at(const uint8_t* w, size_t n, size_t c, size_t row_bytes, size_t N) {
    const size_t panel = n / PANEL, rows = std::min(PANEL, N - panel * PANEL);
    return w + panel * PANEL * row_bytes + (c * rows + n % PANEL) * UNIT;
}

// Rows of x, quantized: the values, each block of 32's scale, and 8 * scale * sum (what the +8 of the
// stored nibbles adds).
struct Quantized {
    Buffer<int8_t> values;        // (M, K)
    Buffer<float> scale, offset;  // (M, K/32)
};

// Block by block: scale = max |x| / 127, values = x * (127 / max |x|) rounded to nearest even (the
// vectors compute exactly what std::nearbyint would, 8 at a time).
static void quantize_row(const float* x, size_t K, int8_t* values, float* scale, float* offset) {
    const __m256 no_sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the packs' lane interleave
    for (size_t b = 0; b < K / BLOCK; ++b) {
        __m256 v[4];
        for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + b * BLOCK + 8 * i);
        const __m256 top = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], no_sign), _mm256_and_ps(v[1], no_sign)),
                                         _mm256_max_ps(_mm256_and_ps(v[2], no_sign), _mm256_and_ps(v[3], no_sign)));
        const float amax = hmax(top);
        const __m256 inv = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
        __m256i q[4];
        for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));  // nearest even
        const __m256i total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(values + b * BLOCK), _mm256_permutevar8x32_epi32(bytes, order));
        scale[b] = amax / 127.f;
        offset[b] = 8.f * scale[b] * static_cast<float>(hsum_int(total));
    }
}

// 64 weights (32 bytes, stored as value + 8) -> two blocks of 32 unsigned bytes: inputs 0-31, then 32-63.
static inline void unpack_64(const uint8_t* bytes, __m256i& first, __m256i& second) {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes));
    first = _mm256_and_si256(packed, _mm256_set1_epi8(0x0F));
    second = _mm256_and_si256(_mm256_srli_epi16(packed, 4), _mm256_set1_epi8(0x0F));
}

}  // namespace mvlm

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define MVLM_AVX512 1
#include "int4_avx512.hpp"
#else
#define MVLM_AVX512 0
#endif

namespace mvlm {

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

// int8 weights (the output head), in x's order, rows in panels as the int4 ones (a unit: 32 inputs):
// sums[r] = sum over blocks of x scale * (weight . x values). Signed * signed through vpmaddubsw's
// unsigned * signed: |w| * (x with w's sign).
template <int ROWS>
static void dot_rows_int8(const int8_t* weight, size_t rows, const int8_t* xv, const float* xscale, size_t K,
                          size_t ahead, float* sums) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[ROWS];
    for (int r = 0; r < ROWS; ++r) acc[r] = _mm256_setzero_ps();
    for (size_t b = 0; b < K / BLOCK; ++b) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xv + b * BLOCK));
        const __m256 sv = _mm256_set1_ps(xscale[b]);
        for (int r = 0; r < ROWS; ++r) {
            const int8_t* here = weight + (b * rows + r) * UNIT;
            if (r % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(here + ahead), _MM_HINT_T0);
            const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(here));
            const __m256i products = _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(v, w)), ones);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(products), sv, acc[r]);
        }
    }
    for (int r = 0; r < ROWS; ++r) sums[r] = hsum(acc[r]);
}

// Quantize x's rows (M rows of K values) into this thread's buffers, kept between calls so that a token
// allocates nothing, and give `out` x's shape with the last dimension N.
static const Quantized& quantize_input(const ov::Tensor& x, size_t N, ov::Tensor& out) {
    ov::Shape shape = x.get_shape();
    const size_t K = shape.back(), M = ov::shape_size(shape) / K, blocks = K / BLOCK;
    shape.back() = N;
    out.set_shape(shape);
    thread_local Quantized kept;
    Quantized& q = kept;  // (a lambda running on another thread must see this thread's buffers)
    q.values.resize(M * K);
    q.scale.resize(M * blocks);
    q.offset.resize(M * blocks);
    const float* xs = x.data<const float>();
    ov::parallel_for(M, [&](size_t m) {
        quantize_row(xs + m * K, K, &q.values[m * K], &q.scale[m * blocks], &q.offset[m * blocks]);
    });
    return q;
}

// What both operations share: x f32 (..., K) and a weight of N rows -> f32 (..., N), run by `evaluate`.
template <class Self>
class WeightMatMul : public ov::op::Op {
public:
    WeightMatMul() = default;
    explicit WeightMatMul(const ov::OutputVector& args) : Op(args) {}

    void validate_and_infer_types() override {
        const auto x = get_input_partial_shape(0);
        const auto w = get_input_partial_shape(1);
        NODE_VALIDATION_CHECK(this, x.rank().is_static() && w.rank().get_length() == 2, "x (..., K), a 2-D weight");
        auto out = x;
        out[out.size() - 1] = w[0];
        set_output_type(0, ov::element::f32, out);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return std::make_shared<Self>(args);
    }

    bool visit_attributes(ov::AttributeVisitor&) override { return true; }
    bool has_evaluate() const override { return true; }
};

// Each thread takes whole panels, 4 at a time: `work(first row, rows)` for each panel.
template <class Work>
static void for_each_panel(size_t N, const Work& work) {
    constexpr size_t PANELS = 4;
    const size_t panels = (N + PANEL - 1) / PANEL;
    ov::parallel_for((panels + PANELS - 1) / PANELS, [&](size_t chunk) {
        for (size_t p = chunk * PANELS; p < std::min(panels, (chunk + 1) * PANELS); ++p)
            work(p * PANEL, std::min(PANEL, N - p * PANEL));
    });
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
    for (size_t i = 0; i < M * blocks; ++i) group_offsets[i / blocks * groups + i % blocks / (G / BLOCK)] += q.offset[i];
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

class Int4MatMul : public WeightMatMul<Int4MatMul> {
public:
    OPENVINO_OP("Int4MatMul", "mvlm");

    Int4MatMul() = default;
    explicit Int4MatMul(const ov::OutputVector& args) : WeightMatMul(args) { constructor_validate_and_infer_types(); }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
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
};

// Int8MatMul: the same for NNCF's asymmetric int8 weights with one zero point and scale per row (the head).
// Inputs: x f32 (..., K); weight i8 (N, K) = stored u8 - 128, rows in panels of 4 interleaved by 32 bytes;
// zero f32 (N) = zero point - 128; scale f32 (N). Output f32 (..., N) = scale * (weight - zero) . x
class Int8MatMul : public WeightMatMul<Int8MatMul> {
public:
    OPENVINO_OP("Int8MatMul", "mvlm");

    Int8MatMul() = default;
    explicit Int8MatMul(const ov::OutputVector& args) : WeightMatMul(args) { constructor_validate_and_infer_types(); }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const size_t K = inputs[0].get_shape().back(), M = inputs[0].get_size() / K, N = inputs[1].get_shape()[0];
        const size_t blocks = K / BLOCK;
        const Quantized& q = quantize_input(inputs[0], N, outputs[0]);
        const int8_t* w = static_cast<const int8_t*>(inputs[1].data());
        const float* zero = inputs[2].data<const float>();
        const float* scale = inputs[3].data<const float>();
        float* y = outputs[0].data<float>();
#if MVLM_AVX512
        if (M > 1 && K % 64 == 0) {  // a prompt (the vision model's MatMuls): the stored byte xor 0x80 is unsigned
            avx512::prompt(q, M, K, N, K, y, [&](size_t n, uint8_t* bytes, float* row_scale, float& zero_point) {
                const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
                for (size_t c = 0; c < K / BLOCK; ++c) {
                    const __m256i stored = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(unit_at(
                        reinterpret_cast<const uint8_t*>(w), n, c, K, N)));
                    _mm256_storeu_si256(reinterpret_cast<__m256i*>(bytes + c * BLOCK), _mm256_xor_si256(stored, flip));
                }
                *row_scale = scale[n];
                zero_point = (zero[n] + 128.f) / 8.f;  // per 8: x's offsets are 8 * scale * sum
            });
            return true;
        }
#endif
        std::vector<float> x_sum(M, 0.f);  // each row's sum of quantized x (offset = 8 * scale * sum)
        for (size_t m = 0; m < M; ++m)
            for (size_t b = 0; b < blocks; ++b) x_sum[m] += q.offset[m * blocks + b] / 8.f;
        for_each_panel(N, [&](size_t n, size_t rows) {
            const int8_t* panel = w + n * K;
            float sums[PANEL];
            for (size_t m = 0; m < M; ++m) {
                const int8_t* xv = &q.values[m * K];
                const float* xs = &q.scale[m * blocks];
                if (rows == PANEL) {
#if MVLM_AVX512
                    avx512::dot_panel_int8(panel, xv, xs, K, sums);
#else
                    dot_rows_int8<4>(panel, rows, xv, xs, K, PANEL * K, sums);
#endif
                } else {
                    for (size_t r = 0; r < rows; ++r) dot_rows_int8<1>(panel + r * UNIT, rows, xv, xs, K, 0, sums + r);
                }
                for (size_t r = 0; r < rows; ++r)
                    y[m * N + n + r] = scale[n + r] * (sums[r] - zero[n + r] * x_sum[m]);
            }
        });
        return true;
    }
};

}  // namespace mvlm
