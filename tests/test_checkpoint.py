"""The model layer: config parsing, checkpoint formats, mtgv key names, projector structure, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mvlm_magic.errors import MvlmError
from mvlm_magic.model.checkpoint import read_state_dict, resolve_source
from mvlm_magic.model.config import MobileVLMConfig
from mvlm_magic.model.mobilevlm import MobileVLM
from mvlm_magic.model.projector import build_projector
from mvlm_magic.model.tiny import build_tiny_checkpoint

# Key names as the mtgv checkpoints spell them (the official MobileVLM module tree; V1 and V2 differ in the projector).
V1_PROJECTOR_KEYS = {
    "model.mm_projector.model.mlp.1.weight", "model.mm_projector.model.mlp.1.bias",
    "model.mm_projector.model.mlp.3.weight", "model.mm_projector.model.mlp.3.bias",
    *(f"model.mm_projector.model.mb_block.{b}.block.{p}"
      for b in (1, 2) for p in ("0.0.weight", "0.1.weight", "0.1.bias", "1.fc1.weight", "1.fc1.bias",
                                "1.fc2.weight", "1.fc2.bias", "2.0.weight", "2.1.weight", "2.1.bias")),
}
V2_PROJECTOR_KEYS = {
    "model.mm_projector.mlp.mlp.0.weight", "model.mm_projector.mlp.mlp.0.bias",
    "model.mm_projector.mlp.mlp.2.weight", "model.mm_projector.mlp.mlp.2.bias",
    "model.mm_projector.peg.peg.0.weight", "model.mm_projector.peg.peg.0.bias",
}


@pytest.mark.parametrize("version,projector_keys", [("v1", V1_PROJECTOR_KEYS), ("v2", V2_PROJECTOR_KEYS)])
def test_checkpoint_uses_mtgv_key_names(checkpoint, version, projector_keys):
    folder = checkpoint(version)
    state = read_state_dict(folder)
    assert {k for k in state if k.startswith("model.mm_projector.")} == projector_keys
    assert "model.vision_tower.vision_tower.vision_model.embeddings.class_embedding" in state
    assert "model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight" in state
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
            "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"} <= set(state)
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "mobilevlm" and config["architectures"] == ["MobileLlamaForCausalLM"]
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (folder / name).is_file()


def test_load_reports_no_missing_or_unexpected_keys(checkpoint):
    model = MobileVLM(MobileVLMConfig.from_folder(checkpoint("v2")))
    state = read_state_dict(checkpoint("v2"))
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # older savers add buffers
    model.load_checkpoint_state(state)  # raises on any missing or unexpected key
    for key, tensor in model.checkpoint_state().items():
        assert torch.equal(tensor, state[key].float())


@pytest.mark.parametrize("weights_format", ["safetensors", "sharded-bin", "sharded-safetensors"])
def test_every_weight_format_loads_the_same_weights(tmp_path, checkpoint, weights_format):
    reference = read_state_dict(checkpoint("v1"))
    folder = build_tiny_checkpoint(tmp_path / weights_format, projector_type="ldpnet", seed=7,
                                   weights_format=weights_format)
    state = read_state_dict(folder)
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)
    MobileVLM.from_folder(folder)


# hidden, layers, heads, ffn, projector (each published config.json), projector parameters (counted from the official
# LDP / LDPv2 code; the language model + CLIP + projector add up to the published checkpoint sizes)
REAL_SHAPES = {
    "MobileVLM-1.7B": (2048, 24, 16, 5632, "ldpnet", 18.94e6),
    "MobileVLM_V2-1.7B": (2048, 24, 16, 5632, "ldpnetv2", 6.32e6),
    "MobileVLM-3B": (2560, 32, 32, 6912, "ldpnet", 28.91e6),
    "MobileVLM_V2-3B": (2560, 32, 32, 6912, "ldpnetv2", 9.21e6),
    "MobileVLM_V2-7B": (4096, 32, 32, 11008, "ldpnetv2", 21.02e6),
}


@pytest.mark.parametrize("name", REAL_SHAPES)
def test_real_checkpoint_configs_build_models_of_the_published_size(name):
    hidden, layers, heads, ffn, projector, projector_params = REAL_SHAPES[name]
    raw = {"model_type": "mobilevlm", "architectures": ["MobileLlamaForCausalLM"], "hidden_size": hidden,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
           "intermediate_size": ffn, "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
           "mm_projector_type": projector, "mm_hidden_size": 1024, "mm_vision_select_layer": -2,
           "mm_vision_tower": "openai/clip-vit-large-patch14-336",
           # the 3B configs' lit-gpt leftovers must be ignored
           "n_head": 16, "n_embd": hidden, "_mlp_class": "LLaMAMLP", "padded_vocab_size": 32000}
    config = MobileVLMConfig.from_dict(raw)
    assert config.num_image_tokens == 144 and config.vision["hidden_size"] == 1024
    with torch.device("meta"):
        model = MobileVLM(config)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.mm_projector) == pytest.approx(projector_params, rel=0.002)
    assert count(model.vision_tower) == pytest.approx(303.5e6, rel=0.002)
    assert model.language_model.config.num_attention_heads == heads


def test_projector_maps_576_tokens_to_144():
    for kind in ("ldpnet", "ldpnetv2"):
        out = build_projector(kind, 32, 48, 12)(torch.randn(2, 576, 32))
        assert out.shape == (2, 144, 48)


# --- bad input: one line naming the problem ---------------------------------------------------------


def one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text and len(text) < 400
    return text


def test_missing_folder(tmp_path):
    with pytest.raises(MvlmError) as err:
        resolve_source(tmp_path / "nope")
    assert "neither a folder nor a Hugging Face id" in one_line(err.value)


def test_config_that_is_not_mobilevlm(tmp_path, checkpoint):
    folder = shutil.copytree(checkpoint("v2"), tmp_path / "llama")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(MvlmError) as err:
        MobileVLM.from_folder(folder)
    assert "not a MobileVLM config" in one_line(err.value) and "'llama'" in str(err.value)


def test_unsupported_projector_type(tmp_path, checkpoint):
    folder = shutil.copytree(checkpoint("v2"), tmp_path / "mlp")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mm_projector_type": "mlp2x_gelu"}))
    with pytest.raises(MvlmError) as err:
        MobileVLM.from_folder(folder)
    assert "unsupported projector type 'mlp2x_gelu'" in one_line(err.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_or_truncated_weights(tmp_path, checkpoint, damage):
    folder = shutil.copytree(checkpoint("v2"), tmp_path / damage)
    weights = folder / "pytorch_model.bin"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint" * 100)
    with pytest.raises(MvlmError) as err:
        MobileVLM.from_folder(folder)
    assert "corrupt or truncated" in one_line(err.value)


def test_checkpoint_missing_a_weight(tmp_path, checkpoint):
    folder = shutil.copytree(checkpoint("v2"), tmp_path / "partial")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["model.mm_projector.peg.peg.0.bias"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(MvlmError) as err:
        MobileVLM.from_folder(folder)
    assert "model.mm_projector.peg.peg.0.bias" in one_line(err.value)


HUB_LOOKUP = """
import sys
from mvlm_magic.model.checkpoint import resolve_source
from mvlm_magic.errors import MvlmError
try:
    source = resolve_source(sys.argv[1])
    print("resolved", source.model_id, source.revision, source.folder)
except MvlmError as err:
    print("error", err)
"""


def test_hub_ids_resolve_from_the_hf_cache_offline(tmp_path, checkpoint):
    """A hub id goes through huggingface_hub, which honours HF_HOME and HF_HUB_OFFLINE."""
    import subprocess
    import sys

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--mtgv--MobileVLM_V2-1.7B"
    shutil.copytree(checkpoint("v2"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**__import__("os").environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}

    def lookup(name):
        out = subprocess.run([sys.executable, "-c", HUB_LOOKUP, name], env=env, capture_output=True, text=True)
        return out.stdout.strip()

    assert lookup("mobilevlm-v2-1.7b") == f"resolved mtgv/MobileVLM_V2-1.7B {commit} {repo / 'snapshots' / commit}"
    missing = lookup("mtgv/MobileVLM-3B")
    assert missing.startswith("error mtgv/MobileVLM-3B is not in the Hugging Face cache") and "\n" not in missing
