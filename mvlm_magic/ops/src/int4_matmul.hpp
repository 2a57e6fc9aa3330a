// Int4MatMul: y = x @ dequantize(W).T for NNCF's symmetric int4 weights, as one OpenVINO operation.
//
// Inputs (the weight constants are NNCF's own bytes, never requantized):
//   0  x       f32 (..., K)
//   1  weight  u8  (N, K/2)    two int4 values per byte, each stored as value + 8 (0..15), N a multiple of 32,
//                               in tiles of 32 rows (mvlm_magic/ops/layout.py's int4_tiles): per tile and step
//                               of 4 inputs, 64 bytes; byte 4l + b holds input b of the step for row l in its
//                               low nibble and for row 16 + l in its high one. One load and two masks give two
//                               vectors of 16 rows x 4 inputs, for one token or many rows alike.
//   2  scale   u8  (N, 2K/G)   one f16 scale per group of G consecutive inputs (G a multiple of 64), per tile as
//                               (groups, 32 rows), as its two bytes: the CPU plugin hands f16 and u16 inputs over
//                               as f32 / i32, twice the bytes
//   3...    gamma, then the residual, where the attributes norm and add fold them in (weight_matmul.hpp: Folded)
// Output: f32 (..., N).
#pragma once

#include "weight_matmul.hpp"

namespace mvlm {

class Int4MatMul : public WeightMatMul<Int4MatMul> {
public:
    OPENVINO_OP("Int4MatMul", "mvlm");
    static constexpr size_t WEIGHTS = 2;  // inputs after x; then gamma and the residual, where folded in

    Int4MatMul() = default;
    explicit Int4MatMul(const ov::OutputVector& args) : WeightMatMul(args) { constructor_validate_and_infer_types(); }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;
};

}  // namespace mvlm
