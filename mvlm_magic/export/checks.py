"""Everything an export needs from a checkpoint, checked before anything is converted.

Converting a 1.7B checkpoint takes minutes; a missing tokenizer or a config field of the wrong type found
after that costs the user those minutes (and, for the tokenizer, used to leave a broken export in the cache).
These checks read only small files and the weights' names and shapes, so a broken checkpoint is refused
in seconds with one line. torch is imported inside the function that needs it (importing the exporter
imports no torch).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MvlmError
from ..model.checkpoint import TOKENIZER_FILES, read_weight_shapes
from ..model.config import MobileVLMConfig
from ..runtime.tokenizer import Tokenizer


def check_checkpoint(folder: Path) -> MobileVLMConfig:
    """The checkpoint's config, once its values, tokenizer files and weight shapes are known to be usable."""
    folder = Path(folder)
    config = MobileVLMConfig.from_folder(folder)
    check_json_files(folder)
    check_tokenizer(folder, config)
    check_weight_shapes(folder, config)
    return config


def check_json_files(folder: Path) -> None:
    """The tokenizer's JSON files are copied into the export and read when it loads: each must be an object."""
    for name in TOKENIZER_FILES:
        path = folder / name
        if path.suffix != ".json" or not path.is_file():
            continue
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise MvlmError(f"{path} is not valid JSON ({err}); fix it or download the checkpoint again.") from None
        if not isinstance(value, dict):
            raise MvlmError(f"{path} is not a JSON object; fix it or download the checkpoint again.")


def check_tokenizer(folder: Path, config: MobileVLMConfig) -> None:
    """tokenizer.model loads as the runtime will load it, and every id it makes has an embedding."""
    tokenizer = Tokenizer.from_folder(folder)  # one line for a missing or damaged tokenizer.model
    vocab_size = config.text["vocab_size"]
    if tokenizer.vocab_size > vocab_size:
        raise MvlmError(
            f"{folder / 'tokenizer.model'} has {tokenizer.vocab_size} tokens but config.json's vocab_size "
            f"({vocab_size}) is smaller; the tokenizer does not belong to these weights."
        )


def check_weight_shapes(folder: Path, config: MobileVLMConfig) -> None:
    """Every weight the model needs is there with the shape config.json implies (no tensor data is read)."""
    import torch

    from ..model.mobilevlm import MobileVLM

    shapes = read_weight_shapes(folder)
    with torch.device("meta"):  # shapes without memory: a 7B model costs nothing here
        model = MobileVLM(config)
    model.check_checkpoint_shapes(shapes)
