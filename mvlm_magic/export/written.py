"""What an export holds, read back from the IRs it wrote: the manifest's record and the label shown everywhere.

NNCF may not do exactly what was asked: a group size that does not divide a layer's input size is adjusted to a
smaller one ("int4-sym-g128" on a width of 576 writes many layers with group 64), and a ratio below 1 leaves
some layers in int8. So the label is derived from the weights actually saved, never copied from the request:

    int4-sym-g128/64-r1   symmetric int4, groups of 128 and (where 128 does not divide the input) 64

`record(ir)` walks each layer's weight (the Constant behind a MatMul, Gather or convolution, past NNCF's
Convert -> [Subtract zero point] -> Multiply scale [-> Reshape] decompression) and `describe(records, asked)`
turns the records into the label and, when it differs from the request, one line saying why.
"""

from __future__ import annotations

from collections import Counter

from .compress import Compression

WEIGHT_READERS = {"MatMul": (0, 1), "Gather": (0,), "Convolution": (1,), "GroupConvolution": (1,)}
DECOMPRESSION = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"}  # between weight and layer
INT4, INT8 = {"i4", "u4"}, {"i8", "u8"}


def record(ir) -> dict:
    """What one written IR (an openvino.Model read from its .xml) holds. For each weight precision the number of
    tensors and their bytes; scales and zero points apart; for int4 weights the group sizes used (layers per
    group size, and the input sizes that forced each), symmetric or not, and their share of the weights NNCF's
    ratio counts; the layers left in int8 beside int4 ones."""
    weights, scales = Counter(), Counter()
    tensors = Counter()
    groups, inputs, int8_layers = Counter(), {}, []
    symmetric, int4_elements, int8_elements, last = True, 0, 0, (None, 0)
    for layer in ir.get_ordered_ops():
        for index in WEIGHT_READERS.get(layer.get_type_name(), ()):
            found = weight_constants(layer.input_value(index).get_node())
            if not found:
                continue
            constants, zero_point = found
            weight = max(constants, key=lambda c: shape_size(c))  # scales and zero points are smaller
            kind = weight.get_output_element_type(0).get_type_name()
            weights[kind] += weight.get_byte_size()
            tensors[kind] += 1
            for other in constants:
                if other is not weight:
                    scales[other.get_output_element_type(0).get_type_name()] += other.get_byte_size()
            if layer.get_type_name() != "MatMul":
                continue
            shape = list(weight.get_output_shape(0))
            last = (kind, shape_size(weight))
            if kind in INT4:
                group = shape[-1] if len(shape) == 3 else -1  # (N, groups, G), or (N, K): one scale per row
                groups[group] += 1
                inputs.setdefault(group, set()).add(shape[-1] * (shape[-2] if len(shape) == 3 else 1))
                symmetric = symmetric and not zero_point
                int4_elements += shape_size(weight)
            elif kind in INT8:
                int8_layers.append(layer_name(layer))
                int8_elements += shape_size(weight)
    result = {"weights": {kind: {"tensors": tensors[kind], "bytes": weights[kind]} for kind in sorted(weights)},
              "scales_bytes": sum(scales.values())}
    if groups:
        # NNCF's ratio counts weight elements of every layer but the last one (the head, kept in int8)
        counted = int4_elements + int8_elements - (last[1] if last[0] in INT8 else 0)
        result["int4"] = {"groups": {str(g): n for g, n in sorted(groups.items(), reverse=True)},
                          "inputs": {str(g): sorted(k) for g, k in sorted(inputs.items(), reverse=True)},
                          "sym": symmetric, "share": round(int4_elements / counted, 4) if counted else 1.0}
        result["int8_layers"] = int8_layers
    return result


def weight_constants(node) -> tuple[list, bool] | None:
    """The Constants a layer's weight input is computed from through decompression nodes only, and whether a
    zero point is subtracted; None when the input depends on anything else (an activation)."""
    constants, zero_point, stack, seen = [], False, [node], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        kind = node.get_type_name()
        if kind == "Constant":
            constants.append(node)
        elif kind in DECOMPRESSION:
            zero_point = zero_point or kind == "Subtract"
            stack.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
        else:
            return None
    weights = [c for c in constants if c.get_output_partial_shape(0).rank.get_length() >= 2]
    return (constants, zero_point) if weights else None


def shape_size(constant) -> int:
    size = 1
    for dim in constant.get_output_shape(0):
        size *= dim
    return size


def layer_name(layer) -> str:
    """`__module.lm.model.layers.0.mlp.down_proj/aten::linear/MatMul` -> `lm.model.layers.0.mlp.down_proj`."""
    return layer.get_friendly_name().split("/")[0].removeprefix("__module.")


def describe(records: dict[str, dict], asked: Compression) -> tuple[str, str | None]:
    """(the label of what was written, one line saying how it differs from `asked`, or None). The language
    model decides the label: it is the one that int4 compresses."""
    language = records.get("language", {})
    kinds = set(language.get("weights", {}))
    int4 = language.get("int4")
    if int4:
        return int4_label(int4, asked)
    mode = "int8" if kinds & INT8 else "fp16" if "f16" in kinds else "fp32"
    if mode == asked.mode:
        return mode, None
    return mode, f"{asked.label} asked; its weights were written as {mode}"


def int4_label(int4: dict, asked: Compression) -> tuple[str, str | None]:
    counts = {int(g): n for g, n in int4["groups"].items()}
    order = sorted(counts, key=lambda g: (g != asked.group_size, -g))  # the asked group first, then largest first
    # NNCF meets a ratio below 1 as closely as whole layers allow: the asked ratio stands unless it is far off.
    ratio = asked.ratio if abs(int4["share"] - asked.ratio) <= 0.05 else round(int4["share"], 2)
    label = f"int4-{'sym-' if int4['sym'] else ''}g{'/'.join(str(g) for g in order)}-r{ratio:g}"
    if label == asked.label:
        return label, None
    reasons = []
    total = sum(counts.values())
    for group in order:
        if group != asked.group_size:
            sizes = ", ".join(str(k) for k in int4["inputs"][str(group)])
            reasons.append(f"{counts[group]} of {total} int4 layers use group {group} (input size {sizes} is not "
                           f"a multiple of {asked.group_size})")
    if ratio != asked.ratio:
        reasons.append(f"{int4['share']:.0%} of the weights are int4")
    if int4["sym"] != asked.sym:
        reasons.append("zero points were written")
    return label, f"{asked.label} asked; {'; '.join(reasons)}: written as {label}"
