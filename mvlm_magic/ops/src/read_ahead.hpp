// A token's weights, asked for ahead in the gaps between its MatMuls.
//
// Why: between two of a token's MatMuls one thread runs what lies between (OpenVINO's nodes, KVAttention) and the next
// operation's set-up while the pool's other thread waits and the memory rests (~7 % of a decode step on two cores
// before the norms and residual sums were folded into the MatMuls, ops/fold.py).
// The MatMuls come in the same order every step, so as one ends, the pool gets a task that asks for the first
// bytes of each share of the one that followed it the step before; the waiting thread runs it, and the next
// MatMul starts on weights already in the cache. Measured: docs/benchmarks.md ("Results (2026-12-05j)").
#pragma once

#include "common.hpp"

namespace mvlm {

// A MatMul's weights as parallel_shares splits them among the threads: `count` items of `item_bytes` from `base`.
struct Weights {
    const void* base;
    size_t count, item_bytes;
};

// Called by a token's MatMul (one row of x) before its parallel work: notes which MatMul followed which, and
// ends a read ahead still running (the pool's thread is needed now).
void token_matmul_starts(const Weights& weights);

// Called by a token's MatMul after its parallel work: hands the pool the read ahead of the MatMul that followed
// this one the last time.
void token_matmul_ends(const Weights& weights);

// Called by our other parallel work (KVAttention): ends a read ahead still running.
void stop_reading_ahead();

}  // namespace mvlm
