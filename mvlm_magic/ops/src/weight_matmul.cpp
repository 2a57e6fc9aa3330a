// The activations of Int4MatMul and Int8MatMul, quantized to int8: one scale per 32 values, as llama.cpp's Q8_0.

#include "weight_matmul.hpp"

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

const Quantized& quantize_input(const ov::Tensor& x, size_t N, ov::Tensor& out) {
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

const float* group_offsets(const Quantized& q, size_t M, size_t K, size_t G) {
    const size_t blocks = K / BLOCK, groups = K / G;
    thread_local Buffer<float> kept;  // (a lambda running on another thread must see this thread's buffer)
    kept.assign(M * groups, 0.f);
    for (size_t i = 0; i < M * blocks; ++i) kept[i / blocks * groups + i % blocks / (G / BLOCK)] += q.offset[i];
    return kept.data();
}

}  // namespace mvlm
