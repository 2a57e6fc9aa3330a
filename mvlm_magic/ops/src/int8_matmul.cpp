// Int8MatMul (int8_matmul.hpp): per-row int8 weights' dot products, in x's order (a unit: 32 inputs). On the
// AVX-512 build a prompt runs the int4 operation's tiles (int4_avx512.hpp), one token its panel path.

#include "int8_matmul.hpp"

#include <vector>

#if MVLM_AVX512
#include "int4_avx512.hpp"
#endif

namespace mvlm {

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

bool Int8MatMul::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
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

}  // namespace mvlm
