"""torch -> OpenVINO: the vision model, the text embeddings and the language model (its KV cache as state).

The language model is traced with transformers' DynamicCache filled directly with the past
tensors (OpenVINO's frontend rejects the empty 1-D tensor a fresh DynamicLayer starts from),
then made stateful with OpenVINO's transformation plus a state initializer sized from the batch.
torch, transformers and OpenVINO are imported inside the functions, so importing this module loads none of them.

A model holding 16-bit weights (MobileVLM.mapped: the checkpoint's bf16 tensors, memory-mapped) is traced inside
`sixteen_bit`: OpenVINO's PyTorch frontend then emits each Linear / Embedding weight as its 16-bit constant followed
by a Convert to f32, without running those layers (so tracing reads no weight page), while every activation stays
f32. The IR computes what the fp32 model computes (bf16 -> f32 is exact); docs/export.md measures what it saves.
"""

from __future__ import annotations

import contextlib
from importlib.metadata import version

import numpy as np

from ..errors import MvlmError

SUPPORTED = {"transformers": ("5.24",), "openvino": ("2026.4",), "nncf": ("3.4",)}


def check_versions() -> None:
    """The tracing workarounds here are tied to these library lines; say so before a long export fails."""
    for name, lines in SUPPORTED.items():
        found = version(name)
        if not found.startswith(lines):
            pins = " ".join(f"{n}=={v[0]}.*" for n, v in SUPPORTED.items())
            raise MvlmError(f"export needs {name} {' or '.join(lines)}.x, found {found}; run: pip install {pins}")


def convert_vision(model):
    import openvino as ov
    import torch

    class VisionForExport(torch.nn.Module):
        def __init__(self, vlm):
            super().__init__()
            self.vlm = vlm

        def forward(self, pixel_values):  # (B, 3, 336, 336)
            return self.vlm.get_image_features(pixel_values)  # (B, 144, C)

    size = model.config.image_size
    example = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        ov_model = ov.convert_model(VisionForExport(model).eval(), example_input=(example,),
                                    input=[ov.PartialShape([1, 3, size, size])])
    name_ports(ov_model, ["pixel_values"], ["image_embeds"])
    return ov_model


def convert_text_embeddings(model):
    import openvino as ov
    import torch

    embed = model.language_model.get_input_embeddings()
    with torch.no_grad():
        ov_model = ov.convert_model(embed.eval(), example_input=(torch.ones(1, 4, dtype=torch.long),),
                                    input=[ov.PartialShape([-1, -1])])
    name_ports(ov_model, ["input_ids"], ["inputs_embeds"])
    return ov_model


def convert_language_model(model, stateful: bool = True):
    """The language model with its KV cache as OpenVINO state (or, stateful=False, as explicit
    past_key_values.* inputs and present.* outputs, the reference notebook's design)."""
    import openvino as ov
    import torch
    from transformers.cache_utils import DynamicCache

    lm = model.language_model
    cfg = lm.config
    n_layers = cfg.num_hidden_layers
    kv_heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    class LanguageModelForExport(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, inputs_embeds, attention_mask, position_ids, *past):
            cache = DynamicCache(config=self.lm.config)
            for i, layer in enumerate(cache.layers):
                layer.keys, layer.values = past[2 * i], past[2 * i + 1]  # (B, KV, P, D)
                layer.device, layer.is_initialized = inputs_embeds.device, True
            out = self.lm.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                position_ids=position_ids, cache=cache, use_cache=True)
            logits = self.lm.lm_head(out.last_hidden_state[:, -1:])  # (B, 1, V): the head only where it is needed
            present = []
            for layer in out.cache.layers:
                present += [layer.keys, layer.values]  # (B, KV, P+T, D)
            return (logits, *present)

    past_len, new_len = 3, 2
    example = [
        torch.randn(1, new_len, cfg.hidden_size),
        torch.ones(1, past_len + new_len, dtype=torch.long),
        torch.arange(past_len, past_len + new_len)[None],
    ] + [torch.randn(1, kv_heads, past_len, head_dim) for _ in range(2 * n_layers)]
    shapes = [ov.PartialShape([-1, -1, cfg.hidden_size]), ov.PartialShape([-1, -1]), ov.PartialShape([-1, -1])]
    shapes += [ov.PartialShape([-1, kv_heads, -1, head_dim])] * (2 * n_layers)
    with torch.no_grad():
        ov_model = ov.convert_model(LanguageModelForExport(lm).eval(), example_input=tuple(example), input=shapes)

    past_names = [f"past_key_values.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
    present_names = [f"present.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
    name_ports(ov_model, ["inputs_embeds", "attention_mask", "position_ids", *past_names], ["logits", *present_names])
    if stateful:
        make_stateful(ov_model, dict(zip(past_names, present_names)))
    return ov_model


@contextlib.contextmanager
def traced_layers(layers, report):
    """Call report(done, total) as each of `layers` (a model's transformer blocks) runs while it is traced: tracing a
    7B language model takes tens of seconds, and this says how far it is. Layers run in order; a second pass (the
    frontend may run the model again) does not count twice."""
    total, done = len(layers), [0]

    def hook(index):
        def after(module, args, output):
            if index + 1 > done[0]:
                done[0] = index + 1
                report(done[0], total)
        return after

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def transformer_blocks(model, role: str) -> list:
    """The blocks `traced_layers` counts: the language model's decoder layers, the vision tower's encoder layers."""
    if role == "language":
        return list(model.language_model.model.layers)
    if role == "vision":
        return list(model.vision_tower.encoder.layers)
    return []


@contextlib.contextmanager
def sixteen_bit(model):
    """Trace `model`'s 16-bit Linear / Embedding weights as 16-bit constants (the frontend's own patch, which
    optimum-intel applies too; other modules' few 16-bit parameters become f32); the model is restored after."""
    from openvino.frontend.pytorch import patch_model

    orig_forward_name = "_openvino_module_extension_patch_orig_forward"
    getattr(patch_model, "__make_16bit_traceable")(model, orig_forward_name)  # module-level name, not mangled
    try:
        yield model
    finally:
        patch_model.unpatch_model(model, orig_forward_name)


def bf16_to_f16(ov_model) -> int:
    """Store the weights NNCF left as bf16 (embeddings, the weights of fp16 exports) as f16, as exports traced
    from an fp32 model store them (save_model's compress_to_fp16 turns f32 constants into f16 but leaves bf16
    ones), so the IRs hold the same values as before. Returns how many constants changed."""
    import openvino as ov
    from openvino import opset13

    changed = 0
    for op in ov_model.get_ops():
        if op.get_type_name() != "Constant" or op.get_output_element_type(0) != ov.Type.bf16:
            continue
        bits = op.get_tensor_view().data.view(np.uint16).astype(np.uint32) << 16  # bf16 is f32's upper half
        f16 = opset13.constant(bits.view(np.float32).astype(np.float16), dtype=ov.Type.f16)
        f16.set_friendly_name(op.get_friendly_name())
        f16.output(0).get_tensor().set_names(op.output(0).get_tensor().get_names())
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(f16.output(0))
        changed += 1
    if changed:
        ov_model.validate_nodes_and_infer_types()
    return changed


def name_ports(ov_model, input_names: list[str], output_names: list[str]) -> None:
    for port, name in zip(ov_model.inputs, input_names):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, output_names):
        port.get_tensor().set_names({name})


def make_stateful(ov_model, past_to_present: dict[str, str]) -> None:
    """Turn the KV inputs/outputs into OpenVINO state that starts empty for any batch size.

    Each state is read through a Gather on a `beam_idx` input (the layout optimum-intel and openvino.genai
    use): OpenVINO's CPU plugin recognises ReadValue -> Gather -> Concat -> ScaledDotProductAttention and
    replaces it with its fused attention over an internal KV cache. Without it, attention is decomposed and
    every decoded token copies the whole cache; with it, decode is faster and uses less memory (measured in
    docs/benchmarks.md, "Fused attention over an internal KV cache").
    The runtime feeds beam_idx = [0].
    """
    import openvino as ov
    from openvino import opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    apply_make_stateful_transformation(ov_model, past_to_present)
    beam_idx = opset13.parameter([-1], ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    ov_model.add_parameters([beam_idx])
    batch = opset13.gather(opset13.shape_of(ov_model.input("inputs_embeds"), output_type="i64"),
                           opset13.constant([0]), opset13.constant(0))
    for op in ov_model.get_ops():
        if op.get_type_name() == "ReadValue":
            dims = [dim.min_length for dim in op.get_output_partial_shape(0)]
            parts = [batch if i == 0 else opset13.constant(np.array([d], dtype=np.int64)) for i, d in enumerate(dims)]
            zeros = opset13.broadcast(opset13.constant(0.0, dtype=op.get_output_element_type(0)),
                                      opset13.concat(parts, axis=0))
            op.set_arguments([zeros])
            consumers = list(op.output(0).get_target_inputs())
            reordered = opset13.gather(op, beam_idx, opset13.constant(0))  # (B, KV, P, D), rows picked by beam_idx
            for consumer in consumers:
                consumer.replace_source_output(reordered.output(0))
    ov_model.validate_nodes_and_infer_types()
