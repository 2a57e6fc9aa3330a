"""One call from a model name to a ready engine: find or make the export, then compile it.

A cached export compiles without importing torch; only a missing export imports the exporter.
"""

from __future__ import annotations

import time
from pathlib import Path

from .demo import BUNDLED_NAME, bundled_model
from .errors import MvlmError
from .export.compress import Compression
from .model.checkpoint import PRESETS, Progress, no_progress, resolve_source
from .runtime.device import check_device
from .runtime.engine import Engine
from .store import (
    MANIFEST,
    CachedExport,
    cache_key,
    check_writable,
    default_cache_dir,
    find_export,
    list_exports,
    verify_export,
)


def find_or_export(model, compression: Compression, cache_dir: Path, revision: str | None = None,
                   progress: Progress = no_progress) -> tuple[Path, bool]:
    """The export folder for `model`, exporting it first if needed (again, in place, if the cached one is
    damaged). Returns (folder, was_cached)."""
    path = Path(str(model)).expanduser()
    if path.is_dir() and (path / MANIFEST).is_file():
        verify_export(path)  # an export folder named directly: its source is not known, so say how to remove it
        return path, True
    source = resolve_source(model, revision, progress)
    cached = find_export(cache_dir, cache_key(source.model_id, source.revision, compression.label))
    if cached and not cached.problem:
        return cached.path, True
    if cached:
        progress("convert", None, f"the cached export {cached.key} is damaged ({cached.problem}); exporting it again")
    check_writable(cache_dir)  # before importing torch or converting anything
    try:
        from .export import export_model
    except ImportError as err:
        raise MvlmError(f"exporting needs the export extra ({err.name} is missing): "
                        "pip install torch==2.13.0 && pip install 'mvlm-magic[export]'") from None
    return export_model(model, compression, cache_dir=cache_dir, progress=progress, source=source).path, False


def load_engine(model=None, compression: str | Compression = "int4", device: str = "CPU", precision: str = "auto",
                *, group_size: int | None = None, ratio: float | None = None, cache_dir: Path | str | None = None,
                revision: str | None = None, threads: int | None = None, ops: str = "auto",
                progress: Progress = no_progress, kernels: str | None = None) -> Engine:
    if model is None:
        raise MvlmError("no model given; name a checkpoint folder, a Hugging Face id or a preset "
                        "(e.g. mobilevlm-v2-1.7b).")
    if str(model) == BUNDLED_NAME:
        model = bundled_model()
    if isinstance(compression, str):
        compression = Compression.parse(compression, group_size, ratio)
    device = check_device(device)  # before a long export, not after
    cache_dir = Path(cache_dir or default_cache_dir())
    folder, was_cached = find_or_export(model, compression, cache_dir, revision, progress)
    progress("compile", None, f"compiling on {device}" + (" (cached export, nothing to convert)" if was_cached else ""))
    started = time.perf_counter()
    ops = ops if kernels is None else kernels  # (ops' earlier name, still accepted)
    engine = Engine(folder, device=device, precision=precision, threads=threads, ops=ops, cache_dir=cache_dir)
    engine.was_cached = was_cached
    progress("compile", 1.0, f"compiled in {time.perf_counter() - started:.1f} s")
    return engine


def prepare_export(model, compression: str | Compression = "int4", device: str = "CPU", precision: str = "auto", *,
                   group_size: int | None = None, ratio: float | None = None, cache_dir: Path | str | None = None,
                   revision: str | None = None, progress: Progress = no_progress) -> Path:
    """The export folder, made now if missing, with what compiling it needs made too (our operations' library and
    the export's copies with them, `ops.select`): the replicas of a server started after it only compile, and none
    exports or copies at the same time as another."""
    from .ops import select

    if str(model) == BUNDLED_NAME:
        model = bundled_model()
    if isinstance(compression, str):
        compression = Compression.parse(compression, group_size, ratio)
    cache_dir = Path(cache_dir or default_cache_dir())
    folder, _ = find_or_export(model, compression, cache_dir, revision, progress)
    select(folder, "auto", check_device(device), precision, cache_dir)
    return folder


def preset_names() -> list[str]:
    """The short model names `load_engine` understands (nano, mobilevlm-v2-1.7b, ...), for pickers."""
    return [BUNDLED_NAME, *PRESETS]


LISTING_COLUMNS = ("export", "model", "weights", "operations here", "size")


def cached_exports(cache_dir: Path | str | None = None) -> list[tuple[str, str, str, str, str]]:
    """The rows of `%mvlm_load --list` and `mvlm list`: each export's key, model, the weights it holds
    (export/written.py's label), whose operations answer from it on this machine (ops="auto", `ops.plan`) and its
    size, with our operations' copies beside it counted apart."""
    return [listing_row(export) for export in list_exports(Path(cache_dir or default_cache_dir()))]


def listing_row(export: CachedExport) -> tuple[str, str, str, str, str]:
    from .ops import plan
    from .store import export_bytes

    if export.problem:
        return export.key, f"damaged: {export.problem}", "", "", ""
    own, copies = export_bytes(export.path, export.manifest)
    size = f"{own / 1e6:.1f} MB" + (f" + {copies / 1e6:.1f} MB operations copy" if copies else "")
    manifest = export.manifest
    return export.key, manifest["model_id"], manifest["compression"]["label"], plan(manifest), size
