// KVAttention: scaled dot-product attention that keeps the key/value cache itself, in f16.
//
// It replaces ScaledDotProductAttention(q, concat(past_k, k), concat(past_v, v), mask, scale) together with
// the ReadValue / Concat / Assign of the cache around it. Inputs:
//   0  q      f32 (B, H, T, D)            queries of the T new positions (after RoPE)
//   1  k      f32 (B, KV, T, D)           their keys (after RoPE); H a multiple of KV, D a multiple of 8
//   2  v      f32 (B, KV, T, D)           their values
//   3  mask   boolean (B|1, 1, T|1, P+T)  true where a query may attend to a key
//   4  scale  f32 scalar                  applied to q . k
// Output: f32 (B, H, T, D).
// P, the positions before these, is the mask's length minus T. This call writes positions P..P+T-1 of the
// cache and attends over 0..P+T-1, so a conversation rewound to an earlier position (a shorter mask) needs
// no call of its own; positions before P must have been written by earlier calls, else it is an error.
// One cache per compiled operation: one infer request at a time (the engine has one).
#pragma once

#include "common.hpp"
#include "openvino/op/op.hpp"

namespace mvlm {

// Keys and values of every position so far, f16, (batch, kv heads, capacity, D) each.
struct KVCache {
    size_t batch = 0, heads = 0, dim = 0, capacity = 0, filled = 0;
    Buffer<uint16_t> keys, values;

    size_t offset(size_t b, size_t h, size_t p) const { return ((b * heads + h) * capacity + p) * dim; }

    // Make room for `positions`, keeping the first `filled` (capacity doubles, so growth is amortized).
    void reserve(size_t positions);
};

class KVAttention : public ov::op::Op {
public:
    OPENVINO_OP("KVAttention", "mvlm");

    KVAttention() = default;
    explicit KVAttention(const ov::OutputVector& args) : Op(args) { constructor_validate_and_infer_types(); }

    void validate_and_infer_types() override;
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override;  // an empty cache
    bool visit_attributes(ov::AttributeVisitor&) override { return true; }
    bool has_evaluate() const override { return true; }
    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;

private:
    mutable KVCache cache_;
};

}  // namespace mvlm
