"""Graph rewrites, in place: NNCF's int4 and int8 MatMuls become Int4MatMul / Int8MatMul (those reading one input
as one operation), and each attention over a stateful cache becomes KVAttention, which keeps the cache itself."""

from __future__ import annotations

import numpy as np
import openvino as ov
from openvino import opset13

from .layout import TILE, int4_tiles, int8_tiles
from .nodes import Int4MatMul, Int8MatMul, KVAttention
from .patterns import (
    constant_value,
    int4_constants,
    int4_data,
    int8_constants,
    int8_data,
    is_constant,
    is_type,
    redirect,
    redirect_shape_readers,
    same_output,
)


def rewrite_int4_matmuls(model: ov.Model, spill=None) -> int:
    """Replace the symmetric-int4 MatMuls of `model` by Int4MatMul, in place, and, where there were any, the
    per-row int8 ones (the head) by Int8MatMul; returns how many int4 MatMuls it replaced.
    MatMuls that read the same input with the same group size (q, k, v; gate, up) become one operation whose
    output is split again: the input is quantized once and there are fewer calls per token.
    `spill` (an ops.spill.Spill) holds the new weights in a file instead of memory.
    (The language models of int8 exports stay on OpenVINO's own path: not measured with our operation.)"""
    found = [(op, int4_constants(op)) for op in model.get_ordered_ops()]
    int4 = [(op, constants) for op, constants in found if constants is not None]
    # grouped by (K/2, groups): the shapes of int4_data's two arrays past N
    _replace_by_input(int4, int4_data, Int4MatMul, lambda constants: (constants[3] // 2, constants[4]), spill,
                      order=tiled)
    if int4:
        rewrite_int8_matmuls(model, spill)
    return len(int4)


def rewrite_int8_matmuls(model: ov.Model, spill=None) -> int:
    """Replace the per-row int8 MatMuls of `model` (the head; every MatMul of an export's vision model) by
    Int8MatMul, in place, those reading one input (q, k, v) as one operation; returns how many it replaced."""
    found = [(op, int8_constants(op)) for op in model.get_ordered_ops()]
    int8 = [(op, constants) for op, constants in found if constants is not None]
    _replace_by_input(int8, int8_data, Int8MatMul, lambda constants: constants[4], spill,  # by K
                      order=int8_tiled)
    return len(int8)


def tiled(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Int4MatMul's constants in its order (layout.int4_tiles), rows up to a whole tile added."""
    values, scales = parts
    return list(int4_tiles(whole_tiles(values, fill=8), whole_tiles(scales)))  # 8: weight 0 (+ 8)


def int8_tiled(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Int8MatMul's constants in its order (layout.int8_tiles), rows up to a whole tile added."""
    values, zeros, scales = (whole_tiles(part) for part in parts)
    return [int8_tiles(values), zeros, scales]


def whole_tiles(rows: np.ndarray, fill=0) -> np.ndarray:
    """`rows` with rows of `fill` up to a multiple of TILE: their outputs are split off again (`_replace`)."""
    missing = -len(rows) % TILE
    return np.concatenate([rows, np.full((missing, *rows.shape[1:]), fill, rows.dtype)]) if missing else rows


def _replace_by_input(found: list, data, operation, same, spill=None, order=None) -> None:
    """One `operation` for each group of MatMuls that read the same output and whose weights agree on
    `same(constants)`: their weights (`data(*constants)`) concatenated by rows, in the operation's `order`. The
    weights are read one group at a time, and put in `spill` where there is one."""
    groups: dict[tuple, list] = {}
    for op, constants in found:
        source = op.input_value(0)
        key = (source.get_node().get_name(), source.get_index(), same(constants))  # unique names
        groups.setdefault(key, []).append((op, constants))
    for group in groups.values():
        weights = [data(*constants) for _, constants in group]
        parts = [np.concatenate([w[i] for w in weights]) for i in range(len(weights[0]))]
        del weights  # only one group's arrays at a time
        parts = order(parts)
        if spill is not None:
            parts = [spill(part) for part in parts]
        _replace([op for op, _ in group], operation, parts, shared=spill is not None)


def _cached_input(concat):
    """The new keys (or values) when `concat` is concat(cache, new) on positions with the cache read from a
    variable (through the beam Gather) and written back by an Assign; else None."""
    if not is_type(concat, "Concat") or concat.get_input_size() != 2 or concat.get_attributes()["axis"] not in (-2, 2):
        return None
    past = concat.input_value(0).get_node()
    if is_type(past, "Gather"):
        past = past.input_value(0).get_node()
    users = {target.get_node().get_type_name() for target in concat.output(0).get_target_inputs()}
    cached = is_type(past, "ReadValue") and users == {"Assign", "ScaledDotProductAttention"}
    return concat.input_value(1) if cached else None


def use_kv_attention(model: ov.Model) -> int:
    """Replace each ScaledDotProductAttention over a stateful cache by KVAttention, in place, removing the
    cache's variables (the operation keeps the cache); returns how many it replaced. Only where the head size
    is a multiple of 8 and the mask is boolean, as the language models we export have."""
    inputs = {name: parameter for parameter in model.get_parameters() for name in parameter.output(0).get_names()}
    if not {"inputs_embeds", "attention_mask"} <= inputs.keys():
        return 0
    replaced = 0
    # Which cache row each batch row uses: one conversation per row, so several decode in one call (batching.py).
    rows = opset13.parameter([-1], ov.Type.i64, name="cache_rows")
    rows.output(0).set_names({"cache_rows"})
    # Which row each batch row's first positions are copied from (-1: none): a new conversation about a picture
    # another row holds starts from that row's system text and picture (batching.py).
    sources = opset13.parameter([-1], ov.Type.i64, name="cache_sources")
    sources.output(0).set_names({"cache_sources"})
    for sdpa in [op for op in model.get_ordered_ops() if is_type(op, "ScaledDotProductAttention")]:
        if sdpa.get_input_size() != 5 or sdpa.get_attributes().get("causal"):
            continue
        q, keys, values, mask, scale = (sdpa.input_value(i) for i in range(5))
        new_keys, new_values = _cached_input(keys.get_node()), _cached_input(values.get_node())
        head = q.get_partial_shape()[3]
        if (new_keys is None or new_values is None or mask.get_element_type() != ov.Type.boolean
                or not is_type(scale.get_node(), "Constant") or head.is_dynamic or head.get_length() % 8):
            continue
        rotary = [_rotary(q), _rotary(new_keys)]
        if all(rotary) and all(same_output(a, b) for a, b in zip(rotary[0][1:], rotary[1][1:])):  # by the same angles
            # The rotation moves into the operation; what read only the rotated shape reads x's (the same one).
            for rotated, (x, _, _) in zip((q, new_keys), rotary):
                redirect_shape_readers(rotated, x)
            (q, cos, sin), (new_keys, _, _) = rotary
            node = KVAttention([q, new_keys, new_values, mask, scale, rows.output(0), sources.output(0), cos, sin])
        else:
            node = KVAttention([q, new_keys, new_values, mask, scale, rows.output(0), sources.output(0)])
        node.set_friendly_name(sdpa.get_friendly_name())
        redirect(sdpa.output(0), node.output(0))
        for concat in (keys.get_node(), values.get_node()):
            for target in concat.output(0).get_target_inputs():
                if is_type(target.get_node(), "Assign"):
                    assign = target.get_node()
                    model.remove_sink(assign)
                    model.remove_variable(model.get_variable_by_id(assign.get_variable_id()))
        replaced += 1
    if replaced:
        model.add_parameters([rows, sources])
    # The prompt's past length was read off the cache's shape (for the mask): compute that shape from the inputs.
    for shape_of in [op for op in model.get_ordered_ops() if is_type(op, "ShapeOf")]:
        cache = shape_of.input_value(0).get_node()
        cache = cache.input_value(0).get_node() if is_type(cache, "Gather") else cache
        if is_type(cache, "ReadValue") and model.get_variable_by_id(cache.get_variable_id()) is None:
            _, heads, _, head = cache.get_output_partial_shape(0)
            shape = _cache_shape(inputs["inputs_embeds"], inputs["attention_mask"], heads.get_length(),
                                 head.get_length(), shape_of.get_output_element_type(0))
            redirect(shape_of.output(0), shape)
    return replaced


def _rotary(rotated):
    """(x, cos, sin) when `rotated` is LLaMA's rotary embedding of x (B, H, T, D) as the export traces it:
    x * unsqueeze(cos, 1) + concat(-x[..., D/2:], x[..., :D/2]) * unsqueeze(sin, 1), cos and sin (B, T, D);
    else None. KVAttention then rotates x itself (kv_attention.hpp, inputs 7 and 8)."""
    add = rotated.get_node()
    if not is_type(add, "Add"):
        return None
    products = [add.input_value(i).get_node() for i in range(2)]
    if not all(is_type(node, "Multiply") for node in products):
        return None
    by_concat = [node for node in products if is_type(node.input_value(0).get_node(), "Concat")]
    if len(by_concat) != 1:
        return None
    plain = products[1 - products.index(by_concat[0])]
    x, cos = plain.input_value(0), _angles(plain.input_value(1), "Cos")
    concat, sin = by_concat[0].input_value(0).get_node(), _angles(by_concat[0].input_value(1), "Sin")
    head = x.get_partial_shape()[-1]
    if cos is None or sin is None or head.is_dynamic or concat.get_input_size() != 2:
        return None
    half = head.get_length() // 2
    negated, second = (concat.input_value(i).get_node() for i in range(2))
    if not (is_type(negated, "Multiply") and is_constant(negated.input_value(1), -1)):
        return None
    if _half(negated.input_value(0), x, half, head.get_length()) and _half(second.output(0), x, 0, half):
        return x, cos, sin
    return None


def _angles(unsqueezed, kind: str):
    """The (B, T, D) output of a Cos or Sin that `unsqueezed` is, unsqueezed on axis 1; else None."""
    node = unsqueezed.get_node()
    if not (is_type(node, "Unsqueeze") and is_constant(node.input_value(1), 1)):
        return None
    source = node.input_value(0)
    return source if is_type(source.get_node(), kind) else None


def _half(sliced, x, begin: int, end: int) -> bool:
    """Whether `sliced` is x[..., begin:end] (a Slice of step 1 on the last axis; an end past it counts as it)."""
    node = sliced.get_node()
    if not is_type(node, "Slice") or node.get_input_size() != 5 or not same_output(node.input_value(0), x):
        return False
    values = [constant_value(node.input_value(i)) for i in range(1, 5)]
    if any(value is None or value.size != 1 for value in values):
        return False
    first, last, step, axis = (int(value.ravel()[0]) for value in values)
    head = x.get_partial_shape()[-1].get_length()
    return first == begin and (last == end or end == head <= last) and step == 1 and axis in (3, -1)


def _cache_shape(inputs_embeds, attention_mask, heads: int, head: int, element_type):
    """(B, heads, P, head) as a shape vector, P = the mask's length - the new positions."""
    embeds, mask = opset13.shape_of(inputs_embeds, element_type), opset13.shape_of(attention_mask, element_type)

    def dimension(shape, i: int):
        return opset13.gather(shape, opset13.constant([i], ov.Type.i64), opset13.constant(0))

    def constant(value: int):
        return opset13.constant([value], element_type)

    past = opset13.subtract(dimension(mask, 1), dimension(embeds, 1))
    return opset13.concat([dimension(embeds, 0), constant(heads), past, constant(head)], 0).output(0)


def _replace(matmuls: list, operation, weights, shared: bool = False) -> None:
    """Put one `operation` node (on the MatMuls' shared input, with the given weight constants: `shared`, over
    the arrays' own memory) where the MatMuls were; several MatMuls get its output split back into theirs."""
    constants = [opset13.constant(w, shared_memory=shared).output(0) for w in weights]
    node = operation([matmuls[0].input_value(0)] + constants)
    node.set_friendly_name(" + ".join(op.get_friendly_name() for op in matmuls))
    outputs = node.outputs()
    lengths = [op.get_output_partial_shape(0)[-1].get_length() for op in matmuls]
    padding = weights[0].shape[0] - sum(lengths)  # rows up to a whole tile (Int4MatMul): split off
    if len(matmuls) > 1 or padding:
        outputs = opset13.variadic_split(outputs[0], -1, lengths + [padding] * bool(padding)).outputs()
    for matmul, output in zip(matmuls, outputs):
        redirect(matmul.output(0), output)
