"""MobileVLM in torch: transformers' Llama + CLIP vision tower + our LDP / LDPv2 projector.

This is the fidelity oracle: the OpenVINO export is traced from it and every answer of the
runtime is checked against its `generate`. Checkpoint keys map onto it as in the mtgv repos:

    model.vision_tower.vision_tower.vision_model.*  -> vision_tower.*
    model.mm_projector.*                            -> mm_projector.*
    everything else (model.embed_tokens, model.layers, model.norm, lm_head) -> language_model.*
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from ..errors import MvlmError
from ..runtime.tokenizer import IMAGE_TOKEN_INDEX  # the prompt's stand-in for the picture: one home, torch-free
from .checkpoint import no_progress, read_state_dict
from .config import MobileVLMConfig
from .projector import build_projector

VISION_PREFIXES = ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower.vision_tower.")
PROJECTOR_PREFIX = "model.mm_projector."
# Buffers some savers include; the modules rebuild them, so they are neither missing nor unexpected.
KNOWN_BUFFERS = ("rotary_emb.inv_freq", "position_ids")


class MobileVLM(nn.Module):
    def __init__(self, config: MobileVLMConfig):
        super().__init__()
        self.config = config
        llama_config = LlamaConfig(**config.text)
        llama_config._attn_implementation = "sdpa"
        self.language_model = LlamaForCausalLM(llama_config)
        self.vision_tower = CLIPVisionModel(CLIPVisionConfig(**config.vision))
        out_side = config.vision["image_size"] // config.vision["patch_size"] // 2
        self.mm_projector = build_projector(config.projector_type, config.mm_hidden_size, config.hidden_size, out_side)

    # --- loading -------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, folder: Path | str, dtype: torch.dtype = torch.float32, progress=no_progress) -> MobileVLM:
        config = MobileVLMConfig.from_folder(Path(folder))
        state = read_state_dict(Path(folder), progress)
        model = cls(config).to(dtype)
        model.load_checkpoint_state(state)
        return model.eval()

    @classmethod
    def mapped(cls, folder: Path | str, progress=no_progress) -> MobileVLM:
        """The model holding the checkpoint's own tensors (bf16 as stored, memory-mapped): no copy of the weights.

        The exporter traces this one (export/convert.py keeps the 16-bit weights 16-bit in the IR); a 7B model
        in fp32 alone would need 28 GB. The parameters are made on the meta device and then replaced by the
        checkpoint's tensors, so no random initial weights are allocated either; buffers (rotary frequencies,
        position ids) are computed as usual.
        """
        config = MobileVLMConfig.from_folder(Path(folder))
        state = read_state_dict(Path(folder), progress)
        with parameters_on_meta():
            model = cls(config)
        model.load_checkpoint_state(state, assign=True)
        return model.eval().requires_grad_(False)

    def split_checkpoint_state(self, state: dict) -> dict[str, dict]:
        parts: dict[str, dict] = {"language_model": {}, "vision_tower": {}, "mm_projector": {}}
        for key, tensor in state.items():
            for prefix in VISION_PREFIXES:
                if key.startswith(prefix):
                    parts["vision_tower"][key[len(prefix):]] = tensor
                    break
            else:
                if key.startswith(PROJECTOR_PREFIX):
                    parts["mm_projector"][key[len(PROJECTOR_PREFIX):]] = tensor
                else:
                    parts["language_model"][key] = tensor
        return parts

    def load_checkpoint_state(self, state: dict[str, torch.Tensor], assign: bool = False) -> None:
        """Load mtgv-named weights (assign=True: take the tensors themselves, not copies); fail with the names of
        missing / unexpected keys."""
        self.check_checkpoint_shapes({key: tuple(tensor.shape) for key, tensor in state.items()})
        for name, part in self.split_checkpoint_state(state).items():
            getattr(self, name).load_state_dict(part, strict=False, assign=assign)

    def check_checkpoint_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """mtgv-named weight shapes against this model's (a model on the meta device will do); one line if off."""
        missing, unexpected, mismatched = [], [], []
        for name, part in self.split_checkpoint_state(shapes).items():
            own = {key: tuple(tensor.shape) for key, tensor in getattr(self, name).state_dict().items()}
            for key, shape in part.items():
                if key not in own:
                    if not key.endswith(KNOWN_BUFFERS):
                        unexpected.append(checkpoint_key(name, key))
                elif own[key] != tuple(shape):
                    mismatched.append(f"{checkpoint_key(name, key)} {tuple(shape)} vs {own[key]}")
            missing += [checkpoint_key(name, k) for k in own if k not in part and not k.endswith(KNOWN_BUFFERS)]
        if mismatched:
            raise MvlmError(
                f"{len(mismatched)} weight(s) do not match config.json: {mismatched[0]} (checkpoint vs config)."
            )
        if missing:
            raise MvlmError(f"the checkpoint lacks {len(missing)} weight(s) the model needs, e.g. {missing[0]}.")
        if unexpected:
            raise MvlmError(
                f"the checkpoint has {len(unexpected)} weight(s) MobileVLM does not use, e.g. {unexpected[0]}."
            )

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The model's weights under the mtgv checkpoint's key names."""
        state = {checkpoint_key(name, key): t for name in ("language_model", "vision_tower", "mm_projector")
                 for key, t in getattr(self, name).state_dict().items() if not key.endswith(KNOWN_BUFFERS)}
        return state

    # --- forward pieces --------------------------------------------------------------------------

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, 336, 336) -> (B, 144, C): CLIP layer -2 patch tokens (CLS dropped) through the projector."""
        outputs = self.vision_tower(pixel_values, output_hidden_states=True)
        patches = outputs.hidden_states[self.config.vision_select_layer][:, 1:]  # (B, 576, Cv)
        return self.mm_projector(patches)  # (B, 144, C)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(input_ids)  # (B, T, C)

    @torch.no_grad()
    def build_inputs_embeds(self, input_ids: list[int], image_features: torch.Tensor | None) -> torch.Tensor:
        """Token ids with IMAGE_TOKEN_INDEX placeholders -> (1, L, C), image features spliced in."""
        n_images = input_ids.count(IMAGE_TOKEN_INDEX)
        n_features = 0 if image_features is None else image_features.shape[0]
        if n_images != n_features:
            raise MvlmError(f"image placeholders and images do not match: tokens: {n_images}, features: {n_features}")
        pieces, text = [], []
        image_iter = iter(image_features if image_features is not None else [])
        for token in input_ids + [None]:
            if token is None or token == IMAGE_TOKEN_INDEX:
                if text:
                    pieces.append(self.embed_tokens(torch.tensor([text]))[0])
                    text = []
                if token == IMAGE_TOKEN_INDEX:
                    pieces.append(next(image_iter))
            else:
                text.append(token)
        return torch.cat(pieces, dim=0)[None]  # (1, L, C)

    @torch.no_grad()
    def generate(self, input_ids: list[int], pixel_values: torch.Tensor | None, max_new_tokens: int = 32,
                 eos_token_id: int | None = 2) -> list[int]:
        """Greedy decoding with a KV cache, as the official `generate(temperature=0)` does (no EOS stop if None)."""
        features = None if pixel_values is None else self.get_image_features(pixel_values)
        embeds = self.build_inputs_embeds(list(input_ids), features)  # (1, L, C)
        out = self.language_model(inputs_embeds=embeds, use_cache=True)
        new_ids: list[int] = []
        for _ in range(max_new_tokens):
            token = int(out.logits[0, -1].argmax())
            if token == eos_token_id:
                break
            new_ids.append(token)
            out = self.language_model(input_ids=torch.tensor([[token]]), cache=out.cache, use_cache=True)
        return new_ids

    @torch.no_grad()
    def last_logits(self, input_ids: list[int], pixel_values: torch.Tensor | None) -> torch.Tensor:
        features = None if pixel_values is None else self.get_image_features(pixel_values)
        embeds = self.build_inputs_embeds(list(input_ids), features)
        return self.language_model(inputs_embeds=embeds).logits[0, -1]  # (V,)


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside get their parameters on the meta device (no memory, no initialisation cost);
    buffers stay real. The same trick as accelerate's init_empty_weights(include_buffers=False)."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def checkpoint_key(part: str, key: str) -> str:
    if part == "vision_tower":
        return VISION_PREFIXES[0] + key
    if part == "mm_projector":
        return PROJECTOR_PREFIX + key
    return key
