"""Where the answer looked: the language model's attention probabilities, read out for the inspect views.

Answering runs the language IR with OpenVINO's fused ScaledDotProductAttention (or our KVAttention), which never
writes the probabilities down. Reading them takes a second compile of the same IR in which each
ScaledDotProductAttention is written out (MatMul, scale, mask, Softmax, MatMul) and each Softmax is an extra output.
It is made on first use, at f32, and a finished conversation is replayed through it in one pass: the same tokens at
the same positions give the same attention as when the answer was generated. Answering never pays for it.
"""

from __future__ import annotations

import threading

import numpy as np

from ..errors import MvlmError


def with_attention_outputs(model):
    """`model` (an ov.Model) with its ScaledDotProductAttention nodes written out; one extra output per layer,
    `attention.{i}`: the probabilities (B, H, T, P+T), in the layers' order."""
    import openvino as ov
    from openvino import opset13 as ops

    found = [op for op in model.get_ordered_ops() if op.get_type_name() == "ScaledDotProductAttention"]
    if not found:
        raise MvlmError("this language model has no attention node to read out; export it again with this version.")
    outputs = []
    for i, sdpa in enumerate(found):
        query, key, value, mask, scale = (sdpa.input(j).get_source_output() for j in range(5))
        if query.get_partial_shape()[1] != key.get_partial_shape()[1]:
            raise MvlmError(f"attention read-out needs as many key/value heads as query heads "
                            f"(query: {query.get_partial_shape()[1]}, key/value: {key.get_partial_shape()[1]}).")
        scores = ops.multiply(ops.matmul(query, key, False, True), scale)  # (B, H, T, P+T)
        if mask.get_element_type() == ov.Type.boolean:  # True: may attend
            lowest = ops.constant(np.finfo(np.float32).min, ov.Type.f32)
            scores = ops.select(mask, scores, lowest)
        else:  # an additive mask
            scores = ops.add(scores, mask)
        probs = ops.softmax(scores, -1)
        context = ops.matmul(probs, value, False, False)  # (B, H, T, D)
        for target in list(sdpa.output(0).get_target_inputs()):
            target.replace_source_output(context.output(0))
        probs.output(0).get_tensor().set_names({f"attention.{i}"})
        outputs.append(probs.output(0))
    model.add_outputs(outputs)
    model.validate_nodes_and_infer_types()
    return model


class AttentionProbe:
    """The engine's language model compiled once more, with its attention as outputs (made on first use)."""

    def __init__(self, language_xml, device: str = "CPU"):
        from .device import compile_model, core

        model = with_attention_outputs(core().read_model(str(language_xml)))
        self.layers = len([o for o in model.outputs if o.get_any_name().startswith("attention.")])
        self.request = compile_model(model, device, precision="f32").create_infer_request()
        self.lock = threading.Lock()

    def attention(self, inputs_embeds: np.ndarray) -> np.ndarray:
        """Replay a whole sequence (1, T, C) from an empty cache; its attention (L, H, T, T)."""
        length = inputs_embeds.shape[1]
        with self.lock:
            self.request.reset_state()
            self.request.infer({"inputs_embeds": inputs_embeds,
                                "attention_mask": np.ones((1, length), dtype=np.int64),
                                "position_ids": np.arange(length, dtype=np.int64)[None],
                                "beam_idx": np.zeros(1, dtype=np.int32)})
            maps = [self.request.get_tensor(f"attention.{i}").data[0].copy() for i in range(self.layers)]
            self.request.reset_state()
        return np.stack(maps)  # (L, H, T, T)
