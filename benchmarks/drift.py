"""How far compressed exports drift from the torch reference, on a tiny random checkpoint.

    python benchmarks/drift.py [--out docs/drift.json]

For each compression: the last-position logits of a few prompts (max |OV - torch| as a share of
the reference logit range, OpenVINO at f32 so only the weights differ) and whether the 32 greedy
tokens still equal the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import shapes_picture  # noqa: E402
from mvlm_magic.export import export_model  # noqa: E402
from mvlm_magic.model.mobilevlm import MobileVLM  # noqa: E402
from mvlm_magic.model.tiny import build_tiny_checkpoint  # noqa: E402
from mvlm_magic.runtime.engine import Engine  # noqa: E402
from mvlm_magic.runtime.preprocess import preprocess_image  # noqa: E402
from mvlm_magic.runtime.tokenizer import build_conversation, tokenize_with_image  # noqa: E402

QUESTIONS = ["What colour is the circle?", "Describe the image."]


def measure(version: str, work: Path) -> list[dict]:
    folder = build_tiny_checkpoint(work / version, projector_type={"v1": "ldpnet", "v2": "ldpnetv2"}[version], seed=7)
    model = MobileVLM.from_folder(folder)
    rows = []
    for compression in ("fp32", "fp16", "int8", "int4"):
        engine = Engine(export_model(folder, compression, cache_dir=work / "cache").path, precision="f32")
        drift, same = 0.0, 0
        cases = [(shapes_picture(seed=s), q) for s in range(3) for q in QUESTIONS]
        for image, question in cases:
            ids = tokenize_with_image(engine.tokenizer, build_conversation([(question, None)]))
            pixels = torch.from_numpy(preprocess_image(image))
            expected = model.last_logits(ids, pixels).numpy()
            actual = engine.prompt_logits(ids, engine.encode_image(image))
            drift = max(drift, float(np.abs(actual - expected).max() / (expected.max() - expected.min())))
            answer = engine.new_chat(image).ask(question, max_new_tokens=32).result()
            same += answer.token_ids == model.generate(ids, pixels, max_new_tokens=32)
        rows.append({"version": version, "compression": compression, "max_logit_drift": round(drift, 5),
                     "greedy_32_equal": f"{same}/{len(cases)}"})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        rows = measure("v1", Path(work)) + measure("v2", Path(work))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
