"""Build small random MobileVLM checkpoints in the exact mtgv file layout.

Tests, the demo and the benchmarks use these instead of hub downloads: the same `config.json`
fields, the same weight key names in bf16, a SentencePiece `tokenizer.model` and the tokenizer
config files. Sizes are free, so a benchmark can build a random checkpoint of the real 1.7B shape.
"""

from __future__ import annotations

import json
import math
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
        param.copy_(random_weight(name, param.shape, init_std, generator))


def random_weight(name: str, shape, init_std: float, generator: torch.Generator) -> torch.Tensor:
    if len(shape) >= 2 or name.endswith("class_embedding"):
        return torch.randn(shape, generator=generator) * init_std
    if "norm" in name or "layrnorm" in name or name.endswith(("block.0.1.weight", "block.2.1.weight")):
        if name.endswith("weight"):
            return 1.0 + 0.1 * torch.randn(shape, generator=generator)
        return 0.02 * torch.randn(shape, generator=generator)
    return 0.02 * torch.randn(shape, generator=generator)


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
        shard = {k: own_storage(state[k]) for k in shard_keys}
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


def own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor itself when it owns its storage, else a compact copy (torch.save writes a view's whole storage);
    no copy of every weight, so a 7B checkpoint is written without holding it twice."""
    tensor = tensor.contiguous()
    return tensor if tensor.untyped_storage().nbytes() == tensor.nbytes else tensor.clone()


def start_checkpoint(folder: Path | str, spec: TinySpec) -> tuple[Path, dict]:
    """The folder with its tokenizer trained, and the config.json a checkpoint of `spec` gets."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train_tiny_tokenizer(folder, vocab_size=spec.tokenizer_vocab_size, seed=spec.seed)
    import sentencepiece

    vocab_size = (spec.vocab_size
                  or sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).vocab_size())
    return folder, tiny_config(spec, vocab_size)


def write_configs(folder: Path, config: dict) -> None:
    """config.json and the generation_config.json of the mtgv checkpoints."""
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps({"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                    "transformers_version": "4.33.1"}, indent=2))


def build_tiny_checkpoint(folder: Path | str, spec: TinySpec | None = None, **overrides) -> Path:
    """Write a random MobileVLM checkpoint in the mtgv layout into `folder` and return it."""
    spec = spec or TinySpec(**overrides)
    folder, config = start_checkpoint(folder, spec)
    torch.manual_seed(spec.seed)
    model = MobileVLM(MobileVLMConfig.from_dict(config))
    randomize(model, spec.init_std, spec.seed)
    state = {k: v.to(torch.bfloat16) for k, v in model.checkpoint_state().items()}
    save_weights(state, folder, spec.weights_format)
    write_configs(folder, config)
    return folder


def build_large_checkpoint(folder: Path | str, shards: int = 2, spec: TinySpec | None = None, **overrides) -> Path:
    """A random checkpoint written one shard at a time (pytorch_model-0000k-of-0000n.bin + index, bf16, as the 7B one
    is stored): memory holds one shard, not the model, so a 7B checkpoint (14 GB) is written on a 24 GB machine.
    Same key names and config as build_tiny_checkpoint; other random values (this one draws weight by weight)."""
    from .mobilevlm import checkpoint_key, parameters_on_meta

    spec = spec or TinySpec(**overrides)
    folder, config = start_checkpoint(folder, spec)
    with parameters_on_meta():
        model = MobileVLM(MobileVLMConfig.from_dict(config))
    shapes = {checkpoint_key(part, key): tuple(param.shape) for part in ("language_model", "vision_tower",
                                                                         "mm_projector")
              for key, param in getattr(model, part).named_parameters()}
    del model
    keys, total = sorted(shapes), sum(math.prod(shape) for shape in shapes.values())
    generator = torch.Generator().manual_seed(spec.seed)
    weight_map, shard, shard_bytes, written = {}, {}, 0, 0
    for i, key in enumerate(keys):
        shard[key] = random_weight(key, shapes[key], spec.init_std, generator).to(torch.bfloat16)
        shard_bytes += shard[key].nbytes
        if shard_bytes >= 2 * total / shards or i == len(keys) - 1:
            written += 1
            name = f"pytorch_model-{written:05d}-of-{shards:05d}.bin"
            torch.save(shard, folder / name)
            weight_map.update({k: name for k in shard})
            shard, shard_bytes = {}, 0
    if written != shards:  # the names say how many shards there are: rename if the split came out otherwise
        for k in range(1, written + 1):
            old = folder / f"pytorch_model-{k:05d}-of-{shards:05d}.bin"
            old.rename(folder / f"pytorch_model-{k:05d}-of-{written:05d}.bin")
        weight_map = {key: name.replace(f"-of-{shards:05d}", f"-of-{written:05d}") for key, name in weight_map.items()}
    index = {"metadata": {"total_size": 2 * total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    write_configs(folder, config)
    return folder
