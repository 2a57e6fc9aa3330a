"""The export cache: one folder per (model, revision, compression, library versions), with a manifest.

An export is written into a temporary sibling folder and renamed into place only when complete,
so an interrupted export leaves nothing that loads. A folder counts as an export only if its
`manifest.json` is there (it is written last). Torch-free: the runtime lists and loads from here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import MvlmError

MANIFEST = "manifest.json"
# Bump when the IR layout or the export code changes what it writes (2: the KV state is read through beam_idx).
EXPORT_FORMAT = 2
TMP_PREFIX = ".tmp-"
# Libraries whose version changes the IR an export writes.
IR_LIBRARIES = ("openvino", "nncf", "torch", "transformers")


def default_cache_dir() -> Path:
    if os.environ.get("MVLM_CACHE"):
        return Path(os.environ["MVLM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mvlm_magic"


def library_versions(names=IR_LIBRARIES) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


# What a bare "int4" means: the int4 variant benchmarks/run.py found fastest at the same answer quality
# (docs/benchmarks.md): symmetric, group 128, every language-model layer in int4 (the head stays int8).
INT4_PRESET = "int4-sym-g128-r1"


@dataclass(frozen=True)
class Compression:
    mode: str = "int4"  # fp32 | fp16 | int8 | int4
    group_size: int = 128  # int4 only
    ratio: float = 1.0  # int4 only: share of layers in int4, the rest int8
    sym: bool = True  # int4 only: symmetric (no zero points) instead of asymmetric

    MODES = ("fp32", "fp16", "int8", "int4")

    def __post_init__(self):
        if self.mode not in self.MODES:
            raise MvlmError(f"unknown compression {self.mode!r}; choose one of {', '.join(self.MODES)} "
                            "(or an int4 label such as int4-sym-g128-r1).")
        if self.mode == "int4":
            if not (isinstance(self.group_size, int) and (self.group_size == -1 or self.group_size >= 8)):
                raise MvlmError(f"group size must be -1 (per channel) or an integer >= 8, not {self.group_size!r}.")
            if not 0.0 < float(self.ratio) <= 1.0:
                raise MvlmError(f"ratio must be in (0, 1], not {self.ratio!r}.")

    @classmethod
    def parse(cls, mode: str = "int4", group_size: int | None = None, ratio: float | None = None,
              sym: bool | None = None) -> Compression:
        """A mode ("int4" is INT4_PRESET) or a label int4[-sym][-gN][-rX] (a label's missing parts: asym, group
        128, ratio 1); explicit arguments override either."""
        text = str(mode).lower()
        text = INT4_PRESET if text == "int4" else text
        mode = text.split("-")[0]
        if mode != "int4":
            if text != mode:
                raise MvlmError(f"unknown compression {text!r}; only int4 takes options (e.g. int4-sym-g64-r1).")
            return cls(mode, 0, 1.0)  # group size and ratio mean nothing here; keep keys stable
        match = re.fullmatch(r"int4(-sym)?(?:-g(-1|\d+))?(?:-r([0-9.]+))?", text)
        if not match:
            raise MvlmError(f"cannot read compression {text!r}; write e.g. int4, int4-sym, int4-g64-r0.9, "
                            "int4-sym-g128-r1.")
        label_sym, label_group, label_ratio = match.groups()
        return cls(mode,
                   int(label_group or 128) if group_size is None else int(group_size),
                   float(label_ratio or 1.0) if ratio is None else float(ratio),
                   bool(label_sym) if sym is None else bool(sym))

    @property
    def label(self) -> str:
        if self.mode != "int4":
            return self.mode
        return f"int4-{'sym-' if self.sym else ''}g{self.group_size}-r{self.ratio:g}"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:] or "model"


def cache_key(model_id: str, revision: str, compression: Compression, versions: dict[str, str] | None = None) -> str:
    versions = versions or library_versions()
    payload = json.dumps([EXPORT_FORMAT, model_id, revision, compression.label, sorted(versions.items())])
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"{slug(Path(model_id).name if os.sep in model_id else model_id)}--{compression.label}--{digest}"


@dataclass
class CachedExport:
    path: Path
    manifest: dict

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def __str__(self) -> str:
        m = self.manifest
        return f"{m['model_id']} [{m['compression']['label']}] {self.size_bytes / 1e6:.1f} MB  {self.path}"


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def find_export(cache_dir: Path, key: str) -> CachedExport | None:
    folder = Path(cache_dir) / key
    manifest = read_manifest(folder)
    return CachedExport(folder, manifest) if manifest else None


def list_exports(cache_dir: Path | None = None) -> list[CachedExport]:
    cache_dir = Path(cache_dir or default_cache_dir())
    if not cache_dir.is_dir():
        return []
    found = []
    for folder in sorted(cache_dir.iterdir()):
        if folder.is_dir() and not folder.name.startswith(TMP_PREFIX):
            manifest = read_manifest(folder)
            if manifest:
                found.append(CachedExport(folder, manifest))
    return found


def delete_export(key_or_path: str | Path, cache_dir: Path | None = None) -> Path:
    cache_dir = Path(cache_dir or default_cache_dir())
    folder = Path(key_or_path)
    if not folder.is_absolute():
        folder = cache_dir / folder
    if not read_manifest(folder):
        names = ", ".join(e.key for e in list_exports(cache_dir)) or "none"
        raise MvlmError(f"no cached export {str(key_or_path)!r} in {cache_dir}; cached: {names}.")
    shutil.rmtree(folder)
    return folder


def new_temp_folder(cache_dir: Path, key: str) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_folders(cache_dir)
    folder = cache_dir / f"{TMP_PREFIX}{key}-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


def remove_stale_temp_folders(cache_dir: Path) -> None:
    """Remove what exports killed midway left behind (their process is gone)."""
    for folder in cache_dir.glob(TMP_PREFIX + "*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(temp_folder: Path, final_folder: Path, manifest: dict) -> CachedExport:
    """Write the manifest last, then rename the whole folder into place in one step."""
    with open(temp_folder / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.rename(temp_folder, final_folder)
    except OSError:
        # Another process published the same key first; its export is equivalent.
        shutil.rmtree(temp_folder, ignore_errors=True)
        if not read_manifest(final_folder):
            raise
    return CachedExport(final_folder, read_manifest(final_folder))
