"""Build an openvino_genai.LLMPipeline folder from a MobileVLM checkpoint's language model.

    python benchmarks/genai_peer.py CHECKPOINT OUT_DIR [--group-size 128]

genai's LLMPipeline needs a stateful model that takes `input_ids` and a `beam_idx` input, so this
traces the same language model as our exporter (same wrapper, same DynamicCache workaround, same
INT4_ASYM group 128 ratio 0.8) with the token embedding inside and OpenVINO's beam reorder added.
It is the decode ceiling for our weights: genai's C++ loop over the same kind of IR.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np


def build(checkpoint: Path, out: Path, group_size: int = 128) -> Path:
    import nncf
    import openvino as ov
    from openvino import opset13

    from mvlm_magic.export import convert_language_model, quiet_rich
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
    beam_idx = opset13.parameter([-1], ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    ov_model.add_parameters([input_ids, beam_idx])
    for op in ov_model.get_ops():
        if op.get_type_name() == "ReadValue":
            # The state initializer sized its batch from inputs_embeds; take it from input_ids now.
            dims = [d.min_length for d in op.get_output_partial_shape(0)]
            batch = opset13.gather(opset13.shape_of(input_ids, output_type="i64"), opset13.constant([0]),
                                   opset13.constant(0))
            parts = [batch if i == 0 else opset13.constant(np.array([d], np.int64)) for i, d in enumerate(dims)]
            op.set_arguments([opset13.broadcast(opset13.constant(0.0, dtype=op.get_output_element_type(0)),
                                                opset13.concat(parts, axis=0))])
            consumers = op.output(0).get_target_inputs()
            reordered = opset13.gather(op, beam_idx, opset13.constant(0))
            for consumer in consumers:
                if consumer.get_node().get_friendly_name() != reordered.get_friendly_name():
                    consumer.replace_source_output(reordered.output(0))
    ov_model.validate_nodes_and_infer_types()
    with quiet_rich():
        ov_model = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=group_size,
                                         ratio=0.8)
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, out / "openvino_model.xml")
    config = json.loads((checkpoint / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    for name in ("generation_config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if (checkpoint / name).is_file():
            shutil.copy(checkpoint / name, out / name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--group-size", type=int, default=128)
    args = parser.parse_args()
    print(build(args.checkpoint, args.out, args.group_size))


if __name__ == "__main__":
    main()
