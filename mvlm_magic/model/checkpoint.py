"""Find a MobileVLM checkpoint (preset name, Hugging Face id or local folder) and read its weights.

Finding a checkpoint needs no torch (a cached export loads without it); reading weights does.

Weights come as the mtgv repos ship them: pickled `pytorch_model.bin` (bf16; read with
`weights_only=True`), `model.safetensors`, or either kind sharded with an `*.index.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import MvlmError

# Short names for the five public checkpoints.
PRESETS = {
    "mobilevlm-1.7b": "mtgv/MobileVLM-1.7B",
    "mobilevlm-3b": "mtgv/MobileVLM-3B",
    "mobilevlm-v2-1.7b": "mtgv/MobileVLM_V2-1.7B",
    "mobilevlm-v2-3b": "mtgv/MobileVLM_V2-3B",
    "mobilevlm-v2-7b": "mtgv/MobileVLM_V2-7B",
}

CHECKPOINT_FILES = ["*.json", "*.model", "*.bin", "*.safetensors"]
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")

Progress = Callable[[str, float | None, str], None]  # (stage, fraction or None, message)


def no_progress(stage: str, fraction: float | None, message: str = "") -> None:
    pass


@dataclass
class CheckpointSource:
    model_id: str  # what the user named, normalised (preset -> hub id)
    folder: Path  # local folder holding config.json, weights and tokenizer
    revision: str  # hub commit hash, or a content hash for a local folder


def is_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_source(model: str | os.PathLike, revision: str | None = None,
                   progress: Progress = no_progress) -> CheckpointSource:
    """A local folder, a preset name or a Hugging Face id -> a local folder with a revision."""
    name = str(model)
    path = Path(name).expanduser()
    if path.is_dir():
        return CheckpointSource(str(path.resolve()), path.resolve(), folder_content_hash(path))
    hub_id = PRESETS.get(name.lower(), name)
    if not is_hub_id(hub_id):
        known = ", ".join(PRESETS)
        raise MvlmError(
            f"model {name!r} is neither a folder nor a Hugging Face id; use a checkpoint folder, an id like "
            f"mtgv/MobileVLM_V2-1.7B, or a preset ({known})."
        )
    folder = download(hub_id, revision, progress)
    return CheckpointSource(hub_id, folder, folder.name)


def download(hub_id: str, revision: str | None, progress: Progress) -> Path:
    """Snapshot a hub repo into the Hugging Face cache (honours HF_HOME and HF_HUB_OFFLINE)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    progress("download", None, f"fetching {hub_id}")
    try:
        folder = snapshot_download(hub_id, revision=revision, allow_patterns=CHECKPOINT_FILES)
    except LocalEntryNotFoundError:
        raise MvlmError(
            f"{hub_id} is not in the Hugging Face cache and the hub cannot be reached (offline?); "
            "download it once while online, or pass a local checkpoint folder."
        ) from None
    except RepositoryNotFoundError:
        raise MvlmError(
            f"no Hugging Face repo named {hub_id}; check the spelling (e.g. mtgv/MobileVLM_V2-1.7B)."
        ) from None
    except (HfHubHTTPError, OSError) as err:
        raise MvlmError(f"could not download {hub_id}: {str(err).splitlines()[0]}") from None
    progress("download", 1.0, f"{hub_id} ready")
    return Path(folder)


def folder_content_hash(folder: Path, sample: int = 1 << 20) -> str:
    """A hash of a local checkpoint: small files whole, weight files by size and sampled chunks.

    Hashing multi-GB weights in full would take longer than a cached load should; size plus the
    first, middle and last MiB changes whenever the weights are replaced.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        digest.update(path.name.encode())
        size = path.stat().st_size
        digest.update(str(size).encode())
        with open(path, "rb") as f:
            if size <= 3 * sample:
                digest.update(f.read())
            else:
                for offset in (0, size // 2, size - sample):
                    f.seek(offset)
                    digest.update(f.read(sample))
    return "local-" + digest.hexdigest()[:16]


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint, shards listed by their index file."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise MvlmError(f"{index} is not a valid shard index; download the checkpoint again.") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise MvlmError(f"{folder} lacks shard(s) {', '.join(missing)} named in {index_name}; download them.")
            return [folder / s for s in shards]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    raise MvlmError(f"no weights in {folder} (expected pytorch_model.bin, model.safetensors or a sharded index).")


def read_weight_file(path: Path) -> dict:
    import torch

    try:
        if path.suffix == ".safetensors":
            return mapped_safetensors(path)
        part = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # torch/pickle/zip/safetensors each raise their own kind for a damaged file
        raise corrupt(path, err) from None
    if not isinstance(part, dict):
        raise MvlmError(f"{path} does not hold a state dict; is it a MobileVLM checkpoint?")
    return part


SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def mapped_safetensors(path: Path) -> dict:
    """A .safetensors file's tensors as views of a private memory map: no byte is read until a tensor is used,
    and the pages can be handed back afterwards (runtime/memory.py). safetensors' own load_file copies all."""
    import mmap

    import torch

    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # writable for torch, never written back
    start = 8 + header_len
    state = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = getattr(torch, SAFETENSORS_DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        if end < begin or start + end > len(mapped):
            raise ValueError(f"{key} lies outside the file")
        count = (end - begin) // torch.empty((), dtype=dtype).element_size()
        flat = (torch.frombuffer(mapped, dtype=dtype, count=count, offset=start + begin) if count
                else torch.empty(0, dtype=dtype))
        state[key] = flat.reshape(info["shape"])
    return state


def corrupt(path: Path, err: Exception) -> MvlmError:
    first_line = (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0][:80]
    return MvlmError(f"weight file {path} is corrupt or truncated ({first_line}); download it again.")


def read_state_dict(folder: Path, progress: Progress = no_progress) -> dict:
    """All weights as stored (bf16 in the mtgv repos), memory-mapped where the format allows (zip .bin files,
    safetensors): the pages are read as the tensors are used."""
    files = weight_files(Path(folder))
    state: dict = {}
    for i, path in enumerate(files):
        progress("load", i / len(files), f"reading {path.name}")
        state.update(read_weight_file(path))
    progress("load", 1.0, f"read {len(state)} tensors")
    return state


def read_weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Each weight's name and shape, read as cheaply as the format allows, for checks before a long export.

    safetensors: the file's header only. pytorch_model.bin: memory-mapped, so no tensor data is read.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for path in weight_files(Path(folder)):
        if path.suffix == ".safetensors":
            shapes.update(safetensors_shapes(path))
            continue
        shapes.update({key: tuple(getattr(t, "shape", ())) for key, t in read_weight_file(path).items()})
    return shapes


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as err:  # safetensors raises its own kinds for a damaged header
        raise corrupt(path, err) from None
