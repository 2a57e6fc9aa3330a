"""What the rewrites recognise in an IR: NNCF's compressed weights (which MatMuls read symmetric int4 or per-row
int8 weights, and those weights in the form our operations take: the same bytes and scales, never requantized),
and the small questions asked of nodes and outputs on the way."""

from __future__ import annotations

import numpy as np
import openvino as ov


def is_type(node, type_name: str) -> bool:
    """Whether `node` is an operation of type `type_name` (e.g. "MatMul")."""
    return node.get_type_name() == type_name


def same_output(a, b) -> bool:
    """Whether two outputs are the same (node names are unique)."""
    return a.get_node().get_name() == b.get_node().get_name() and a.get_index() == b.get_index()


def constant_value(output):
    """The data of the Constant `output` comes from (through a Convert of it), else None."""
    node = output.get_node()
    if is_type(node, "Convert"):  # a constant converted to the input's type (ConvertLike, folded)
        node = node.input_value(0).get_node()
    return node.get_data() if is_type(node, "Constant") else None


def is_constant(output, value) -> bool:
    """Whether `output` is a constant of one element equal to `value`."""
    data = constant_value(output)
    return data is not None and data.size == 1 and float(data.ravel()[0]) == value


def redirect(old, new) -> None:
    """Make everything that reads output `old` read `new` instead."""
    for target in old.get_target_inputs():
        target.replace_source_output(new)


def redirect_shape_readers(old, new) -> None:
    """Make what reads only the shape of output `old` (a ShapeOf) read `new`'s, the same shape: once its other
    readers are gone, `old`'s nodes leave the graph."""
    for target in old.get_target_inputs():
        if is_type(target.get_node(), "ShapeOf"):
            target.replace_source_output(new)


def shape_size(node) -> int:
    """How many elements a node's output holds (a constant's, without reading its data)."""
    return int(np.prod(list(node.get_output_shape(0))))


def decompressed_weight(matmul):
    """For `x @ W.T` (a MatMul with transpose_b), the node that computes W, past a final Convert; else None."""
    if not is_type(matmul, "MatMul") or matmul.get_attributes() != {"transpose_a": False, "transpose_b": True}:
        return None
    node = matmul.input_value(1).get_node()
    return node.input_value(0).get_node() if is_type(node, "Convert") else node


def int4_weight(matmul) -> tuple[np.ndarray, np.ndarray] | None:
    """(values + 8 (N, K) as bytes, f16 scales (N, K/G)) when the MatMul's weight is
    NNCF's symmetric int4 decompression (Constant i4 -> Convert -> Multiply by a scale [-> Reshape] -> Convert)
    with groups of a multiple of 64; else None."""
    found = int4_constants(matmul)
    return None if found is None else int4_data(*found)


def int4_constants(matmul) -> tuple | None:
    """(weight constant, scale constant, N, K, groups) when `int4_weight` takes the MatMul, read off the graph
    alone: a rewrite matches every MatMul first and reads the weights one group at a time (a model's worth of
    weights never in memory at once)."""
    node = decompressed_weight(matmul)
    if node is None or matmul.get_input_element_type(0) != ov.Type.f32:
        return None
    if is_type(node, "Reshape"):
        node = node.input_value(0).get_node()
    if not is_type(node, "Multiply"):
        return None
    first, second = (node.input_value(i).get_node() for i in range(2))
    if is_type(second, "Convert"):
        first, second = second, first
    if not (is_type(first, "Convert") and is_type(second, "Constant")):
        return None
    weight = first.input_value(0).get_node()
    if not is_type(weight, "Constant") or weight.get_element_type() != ov.Type.i4:
        return None
    shape = list(weight.get_output_shape(0))  # (N, groups, G) or (N, K) for one scale per row
    n, k = shape[0], int(np.prod(shape[1:]))
    groups = shape[1] if len(shape) == 3 else 1
    weight_shape = matmul.get_input_partial_shape(1)
    if not weight_shape.is_static or list(weight_shape.to_shape()) != [n, k]:
        return None
    if (k // groups) % 64 or second.get_output_element_type(0) != ov.Type.f16:
        return None
    return weight, second, n, k, groups


def int4_data(weight, scale, n: int, k: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """`int4_weight`'s arrays from what `int4_constants` found: the values + 8 (N, K) as bytes in input order, and
    the f16 scales (N, groups). layout.int4_tiles puts them in the operation's order."""
    nncf = weight.get_data().view(np.uint8).reshape(n, k // 2) ^ np.uint8(0x88)  # signed nibbles -> value + 8
    values = np.stack([nncf & 0x0F, nncf >> 4], axis=-1).reshape(n, k)  # element 2i low, 2i+1 high
    return values, scale.get_data().reshape(n, groups)


def int8_weight(matmul) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(weight i8 (N, K), zero (N,), scale (N,)) when the MatMul's weight is NNCF's asymmetric
    int8 with one zero point and scale per row (Constant u8 -> Convert -> Subtract zero -> Multiply scale ->
    Convert), as the head of an int4 export; else None."""
    found = int8_constants(matmul)
    return None if found is None else int8_data(*found)


def int8_constants(matmul) -> tuple | None:
    """(weight, zero and scale constants, N, K) when `int8_weight` takes the MatMul, read off the graph alone."""
    node = decompressed_weight(matmul)
    if node is None or not is_type(node, "Multiply") or not is_type(node.input_value(1).get_node(), "Constant"):
        return None
    subtract, scale = node.input_value(0).get_node(), node.input_value(1).get_node()
    if not is_type(subtract, "Subtract"):
        return None
    weight, zero = (subtract.input_value(i).get_node() for i in range(2))
    weight = weight.input_value(0).get_node() if is_type(weight, "Convert") else weight
    zero = zero.input_value(0).get_node() if is_type(zero, "Convert") else zero
    if not (is_type(weight, "Constant") and is_type(zero, "Constant")) or weight.get_element_type() != ov.Type.u8:
        return None
    n, k = weight.get_output_shape(0)
    if k % 32 or shape_size(zero) != n or shape_size(scale) != n:
        return None
    return weight, zero, scale, n, k


def int8_data(weight, zero, scale, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`int8_weight`'s arrays from what `int8_constants` found."""
    values = (weight.get_data().astype(np.int16) - 128).astype(np.int8)
    zeros = zero.get_data().astype(np.float32).reshape(n) - 128
    return values, zeros, scale.get_data().astype(np.float32).reshape(n)
