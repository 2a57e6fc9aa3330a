"""The export cache: one folder per (model, revision, compression, library versions), with a manifest.

An export is written into a temporary sibling folder and renamed into place only when complete,
so an interrupted export leaves nothing that loads. A folder counts as an export only if its
`manifest.json` is there (it is written last). Torch-free: the runtime lists and loads from here;
the exporter (mvlm_magic/export) writes here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
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
    return private_cache_dir()


def private_cache_dir() -> Path:
    """This user's own cache ($XDG_CACHE_HOME/mvlm_magic or ~/.cache/mvlm_magic), whatever $MVLM_CACHE says: where
    compiled code goes when the chosen cache may be shared."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mvlm_magic"


def writable_only_by_me(path: Path | str) -> str | None:
    """Why someone other than this user could change `path` (an existing file or folder), or None when nobody can:
    it and every folder above it (as named and where links lead) belong to this user or root and are writable by
    no one else, except a root-owned sticky folder like /tmp, whose entries others cannot replace. Code we load
    (a compiled library, an IR holding our operations) must pass, or anyone who can write there chooses it."""
    absolute = Path(os.path.abspath(path))
    real = Path(os.path.realpath(absolute))
    for current in dict.fromkeys([absolute, *absolute.parents, real, *real.parents]):
        why = _changeable_by_others(current)
        if why:
            return why
    return None


def _changeable_by_others(path: Path) -> str | None:
    try:
        info = os.lstat(path)
    except OSError as error:
        return f"{path} cannot be checked ({error.strerror})"
    if info.st_uid not in (os.geteuid(), 0):
        return f"{path} belongs to another user (uid {info.st_uid})"
    if stat.S_ISLNK(info.st_mode):
        return None  # a link's own mode means nothing; where it leads is checked too
    shared = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if not shared or (stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX and info.st_uid == 0):
        return None
    if shared == stat.S_IWGRP and _own_group(info.st_gid):
        return None
    return f"{path} can be written by {'other users' if shared & stat.S_IWOTH else f'group {info.st_gid}'}"


def _own_group(gid: int) -> bool:
    """A user-private group (Debian and Ubuntu give each user one, with umask 002, so group-writable folders are
    common): named after this user and with no other members."""
    try:
        import grp
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    return group.gr_name == user and set(group.gr_mem) <= {user}


def library_versions(names=IR_LIBRARIES) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:] or "model"


def cache_key(model_id: str, revision: str, compression_label: str, versions: dict[str, str] | None = None) -> str:
    """The folder name of one export; `compression_label` is `Compression.label` (e.g. int4-sym-g128-r1)."""
    versions = versions or library_versions()
    payload = json.dumps([EXPORT_FORMAT, model_id, revision, compression_label, sorted(versions.items())])
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"{slug(Path(model_id).name if os.sep in model_id else model_id)}--{compression_label}--{digest}"


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
