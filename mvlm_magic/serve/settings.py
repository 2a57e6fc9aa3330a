"""What a server is started with: where it listens, who may ask, and the limits that keep one request from taking
the server down (docs/serving.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import MvlmError


@dataclass(frozen=True)
class Settings:
    model_name: str = "nano"  # the `model` clients send and /v1/models lists
    host: str = "127.0.0.1"  # this machine only, unless told otherwise
    port: int = 8000
    api_key: str | None = None  # when set, /v1/* needs `Authorization: Bearer <key>`
    pictures_folder: Path | None = None  # image_url may name a file only under this folder
    max_body_bytes: int = 20 << 20  # a request's JSON, pictures included (base64 adds a third)
    max_picture_pixels: int = 4096 * 4096  # checked on the file's header, before decoding
    max_question_chars: int = 4000  # each message's text
    max_tokens: int = 1024  # the most a request may ask for
    default_max_tokens: int = 256  # when a request does not say
    max_batch: int = 16  # requests answered at once, their tokens decoded together (runtime/batching.py)

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise MvlmError(f"the port must be 1 to 65535, not {self.port}.")
        if self.api_key is not None and not self.api_key.strip():
            raise MvlmError("the API key is empty; give a non-empty key (or none to serve without one).")
        if self.pictures_folder is not None:
            folder = Path(self.pictures_folder).expanduser()
            if not folder.is_dir():
                raise MvlmError(f"the pictures folder {folder} is not a folder; name an existing folder.")
            object.__setattr__(self, "pictures_folder", folder.resolve())
        for name in ("max_body_bytes", "max_picture_pixels", "max_question_chars", "max_tokens", "default_max_tokens",
                     "max_batch"):
            if getattr(self, name) < 1:
                raise MvlmError(f"{name} must be at least 1, not {getattr(self, name)}.")
        if self.default_max_tokens > self.max_tokens:
            object.__setattr__(self, "default_max_tokens", self.max_tokens)


def served_name(model) -> str:
    """The `model` id clients send when none is given: a folder's name (never its path), else the name as given."""
    return Path(str(model)).name if Path(str(model)).exists() else str(model)
