// What Int4MatMul and Int8MatMul share: the OpenVINO operation around a weight of N rows (x f32 (..., K) ->
// f32 (..., N)), the activations quantized to int8, and what the graph around the product folds into it.
#pragma once

#include "common.hpp"
#include "openvino/op/op.hpp"

namespace mvlm {

// The nodes of a decoder layer that ops/rewrite.py's fold_neighbours folds into the product, as its attributes.
// Why: each was one of OpenVINO's nodes, ~5-6 us of one thread a token while the other waits, ~120 a token;
// here they cost a pass over a few thousand values (docs/benchmarks.md, "Results (2026-12-05k)").
//   norm   x's rows are normalised first: x / sqrt(mean(x^2) + eps) * gamma (LLaMA's RMS norm); gamma, f32 (K),
//          is the input after the weights
//   gated  x is (..., 2K), [gate | up]: the product reads silu(gate) * up (LLaMA's MLP)
//   add    the last input, f32 of the output's shape, is added to the output (the residual stream)
struct Folded {
    bool norm = false, gated = false, add = false;
    float eps = 0.f;
};

// x's rows (M rows of K values, as `folded` makes them) quantized into this thread's buffers, kept between calls so
// that a token allocates nothing; `out` gets x's shape with the last dimension N.
const Quantized& quantize_input(const ov::Tensor& x, size_t N, ov::Tensor& out, const Folded& folded,
                                const float* gamma);

// Each x row's offsets (q.offset, one per block of 32) summed over each group of G inputs: (M, K/G), in this
// thread's buffer (G = K: one sum per row, for weights with one scale per row).
const float* group_offsets(const Quantized& q, size_t G);

// out += residual, of the same shape.
void add_residual(ov::Tensor& out, const ov::Tensor& residual);

// x f32 (..., K) and a weight of N rows -> f32 (..., N), run by Self's `evaluate`; Self::WEIGHTS: how many
// inputs its weight takes after x.
template <class Self>
class WeightMatMul : public ov::op::Op {
public:
    WeightMatMul() = default;
    explicit WeightMatMul(const ov::OutputVector& args) : Op(args) {}

    void validate_and_infer_types() override {
        const auto x = get_input_partial_shape(0);
        const auto w = get_input_partial_shape(1);
        NODE_VALIDATION_CHECK(this, x.rank().is_static() && w.rank().get_length() == 2, "x (..., K), a 2-D weight");
        const size_t inputs = 1 + Self::WEIGHTS + folded_.norm + folded_.add;
        NODE_VALIDATION_CHECK(this, get_input_size() == inputs, "inputs: ", get_input_size(), ", expected ", inputs);
        auto out = x;
        out[out.size() - 1] = w[0];
        set_output_type(0, ov::element::f32, out);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        auto clone = std::make_shared<Self>();
        clone->set_arguments(args);
        clone->folded_ = folded_;
        clone->constructor_validate_and_infer_types();
        return clone;
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("norm", folded_.norm);
        visitor.on_attribute("gated", folded_.gated);
        visitor.on_attribute("add", folded_.add);
        visitor.on_attribute("eps", folded_.eps);
        return true;
    }

    bool has_evaluate() const override { return true; }

protected:
    // x's rows as the product reads them, quantized (quantize_input)
    const Quantized& quantized_input(const ov::TensorVector& inputs, size_t N, ov::Tensor& out) const {
        const float* gamma = folded_.norm ? inputs[1 + Self::WEIGHTS].template data<const float>() : nullptr;
        return quantize_input(inputs[0], N, out, folded_, gamma);
    }

    // the residual added, where one is folded in
    void add_folded(const ov::TensorVector& inputs, ov::Tensor& out) const {
        if (folded_.add) add_residual(out, inputs.back());
    }

    Folded folded_;
};

}  // namespace mvlm
