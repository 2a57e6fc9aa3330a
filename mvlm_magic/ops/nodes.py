"""Python stand-ins for our C++ operations (ov.Op subclasses with the same type names), used to build the
rewritten IRs; never executed: OpenVINO runs the C++ ones (src/) once the library is registered."""

from __future__ import annotations

import openvino as ov


class _StandIn(ov.Op):
    """A C++ operation's stand-in while building the IR in Python (never executed): x (..., K) -> (..., N)."""

    class_type_info = ov.DiscreteTypeInfo("StandIn", "mvlm")

    def __init__(self, inputs=None):
        super().__init__(self, inputs)

    def validate_and_infer_types(self):
        x, weight = self.get_input_partial_shape(0), self.get_input_partial_shape(1)
        self.set_output_type(0, ov.Type.f32, ov.PartialShape(list(x)[:-1] + [weight[0]]))

    def clone_with_new_inputs(self, new_inputs):
        return type(self)(new_inputs)

    def get_type_info(self):
        return self.class_type_info

    def visit_attributes(self, visitor):
        return True


class _WeightMatMul(_StandIn):
    """Int4MatMul's and Int8MatMul's stand-in, with the attributes of what is folded into them (fold.py;
    src/weight_matmul.hpp: Folded): norm, gated, add and eps."""

    WEIGHTS = 0  # inputs after x that hold the weight

    def __init__(self, inputs=None, folded=None):
        self.folded = {"norm": False, "gated": False, "add": False, "eps": 0.0, **(folded or {})}
        super().__init__(inputs)

    def clone_with_new_inputs(self, new_inputs):
        return type(self)(new_inputs, self.folded)

    def visit_attributes(self, visitor):
        visitor.on_attributes(self.folded)
        return True


class Int4MatMul(_WeightMatMul):
    class_type_info = ov.DiscreteTypeInfo("Int4MatMul", "mvlm")
    WEIGHTS = 2  # values, scales


class Int8MatMul(_WeightMatMul):
    class_type_info = ov.DiscreteTypeInfo("Int8MatMul", "mvlm")
    WEIGHTS = 3  # values, zero points, scales


class KVAttention(_StandIn):
    """Stand-in for the attention that keeps its own cache: (q, k, v, mask, scale) -> q's shape."""

    class_type_info = ov.DiscreteTypeInfo("KVAttention", "mvlm")

    def validate_and_infer_types(self):
        self.set_output_type(0, ov.Type.f32, self.get_input_partial_shape(0))
