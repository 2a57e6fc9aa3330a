"""Read a MobileVLM `config.json` into the three configs the model is built from.

Real mtgv configs carry only LLaMA fields plus `mm_*` fields; CLIP ViT-L/14-336 is implied by
`mm_vision_tower`. Small (test / bundled) checkpoints add a `vision_config` dict instead.
Unknown extra keys (the 3B configs' lit-gpt leftovers) are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MvlmError

PROJECTOR_TYPES = ("ldpnet", "ldpnetv2")

# openai/clip-vit-large-patch14-336, the tower every public checkpoint carries.
CLIP_L_336 = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    image_size=336,
    patch_size=14,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
)

LLAMA_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "hidden_act",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "attention_bias",
    "mlp_bias",
    "head_dim",
)


@dataclass
class MobileVLMConfig:
    text: dict  # LlamaConfig keyword arguments
    vision: dict  # CLIPVisionConfig keyword arguments
    projector_type: str  # "ldpnet" (V1) or "ldpnetv2" (V2)
    mm_hidden_size: int
    vision_select_layer: int = -2
    context_length: int = 2048
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def version(self) -> str:
        return "v2" if self.projector_type == "ldpnetv2" else "v1"

    @property
    def hidden_size(self) -> int:
        return self.text["hidden_size"]

    @property
    def image_size(self) -> int:
        return self.vision["image_size"]

    @property
    def num_image_tokens(self) -> int:
        patches_per_side = self.vision["image_size"] // self.vision["patch_size"]
        return (patches_per_side // 2) ** 2  # both projectors halve each side: 24x24 -> 12x12

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config.json") -> MobileVLMConfig:
        model_type = raw.get("model_type")
        if model_type != "mobilevlm":
            raise MvlmError(
                f"{where} is not a MobileVLM config (model_type: {model_type!r}, expected 'mobilevlm'); "
                "point to a MobileVLM checkpoint such as mtgv/MobileVLM_V2-1.7B."
            )
        projector_type = raw.get("mm_projector_type")
        if projector_type not in PROJECTOR_TYPES:
            raise MvlmError(
                f"unsupported projector type {projector_type!r} in {where}; "
                f"supported: {', '.join(PROJECTOR_TYPES)} (MobileVLM V1 and V2)."
            )
        text = {k: raw[k] for k in LLAMA_FIELDS if k in raw}
        for needed in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if needed not in text:
                raise MvlmError(f"{where} has no {needed!r}; the checkpoint's config is incomplete.")
        text.setdefault("num_key_value_heads", text["num_attention_heads"])
        text.setdefault("tie_word_embeddings", False)
        vision_config = raw.get("vision_config", {})
        if not isinstance(vision_config, dict):
            raise MvlmError(f"{where}: 'vision_config' must be an object, not {vision_config!r}.")
        vision = dict(CLIP_L_336)
        vision.update({k: v for k, v in vision_config.items() if k not in ("model_type", "architectures")})
        check_values(raw, text, vision, where)
        mm_hidden_size = raw.get("mm_hidden_size", vision["hidden_size"])
        if mm_hidden_size != vision["hidden_size"]:
            raise MvlmError(
                f"{where}: mm_hidden_size {mm_hidden_size} does not match the vision width {vision['hidden_size']}."
            )
        if raw.get("mm_vision_select_feature", "patch") != "patch":
            raise MvlmError(f"{where}: only mm_vision_select_feature 'patch' is supported.")
        context_length = raw.get("max_sequence_length") or raw.get("max_position_embeddings") or 2048
        return cls(
            text=text,
            vision=vision,
            projector_type=projector_type,
            mm_hidden_size=mm_hidden_size,
            vision_select_layer=raw.get("mm_vision_select_layer", -2),
            context_length=int(context_length),
            raw=raw,
        )

    @classmethod
    def from_folder(cls, folder: Path) -> MobileVLMConfig:
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise MvlmError(f"no config.json in {folder}; a MobileVLM checkpoint folder needs one.")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MvlmError(f"{path} is not valid JSON ({err.msg if hasattr(err, 'msg') else err}).") from None
        if not isinstance(raw, dict):
            raise MvlmError(f"{path} is not a JSON object.")
        return cls.from_dict(raw, where=str(path))


# Checked here so that a wrong type or value gets one line naming the field, not a transformers validation
# traceback (or a torch error about a negative dimension) from deep inside building the model.
TEXT_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
             "vocab_size", "max_position_embeddings", "max_sequence_length", "head_dim")
TEXT_NUMBERS = ("rms_norm_eps", "rope_theta")
VISION_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
               "patch_size")
FIX = "fix config.json or download the checkpoint again"


def check_values(raw: dict, text: dict, vision: dict, where: str) -> None:
    """Types and values of the fields the model is built from; raises MvlmError naming the first bad one."""
    fields = {**text, **{k: raw[k] for k in ("max_sequence_length", "mm_hidden_size") if k in raw}}
    for name in (*TEXT_INTS, "mm_hidden_size"):
        _require_positive(fields, name, int, where)
    for name in TEXT_NUMBERS:
        _require_positive(fields, name, float, where)
    for name in VISION_INTS:
        _require_positive(vision, name, int, where, prefix="vision_config.")
    _require_positive(vision, "layer_norm_eps", float, where, prefix="vision_config.")
    heads, kv_heads = text["num_attention_heads"], text.get("num_key_value_heads", text["num_attention_heads"])
    if "head_dim" not in text:
        _require_multiple(text["hidden_size"], "hidden_size", heads, "num_attention_heads", where)
    _require_multiple(heads, "num_attention_heads", kv_heads, "num_key_value_heads", where)
    _require_multiple(vision["hidden_size"], "vision_config hidden_size", vision["num_attention_heads"],
                      "num_attention_heads", where)
    _require_multiple(vision["image_size"], "vision_config image_size", 2 * vision["patch_size"], "2 x patch_size",
                      where)  # the projectors halve the patch grid's side
    select = raw.get("mm_vision_select_layer", -2)
    layers = vision["num_hidden_layers"]
    if not _is_int(select) or not -(layers + 1) <= select <= layers:
        raise MvlmError(f"{where}: 'mm_vision_select_layer' must be a layer index of the {layers}-layer vision tower, "
                        f"not {select!r}; {FIX}.")
    if text.get("rope_scaling") is not None and not isinstance(text["rope_scaling"], dict):
        raise MvlmError(f"{where}: 'rope_scaling' must be an object or null, not {text['rope_scaling']!r}; {FIX}.")
    if not isinstance(text.get("tie_word_embeddings", False), bool):
        raise MvlmError(f"{where}: 'tie_word_embeddings' must be true or false, not {text['tie_word_embeddings']!r}; "
                        f"{FIX}.")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_positive(fields: dict, name: str, kind: type, where: str, prefix: str = "") -> None:
    if name not in fields:
        return
    value = fields[name]
    ok = _is_int(value) if kind is int else (_is_int(value) or isinstance(value, float))
    if not ok or not value > 0:
        what = "a positive integer" if kind is int else "a positive number"
        raise MvlmError(f"{where}: {prefix + name!r} must be {what}, not {repr(value)[:40]}; {FIX}.")


def _require_multiple(value: int, name: str, divisor: int, divisor_name: str, where: str) -> None:
    if value % divisor:
        raise MvlmError(f"{where}: {name} ({value}) is not a multiple of {divisor_name} ({divisor}); {FIX}.")
