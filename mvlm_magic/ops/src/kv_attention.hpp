// KVAttention: scaled dot-product attention that keeps the key/value cache itself, in int8 (a scale per group
// of up to 32 values of a position's head, as llama.cpp's q8_0 cache type; OpenVINO's own CPU cache is u8).
//
// It replaces ScaledDotProductAttention(q, concat(past_k, k), concat(past_v, v), mask, scale) together with
// the ReadValue / Concat / Assign of the cache around it. Inputs:
//   0  q      f32 (B, H, T, D)            queries of the T new positions (after RoPE)
//   1  k      f32 (B, KV, T, D)           their keys (after RoPE); H a multiple of KV, D a multiple of 8
//   2  v      f32 (B, KV, T, D)           their values
//   3  mask   boolean (B|1, 1, T|1, P+T)  true where a query may attend to a key
//   4  scale  f32 scalar                  applied to q . k
//   5  rows   i64 or i32 (B,)             which cache row each batch row reads and writes (optional: 0..B-1)
//   6  from   i64 or i32 (B,)             a cache row whose first positions batch row b starts from, or -1
//                                         (optional): a new conversation about a picture another row holds
//                                         copies that row's system text and picture instead of computing them
//   7  cos    f32 (B, T, D)               (optional, with sin; needs 5 and 6) rotary position embedding, LLaMA's
//   8  sin    f32 (B, T, D)               rotate-half form: q and k are given before it and rotated here,
//                                         x * cos + (-x[D/2:], x[:D/2]) * sin (four of OpenVINO's nodes a layer less)
// Output: f32 (B, H, T, D).
// A cache row is one conversation's keys and values. Batch row b's length L_b is one past the last key its last
// query may see (the mask's length when the mask is all true; shorter rows of a batch end in false); the call
// writes positions L_b-T..L_b-1 of its cache row and attends over 0..L_b-1, so a conversation rewound to an
// earlier position needs no call of its own, and conversations of different lengths decode in one call (the
// engine's batched decoding, runtime/batching.py). Positions before L_b-T must have been written by earlier
// calls, else it is an error. A clone shares the cache rows of the operation it was cloned from: the engine
// decodes one token through a copy of the language model with static shapes (runtime/kv_state.py), reading the
// rows its prompts wrote. One infer request at a time over all who share them.
#pragma once

#include "common.hpp"
#include <sys/mman.h>

#include <memory>
#include <new>
#include <vector>

#include "openvino/op/op.hpp"

namespace mvlm {

// Memory of its own pages for each cache buffer (mmap), given back to the system when freed. Why: rows grow as
// conversations do, and malloc kept the freed smaller buffers inside its heap, where bigger ones never fit: a
// server decoding 16 conversations held ~0.4 GB more than its caches (docs/serving.md).
template <class T>
struct Pages {
    using value_type = T;
    Pages() = default;
    template <class U>
    Pages(const Pages<U>&) {}
    T* allocate(size_t n) {
        void* p = mmap(nullptr, n * sizeof(T), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) throw std::bad_alloc();
        return static_cast<T*>(p);
    }
    void deallocate(T* p, size_t n) { munmap(p, n * sizeof(T)); }
    template <class U>
    bool operator==(const Pages<U>&) const { return true; }
    template <class U>
    bool operator!=(const Pages<U>&) const { return false; }
};

template <class T>
using PageBuffer = std::vector<T, Pages<T>>;

// One cache row's keys and values of every position so far, (kv heads, capacity, D) each: int8, and a scale per
// group of `group` values (D / group per position).
struct KVCache {
    size_t heads = 0, dim = 0, capacity = 0, filled = 0;
    PageBuffer<int8_t> keys, values;
    PageBuffer<float> key_scales, value_scales;

    size_t group() const { return dim % 32 == 0 ? 32 : dim % 16 == 0 ? 16 : 8; }
    size_t offset(size_t h, size_t p) const { return (h * capacity + p) * dim; }
    size_t scale_offset(size_t h, size_t p) const { return offset(h, p) / group(); }

    // Make room for `positions`, keeping the first `filled`.
    void reserve(size_t positions);
};

class KVAttention : public ov::op::Op {
public:
    OPENVINO_OP("KVAttention", "mvlm");

    KVAttention() = default;
    explicit KVAttention(const ov::OutputVector& args) : Op(args) { constructor_validate_and_infer_types(); }

    void validate_and_infer_types() override;
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override;  // the same cache
    bool visit_attributes(ov::AttributeVisitor&) override { return true; }
    bool has_evaluate() const override { return true; }
    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;

private:
    // by cache row; shared with clones (a pointer: evaluate is const, and clones must see the same rows)
    std::shared_ptr<std::vector<KVCache>> rows_ = std::make_shared<std::vector<KVCache>>();
};

}  // namespace mvlm
