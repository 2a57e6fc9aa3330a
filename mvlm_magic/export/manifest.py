"""The manifest an export writes last: what was exported, how, with which libraries, and what the runtime needs.

The store (mvlm_magic/store.py) reads it back (`read_manifest`) and checks the recorded file sizes when the export
loads (`export_problem`); the runtime takes the model's shape and the image normalisation from it.
"""

from __future__ import annotations

import time
from importlib.metadata import version

from ..runtime.preprocess import CLIP_MEAN, CLIP_STD
from ..store import EXPORT_FORMAT, file_sizes, library_versions
from .compress import Compression


def build_manifest(source, compression: Compression, config, records: dict, label: str, note: str | None,
                   seconds: float, folder) -> dict:
    """The manifest of the export written into `folder` (all its files there already: their sizes are recorded,
    and checked whenever the export loads, store.export_problem). `compression` is what was asked (its label is
    part of the cache key); `label` and `records` say what the IRs hold (written.py), `note` how that differs."""
    text = config.text
    return {
        "format": EXPORT_FORMAT,
        "model_id": source.model_id,
        "revision": source.revision,
        "compression": {"requested": compression.label, "label": label, "note": note,
                        "mode": label.split("-")[0], "group_size": compression.group_size, "ratio": compression.ratio,
                        "sym": compression.sym, "per_model": records},
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
        "sizes": file_sizes(folder),
        "export_seconds": round(seconds, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _installed() -> bool:
    try:
        version("mvlm-magic")
        return True
    except Exception:
        return False
