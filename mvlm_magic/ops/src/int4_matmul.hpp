// Int4MatMul: y = x @ dequantize(W).T for NNCF's symmetric int4 weights, as one OpenVINO operation.
//
// Inputs (the weight constants are NNCF's own bytes, never requantized):
//   0  x       f32 (..., K)
//   1  weight  u8  (N, K/2)    two int4 values per byte, each stored as value + 8 (0..15); per 64 inputs,
//                               32 bytes (a "unit"): byte i holds input i in its low nibble and input 32 + i in
//                               its high one, so that one load and two masks give 64 weights in order. Rows in
//                               panels of 4, interleaved by units (see unit_at): a token reads one stream.
//   2  scale   u8  (N, 2K/G)   one f16 scale per group of G consecutive inputs (G a multiple of 64), as its two
//                               bytes: the CPU plugin hands f16 and u16 inputs over as f32 / i32, twice the bytes
// Output: f32 (..., N).
#pragma once

#include "weight_matmul.hpp"

namespace mvlm {

class Int4MatMul : public WeightMatMul<Int4MatMul> {
public:
    OPENVINO_OP("Int4MatMul", "mvlm");

    Int4MatMul() = default;
    explicit Int4MatMul(const ov::OutputVector& args) : WeightMatMul(args) { constructor_validate_and_infer_types(); }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;
};

}  // namespace mvlm
