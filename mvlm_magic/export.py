"""Export a MobileVLM checkpoint to three OpenVINO IRs, compress them with NNCF, and cache the result.

    vision.xml           pixel_values (1, 3, 336, 336) -> image_embeds (1, 144, C)
    text_embeddings.xml  input_ids (B, T) -> inputs_embeds (B, T, C)
    language.xml         inputs_embeds (B, T, C), attention_mask (B, P+T), position_ids (B, T)
                         -> logits (B, 1, V) for the last position; the KV cache is OpenVINO state

The language model is traced with transformers' DynamicCache filled directly with the past
tensors (OpenVINO's frontend rejects the empty 1-D tensor a fresh DynamicLayer starts from),
then made stateful with OpenVINO's transformation plus a state initializer sized from the batch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np

from .cache import (EXPORT_FORMAT, CachedExport, Compression, cache_key, default_cache_dir, find_export,
                    library_versions, new_temp_folder, publish)
from .errors import MvlmError
from .model.checkpoint import TOKENIZER_FILES, CheckpointSource, Progress, no_progress, resolve_source

SUPPORTED = {"transformers": ("5.24",), "openvino": ("2026.4",), "nncf": ("3.4",)}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_versions() -> None:
    """The tracing workarounds here are tied to these library lines; say so before a long export fails."""
    for name, lines in SUPPORTED.items():
        found = version(name)
        if not found.startswith(lines):
            pins = " ".join(f"{n}=={v[0]}.*" for n, v in SUPPORTED.items())
            raise MvlmError(f"export needs {name} {' or '.join(lines)}.x, found {found}; run: pip install {pins}")


# --- torch -> OpenVINO --------------------------------------------------------------------------


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
    every decoded token copies the whole cache; with it, decode is ~1.5x faster (docs/benchmarks.md).
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


# --- NNCF ---------------------------------------------------------------------------------------


def compress(ov_model, role: str, compression: Compression):
    """int8: every IR INT8_ASYM. int4: the language model INT4_SYM or INT4_ASYM (layers beyond the ratio and the
    head: int8 backup), the others int8."""
    if compression.mode in ("fp32", "fp16"):
        return ov_model, {}
    import nncf

    nncf.set_log_level(logging.ERROR)  # its tables and bars would bury our own progress; weight_precisions() says it
    with quiet_rich(), contextlib.redirect_stdout(io.StringIO()):
        return _compress(nncf, ov_model, role, compression)


@contextlib.contextmanager
def quiet_rich():
    """NNCF draws progress bars on rich's global console, which in Jupyter means new Output widgets."""
    import rich

    console = rich.get_console()
    saved = dict(console.__dict__)
    rich.reconfigure(file=io.StringIO(), force_jupyter=False, force_terminal=False)
    try:
        yield
    finally:
        console.__dict__ = saved


def _compress(nncf, ov_model, role: str, compression: Compression):
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    if compression.mode == "int4" and role == "language":
        params = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                                               min_adjusted_group_size=16)
        mode = nncf.CompressWeightsMode.INT4_SYM if compression.sym else nncf.CompressWeightsMode.INT4_ASYM
        compressed = nncf.compress_weights(ov_model, mode=mode, group_size=compression.group_size,
                                           ratio=compression.ratio, advanced_parameters=params)
        return compressed, {"mode": "int4_sym" if compression.sym else "int4_asym",
                            "group_size": compression.group_size, "ratio": compression.ratio}
    return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM), {"mode": "int8_asym"}


def weight_precisions(ov_model) -> dict[str, int]:
    """How many weight constants of each element type an IR holds (shows what the compression did)."""
    counts: dict[str, int] = {}
    for op in ov_model.get_ops():
        if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).rank.get_length() >= 2:
            kind = op.get_output_element_type(0).get_type_name()
            counts[kind] = counts.get(kind, 0) + 1
    return counts


# --- the whole export ---------------------------------------------------------------------------


def export_model(model: str, compression: Compression | str = "int4", *, cache_dir: Path | str | None = None,
                 revision: str | None = None, progress: Progress = no_progress, force: bool = False,
                 source: CheckpointSource | None = None) -> CachedExport:
    """Export `model` (preset, hub id or folder) once; later calls with the same key return the cache."""
    if isinstance(compression, str):
        compression = Compression.parse(compression)
    cache_dir = Path(cache_dir or default_cache_dir())
    source = source or resolve_source(model, revision, progress)
    key = cache_key(source.model_id, source.revision, compression)
    cached = find_export(cache_dir, key)
    if cached and not force:
        progress("save", 1.0, f"cached export {key}")
        return cached
    check_versions()
    started = time.perf_counter()
    from transformers.utils import logging as hf_logging

    from .model.config import MobileVLMConfig

    config = MobileVLMConfig.from_folder(source.folder)  # fail on a bad config before reading GBs of weights
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its notes about config fields we do not use would land in the answer stream
    try:
        return _export(source, config, key, compression, cache_dir, progress, started)
    finally:
        hf_logging.set_verbosity(verbosity)


def _export(source, config, key, compression, cache_dir, progress, started) -> CachedExport:
    import openvino as ov
    import torch

    from .model.mobilevlm import MobileVLM

    vlm = MobileVLM.from_folder(source.folder, dtype=torch.float32, progress=progress)
    temp = new_temp_folder(cache_dir, key)
    try:
        details = {}
        converters = [("vision", convert_vision), ("text_embeddings", convert_text_embeddings),
                      ("language", convert_language_model)]
        for i, (role, convert) in enumerate(converters):
            progress("convert", i / len(converters), f"converting the {role} model")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about constants we expect to be constant
                ov_model = convert(vlm)
            progress("compress", i / len(converters), f"compressing the {role} model ({compression.label})")
            ov_model, details[role] = compress(ov_model, role, compression)
            details[role]["weights"] = weight_precisions(ov_model)
            progress("save", i / len(converters), f"saving {role}.xml")
            ov.save_model(ov_model, temp / f"{role}.xml", compress_to_fp16=compression.mode != "fp32")
            del ov_model
        progress("convert", 1.0, "converted")
        progress("compress", 1.0, "compressed")
        for name in TOKENIZER_FILES:
            if (source.folder / name).is_file():
                shutil.copy2(source.folder / name, temp / name)
        if not (temp / "tokenizer.model").is_file():
            raise MvlmError(f"{source.folder} has no tokenizer.model; a MobileVLM checkpoint ships one.")
        manifest = build_manifest(source, compression, config, details, time.perf_counter() - started)
        final = cache_dir / key
        if final.exists():
            shutil.rmtree(final)  # only reached with force=True or a folder without a manifest
        result = publish(temp, final, manifest)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    progress("save", 1.0, f"saved {key}")
    return result


def build_manifest(source, compression: Compression, config, details: dict, seconds: float) -> dict:
    text = config.text
    return {
        "format": EXPORT_FORMAT,
        "model_id": source.model_id,
        "revision": source.revision,
        "compression": {"mode": compression.mode, "group_size": compression.group_size, "ratio": compression.ratio,
                        "sym": compression.sym,
                        "label": compression.label, "per_model": details},
        "versions": {**library_versions(), "mvlm_magic": version("mvlm-magic") if _installed() else "source"},
        "model": {
            "version": config.version,
            "projector_type": config.projector_type,
            "hidden_size": text["hidden_size"],
            "vocab_size": text["vocab_size"],
            "num_hidden_layers": text["num_hidden_layers"],
            "num_key_value_heads": text["num_key_value_heads"],
            "context_length": config.context_length,
            "num_image_tokens": config.num_image_tokens,
            "image_size": config.image_size,
            "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD),
            "bos_token_id": text.get("bos_token_id", 1),
            "eos_token_id": text.get("eos_token_id", 2),
        },
        "files": {"vision": "vision.xml", "text_embeddings": "text_embeddings.xml", "language": "language.xml"},
        "export_seconds": round(seconds, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _installed() -> bool:
    try:
        version("mvlm-magic")
        return True
    except Exception:
        return False
