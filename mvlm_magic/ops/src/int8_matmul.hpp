// Int8MatMul: y = x @ dequantize(W).T for NNCF's asymmetric int8 weights with one zero point and scale per row
// (the head of an int4 export; every MatMul of an export's vision model), as one OpenVINO operation.
//
// Inputs: x f32 (..., K); weight i8 (N, K) = stored u8 - 128, N a multiple of 32, in tiles of 32 rows
// (mvlm_magic/ops/layout.py's int8_tiles: per tile and step of 4 inputs, 128 bytes, 4 bytes a row); zero f32 (N) =
// zero point - 128; scale f32 (N); then gamma and the residual where the attributes norm and add fold them in
// (weight_matmul.hpp: Folded). Output f32 (..., N) = scale * (weight - zero) . x
#pragma once

#include "weight_matmul.hpp"

namespace mvlm {

class Int8MatMul : public WeightMatMul<Int8MatMul> {
public:
    OPENVINO_OP("Int8MatMul", "mvlm");
    static constexpr size_t WEIGHTS = 3;  // inputs after x; then gamma and the residual, where folded in

    Int8MatMul() = default;
    explicit Int8MatMul(const ov::OutputVector& args) : WeightMatMul(args) { constructor_validate_and_infer_types(); }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;
};

}  // namespace mvlm
