"""The export cache: one folder per (model, revision, compression, library versions), with a manifest.

An export is written into a temporary sibling folder and renamed into place only when complete,
so an interrupted export leaves nothing that loads. A folder counts as an export only if its
`manifest.json` is there (it is written last); the manifest records each file's size, checked whenever
the export loads (`verify_export`). One process at a time exports a key (`export_lock`), and publishing
never removes a whole export. Torch-free: the runtime lists and loads from here; the exporter
(mvlm_magic/export) writes here. docs/cache.md says what a shared cache may be.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import MvlmError

MANIFEST = "manifest.json"
# Bump when the IR layout or the export code changes what it writes (2: the KV state is read through beam_idx).
EXPORT_FORMAT = 2
TMP_PREFIX = ".tmp-"
LOCK_SUFFIX = ".lock"
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


# What the runtime reads from a manifest (runtime/engine.py); an export lacking any of them cannot load.
REQUIRED_FIELDS = {"model_id": (), "compression": ("label",), "files": ("vision", "text_embeddings", "language"),
                   "model": ("num_image_tokens", "context_length", "image_size", "eos_token_id")}


@dataclass
class CachedExport:
    path: Path
    manifest: dict

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def size_bytes(self) -> int:
        """Everything in the folder: the export and anything made from it beside it."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    @property
    def own_bytes(self) -> int:
        """The files the export wrote (its manifest lists them); not the copies our operations derive from them."""
        return export_bytes(self.path, self.manifest)[0]

    @property
    def problem(self) -> str | None:
        """What is wrong with this export (None when it looks whole); see `export_problem`."""
        return export_problem(self.path, self.manifest)

    def __str__(self) -> str:
        m, problem = self.manifest, self.problem
        if problem:
            return f"{self.key} damaged ({problem})  {self.path}"
        return f"{m['model_id']} [{m['compression']['label']}] {self.size_bytes / 1e6:.1f} MB  {self.path}"


def write_json(path: Path, data, mode: int | None = None) -> None:
    """`data` as JSON at `path`, whole or not at all (a temporary sibling renamed over it); `mode`: its permissions
    (None: private to this user, as the temporary file is made)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".partial")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=1, ensure_ascii=False)
            file.write("\n")
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def file_sizes(folder: Path) -> dict[str, int]:
    """Each file's size in bytes, recorded in the manifest at export time and checked when the export loads."""
    return {f.name: f.stat().st_size for f in sorted(Path(folder).iterdir()) if f.is_file() and f.name != MANIFEST}


def export_problem(folder: Path, manifest: dict | None = None) -> str | None:
    """A cheap check of an export (no file is read): the manifest has what the runtime needs, and every file it
    lists is there with the size recorded at export time. Returns what is wrong, or None."""
    manifest = read_manifest(folder) if manifest is None else manifest
    if not isinstance(manifest, dict) or not manifest:
        return f"{MANIFEST} is missing or not a JSON object"
    for field, inner in REQUIRED_FIELDS.items():
        value = manifest.get(field)
        if value is None or (inner and not isinstance(value, dict)):
            return f"its {MANIFEST} lacks {field!r}"
        if missing := [name for name in inner if name not in value]:
            return f"its {MANIFEST} lacks {field}.{missing[0]}"
    try:
        expected = expected_sizes(manifest)
        for name, size in expected.items():
            found = (Path(folder) / name).stat().st_size if (Path(folder) / name).is_file() else None
            if found is None:
                return f"{name} is missing"
            if size is not None and found != size:
                return f"{name} has {found} bytes, not the {size} it was written with"
    except (TypeError, AttributeError, ValueError):
        return f"its {MANIFEST} has malformed 'files' or 'sizes'"
    return None


def expected_sizes(manifest: dict) -> dict[str, int | None]:
    """File name -> size recorded at export time; for exports written before sizes were recorded, the files the
    runtime opens, with no size to compare."""
    if "sizes" in manifest:
        return dict(manifest["sizes"])
    return {name: None for xml in manifest["files"].values() for name in (xml, str(Path(xml).with_suffix(".bin")))}


def export_bytes(folder: Path, manifest: dict | None = None) -> tuple[int, int]:
    """(bytes of the files the export wrote, bytes of everything else in its folder: the copies our operations
    derive from it, written beside it on first use)."""
    folder = Path(folder)
    manifest = read_manifest(folder) if manifest is None else manifest
    try:
        own_names = {MANIFEST, *expected_sizes(manifest or {})}
    except (TypeError, AttributeError, ValueError, KeyError):
        own_names = {MANIFEST}
    own = other = 0
    for path in folder.rglob("*"):
        if path.is_file():
            size = path.stat().st_size
            if path.parent == folder and path.name in own_names:
                own += size
            else:
                other += size
    return own, other


def verify_export(folder: Path) -> dict:
    """The manifest of the export in `folder`, or one line saying it is damaged and how to get rid of it."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise MvlmError(f"{folder} is not a complete export (no {MANIFEST}); export the model again.")
    manifest = read_manifest(folder)
    problem = export_problem(folder, manifest)
    if problem:
        raise MvlmError(f"{folder} is a damaged export: {problem}; delete it with "
                        f"`mvlm delete {folder.name} --cache-dir {folder.parent}` and export the model again.")
    return manifest


def find_export(cache_dir: Path, key: str) -> CachedExport | None:
    """The export under `key` (whole or damaged: see `CachedExport.problem`), or None."""
    folder = Path(cache_dir) / key
    if not is_export_folder(folder):
        return None
    return CachedExport(folder, read_manifest(folder) or {})


def is_export_folder(folder: Path) -> bool:
    """A real folder (not a link) with a manifest file: an export, whole or damaged; temporary folders are not."""
    return (folder.is_dir() and not folder.is_symlink() and not folder.name.startswith(TMP_PREFIX)
            and (folder / MANIFEST).is_file())


def list_exports(cache_dir: Path | None = None) -> list[CachedExport]:
    """Every export in the cache, damaged ones included (their `problem` says what is wrong)."""
    cache_dir = Path(cache_dir or default_cache_dir())
    if not cache_dir.is_dir():
        return []
    return [found for folder in sorted(cache_dir.iterdir()) if (found := find_export(cache_dir, folder.name))]


def delete_export(key: str | Path, cache_dir: Path | None = None) -> Path:
    """Delete the export named `key` (its folder name in the cache, as listed), and nothing else: a path, a name
    with a separator or `..`, or a folder that is not an export is refused."""
    cache_dir = Path(cache_dir or default_cache_dir())
    key = str(key)
    plain = key not in ("", ".", "..") and os.sep not in key and "/" not in key and not (os.altsep and os.altsep in key)
    if not plain or not find_export(cache_dir, key):
        names = ", ".join(e.key for e in list_exports(cache_dir)) or "none"
        raise MvlmError(f"no cached export {key!r} in {cache_dir} (give a key as `mvlm list` shows it); "
                        f"cached: {names}.")
    folder = cache_dir / key
    shutil.rmtree(folder)
    return folder


def check_writable(cache_dir: Path) -> None:
    """Fail in one line, before any work, when an export could not be written to `cache_dir`. Tries a real write
    (os.access says yes to root on a read-only folder)."""
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=cache_dir, prefix=".probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise MvlmError(f"the export cache {cache_dir} is not writable ({error.strerror or error}); use a cache you "
                        "can write: set MVLM_CACHE, or pass --cache-dir / cache_dir=.") from None


@contextmanager
def export_lock(cache_dir: Path, key: str, progress):
    """Held while one process exports `key` into `cache_dir`: a second export of the same key waits, then finds
    the first one's export instead of converting again (and never replaces it). Readers take no lock: they only
    ever see a whole export or none (see `publish`). The lock file is a temporary name, removed on release."""
    check_writable(cache_dir)
    path = Path(cache_dir) / f"{TMP_PREFIX}{key}{LOCK_SUFFIX}"
    lock = acquire(path, lambda: progress("save", None, f"waiting for another export of {key}"))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: a process waiting on this file sees it gone and retries
        os.close(lock)


def acquire(path: Path, on_wait) -> int:
    """An open descriptor holding flock on `path`, the file there now (not one its last holder removed);
    `on_wait()` is called once if another process holds it."""
    waited = False
    while True:
        # Read-only: flock needs no write access, and a lock file another user created opens read-only too.
        lock = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    on_wait()
                waited = True
                fcntl.flock(lock, fcntl.LOCK_EX)
            if same_file(lock, path):
                return lock
        except BaseException:
            os.close(lock)
            raise
        os.close(lock)  # the holder before us removed the file we waited on: lock the one there now


def same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), path.stat())
    except FileNotFoundError:
        return False


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


def publish(temp_folder: Path, final_folder: Path, manifest: dict, replace: bool = False) -> CachedExport:
    """Write the manifest last, then rename the whole folder into place in one step; call it holding
    `export_lock`. A whole export already in place is kept and ours dropped (unless `replace`); one to replace
    (damaged, or `replace`) is renamed aside first, so a reader sees the old folder, none, or the new one."""
    with open(temp_folder / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    if not replace and is_export_folder(final_folder) and not export_problem(final_folder):
        shutil.rmtree(temp_folder, ignore_errors=True)  # one appeared meanwhile (a writer that took no lock)
        return CachedExport(final_folder, read_manifest(final_folder))
    aside = final_folder.with_name(f"{TMP_PREFIX}{final_folder.name}-old-{os.getpid()}")  # stale if we die
    if final_folder.exists():
        os.rename(final_folder, aside)
    try:
        os.rename(temp_folder, final_folder)
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    return CachedExport(final_folder, read_manifest(final_folder))
