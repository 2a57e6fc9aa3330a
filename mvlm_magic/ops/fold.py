"""What a decoder layer computes around our MatMuls, folded into them (src/weight_matmul.hpp: Folded): the RMS norm
before q/k/v, gate/up and the head, the SiLU gate before down, the residual sums after o_proj and down.

Why: each was one of OpenVINO's nodes, a few microseconds of one thread per token while the pool's other thread
waited, ~120 a token on the 1.7B model; folded in, they cost a pass over a few thousand values inside the
operation (docs/benchmarks.md, "Results (2026-12-05k)")."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import openvino as ov
from openvino import opset13

from .nodes import Int4MatMul, Int8MatMul
from .patterns import constant_value, is_constant, is_type, redirect, redirect_shape_readers, same_output

OPERATIONS = {"Int4MatMul": Int4MatMul, "Int8MatMul": Int8MatMul}


class Norm(NamedTuple):
    """An RMS norm in the graph: `output` is gamma * (h * (1 / sqrt(mean(h^2, last axis) + eps)))."""

    h: ov.Output
    gamma: np.ndarray  # f32 (K,)
    eps: float
    output: ov.Output


def fold_neighbours(model: ov.Model) -> int:
    """Fold into each Int4MatMul / Int8MatMul of `model`, in place, the RMS norm or SiLU gate that makes its input
    and the residual sum its output goes to alone; returns how many nodes were folded."""
    folded = 0
    for op in [op for op in model.get_ordered_ops() if op.get_type_name() in OPERATIONS]:
        operation = OPERATIONS[op.get_type_name()]
        if op.get_input_size() != 1 + operation.WEIGHTS:  # folded already
            continue
        x, extra, attributes = op.input_value(0), [], {}
        gate = _gate_and_up(x)
        norm, read = (None, x) if gate is not None else _norm_before(x)
        if gate is not None:
            x, attributes["gated"] = gate, True
        elif norm is not None:
            redirect_shape_readers(norm.output, norm.h)  # (so that the norm's nodes leave the graph)
            x, attributes["norm"], attributes["eps"] = read, True, norm.eps
            extra.append(opset13.constant(norm.gamma).output(0))
        residual = _residual_sum(op)
        if residual is not None:
            add, other = residual
            extra.append(other)
            attributes["add"] = True
        if not attributes:
            continue
        weights = [op.input_value(i) for i in range(1, 1 + operation.WEIGHTS)]
        node = operation([x, *weights, *extra], attributes)
        node.set_friendly_name(op.get_friendly_name())
        redirect((add if residual is not None else op).output(0), node.output(0))
        folded += (gate is not None) + (norm is not None) + (residual is not None)
    return folded


def _gate_and_up(x):
    """[gate | up] when `x` is silu(gate) * up, gate and up the two halves of one output (our MatMul of gate_proj
    and up_proj, split again: rewrite._replace); else None."""
    product = x.get_node()
    if not is_type(product, "Multiply"):
        return None
    halves = [product.input_value(i) for i in range(2)]
    swish = [h for h in halves if is_type(h.get_node(), "Swish") and _silu(h.get_node())]
    if len(swish) != 1:
        return None
    gate, up = swish[0].get_node().input_value(0), halves[1 - halves.index(swish[0])]
    split = gate.get_node()
    if not (is_type(split, "VariadicSplit") and split.get_output_size() == 2
            and same_output(gate, split.output(0)) and same_output(up, split.output(1))):
        return None
    lengths, joined = constant_value(split.input_value(2)), split.input_value(0)
    if lengths is None or len(set(lengths.ravel().tolist())) != 1 or not _last_axis(split.input_value(1), joined):
        return None
    return joined if joined.get_node().get_type_name() in OPERATIONS else None


def _silu(swish) -> bool:
    """Whether a Swish is x * sigmoid(x): no beta, or a beta of 1."""
    return swish.get_input_size() == 1 or is_constant(swish.input_value(1), 1)


def _norm_before(x):
    """(the RMS norm, what the operation reads instead of x) when x is an RMS norm's output (h) or a slice of its
    positions, as before the head (the same slice of h: the norm is per row); else (None, x)."""
    norm = _rms_norm(x)
    if norm is not None:
        return norm, norm.h
    sliced = x.get_node()
    if is_type(sliced, "Slice") and sliced.get_input_size() == 5 and not _names_last_axis(sliced.input_value(4), x):
        norm = _rms_norm(sliced.input_value(0))
        if norm is not None:
            return norm, opset13.slice(norm.h, *(sliced.input_value(i) for i in range(1, 5))).output(0)
    return None, x


def _rms_norm(x) -> Norm | None:
    """The RMS norm `x` is the output of, as LLaMA's export traces it; else None."""
    scaled = x.get_node()
    if not is_type(scaled, "Multiply"):
        return None
    inputs = [scaled.input_value(i) for i in range(2)]
    gammas = [constant_value(i) for i in inputs]
    if sum(g is not None for g in gammas) != 1:
        return None
    gamma = next(g for g in gammas if g is not None)
    normed = inputs[1 - [g is not None for g in gammas].index(True)].get_node()
    if not is_type(normed, "Multiply"):
        return None
    h, inverse = _pair(normed, "Divide")
    root = inverse.input_value(1).get_node() if inverse is not None else None
    if root is None or not is_constant(inverse.input_value(0), 1) or not is_type(root, "Sqrt"):
        return None
    total = root.input_value(0).get_node()
    if not is_type(total, "Add"):
        return None
    eps, mean = _pair(total, "ReduceMean")
    if mean is None or constant_value(eps) is None or constant_value(eps).size != 1:
        return None
    square = mean.input_value(0).get_node()
    width = h.get_partial_shape()[-1] if h.get_partial_shape().rank.is_static else None
    if (not mean.get_attributes().get("keep_dims") or not _last_axis(mean.input_value(1), h)
            or not is_type(square, "Power") or not is_constant(square.input_value(1), 2)
            or not same_output(square.input_value(0), h) or width is None or width.is_dynamic
            or gamma.size != width.get_length()):
        return None
    return Norm(h, gamma.astype(np.float32).reshape(-1), float(constant_value(eps).ravel()[0]), x)


def _pair(node, kind: str):
    """(the other input, the node of type `kind`) when one of `node`'s two inputs comes from a `kind`; else
    (None, None)."""
    inputs = [node.input_value(i) for i in range(2)]
    found = [i for i in inputs if is_type(i.get_node(), kind)]
    if len(found) != 1:
        return None, None
    return inputs[1 - inputs.index(found[0])], found[0].get_node()


def _last_axis(axes, x) -> bool:
    """Whether the constant `axes` names x's last axis alone."""
    rank = x.get_partial_shape().rank
    return rank.is_static and (is_constant(axes, -1) or is_constant(axes, rank.get_length() - 1))


def _names_last_axis(axes, x) -> bool:
    """Whether `axes` may name x's last axis, among others (true where unknown)."""
    rank, named = x.get_partial_shape().rank, constant_value(axes)
    return rank.is_dynamic or named is None or bool({-1, rank.get_length() - 1} & set(named.ravel().tolist()))


def _residual_sum(op):
    """(the Add, its other input) when `op`'s output goes to one Add alone, of a non-constant input of the same
    shape (the residual stream; a bias is left alone); else None."""
    targets = list(op.output(0).get_target_inputs())
    if len(targets) != 1 or not is_type(targets[0].get_node(), "Add"):
        return None
    add = targets[0].get_node()
    other = add.input_value(1 - targets[0].get_index())
    if constant_value(other) is not None or other.get_partial_shape() != op.get_output_partial_shape(0):
        return None
    return add, other
