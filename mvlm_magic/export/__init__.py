"""Export a MobileVLM checkpoint to three OpenVINO IRs, compress them with NNCF, and cache the result.

    vision.xml           pixel_values (1, 3, 336, 336) -> image_embeds (1, 144, C)
    text_embeddings.xml  input_ids (B, T) -> inputs_embeds (B, T, C)
    language.xml         inputs_embeds (B, T, C), attention_mask (B, P+T), position_ids (B, T)
                         -> logits (B, 1, V) for the last position; the KV cache is OpenVINO state

convert.py traces the three models, compress.py says what a compression label means and runs NNCF,
manifest.py describes the result; the store (mvlm_magic/store.py) publishes it atomically.
Importing this package imports no torch, transformers or NNCF: the runtime parses compression labels with it.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import time
import warnings
from pathlib import Path

from ..errors import MvlmError
from ..model.checkpoint import TOKENIZER_FILES, CheckpointSource, Progress, no_progress, resolve_source
from ..store import (
    CachedExport,
    cache_key,
    check_writable,
    default_cache_dir,
    export_lock,
    find_export,
    new_temp_folder,
    publish,
)
from .budget import check_fits
from .checks import check_checkpoint
from .compress import INT4_PRESET, Compression
from .compress import compress as compress_weights  # the package attribute `compress` stays the module
from .convert import (
    bf16_to_f16,
    check_versions,
    convert_language_model,
    convert_text_embeddings,
    convert_vision,
    sixteen_bit,
    traced_layers,
    transformer_blocks,
)
from .manifest import build_manifest
from .written import describe, record

__all__ = ["export_model", "Compression", "INT4_PRESET"]


def export_model(model: str, compression: Compression | str = "int4", *, cache_dir: Path | str | None = None,
                 revision: str | None = None, progress: Progress = no_progress, force: bool = False,
                 source: CheckpointSource | None = None) -> CachedExport:
    """Export `model` (preset, hub id or folder) once; later calls with the same key return the cache."""
    if isinstance(compression, str):
        compression = Compression.parse(compression)
    cache_dir = Path(cache_dir or default_cache_dir())
    source = source or resolve_source(model, revision, progress)
    key = cache_key(source.model_id, source.revision, compression.label)
    cached = find_export(cache_dir, key)
    if cached and not cached.problem and not force:
        progress("save", 1.0, f"cached export {key}")
        return cached
    check_writable(cache_dir)  # before any work
    check_versions()
    started = time.perf_counter()
    from transformers.utils import logging as hf_logging

    config = check_checkpoint(source.folder)  # seconds: a broken checkpoint fails before minutes of conversion
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its notes about config fields we do not use would land in the answer stream
    try:
        with export_lock(cache_dir, key, progress):
            cached = find_export(cache_dir, key)  # another process may have published it while we waited
            if cached and not cached.problem and not force:
                progress("save", 1.0, f"cached export {key} (made by another process meanwhile)")
                return cached
            if cached:
                progress("save", None, f"replacing {key}" + (f" ({cached.problem})" if cached.problem else ""))
            return _export(source, config, key, compression, cache_dir, progress, started, replace=bool(cached))
    finally:
        hf_logging.set_verbosity(verbosity)


def _export(source, config, key, compression, cache_dir, progress, started, replace: bool) -> CachedExport:
    import openvino as ov

    from ..model.checkpoint import weight_files
    from ..runtime.device import core
    from ..runtime.memory import shed, shedding

    check_fits(source.folder, config, compression, cache_dir, progress)
    weights = weight_files(source.folder)
    temp = new_temp_folder(cache_dir, key)
    try:
        vlm, traced = _torch_model(source.folder, compression, progress)
        records = {}
        converters = [("vision", convert_vision), ("text_embeddings", convert_text_embeddings),
                      ("language", convert_language_model)]
        with traced:
            # One IR at a time, freed before the next: the peak is the largest IR's, not the sum.
            for i, (role, convert) in enumerate(converters):
                progress("convert", i / len(converters), f"converting the {role} model")
                with warnings.catch_warnings(), traced_layers(transformer_blocks(vlm, role),
                                                              _layer_progress(progress, role, i, len(converters))):
                    warnings.simplefilter("ignore")  # tracer warnings about constants we expect to be constant
                    ov_model = convert(vlm)
                progress("compress", i / len(converters), f"compressing the {role} model ({compression.label})")
                # NNCF reads each 16-bit weight once (from the mapped checkpoint): hand its pages back as it goes
                with shedding(weights):
                    ov_model = compress_weights(
                        ov_model, role, compression, on_weight=_weight_progress(progress, role, i, len(converters)))
                if compression.mode != "fp32":
                    with shedding(weights):  # fp16 exports: every weight, read once from the mapped checkpoint
                        bf16_to_f16(ov_model)
                progress("save", i / len(converters), f"saving {role}.xml")
                ov.save_model(ov_model, temp / f"{role}.xml", compress_to_fp16=compression.mode != "fp32")
                del ov_model
                gc.collect()
                shed(weights)
                records[role] = record(core().read_model(temp / f"{role}.xml"))  # what was written, not asked
        del vlm, traced
        gc.collect()
        progress("convert", 1.0, "converted")
        progress("compress", 1.0, "compressed")
        for name in TOKENIZER_FILES:
            if (source.folder / name).is_file():
                shutil.copy2(source.folder / name, temp / name)
        if not (temp / "tokenizer.model").is_file():
            raise MvlmError(f"{source.folder} has no tokenizer.model; a MobileVLM checkpoint ships one.")
        label, note = describe(records, compression)
        if note:
            progress("note", None, note)  # once, at export time; the label says it ever after
        manifest = build_manifest(source, compression, config, records, label, note, time.perf_counter() - started,
                                  temp)
        result = publish(temp, cache_dir / key, manifest, replace=replace)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    progress("save", 1.0, f"saved {key}")
    return result


def _layer_progress(progress: Progress, role: str, index: int, count: int):
    """traced_layers' callback -> a convert line per layer traced (the fraction: half of this model's share)."""
    def on_layer(done: int, total: int) -> None:
        progress("convert", (index + 0.5 * done / total) / count,
                 f"converting the {role} model: layer {done} of {total} traced")

    return on_layer


def _weight_progress(progress: Progress, role: str, index: int, count: int):
    """NNCF's per-weight callback -> a compress line at most every 5 % (the language model takes minutes)."""
    shown = [-1]

    def on_weight(done: int, total: int) -> None:
        percent = int(100 * done / total)
        if percent // 5 > shown[0]:
            shown[0] = percent // 5
            progress("compress", (index + done / total) / count,
                     f"compressing the {role} model: {percent}% of {_count(total)} weights")

    return on_weight


def _count(n: int) -> str:
    """1 300 000 000 -> "1300 M", 2 400 000 -> "2.4 M", 56 000 -> "56 k": a count at a glance."""
    if n >= 10**7:
        return f"{n / 1e6:.0f} M"
    return f"{n / 1e6:.1f} M" if n >= 10**6 else f"{n / 1e3:.0f} k"


def _torch_model(folder: Path, compression: Compression, progress: Progress):
    """The torch model to trace and the context to trace it in.

    fp32 exports are traced from an fp32 copy, exactly as before (the fidelity oracle's IR). Every other
    compression stores 16-bit or smaller weights anyway, so it is traced from the checkpoint's own bf16 tensors,
    memory-mapped and never copied: the weights exist once, as file pages that can be handed back.
    """
    import torch

    from ..model.mobilevlm import MobileVLM

    if compression.mode == "fp32":
        return MobileVLM.from_folder(folder, dtype=torch.float32, progress=progress), contextlib.nullcontext()
    vlm = MobileVLM.mapped(folder, progress)
    return vlm, sixteen_bit(vlm)
