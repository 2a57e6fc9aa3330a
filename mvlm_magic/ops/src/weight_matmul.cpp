// The activations of Int4MatMul and Int8MatMul, quantized to int8 (one scale per 32 values, as llama.cpp's Q8_0),
// with what the graph folded in before and after (Folded).

#include "weight_matmul.hpp"

#include <cmath>

namespace mvlm {

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

// x's row as the product reads it (Folded) into `to` (K values): silu(gate) * up, then normalised.
static void fold_row(const float* x, size_t K, const Folded& folded, const float* gamma, float* to) {
    if (folded.gated) {
        const __m256 one = _mm256_set1_ps(1.f);
        for (size_t i = 0; i < K; i += 8) {  // silu(g) = g / (1 + e^-g)
            const __m256 gate = _mm256_loadu_ps(x + i), up = _mm256_loadu_ps(x + K + i);
            const __m256 silu = _mm256_div_ps(gate, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), gate))));
            _mm256_storeu_ps(to + i, _mm256_mul_ps(silu, up));
        }
        x = to;
    }
    if (folded.norm) {  // as the graph had it: x * (1 / sqrt(mean + eps)), then * gamma
        __m256 squares = _mm256_setzero_ps();
        for (size_t i = 0; i < K; i += 8) squares = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(x + i), squares);
        const __m256 inverse = _mm256_set1_ps(1.f / std::sqrt(hsum(squares) / static_cast<float>(K) + folded.eps));
        for (size_t i = 0; i < K; i += 8)
            _mm256_storeu_ps(to + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), inverse), _mm256_loadu_ps(gamma + i)));
    }
}

const Quantized& quantize_input(const ov::Tensor& x, size_t N, ov::Tensor& out, const Folded& folded,
                                const float* gamma) {
    ov::Shape shape = x.get_shape();
    const size_t width = shape.back(), K = folded.gated ? width / 2 : width, M = ov::shape_size(shape) / width;
    OPENVINO_ASSERT(K % BLOCK == 0 && (!folded.gated || width % 2 == 0), "Int4MatMul/Int8MatMul: rows of ", width,
                    " values", folded.gated ? " (gate and up)" : "", ", expected a multiple of ", BLOCK);
    shape.back() = N;
    out.set_shape(shape);
    const size_t blocks = K / BLOCK;
    thread_local Quantized kept;
    Quantized& q = kept;  // (a lambda running on another thread must see this thread's buffers)
    q.rows = M, q.K = K;
    q.values.resize(M * K);
    q.scale.resize(M * blocks);
    q.offset.resize(M * blocks);
    const float* xs = x.data<const float>();
    const bool plain = !folded.norm && !folded.gated;
    ov::parallel_for(M, [&](size_t m) {
        const float* row = xs + m * width;
        if (!plain) {
            thread_local Buffer<float> folded_row;  // the running thread's own
            folded_row.resize(K);
            fold_row(row, K, folded, gamma, folded_row.data());
            row = folded_row.data();
        }
        quantize_row(row, K, &q.values[m * K], &q.scale[m * blocks], &q.offset[m * blocks]);
    });
    return q;
}

const float* group_offsets(const Quantized& q, size_t G) {
    const size_t M = q.rows, K = q.K, blocks = K / BLOCK, groups = K / G;
    thread_local Buffer<float> kept;  // (a lambda running on another thread must see this thread's buffer)
    kept.assign(M * groups, 0.f);
    for (size_t i = 0; i < M * blocks; ++i) kept[i / blocks * groups + i % blocks / (G / BLOCK)] += q.offset[i];
    return kept.data();
}

void add_residual(ov::Tensor& out, const ov::Tensor& residual) {
    OPENVINO_ASSERT(residual.get_shape() == out.get_shape(), "Int4MatMul/Int8MatMul: a residual of shape ",
                    residual.get_shape(), " for an output of shape ", out.get_shape());
    float* y = out.data<float>();
    const float* r = residual.data<const float>();
    constexpr size_t CHUNK = 1 << 16;  // a token's few thousand values on this thread; a prompt's in parallel
    const size_t n = out.get_size();
    ov::parallel_for((n + CHUNK - 1) / CHUNK, [&](size_t c) {
        for (size_t i = c * CHUNK; i < std::min(n, (c + 1) * CHUNK); ++i) y[i] = r[i] + y[i];
    });
}

}  // namespace mvlm
