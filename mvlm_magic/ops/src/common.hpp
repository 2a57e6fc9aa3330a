// What our operations share: the weight layout's constants, aligned buffers, quantized activations, and small
// AVX2 helpers. Every source includes this header first (it sets up ov::parallel_for on TBB).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

// ov::parallel_for on TBB, in every build (OpenVINO's CMake target asks for TBB_ADAPTIVE: build.py's choice wins).
#undef OV_THREAD
#define OV_THREAD OV_THREAD_TBB
#include "openvino/core/parallel.hpp"

// The AVX-512 VNNI paths (int4_avx512.hpp) are compiled only into the AVX-512 build (-mavx512vnni -mavx512bw).
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define MVLM_AVX512 1
#else
#define MVLM_AVX512 0
#endif

namespace mvlm {

constexpr size_t BLOCK = 32;  // activation values per int8 scale
constexpr size_t TILE = 32;   // weight rows per tile (mvlm_magic/ops/layout.py: int4_tiles, int8_tiles)
constexpr size_t TILE_AHEAD = 2048;  // bytes ahead a token asks for (the stream of tiles), AVX2 paths

// Storage from a 64-byte boundary: a 64-byte load that straddles two cache lines costs two (std::vector's
// memory starts 16 bytes into one).
template <class T>
struct Aligned64 {
    using value_type = T;
    Aligned64() = default;
    template <class U>
    Aligned64(const Aligned64<U>&) {}
    T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
    void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
    template <class U>
    bool operator==(const Aligned64<U>&) const { return true; }
    template <class U>
    bool operator!=(const Aligned64<U>&) const { return false; }
};

template <class T>
using Buffer = std::vector<T, Aligned64<T>>;

// work(i) for i in 0..count-1 on every thread: each takes its own contiguous share front to back (one stream
// of weights, which reads faster than chunks handed out in turn), and a thread done with its share takes the
// remaining items of the others from their back ends, so all finish together (a thread that starts late or reads
// slower no longer leaves the others waiting at the end of every MatMul; measured: docs/benchmarks.md).
template <class Work>
static void parallel_shares(size_t count, const Work& work) {
    const int threads = static_cast<int>(std::min<size_t>(count, static_cast<size_t>(parallel_get_max_threads())));
    if (threads <= 1) {
        for (size_t i = 0; i < count; ++i) work(i);
        return;
    }
    struct alignas(64) Share {  // the share's next item from the front (low 32 bits) and its end (high 32 bits)
        std::atomic<uint64_t> span;
    };
    Share few[4];  // (on the stack up to 4 threads: a token allocates nothing)
    std::vector<Share> more(threads > 4 ? threads : 0);
    Share* shares = threads > 4 ? more.data() : few;
    for (int t = 0; t < threads; ++t)
        shares[t].span = (uint64_t(count * (t + 1) / threads) << 32) | uint64_t(count * t / threads);
    auto take = [](Share& share, bool front, size_t& item) {  // one item, or false when the share is empty
        uint64_t span = share.span.load(std::memory_order_relaxed);
        for (;;) {
            const uint64_t first = span & 0xFFFFFFFFu, end = span >> 32;
            if (first >= end) return false;
            const uint64_t next = front ? span + 1 : ((end - 1) << 32) | first;
            if (share.span.compare_exchange_weak(span, next, std::memory_order_relaxed)) {
                item = front ? first : end - 1;
                return true;
            }
        }
    };
    ov::parallel_nt_static(threads, [&](int me, int) {
        size_t item;
        while (take(shares[me], true, item)) work(item);
        for (int other = 1; other < threads; ++other)
            while (take(shares[(me + other) % threads], false, item)) work(item);
    });
}

// call(rows, m) for the rows of x m, m + 1, ... of M, at most MOST at a time against one weight tile in the cache;
// `rows` is a std::integral_constant, so each count runs its own unrolled kernel (kernel<decltype(rows)::value>).
template <int R, class Call>
static void rows_of(size_t left, size_t m, const Call& call) {
    if constexpr (R > 1)
        if (left < R) return rows_of<R - 1>(left, m, call);
    call(std::integral_constant<int, R>{}, m);
}

template <int MOST, class Call>
static void by_rows(size_t M, const Call& call) {
    for (size_t m = 0; m < M; m += MOST) rows_of<MOST>(std::min<size_t>(MOST, M - m), m, call);
}

// Rows of x, quantized: the values, each block of 32's scale, and 8 * scale * sum (what the +8 of the
// stored nibbles adds).
struct Quantized {
    size_t rows = 0, K = 0;       // M, K
    Buffer<int8_t> values;        // (M, K)
    Buffer<float> scale, offset;  // (M, K/32)
};

// A 32-bit value (4 int8) broadcast to every lane.
static inline __m256i broadcast4(const int8_t* four_bytes) {
    int four;
    std::memcpy(&four, four_bytes, 4);
    return _mm256_set1_epi32(four);
}

// 8 f16 scales as floats.
static inline __m256 scales8(const uint16_t* f16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(f16)));
}

// Keeps a chain of adds into `v` in order: without it GCC re-associates a fully unrolled chain into a tree whose
// partial results spill to the stack (the AVX2 kernels' integer sums: 1.2-1.3x slower; docs/benchmarks.md).
static inline void keep_in_register(__m256i& v) { __asm__("" : "+x"(v)); }

// The sum of a vector's 8 floats.
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}

// The largest of a vector's 8 floats.
static inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

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

// The sum of a vector's 8 int32.
static inline int hsum_int(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

}  // namespace mvlm
