// Reading a token's next weights ahead (read_ahead.hpp).

#include "read_ahead.hpp"

#include <unordered_map>

#include "oneapi/tbb/task_arena.h"

namespace mvlm {

// How much of each share of the next MatMul to ask for: twice this fits a core's L2 (1.25 MB on Ice Lake, 1 MB on
// Zen 4); a gap between two MatMuls is ~20 us, in which one core reads ~200 KB, so a task is mostly cut short by
// the next parallel work (256 KB: 0.98x the step; 512 KB: 0.96x; 768 KB: 0.97x; docs/benchmarks.md).
constexpr size_t AHEAD_BYTES = 512 * 1024;
constexpr size_t PAGE = 4096;  // asked for a page at a time, checking between pages whether to stop

static std::atomic<uint64_t> parallel_work{0};  // parallel work of ours begun: a read ahead stops when it changes
static std::atomic<uint64_t> asked_for{0};      // bytes asked for ahead (mvlm_read_ahead_bytes, for the tests)
static std::atomic<bool> reading_ahead{true};   // (mvlm_read_ahead: off to compare, in one process)

namespace {
struct Order {  // one infer thread's MatMuls: each one's successor the last time, by the address of its weights
    const void* last = nullptr;
    std::unordered_map<const void*, Weights> next;
};
}  // namespace

static thread_local Order order;  // (each thread that runs a model learns its own)

void stop_reading_ahead() { parallel_work.fetch_add(1, std::memory_order_relaxed); }

void token_matmul_starts(const Weights& weights) {
    stop_reading_ahead();
    if (order.next.size() > 4096) order.next.clear();  // (models loaded one after the other: forget the old)
    if (order.last) order.next[order.last] = weights;
    order.last = weights.base;
}

void token_matmul_ends(const Weights& weights) {
    const auto found = order.next.find(weights.base);
    const size_t threads = static_cast<size_t>(parallel_get_max_threads());
    if (found == order.next.end() || threads < 2 || !reading_ahead.load(std::memory_order_relaxed))
        return;  // (one thread: nobody waits, nobody to read ahead)
    const Weights next = found->second;
    const uint64_t now = parallel_work.load(std::memory_order_relaxed);
    const size_t shares = std::min(next.count, threads);
    // prefetch, not loads: an instruction that cannot fault, so weights of a model unloaded meanwhile are harmless
    tbb::this_task_arena::enqueue([next, now, shares] {
        const char* base = static_cast<const char*>(next.base);
        const size_t share_bytes = next.count / shares * next.item_bytes;
        for (size_t offset = 0; offset < std::min(AHEAD_BYTES, share_bytes); offset += PAGE) {
            for (size_t s = 0; s < shares; ++s) {  // each share's start, where its thread begins (parallel_shares)
                if (parallel_work.load(std::memory_order_relaxed) != now) return;
                const char* page = base + next.count * s / shares * next.item_bytes + offset;
                for (size_t line = 0; line < PAGE; line += 64) _mm_prefetch(page + line, _MM_HINT_T1);
                asked_for.fetch_add(PAGE, std::memory_order_relaxed);
            }
        }
    });
}

}  // namespace mvlm

// Through ctypes, for tests/test_ops.py and benchmarks/profile_step.py --compare-read-ahead: the bytes asked for
// ahead since the library was loaded, and turning it off and on in a running process.
extern "C" uint64_t mvlm_read_ahead_bytes() { return mvlm::asked_for.load(); }
extern "C" void mvlm_read_ahead(int on) { mvlm::reading_ahead = on != 0; }
