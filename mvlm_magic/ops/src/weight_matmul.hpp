// What Int4MatMul and Int8MatMul share: the OpenVINO operation around a weight of N rows (x f32 (..., K) ->
// f32 (..., N)) and the activations quantized to int8.
#pragma once

#include "common.hpp"
#include "openvino/op/op.hpp"

namespace mvlm {

// Quantize x's rows (M rows of K values) into this thread's buffers, kept between calls so that a token
// allocates nothing, and give `out` x's shape with the last dimension N.
const Quantized& quantize_input(const ov::Tensor& x, size_t N, ov::Tensor& out);

// Each x row's offsets (q.offset, one per block of 32) summed over each group of G inputs: (M, K/G), in this
// thread's buffer (G = K: one sum per row, for weights with one scale per row).
const float* group_offsets(const Quantized& q, size_t M, size_t K, size_t G);

// x f32 (..., K) and a weight of N rows -> f32 (..., N), run by Self's `evaluate`.
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

}  // namespace mvlm
