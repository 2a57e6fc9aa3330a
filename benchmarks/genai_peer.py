"""Build an openvino_genai.LLMPipeline folder from a MobileVLM checkpoint's language model.

    python benchmarks/genai_peer.py CHECKPOINT OUT_DIR [--compression int4-g128-r0.8]

genai's LLMPipeline needs a stateful model that takes `input_ids` and a `beam_idx` input, so this
traces the same language model as our exporter (same wrapper, same DynamicCache workaround, the same
compression code, the same beam_idx input) with the token embedding inside.
It is the decode ceiling for our weights: genai's C++ loop over the same kind of IR.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def build(checkpoint: Path, out: Path, compression: str = "int4") -> Path:
    import openvino as ov
    from openvino import opset13

    from mvlm_magic.export.compress import Compression, compress
    from mvlm_magic.export.convert import convert_language_model
    from mvlm_magic.model.mobilevlm import MobileVLM

    model = MobileVLM.from_folder(checkpoint)
    ov_model = convert_language_model(model)  # inputs_embeds in, stateful
    # Put the embedding table in front: input_ids -> Gather -> inputs_embeds.
    table = model.language_model.get_input_embeddings().weight.detach().numpy()  # (V, C)
    input_ids = opset13.parameter([-1, -1], ov.Type.i64, name="input_ids")
    input_ids.output(0).get_tensor().set_names({"input_ids"})
    embeds = opset13.gather(opset13.constant(table), input_ids, opset13.constant(0))
    old = ov_model.input("inputs_embeds").get_node()
    for target in old.output(0).get_target_inputs():
        target.replace_source_output(embeds.output(0))
    ov_model.remove_parameter(old)
    ov_model.add_parameters([input_ids])  # beam_idx and the state initializers come from our exporter
    ov_model.validate_nodes_and_infer_types()
    ov_model = compress(ov_model, "language", Compression.parse(compression))
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, out / "openvino_model.xml")
    config = json.loads((checkpoint / "config.json").read_text())
    llama_config = {**config, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    (out / "config.json").write_text(json.dumps(llama_config))
    for name in ("generation_config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if (checkpoint / name).is_file():
            shutil.copy(checkpoint / name, out / name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--compression", default="int4", help="as for our exporter, e.g. int4-sym-g128-r1")
    args = parser.parse_args()
    print(build(args.checkpoint, args.out, args.compression))


if __name__ == "__main__":
    main()
