"""What a `%%mvlm_ask` cell asks about: the picture its line names, and its question with `{name}`s filled in."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import MvlmError
from ..pictures import is_picture

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_]\w*)\}")
PICTURE_TYPES = "a PIL image, a numpy array (HxW or HxWx3), a path string or bytes"


def expand_question(text: str, namespace: Mapping[str, Any]) -> str:
    """`{name}` -> str(namespace[name]); unknown names stay as written, `{{` and `}}` give single braces."""

    def fill(match: re.Match) -> str:
        token, name = match.group(0), match.group(1)
        if name is None:
            return token[0]
        return str(namespace[name]) if name in namespace else token

    return PLACEHOLDER.sub(fill, text)


def resolve_image(name: str | None, namespace: Mapping[str, Any], last_displayed=None):
    """The picture for `%%mvlm_ask [name]` as a PIL image, and words saying where it came from.

    No name: the last image displayed. A name in the namespace: that variable. Otherwise: a file path.
    """
    from ..runtime.preprocess import load_image  # numpy + Pillow only

    if not name:
        if last_displayed is None:
            raise MvlmError("no image displayed yet; show one first (display(img), or img as a cell's last line) "
                            "or name it: %%mvlm_ask img")
        return load_image(last_displayed), "the last image displayed"
    if name in namespace:
        value = namespace[name]
        if not is_picture(value):
            raise MvlmError(f"variable {name!r} holds a {type(value).__name__} object, not a picture; "
                            f"pass {PICTURE_TYPES}.")
        try:
            return load_image(value), f"variable {name}"
        except MvlmError as error:
            raise MvlmError(f"variable {name!r}: {error}") from None
    path = Path(name).expanduser()
    if not path.exists() and name.isidentifier():
        raise MvlmError(f"unknown variable {name!r} (and no file of that name); define it first or give a path.")
    return load_image(path), str(path)


GLOB_CHARACTERS = set("*?[")


def resolve_pictures(name: str | None, namespace: Mapping[str, Any]) -> list[tuple[str, Any]] | None:
    """Many pictures for `%%mvlm_ask NAME`: a variable holding a list or tuple of pictures, a folder (its picture
    files, sorted), or a glob such as `photos/*.jpg`; None when NAME names one picture (`resolve_image`)."""
    from ..pictures import PICTURE_SUFFIXES

    if not name:
        return None
    if name in namespace:
        value = namespace[name]
        if not isinstance(value, (list, tuple)):
            return None
        bad = [i for i, item in enumerate(value) if not is_picture(item)]
        if not value or bad:
            detail = "is empty" if not value else f"holds a {type(value[bad[0]]).__name__} at [{bad[0]}]"
            raise MvlmError(f"variable {name!r} {detail}; a list to ask about holds pictures ({PICTURE_TYPES}).")
        return [(str(item) if isinstance(item, (str, Path)) else f"{name}[{i}]", item) for i, item in enumerate(value)]
    path = Path(name).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES and p.is_file())
        where = f"folder {path}"
    elif GLOB_CHARACTERS & set(name):
        anchor = Path(name).expanduser()
        parts = anchor.parts
        root = Path(anchor.anchor) if anchor.is_absolute() else Path(".")
        pattern = str(Path(*parts[1:])) if anchor.is_absolute() else str(anchor)
        files = sorted(p for p in root.glob(pattern) if p.is_file())
        where = f"pattern {name}"
    else:
        return None
    if not files:
        raise MvlmError(f"{where} matches no picture files ({', '.join(PICTURE_SUFFIXES)}); check the path.")
    return [(p.name, p) for p in files]


def image_key(image) -> str:
    """A fingerprint of the picture's pixels: the same content asked about again continues the chat."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
