"""Many pictures, one question: seconds per picture asked one at a time against `runtime.batch.ask_many`
(pictures encoded ahead of the answers), for N = 1 and N = 16, on the real 1.7B shape (random weights).

    python benchmarks/many_pictures.py                    # 1.7B V2 int4, N = 1 and 16, 32 new tokens
    python benchmarks/many_pictures.py --tiny --n 1 4     # a smoke run (the tests do this)

Uses the checkpoint and export of benchmarks/run.py (same --work folder). Prints a table and writes
<out>/many_pictures.json; figures go to docs/benchmarks.md with the CPU named.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (benchmarks/run.py: the checkpoint builder and exporter)


def pictures(n: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    return [(f"picture {i}", Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))) for i in range(n)]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--version", default="v2", choices=("v1", "v2"))
    parser.add_argument("--compression", default="int4")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mvlm-bench"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from mvlm_magic.runtime.batch import ask_many
    from mvlm_magic.runtime.engine import Engine
    from mvlm_magic.runtime.sampling import GenerationConfig

    work = args.work / ("tiny" if args.tiny else "real")  # benchmarks/run.py's folder: one checkpoint for both
    checkpoint = work / f"checkpoint-{args.version}"
    if not (checkpoint / "config.json").is_file():
        spec = {**(run.TINY if args.tiny else run.REAL_1_7B), "projector_type": {"v1": "ldpnet", "v2": "ldpnetv2"}[
            args.version]}
        run.python(run.BUILD, checkpoint, json.dumps(spec))
    vocab = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
    run.python(run.PAD_TOKENIZER, checkpoint, vocab)
    folder = run.python(run.EXPORT, checkpoint, args.compression, work / "cache")["path"]
    engine = Engine(folder)
    config = GenerationConfig(max_new_tokens=args.new_tokens, ignore_eos=True)
    question = "What is in the picture?"
    engine.ask(pictures(1)[0][1], question, config)  # warm up: first inferences copy weights
    report = {"cpu": run.cpu_name(), "compression": args.compression, "new_tokens": args.new_tokens, "rows": []}
    print(f"{report['cpu']}; {args.compression}; {args.new_tokens} new tokens per answer")
    print("| N | one at a time (s/picture) | ask_many (s/picture) | ratio |\n|---|---|---|---|")
    for n in args.n:
        batch = pictures(n)
        started = time.perf_counter()
        for _, picture in batch:
            engine.ask(picture, question, config)
        single = (time.perf_counter() - started) / n
        started = time.perf_counter()
        ask_many(engine, batch, [question], config)
        many = (time.perf_counter() - started) / n
        report["rows"].append({"n": n, "single_s": round(single, 3), "many_s": round(many, 3)})
        print(f"| {n} | {single:.2f} | {many:.2f} | {many / single:.2f} |", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "many_pictures.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
