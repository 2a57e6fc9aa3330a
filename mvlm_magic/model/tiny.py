"""Build small random MobileVLM checkpoints in the exact mtgv file layout.

Tests, the demo and the benchmarks use these instead of hub downloads: the same `config.json`
fields, the same weight key names in bf16, a SentencePiece `tokenizer.model` and the tokenizer
config files. Sizes are free, so a benchmark can build a random checkpoint of the real 1.7B shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import MobileVLMConfig
from .mobilevlm import MobileVLM
from .tiny_tokenizer import train_tiny_tokenizer


@dataclass
class TinySpec:
    projector_type: str = "ldpnetv2"  # "ldpnet" for V1
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    vocab_size: int | None = None  # None: the trained tokenizer's size
    vision_hidden_size: int = 32
    vision_layers: int = 3
    vision_heads: int = 2
    vision_intermediate_size: int = 64
    context_length: int = 2048
    init_std: float = 0.08  # larger than the usual 0.02 so answers depend on the image and prompt
    seed: int = 0
    tokenizer_vocab_size: int = 400
    weights_format: str = "bin"  # "bin", "safetensors", "sharded-bin", "sharded-safetensors"


def tiny_config(spec: TinySpec, vocab_size: int) -> dict:
    """A config.json as the mtgv repos write it, plus `vision_config` for the small CLIP."""
    return {
        "_name_or_path": "mvlm-magic/tiny-random-mobilevlm",
        "architectures": ["MobileLlamaForCausalLM"],
        "model_type": "mobilevlm",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads or spec.num_attention_heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": spec.context_length,
        "max_sequence_length": spec.context_length,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.33.1",
        "use_cache": True,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "vision_tower_type": "clip",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_hidden_size": spec.vision_hidden_size,
        "mm_projector_type": spec.projector_type,
        "image_aspect_ratio": "pad",
        "image_grid_pinpoints": None,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "use_mm_proj": True,
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False,
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": spec.vision_hidden_size,
            "num_hidden_layers": spec.vision_layers,
            "num_attention_heads": spec.vision_heads,
            "intermediate_size": spec.vision_intermediate_size,
            "image_size": 336,
            "patch_size": 14,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
        },
    }


@torch.no_grad()
def randomize(model: MobileVLM, init_std: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        if param.dim() >= 2 or name.endswith("class_embedding"):
            param.copy_(torch.randn(param.shape, generator=generator) * init_std)
        elif "norm" in name or "layrnorm" in name or name.endswith(("block.0.1.weight", "block.2.1.weight")):
            if name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
        else:
            param.copy_(0.02 * torch.randn(param.shape, generator=generator))


def save_weights(state: dict[str, torch.Tensor], folder: Path, weights_format: str) -> None:
    keys = sorted(state)
    shards = [keys] if not weights_format.startswith("sharded") else [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    use_safetensors = weights_format.endswith("safetensors")
    ext, base = ("safetensors", "model") if use_safetensors else ("bin", "pytorch_model")
    if len(shards) == 1:
        names = [f"{base}.{ext}"]
    else:
        names = [f"{base}-{i + 1:05d}-of-{len(shards):05d}.{ext}" for i in range(len(shards))]
    weight_map = {}
    for name, shard_keys in zip(names, shards):
        shard = {k: state[k].contiguous().clone() for k in shard_keys}
        if use_safetensors:
            from safetensors.torch import save_file

            save_file(shard, str(folder / name), metadata={"format": "pt"})
        else:
            torch.save(shard, folder / name)
        weight_map.update({k: name for k in shard_keys})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": weight_map}
        (folder / f"{base}.{ext}.index.json").write_text(json.dumps(index, indent=2))


def build_tiny_checkpoint(folder: Path | str, spec: TinySpec | None = None, **overrides) -> Path:
    """Write a random MobileVLM checkpoint in the mtgv layout into `folder` and return it."""
    spec = spec or TinySpec(**overrides)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train_tiny_tokenizer(folder, vocab_size=spec.tokenizer_vocab_size, seed=spec.seed)
    import sentencepiece

    vocab_size = (spec.vocab_size
                  or sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).vocab_size())
    config = tiny_config(spec, vocab_size)
    torch.manual_seed(spec.seed)
    model = MobileVLM(MobileVLMConfig.from_dict(config))
    randomize(model, spec.init_std, spec.seed)
    state = {k: v.to(torch.bfloat16) for k, v in model.checkpoint_state().items()}
    save_weights(state, folder, spec.weights_format)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps({"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                    "transformers_version": "4.33.1"}, indent=2))
    return folder
